"""Layers of one name in different nested models, continued (session 18b).

``attach_regularizer(model, K, layers=["fc"])`` regularized the last ``fc`` only, and its
summary / ``refresh_regularizers`` keyed both kernels ``fc/kernel`` (one entry for two
weights). ``strip_clustering`` refused to fold BatchNormalization into two same-named convs
(``FoldResult.scales`` kept one multiplier for both): the fold now pairs palettes with their
layers (owners, or position in walk order) and keys multipliers by path.
"""

import numpy as np
import pytest

import dkm_tf
from dkm_tf.graph.batchnorm import fold_batch_norm
from dkm_tf.graph.batchnorm_palettes import fold_for_export, fold_with_palettes
from dkm_tf.graph.clusterable import walk_layers
from tests.testing import two_conv_bn_blocks

keras = pytest.importorskip("keras")
K = 4


def _dense_block(name, seed):
    inp = keras.Input((6,))
    init = keras.initializers.GlorotUniform(seed=seed)
    return keras.Model(inp, keras.layers.Dense(6, name="fc", kernel_initializer=init)(inp),
                       name=name)


def _two_dense():
    inp = keras.Input((6,))
    return keras.Model(inp, _dense_block("b", 2)(_dense_block("a", 1)(inp)))


def _x(batch):
    return np.random.default_rng(batch).normal(size=(batch, 5, 5, 4)).astype("float32")


def _convs(model):
    return [lay for lay in walk_layers(model) if lay.name == "conv"]


def _kmeans_vars(model):
    return [v for v in model.weights
            if isinstance(v.regularizer, dkm_tf.SpectralKMeansRegularizer)]


def test_attach_layers_name_selects_every_same_named_layer():
    model = _two_dense()
    got = dkm_tf.attach_regularizer(model, K, layers=["fc"])
    assert len(_kmeans_vars(model)) == 2  # was 1: the last `fc` only
    assert sorted(got) == ["a/fc/kernel", "b/fc/kernel"]
    assert not got.skipped
    assert sorted(dkm_tf.refresh_regularizers(model)) == ["a/fc/kernel", "b/fc/kernel"]
    assert dkm_tf.detach_regularizer(model) == 2


def test_attach_dicts_apply_to_every_same_named_layer():
    model = _two_dense()
    got = dkm_tf.attach_regularizer(model, {"fc": 3}, include_dense=True,
                                    sparsity={"fc": 0.25})
    regs = [v.regularizer for v in _kmeans_vars(model)]
    assert [(r.n_clusters, r.sparsity) for r in regs] == [(3, 0.25), (3, 0.25)]
    assert len(got) == 2 and "regularized 2 weight(s)" in got.summary()  # was 1 (one key)


def test_summary_marks_frozen_kernels():
    model = _two_dense()
    model.get_layer("a").trainable = False
    got = dkm_tf.attach_regularizer(model, K, include_dense=True)
    rows = {line.split(":")[0].strip("+ "): line for line in got.summary().splitlines()[1:]}
    assert "frozen" in rows["a/fc/kernel"] and "frozen" not in rows["b/fc/kernel"]
    assert got.frozen == ("a/fc/kernel",)
    assert len(model.losses) == 1  # Keras penalizes the trainable kernel only


@pytest.fixture(scope="module")
def clustered():
    model = two_conv_bn_blocks()
    with pytest.warns(UserWarning, match="folds into the layer before them"):
        return model, dkm_tf.cluster_weights(model, K, unit="scalar")


def test_strip_folds_batch_norm_of_two_same_named_convs(clustered):
    _, cw = clustered
    flat, _ = dkm_tf.strip_clustering(cw, fold_bn=False)
    plain, palettes = dkm_tf.strip_clustering(cw)  # was refused (check_fold_names)
    assert not [lay for lay in walk_layers(plain)
                if isinstance(lay, keras.layers.BatchNormalization)]
    for batch in (1, 3):
        np.testing.assert_allclose(plain(_x(batch)), flat(_x(batch)), atol=1e-5, rtol=0)
    convs = _convs(plain)
    assert [p.name for p in palettes] == ["conv/kernel", "conv/kernel"]
    for lay, pal in zip(convs, palettes):
        kernel = keras.ops.convert_to_numpy(lay.kernel)
        np.testing.assert_array_equal(pal.decode(), kernel)
        assert max(len(np.unique(kernel[..., c])) for c in range(4)) <= K
    assert not np.allclose(palettes[0].codebook, palettes[1].codebook)


def test_fold_pairs_same_named_palettes_by_walk_order(clustered):
    _, cw = clustered
    flat, _ = dkm_tf.strip_clustering(cw, fold_bn=False)
    palettes = dkm_tf.palettes_of(flat)  # walk order, no owners
    folded, new, _ = fold_with_palettes(flat, palettes)
    for batch in (1, 3):
        np.testing.assert_allclose(folded(_x(batch)), flat(_x(batch)), atol=1e-5, rtol=0)
    for lay, pal in zip(_convs(folded), new):
        np.testing.assert_array_equal(pal.decode(), keras.ops.convert_to_numpy(lay.kernel))
    notes = []
    _, exported, _ = fold_for_export(flat, palettes, notes=notes)
    assert "conv/kernel, conv/kernel" in notes[0]
    with pytest.raises(ValueError, match="palettes carry no path"):
        fold_with_palettes(flat, palettes[1:])  # one palette, two `conv`: ambiguous


def test_fold_batch_norm_keys_multipliers_by_path(clustered):
    model, _ = clustered
    result = fold_batch_norm(model)
    assert sorted(result.paths) == ["a/conv/kernel", "b/conv/kernel"]
    assert "conv/kernel" not in result.scales  # was one of the two multipliers
    assert result.folded_paths == [("a/conv", "a/bn"), ("b/conv", "b/bn")]
    for block in ("a", "b"):
        bn = model.get_layer(block).get_layer("bn")
        s = bn.gamma.numpy().astype(np.float64) / np.sqrt(
            bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
        np.testing.assert_allclose(result.paths[f"{block}/conv/kernel"].ravel(), s, rtol=1e-12)


def test_share_weights_clusters_both_folded_convs(clustered):
    model, _ = clustered
    result = dkm_tf.share_weights(model, K)
    assert len(result.folded) == 2
    for lay, pal in zip(_convs(result.model), result.palettes):
        kernel = keras.ops.convert_to_numpy(lay.kernel)
        np.testing.assert_array_equal(pal.decode(), kernel)
        assert len(np.unique(kernel)) <= K
