"""Single layers and custom layers: cluster_weights(layer) clusters at once; 1-D weights.

A built layer given to cluster_weights comes back as a built ClusterWeights (palettes and
strip_clustering work without a call); an unbuilt one raises (ClusterWeights(layer) clusters
at its first build instead). A custom layer's get_clusterable_weights() may return a 1-D
weight with kind "vector". Checked against numpy k-means references.
"""

import math

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.core.kmeans import cluster_values
from dkm_tf.core.palette import size_report

L = keras.layers
K = 4


def built(layer, shape, seed=0):
    keras.utils.set_random_seed(seed)
    layer.build(shape)
    return layer


def _check_stripped(wrapper, original, x):
    """strip gives a plain layer whose weights = palette.decode() (<= K units per codebook),
    with the wrapper's outputs."""
    plain, palettes = dkm_tf.strip_clustering(wrapper)
    assert type(plain) is type(original) and not isinstance(plain, dkm_tf.ClusterWeights)
    assert [p.weight_name for p in palettes] == wrapper.clustered_weights
    for p in palettes:
        value = getattr(plain, p.weight_name).numpy()
        np.testing.assert_array_equal(value, p.decode())
        assert np.unique(value).size <= K * p.layout.n_groups * p.unit_dim
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)),
                               keras.ops.convert_to_numpy(wrapper(x)), atol=1e-5)
    return plain, palettes


def test_built_dense_is_clustered_at_once():
    dense = built(L.Dense(6, name="d"), (None, 5))
    before = dense.kernel.numpy().copy()
    wrapper = dkm_tf.cluster_weights(dense, K)
    assert wrapper.built
    (pal,) = wrapper.palettes()  # no call needed
    ref_cb, ref_idx = cluster_values(before.reshape(-1), K)
    np.testing.assert_allclose(pal.decode().reshape(-1), ref_cb[ref_idx], rtol=1e-6)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    plain, palettes = dkm_tf.strip_clustering(dkm_tf.cluster_weights(dense, K))  # no call
    np.testing.assert_allclose(plain.kernel.numpy(), pal.decode(), rtol=1e-6)
    assert np.unique(plain.kernel.numpy()).size == K
    np.testing.assert_array_equal(plain.bias.numpy(), dense.bias.numpy())
    np.testing.assert_array_equal(dense.kernel.numpy(), before)  # the input is untouched
    _check_stripped(wrapper, dense, x)


def test_built_conv2d_per_channel_rows():
    conv = built(L.Conv2D(5, 3, name="c"), (None, 7, 7, 2))
    wrapper = dkm_tf.cluster_weights(conv, K, unit="row", granularity="per_channel")
    (pal,) = dkm_tf.palettes_of(wrapper)
    assert pal.codebook.shape == (5, K, 3) and pal.layout.unit == "row"
    x = np.random.default_rng(1).normal(size=(2, 7, 7, 2)).astype(np.float32)
    plain, _ = _check_stripped(wrapper, conv, x)
    # per output channel: at most K distinct kernel rows
    k = plain.kernel.numpy()
    for c in range(5):
        rows = np.moveaxis(k[..., c], 1, -1).reshape(-1, 3)
        assert np.unique(rows, axis=0).shape[0] <= K


def test_unbuilt_layer_raises_and_clusterweights_is_lazy():
    with pytest.raises(ValueError, match="not built.*ClusterWeights"):
        dkm_tf.cluster_weights(L.Dense(3, name="lazy"), K)
    wrapper = dkm_tf.ClusterWeights(L.Dense(3, name="lazy"), n_clusters=K)
    with pytest.raises(ValueError, match="not built"):
        wrapper.palettes()
    with pytest.raises(ValueError, match="not built"):
        dkm_tf.strip_clustering(wrapper)
    wrapper(np.ones((1, 8), np.float32))  # clusters at its first build
    assert wrapper.palettes()[0].layout.kernel_shape == (8, 3)


def test_clusterweights_around_a_built_layer_strips_without_a_call():
    dense = built(L.Dense(4), (None, 6))
    wrapper = dkm_tf.ClusterWeights(dense, n_clusters=2)
    plain, (pal,) = dkm_tf.strip_clustering(wrapper)  # builds (clusters) it first
    assert np.unique(plain.kernel.numpy()).size == 2
    np.testing.assert_array_equal(plain.kernel.numpy(), pal.decode())


@keras.saving.register_keras_serializable(package="dkm_tf_tests")
class BiasedProjection(L.Layer):
    """A custom layer whose hook returns its 2-D kernel and its 1-D bias."""

    def __init__(self, units=4, bias_kind="vector", **kwargs):
        super().__init__(**kwargs)
        self.units, self.bias_kind = units, bias_kind

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units * 4,), initializer="random_normal",
                                    name="bias")

    def call(self, x):
        y = keras.ops.matmul(x, self.kernel)
        return keras.ops.concatenate([y, y, y, y], axis=-1) + self.bias

    def get_clusterable_weights(self):
        return [("kernel", self.kernel, "dense"), ("bias", self.bias, self.bias_kind)]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "bias_kind": self.bias_kind}


def test_custom_layer_1d_bias_is_clustered_stripped_and_accounted():
    layer = built(BiasedProjection(4, name="proj"), (None, 6))
    bias = layer.bias.numpy().copy()
    wrapper = dkm_tf.cluster_weights(layer, K)
    assert wrapper.clustered_weights == ["kernel", "bias"]
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    plain, palettes = _check_stripped(wrapper, layer, x)
    pal = palettes[1]
    assert pal.layout.kind == "vector" and pal.codebook.shape == (1, K, 1)
    ref_cb, ref_idx = cluster_values(bias, K)
    np.testing.assert_allclose(plain.bias.numpy(), ref_cb[ref_idx], rtol=1e-6)
    # size accounting, numpy reference: N log2 K index bits + K * 32 codebook bits
    row = size_report(palettes).rows[1]
    n = bias.size
    assert row["N"] == n and row["K"] == K and row["bits"] == 2
    np.testing.assert_allclose(row["cr_log2"], n * 32 / (n * math.log2(K) + K * 32))
    # per_channel: a vector has no channel axis, one codebook
    per_channel = dkm_tf.cluster_weights(layer, K, granularity="per_channel")
    assert per_channel.palettes()[1].codebook.shape == (1, K, 1)


def test_custom_layer_in_a_model_share_weights_and_regularizer():
    model = keras.Sequential([keras.Input((6,)), BiasedProjection(4, name="proj")])
    keras.utils.set_random_seed(3)
    clustered, palettes, skipped = dkm_tf.share_weights(model, K)
    assert [p.name for p in palettes] == ["proj/kernel", "proj/bias"] and not skipped
    for p in palettes:
        np.testing.assert_array_equal(getattr(clustered.layers[0], p.weight_name).numpy(),
                                      p.decode())
    assert np.unique(clustered.layers[0].bias.numpy()).size == K
    regs = dkm_tf.attach_regularizer(model, K, 1e-3, layers=["proj"], unit="auto")
    assert sorted(r.resolved_unit for r in regs.values()) == ["scalar", "scalar"]
    found = dkm_tf.palettes_of(clustered)
    assert [p.name for p in found] == ["proj/kernel", "proj/bias"]


def test_kind_that_does_not_fit_the_shape_names_layer_and_weight():
    layer = built(BiasedProjection(4, bias_kind="dense", name="badproj"), (None, 6))
    with pytest.raises(ValueError, match=r"badproj.*'bias'.*'dense'.*\(16,\).*'vector'"):
        dkm_tf.cluster_weights(layer, K)
    layer = built(BiasedProjection(4, bias_kind="conv", name="badproj2"), (None, 6))
    with pytest.raises(ValueError, match=r"badproj2.*'bias'"):
        dkm_tf.share_weights(keras.Sequential([keras.Input((6,)), layer]), K)
