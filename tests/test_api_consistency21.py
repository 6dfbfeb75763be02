"""Consistency of the public API across sibling functions (n_clusters, seed, overrides,
defaults): what a user who learned one function expects of the others."""

import inspect
import re

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.training import wrapper_kmeans

# a K above a weight's units whose padded codebook passes the limit (128 MB of float32)
HUGE_K = wrapper_kmeans.MAX_PADDED_ENTRIES + 1


def _tiny():
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="c1")(i)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(8, name="d1")(h)
    return keras.Model(i, keras.layers.Dense(3, name="d2")(h))


def _dense():
    keras.utils.set_random_seed(0)
    i = keras.Input((4,))
    return keras.Model(i, keras.layers.Dense(2, name="d")(i))


def _ks(palettes):
    return {p.name: (int(p.n_clusters), int(p.unit_dim)) for p in palettes}


def test_cluster_weights_refuses_a_huge_padded_k_that_share_weights_clamps():
    m = _dense()  # 8 kernel values
    shared = dkm_tf.share_weights(m, HUGE_K)
    assert _ks(shared.palettes) == {"d/kernel": (8, 1)}  # K clamped to the values
    with pytest.raises(ValueError, match=r"`n_clusters`.*<= 8.*d/kernel"):
        dkm_tf.cluster_weights(m, HUGE_K)  # was a (1, 2**25 + 1, 1) codebook, 2**31-1 an OOM kill
    with pytest.raises(ValueError, match=r"`n_clusters`.*<= 8"):
        keras.Sequential([keras.Input((4,)),
                          dkm_tf.ClusterWeights(keras.layers.Dense(2), n_clusters=HUGE_K)])


def test_attach_regularizer_refuses_a_huge_padded_k():
    with pytest.raises(ValueError, match=r"`n_clusters`.*<= 8.*d/kernel"):
        dkm_tf.attach_regularizer(_dense(), HUGE_K, include_dense=True)


def test_k_above_the_values_is_clamped_alike_in_share_and_cluster_weights():
    m = _tiny()
    shared = _ks(dkm_tf.share_weights(m, 100).palettes)
    _, pals = dkm_tf.strip_clustering(dkm_tf.cluster_weights(m, 100))
    assert _ks(pals) == shared == {"c1/kernel": (72, 1), "d1/kernel": (100, 1),
                                   "d2/kernel": (24, 1)}
    assert {p.requested_clusters for p in pals} == {100}


@pytest.mark.parametrize("overrides, expected", [
    ({"Dense": {"n_clusters": 2}, "d2": {"n_clusters": 8}},  # the layer name wins
     {"c1/kernel": (4, 1), "d1/kernel": (2, 1), "d2/kernel": (8, 1)}),
    ({"Dense": None, "d1": {"n_clusters": 2}},  # a named layer's settings over its class's None
     {"c1/kernel": (4, 1), "d1/kernel": (2, 1)}),
    ({"d1": None, "Dense": {"n_clusters": np.int32(3)}, "Conv2D": {"unit": "row"}},
     {"c1/kernel": (4, 3), "d2/kernel": (3, 1)}),
])
def test_overrides_read_alike_by_share_weights_and_cluster_weights(overrides, expected):
    m = _tiny()
    assert _ks(dkm_tf.share_weights(m, 4, overrides=overrides).palettes) == expected
    _, pals = dkm_tf.strip_clustering(dkm_tf.cluster_weights(m, 4, overrides=overrides))
    assert _ks(pals) == expected


def test_numpy_integers_for_k_and_seed_give_the_int_results_everywhere():
    m, values = _tiny(), np.random.default_rng(1).normal(size=50)
    ref = dkm_tf.share_weights(m, 4, seed=3)
    got = dkm_tf.share_weights(m, np.int32(4), seed=np.int64(3))
    for a, b in zip(ref.palettes, got.palettes, strict=True):
        np.testing.assert_array_equal(a.decode(), b.decode())
    _, p_int = dkm_tf.strip_clustering(dkm_tf.cluster_weights(m, 4, seed=3))
    _, p_np = dkm_tf.strip_clustering(dkm_tf.cluster_weights(m, np.int64(4), seed=np.uint8(3)))
    for a, b in zip(p_int, p_np, strict=True):
        np.testing.assert_array_equal(a.decode(), b.decode())
    c_int, _ = dkm_tf.cluster_values(values, 3, seed=3)
    c_np, _ = dkm_tf.cluster_values(values, np.int16(3), seed=np.int64(3))
    np.testing.assert_array_equal(c_int, c_np)
    for f in (lambda: dkm_tf.share_weights(m, True), lambda: dkm_tf.cluster_weights(m, True),
              lambda: dkm_tf.cluster_values(values, True),
              lambda: dkm_tf.attach_regularizer(_tiny(), True)):
        with pytest.raises(TypeError, match="n_clusters"):
            f()
    for f in (lambda: dkm_tf.share_weights(m, 4, seed=None),
              lambda: dkm_tf.cluster_weights(m, 4, seed=None),
              lambda: dkm_tf.cluster_values(values, 3, seed=None),
              lambda: dkm_tf.attach_regularizer(_tiny(), 4, seed=None)):
        with pytest.raises(TypeError, match="seed"):
            f()


def test_defaults_that_differ_on_purpose_are_documented_on_both_sides():
    from dkm_tf import cli

    assert inspect.signature(dkm_tf.dkm_retrain).parameters["unit"].default == "auto"
    assert inspect.signature(dkm_tf.share_weights).parameters["unit"].default == "scalar"
    doc = " ".join(dkm_tf.dkm_retrain.__doc__.split())
    assert '``"scalar"``, which ``compress(method="dkm")`` passes here' in doc
    assert "attach_regularizer`, whose default is False" in doc
    assert "dkm_retrain`'s is True" in " ".join(dkm_tf.attach_regularizer.__doc__.split())
    # dkm-tf compress fine-tunes 3 epochs, compress() 2: each says so
    assert inspect.signature(dkm_tf.compress).parameters["finetune_epochs"].default == 2
    assert cli._FINETUNE_EPOCHS.default == 3  # noqa: SLF001
    assert "(``dkm-tf compress``: 3)" in dkm_tf.compress.__doc__
    assert 'runs 2, ``dkm-tf compress`` 3' in " ".join(dkm_tf.finetune.__doc__.split())
    from absl import flags

    assert "compress() in Python defaults to 2" in flags.FLAGS["finetune_epochs"].help


@pytest.mark.parametrize("method", ["finetune", "dkm+finetune"])
def test_compress_finetune_methods_refuse_sparsity_they_would_drop(method):
    # overrides={"d1": {"sparsity": .3}} was refused with these methods, top-level sparsity
    # silently dropped: 0 % exact zeros where method="wr" / "dkm" gave 29.8 %
    m = _dense()
    m.compile("adam", "mse")
    data = (np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"))
    with pytest.raises(ValueError, match=rf"`sparsity`.*method='{re.escape(method)}'.*"
                                         r"Received: sparsity=0.3"):
        dkm_tf.compress(m, data, method=method, sparsity=0.3, n_clusters=4, verbose=0)


def test_compress_wr_keeps_the_asked_sparsity():
    r = dkm_tf.compress(_tiny(), None, method="wr", sparsity=0.3, n_clusters=4, verbose=0)
    kernels = np.concatenate([np.asarray(lay.kernel).ravel() for lay in r.model.layers
                              if hasattr(lay, "kernel")])
    assert 0.27 <= np.mean(kernels == 0) <= 0.33


def test_run_compress_checks_take_numpy_numbers_as_compress_does(tmp_path):
    from dkm_tf.cli_args import CliUsageError, check_compress_args

    out = str(tmp_path / "out")
    check_compress_args(None, method="wr", n_clusters=np.int32(4), seed=np.int64(3),
                        finetune_epochs=np.int64(1), lam=np.float32(0.5), output_dir=out)
    for kwargs, flag in (({"n_clusters": True}, "n_clusters"), ({"lam": True}, "lam"),
                         ({"seed": 2.0}, "seed"), ({"n_clusters": np.int64(0)}, "n_clusters")):
        with pytest.raises(CliUsageError, match=f"--{flag}"):
            check_compress_args(None, method="wr", output_dir=out, **kwargs)


def test_attach_regularizer_says_class_names_are_not_its_keys():
    with pytest.raises(ValueError, match=r"\['Dense'\] \(layer class names, which "
                                         r"share_weights' overrides take, are not keys here"):
        dkm_tf.attach_regularizer(_tiny(), {"Dense": 2}, include_dense=True)
    with pytest.raises(ValueError, match=r"name no layer: \['dx'\]$"):
        dkm_tf.attach_regularizer(_tiny(), {"dx": 2}, include_dense=True)
