"""Argument checks of the training, sharing and kernel-codebook entry points (fuzz round 2).

Numpy scalars (``np.True_``, ``np.float32``, ``np.int64``) are accepted wherever the Python
value is; bools standing for numbers, NaN / inf and strings are refused before any work with
a message naming the argument, the allowed values and what was received. Measured on
4b03212 (old) for each case; the comments say what the old code did.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import tf_backend_only  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.core import kernel_codebook as kc  # noqa: E402
from dkm_tf.training.common import check_fit_args, check_learning_rate  # noqa: E402

L = keras.layers


def _dense(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(3, name="head")(L.Dense(8, name="d")(inp)))


def _conv_bn():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="c")(inp))
    return keras.Model(inp, L.Dense(2, name="fc")(L.Flatten()(x)))


def _data(n=16):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, 6)).astype("float32"), rng.integers(0, 3, n))


# ------------------------------------------------------------------ training/common.py
@pytest.mark.parametrize("lr", [np.float32(1e-3), np.float64(1e-3), np.int64(1), 1e-3, 1])
def test_learning_rate_numpy_numbers_accepted(lr):
    # old: np.float32(1e-3) / np.float64 / np.int64 refused ("Expected a number > 0")
    assert check_learning_rate(lr) == pytest.approx(float(lr))


@pytest.mark.parametrize("bad", [float("inf"), np.inf, float("nan"), np.float32("nan"),
                                 -np.inf, 0, -1e-3, True, np.True_, "1e-3", None, [1e-3],
                                 10**400])
def test_learning_rate_non_finite_and_non_numbers_refused(bad):
    # old: inf accepted (fine-tuning trained NaN weights and failed later)
    with pytest.raises(ValueError, match=r"argument `learning_rate`. Expected a finite number "
                                         r"> 0 .*LearningRateSchedule.*Received: learning_rate="):
        check_learning_rate(bad)


def test_finetune_takes_numpy_scalars_and_refuses_inf_before_work():
    x, y = _data()
    model = _dense()
    stripped, palettes, hist = dkm_tf.finetune(
        model, (x, y), n_clusters=np.int64(4), epochs=np.int64(1), learning_rate=1e-3,
        batch_size=np.int64(8), verbose=np.int64(0), latent=np.False_,
        preserve_sparsity=np.False_)  # old: verbose, latent, preserve_sparsity refused
    assert len(hist.history["loss"]) == 1 and np.isfinite(hist.history["loss"]).all()
    assert len(palettes) == 2
    with pytest.raises(ValueError, match="`learning_rate`"):  # old: ran, NaN weights
        dkm_tf.finetune(model, (x, y), n_clusters=4, epochs=1, learning_rate=np.inf)
    with pytest.raises(ValueError, match="`learning_rate`"):  # old: ran, NaN weights
        dkm_tf.dkm_retrain(model, (x, y), n_clusters=4, epochs=1, learning_rate=float("inf"))


# finetune / dkm_retrain pass on check_learning_rate's float: Keras' Adam refused
# np.float32 and a Python int after the clustering work
@pytest.mark.parametrize("lr", [np.float32(1e-3), 1])
@pytest.mark.parametrize("fn", ["finetune", "dkm_retrain"])
def test_numpy_and_int_learning_rates_reach_adam_as_floats(fn, lr):
    x, y = _data()
    getattr(dkm_tf, fn)(_dense(), (x, y), n_clusters=4, epochs=1, batch_size=8,
                        learning_rate=lr)


@pytest.mark.parametrize("verbose", [0, 1, 2, "auto", True, False, np.int64(0), np.int32(2),
                                     np.True_])
def test_fit_verbose_numpy_ints_accepted(verbose):
    check_fit_args(_dense(), verbose=verbose)  # old: np.int64 / np.int32 / np.True_ refused


@pytest.mark.parametrize("bad", [3, -1, "yes", 1.0, np.float32(1)])
def test_fit_verbose_bad_refused(bad):
    with pytest.raises(ValueError, match=r"`verbose`. Expected 0, 1, 2 or 'auto'"):
        check_fit_args(_dense(), verbose=bad)


def test_fit_batch_size_bounds():
    check_fit_args(_dense(), batch_size=np.int64(8))
    check_fit_args(_dense(), batch_size=2**31 - 1)
    for bad in (2**31, 2**64):  # old: 2**64 reached Keras as an OverflowError
        with pytest.raises(ValueError, match=r"`batch_size`. Expected an integer >= 1 and "
                                             r"<= 2147483647 \(2\*\*31 - 1\). Received: "
                                             r"batch_size="):
            check_fit_args(_dense(), batch_size=bad)
    for bad in (True, 8.0, "8"):
        with pytest.raises(TypeError, match="`batch_size`"):
            check_fit_args(_dense(), batch_size=bad)


# ------------------------------------------------------- wrapper.py / regularizer.py bools
@pytest.mark.parametrize("value", [np.False_, np.True_])
def test_wrapper_latent_and_preserve_sparsity_take_numpy_bools(value):
    # old: ValueError "Expected a bool. Received: latent=np.False_"
    layer = dkm_tf.ClusterWeights(L.Dense(4), n_clusters=2, latent=value,
                                  preserve_sparsity=value)
    assert type(layer.latent) is bool and layer.latent == bool(value)
    assert type(layer.preserve_sparsity) is bool
    layer(np.ones((1, 3), "float32"))
    config = layer.get_config()  # JSON-serialisable: Python bools
    assert type(config["latent"]) is bool
    model = dkm_tf.cluster_weights(_dense(), 2, latent=value, preserve_sparsity=value)
    assert len(dkm_tf.palettes_of(model)) == 2


@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_wrapper_bools_refuse_stand_ins(bad):
    for arg in ("latent", "preserve_sparsity"):
        with pytest.raises(ValueError, match=rf"`{arg}`. Expected a bool.*Received: {arg}="):
            dkm_tf.ClusterWeights(L.Dense(4), n_clusters=2, **{arg: bad})


def test_regularizer_preserve_sparsity_takes_numpy_bools():
    # old: SpectralKMeansRegularizer / attach_regularizer / dkm_retrain refused np.False_
    reg = dkm_tf.SpectralKMeansRegularizer(4, preserve_sparsity=np.True_)
    assert reg.preserve_sparsity is True
    assert dkm_tf.SpectralKMeansRegularizer(4, preserve_sparsity=np.False_).preserve_sparsity \
        is False
    assert reg.get_config()["preserve_sparsity"] is True
    model = _dense()
    dkm_tf.attach_regularizer(model, 4, include_dense=True, preserve_sparsity=np.False_)
    x, y = _data()
    out = dkm_tf.dkm_retrain(_dense(), (x, y), n_clusters=4, epochs=1, batch_size=8,
                             preserve_sparsity=np.False_, verbose=np.int64(0),
                             learning_rate=1e-3)
    assert out is not None
    for bad in (1, "no", None):
        with pytest.raises(ValueError, match="`preserve_sparsity`.*Received: preserve_sparsity="):
            dkm_tf.SpectralKMeansRegularizer(4, preserve_sparsity=bad)


# ------------------------------------------------------------ training/clustering.py
def test_strip_clustering_fold_bn_numpy_bool():
    with pytest.warns(UserWarning, match="unclustered.*bn"):
        clustered = dkm_tf.cluster_weights(_conv_bn(), 4)
    stripped, _ = dkm_tf.strip_clustering(clustered, fold_bn=np.True_)  # old: TypeError
    assert not any(isinstance(lay, L.BatchNormalization) for lay in stripped.layers)
    kept, _ = dkm_tf.strip_clustering(clustered, fold_bn=np.False_)
    assert any(isinstance(lay, L.BatchNormalization) for lay in kept.layers)
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match=r"`fold_bn`. Expected a bool.*Received: fold_bn="):
            dkm_tf.strip_clustering(clustered, fold_bn=bad)


# ------------------------------------------------------------------ graph/share.py
def test_share_weights_bools():
    model = _dense()
    # old: inplace=np.False_ and fold_bn=np.False_ refused
    assert dkm_tf.share_weights(model, 4, inplace=np.False_, fold_bn=np.False_,
                                verbose=np.False_).palettes
    assert dkm_tf.share_weights(_conv_bn(), 4, fold_bn=np.True_).palettes
    for bad in ("yes", 1, None):  # old: verbose accepted all three
        with pytest.raises(TypeError, match=r"`verbose`. Expected a bool.*Received: verbose="):
            dkm_tf.share_weights(model, 4, verbose=bad)
    for bad in (1, "no"):
        with pytest.raises(TypeError, match=r"`inplace`. Expected a bool.*Received: inplace="):
            dkm_tf.share_weights(model, 4, inplace=bad)
        with pytest.raises(ValueError, match=r"`fold_bn`. Expected None or a bool"):
            dkm_tf.share_weights(model, 4, fold_bn=bad)
        with pytest.raises(ValueError, match=r"`fold_bn`. Expected None or a bool"):
            dkm_tf.share_weights(model, 4, fold_bn=bad, unit="kernel", codebook="shared")


# ------------------------------------------------------------------ training/attach.py
def test_refresh_regularizers_warn_and_attach_sparsity_none():
    model = _dense()
    dkm_tf.attach_regularizer(model, 4, include_dense=True)
    dkm_tf.refresh_regularizers(model, warn=np.False_)
    for bad in ("yes", 0, None):  # old: all accepted
        with pytest.raises(TypeError, match=r"`warn`. Expected a bool.*Received: warn="):
            dkm_tf.refresh_regularizers(model, warn=bad)
    with pytest.raises(ValueError, match=r"`sparsity`.*Received: sparsity=None"):
        dkm_tf.attach_regularizer(_dense(), 4, include_dense=True, sparsity=None)  # old: 0
    fresh = _dense()
    dkm_tf.attach_regularizer(fresh, 4, include_dense=True, sparsity={"d": np.float32(0.25)})
    assert fresh.get_layer("d").kernel_regularizer.sparsity == 0.25


# ------------------------------------------------------------------ core/kernel_codebook.py
def test_kernel_bits_arguments():
    ref = kc.kernel_bits(1000, 16)
    assert kc.kernel_bits(np.int64(1000), np.int64(16), kernel_size=np.int64(3),
                          transforms=np.int64(1), scale_bits=np.int64(16),
                          codebook_bits=np.int64(32)) == ref
    assert kc.kernel_bits(1000, 16, kernel_size=[3, 3]) == ref
    assert kc.kernel_bits(1000, 16, kernel_size=np.array([3, 3])) == ref
    assert kc.kernel_bits(1000, 16, kernel_size=3) == ref  # old: 3 read as h * w = 3
    for bad in (-100, 0, 12, 16.0, True):  # old: -100 gave -488 bytes (ratio -4.7)
        with pytest.raises(ValueError, match=r"`scale_bits`. Expected one of \[8, 16, 32\]"):
            kc.kernel_bits(1000, 16, scale_bits=bad)
    for bad in (0, (2, 2, 2), 2.5, (3, 0), True, "3", np.array([2.5, 3])):  # old: accepted
        with pytest.raises(ValueError, match=r"`kernel_size`.*Received: kernel_size="):
            kc.kernel_bits(1000, 16, kernel_size=bad)
    for bad in (True, 2.0, 3):
        with pytest.raises(ValueError, match="`transforms`"):
            kc.kernel_bits(1000, 16, transforms=bad)
    for bad in (0, -32, True, 32.0, float("nan")):
        with pytest.raises((TypeError, ValueError), match="`codebook_bits`"):
            kc.kernel_bits(1000, 16, codebook_bits=bad)


def test_cluster_kernels_seed_and_refit_scales():
    kernels = [np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype("float32")]
    a = kc.cluster_kernels(kernels, 4, seed=np.int64(3), refit_scales=np.False_)
    b = kc.cluster_kernels(kernels, 4, seed=3, refit_scales=False)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1][0].indices, b[1][0].indices)
    for bad in (None, True, [0], 1.5):  # old: accepted
        with pytest.raises(TypeError, match=r"`seed`.*Received: seed="):
            kc.cluster_kernels(kernels, 4, seed=bad)
    with pytest.raises(TypeError, match=r"`seed`.*Received: seed='0'"):  # old: numpy error
        kc.cluster_kernels(kernels, 4, seed="0")
    with pytest.raises(ValueError, match=r"`seed`.*Received: seed=-1"):
        kc.cluster_kernels(kernels, 4, seed=-1)
    for bad in ("no", 0, None):  # old: "no" accepted (truthy: refitted)
        with pytest.raises(TypeError, match=r"`refit_scales`. Expected a bool"):
            kc.cluster_kernels(kernels, 4, refit_scales=bad)


# ------------------------------------------------------------ graph/own_config.py (Lambda)
def _scale(t, factor=1.0):
    return t * factor


def _same_shape(shape):
    return shape


def _nonzero_mask(inputs, mask=None):
    return keras.ops.any(keras.ops.not_equal(inputs, 0), axis=-1)


def test_lambda_copy_keeps_arguments_output_shape_mask_and_dtype():
    # old: a callable output_shape raised "Could not locate function '_same_shape'"; without
    # it the copy's mask was its config dict ({'module': 'builtins', ...}), not the function
    from dkm_tf.graph.own_config import from_own_config

    lam = L.Lambda(_scale, arguments={"factor": 3.0}, output_shape=_same_shape,
                   mask=_nonzero_mask, name="lam", dtype="mixed_float16")
    x = np.ones((2, 3, 4), "float32")
    x[0, 1] = 0
    copy = from_own_config(lam)
    assert copy is not lam and copy.name == "lam"
    assert copy.function is _scale and copy.mask is _nonzero_mask
    assert copy._output_shape is _same_shape and copy.arguments == {"factor": 3.0}
    assert copy.arguments is not lam.arguments and copy.dtype_policy.name == "mixed_float16"
    np.testing.assert_array_equal(np.asarray(copy(x)), np.asarray(lam(x)))
    np.testing.assert_array_equal(np.asarray(copy.compute_mask(x)),
                                  [[True, False, True], [True, True, True]])


def test_clustered_model_with_a_python_lambda_saves_as_keras_does(tmp_path):
    # the copy works (old: refused); saving writes the lambda's bytecode as Keras does, and
    # loading is Keras' business: refused in safe mode, equal outputs with safe_mode=False
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = L.Lambda(lambda t: t * 2.0 - 0.5, name="lam")(L.Dense(8, name="d")(inp))
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    x = np.random.default_rng(0).standard_normal((3, 6)).astype("float32")
    clustered = dkm_tf.cluster_weights(model, 4)
    stripped, _ = dkm_tf.strip_clustering(clustered)
    for m in (clustered, stripped):
        path = str(tmp_path / f"{m.name}_{len(m.layers)}.keras")
        m.save(path)
        for load in (keras.saving.load_model, dkm_tf.load_model):
            with pytest.raises(ValueError, match=r"`Lambda` layer.*Python lambda.*safe_mode"):
                load(path)
        back = dkm_tf.load_model(path, safe_mode=False)
        np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(m(x)))


# ------------------------------------------------- training/wrapper.py: tf.saved_model.save
@tf_backend_only("tf.saved_model.save")
@pytest.mark.parametrize("kwargs", [{}, {"latent": True, "preserve_sparsity": True},
                                    {"unit": "row", "granularity": "per_channel"},
                                    {"assignment": "soft", "temperature": 0.05}])
def test_tf_saved_model_save_of_a_reloaded_clustered_model(tmp_path, kwargs):
    # old: AssertionError "untracked resource" for every ClusterWeights model; here the
    # wrappers are rebuilt by a .keras load (build_from_config), and their variables keep
    # their names and order
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    h = L.Conv1D(6, 3, name="c")(inp)
    model = keras.Model(inp, L.Dense(3, name="fc")(L.LSTM(4, name="rnn")(h)))
    clustered = dkm_tf.cluster_weights(model, 4, **kwargs)
    clustered.save(str(tmp_path / "m.keras"))
    back = dkm_tf.load_model(str(tmp_path / "m.keras"))
    assert [v.path for v in back.weights] == [v.path for v in clustered.weights]
    tf.saved_model.save(back, str(tmp_path / "sm"))
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    x = np.random.default_rng(2).standard_normal((4, 5, 4)).astype("float32")
    for xs in (x[:1], x):
        (got,) = serve(tf.constant(xs)).values()
        np.testing.assert_allclose(got.numpy(), np.asarray(clustered(xs)), rtol=0, atol=1e-5)
