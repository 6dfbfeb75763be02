"""Tests for dkm_tf.training.wrapper.ClusterWeights (hard weight sharing wrapper)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from testing import gradients, tf_backend_only, to_numpy  # noqa: E402

from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights, gather_codebook, index_dtype  # noqa: E402

ATOL = 1e-6
L = keras.layers

# (factory, input shape or None for int tokens, clustered attributes, unit, granularity)
CASES = [
    ("dense", lambda: L.Dense(5, activation="relu"), (3, 7), ["kernel"], "scalar", "per_tensor"),
    ("conv1d_causal", lambda: L.Conv1D(4, 3, padding="causal", dilation_rate=2), (2, 9, 3),
     ["kernel"], "row", "per_channel"),
    ("conv2d", lambda: L.Conv2D(4, 3, strides=2, activation="tanh"), (2, 9, 9, 3), ["kernel"],
     "kernel", "per_tensor"),
    ("conv2d_groups", lambda: L.Conv2D(4, 3, groups=2), (2, 6, 6, 4), ["kernel"], "scalar",
     "per_channel"),
    ("conv3d", lambda: L.Conv3D(2, 2), (1, 4, 4, 4, 3), ["kernel"], "row", "per_tensor"),
    ("conv1d_t", lambda: L.Conv1DTranspose(3, 3, strides=2), (2, 5, 2), ["kernel"], "scalar",
     "per_tensor"),
    ("conv2d_t", lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), (2, 5, 5, 3),
     ["kernel"], "kernel", "per_channel"),
    ("conv3d_t", lambda: L.Conv3DTranspose(2, 2), (1, 3, 3, 3, 2), ["kernel"], "scalar",
     "per_channel"),
    ("depthwise1d", lambda: L.DepthwiseConv1D(3), (2, 6, 3), ["kernel"], "row", "per_tensor"),
    ("depthwise2d", lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (2, 6, 6, 3), ["kernel"],
     "scalar", "per_channel"),
    ("separable1d", lambda: L.SeparableConv1D(4, 3), (2, 7, 3),
     ["depthwise_kernel", "pointwise_kernel"], "scalar", "per_tensor"),
    ("separable2d", lambda: L.SeparableConv2D(4, 3, depth_multiplier=2), (2, 6, 6, 3),
     ["depthwise_kernel", "pointwise_kernel"], "kernel", "per_channel"),
    ("embedding", lambda: L.Embedding(12, 4), None, ["embeddings"], "scalar", "per_tensor"),
]


def _input(shape, seed=0):
    rng = np.random.default_rng(seed)
    if shape is None:
        return rng.integers(0, 12, (3, 5))
    return rng.standard_normal(shape).astype(np.float32)


def _plain_twin(wrapper, x):
    """A plain layer of the same config holding the wrapper's decoded kernels."""
    inner = wrapper.layer
    plain = inner.__class__.from_config(inner.get_config())
    plain(x)
    decoded = {p.weight_name: p.decode() for p in wrapper.palettes()}
    plain.set_weights([decoded[a] if a in decoded else to_numpy(v)
                       for a, v in zip([_attr_of(inner, v) for v in inner.weights],
                                       inner.weights)])
    return plain


def _attr_of(layer, var):
    for attr in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"):
        if getattr(layer, attr, None) is var:
            return attr
    return None


@pytest.mark.parametrize("name,factory,shape,attrs,unit,granularity", CASES,
                         ids=[c[0] for c in CASES])
def test_wrapped_layer_matches_plain_layer_with_decoded_kernel(name, factory, shape, attrs,
                                                               unit, granularity):
    k = 3
    x = _input(shape)
    inner = factory()
    inner(x)
    bias_before = [to_numpy(v).copy() for v in inner.weights if _attr_of(inner, v) is None]
    w = ClusterWeights(inner, n_clusters=k, unit=unit, granularity=granularity)
    y = keras.ops.convert_to_numpy(w(x))
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(_plain_twin(w, x)(x)), atol=ATOL,
                               rtol=ATOL)
    pals = w.palettes()
    assert [p.weight_name for p in pals] == attrs
    for p in pals:
        assert p.n_clusters <= k and p.indices.min() >= 0 and p.indices.max() < p.n_clusters
        per_group = units_lib.to_units(p.decode(), p.layout)
        for g in range(p.layout.n_groups):
            assert len(np.unique(per_group[g], axis=0)) <= k
    # centroids trainable, indices and the replaced kernels not; bias untouched, trainable
    trainable = {v.path.split("/")[-1] for v in w.trainable_weights}
    assert {f"{a}_codebook" for a in attrs} <= trainable
    assert not {f"{a}_indices" for a in attrs} & trainable
    assert not set(attrs) & trainable
    others = [v for v in inner.weights if _attr_of(inner, v) is None]
    assert all(v.trainable for v in others)
    for before, v in zip(bias_before, others):
        np.testing.assert_array_equal(before, to_numpy(v))


def _tape_grads(layer, x, r, sources):
    return gradients(lambda: keras.ops.sum(layer(x) * r), sources)


def test_centroid_gradient_is_sum_of_member_gradients_dense():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    r = rng.standard_normal((4, 5)).astype(np.float32)
    w = ClusterWeights(L.Dense(5), n_clusters=4)
    w(x)
    (g_cb,) = _tape_grads(w, x, r, [w.trainable_weights[0]])
    pal = w.palettes()[0]
    dW = x.T @ r  # numpy reference: d sum(r * (x W + b)) / dW
    idx = keras.ops.convert_to_numpy(w._slots[0].indices).astype(int)[0]
    want = np.bincount(idx, weights=units_lib.to_units(dW, pal.layout)[0, :, 0], minlength=4)
    np.testing.assert_allclose(np.asarray(g_cb)[0, :, 0], want, rtol=1e-5, atol=1e-5)


def test_centroid_gradient_per_channel_row_units_conv():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 7, 3)).astype(np.float32)
    w = ClusterWeights(L.Conv2D(4, 3), n_clusters=3, unit="row", granularity="per_channel")
    r = rng.standard_normal(keras.ops.shape(w(x))).astype(np.float32)
    (g_cb,) = _tape_grads(w, x, r, [w._slots[0].codebook])
    plain = _plain_twin(w, x)
    (dW,) = _tape_grads(plain, x, r, [plain.kernel])  # per-weight gradient of the plain layer
    lay = w._slots[0].layout
    units = units_lib.to_units(np.asarray(dW), lay)  # (G, M, d)
    idx = keras.ops.convert_to_numpy(w._slots[0].indices).astype(int)
    want = np.zeros((lay.n_groups, 3, lay.unit_dim))
    for g in range(lay.n_groups):
        np.add.at(want[g], idx[g], units[g])
    np.testing.assert_allclose(np.asarray(g_cb), want, rtol=1e-5, atol=1e-5)


@tf_backend_only("gather_codebook's custom gradient is TensorFlow's (other backends use ops.take)")
def test_gather_codebook_gradient_equals_default_gather_gradient():
    rng = np.random.default_rng(3)
    v = tf.constant(rng.standard_normal(12).astype(np.float32))
    i = tf.constant(rng.integers(0, 12, (5, 40)).astype(np.int32))
    up = tf.constant(rng.standard_normal((5, 40)).astype(np.float32))
    grads = []
    for fn in (gather_codebook, lambda a, b: tf.gather(a, b)):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = fn(v, i)
            loss = tf.reduce_sum(out * up)
        grads.append(to_numpy(tf.convert_to_tensor(tape.gradient(loss, v))))
        np.testing.assert_array_equal(to_numpy(out), to_numpy(tf.gather(v, i)))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)


def test_latent_kernel_gets_own_gradient_and_reassignment_moves_units():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    r = rng.standard_normal((4, 5)).astype(np.float32)
    w = ClusterWeights(L.Dense(5), n_clusters=4, latent=True)
    y = keras.ops.convert_to_numpy(w(x))
    np.testing.assert_allclose(y, keras.ops.convert_to_numpy(_plain_twin(w, x)(x)), atol=ATOL)
    kernel = w.layer.kernel
    assert kernel.trainable
    g_k, g_cb = _tape_grads(w, x, r, [kernel, w._slots[0].codebook])
    np.testing.assert_allclose(np.asarray(g_k), x.T @ r, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(g_cb)).sum() > 0
    # move one latent weight onto another centroid: exactly that unit changes index
    cb = keras.ops.convert_to_numpy(w._slots[0].codebook)[0, :, 0]
    idx = keras.ops.convert_to_numpy(w._slots[0].indices).astype(int)[0]
    target = (idx[0] + 1) % 4
    latent = units_lib.to_units(to_numpy(kernel), w._slots[0].layout)[0, :, 0].copy()
    latent[:] = cb[idx]
    latent[0] = cb[target]
    kernel.assign(units_lib.from_units(latent[None, :, None], w._slots[0].layout))
    assert w.reassign_indices() == 1
    assert int(keras.ops.convert_to_numpy(w._slots[0].indices)[0, 0]) == target


def test_reassign_without_latent_is_an_error():
    w = ClusterWeights(L.Dense(2), n_clusters=2)
    w(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="latent=True"):
        w.reassign_indices()


@keras.saving.register_keras_serializable(package="dkm_tf_tests")
class ScaledProjection(L.Layer):
    """A user layer made clusterable through the get_clusterable_weights() protocol."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.scale

    def get_clusterable_weights(self):
        return [("w", self.w, "dense")]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_custom_layer_protocol_and_save_load(tmp_path):
    x = _input((4, 6))
    inner = ScaledProjection(3)
    inner(x)
    w = ClusterWeights(inner, n_clusters=2)
    model = keras.Sequential([keras.Input((6,)), w])
    y = keras.ops.convert_to_numpy(model(x))
    cb, idx = w.palettes()[0].codebook[0, :, 0], w.palettes()[0].indices
    expect = x @ units_lib.from_units(cb[idx][..., None], w._slots[0].layout) * 1.0
    np.testing.assert_allclose(y, expect, atol=1e-5)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects, no scope
    assert isinstance(loaded.layers[0], ClusterWeights)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), y)


def test_keras_and_weights_h5_round_trip(tmp_path):
    x = _input((2, 6, 6, 3))
    model = keras.Sequential([
        keras.Input((6, 6, 3)),
        ClusterWeights(L.Conv2D(4, 3, name="c"), n_clusters=4, granularity="per_channel"),
        L.Flatten(),
        ClusterWeights(L.Dense(3, name="d"), n_clusters=300, latent=True),
    ])
    y = keras.ops.convert_to_numpy(model(x))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), y)
    for a, b in zip(model.weights, loaded.weights):
        assert a.dtype == b.dtype and a.trainable == b.trainable
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert loaded.layers[0]._slots[0].indices.dtype == "uint8"
    assert loaded.layers[2]._slots[0].indices.dtype == "int16"
    model.save_weights(tmp_path / "m.weights.h5")
    keras.utils.set_random_seed(7)
    other = keras.models.clone_model(model)  # same structure, fresh weights
    other(x)
    other.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(other(x)), y)


def test_index_dtype():
    assert [index_dtype(k) for k in (2, 256, 257, 32768, 40000)] == [
        "uint8", "uint8", "int16", "int16", "int32"]


def test_activity_regularizer_loss_is_kept():
    w = ClusterWeights(L.Dense(2, activity_regularizer="l2"), n_clusters=2)
    model = keras.Sequential([keras.Input((3,)), w])
    model(np.ones((1, 3), np.float32))
    assert len(model.losses) == 1


def test_unsupported_layer_error_names_layer_and_lists_support():
    with pytest.raises(TypeError, match=r"'bn' of type BatchNormalization.*Dense.*Embedding"):
        ClusterWeights(L.BatchNormalization(name="bn"))


@pytest.mark.parametrize("kwargs,pattern", [
    ({"n_clusters": 0}, r"Invalid value for argument `n_clusters`.*Received: n_clusters=0"),
    ({"unit": "rows"}, r"argument `unit`. Expected one of \['scalar', 'row', 'kernel', 'auto'\]"),
    ({"granularity": "channel"}, r"Received: granularity='channel'"),
    ({"init": "best"}, r"argument `init`"),
    ({"latent": 1}, r"argument `latent`"),
])
def test_invalid_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ClusterWeights(L.Dense(2), **kwargs)


@pytest.mark.parametrize("k", [2.5, "4", True, None])
def test_non_integer_n_clusters_is_a_type_error(k):
    with pytest.raises(TypeError, match=r"Invalid type for argument `n_clusters`.*Received: "):
        ClusterWeights(L.Dense(2), n_clusters=k)


def test_fewer_distinct_values_than_k_is_lossless():
    inner = L.Dense(2, use_bias=False)
    inner.build((None, 3))
    inner.kernel.assign(np.array([[0.5, 0.5], [-1.0, 0.5], [0.5, -1.0]], np.float32))
    w = ClusterWeights(inner, n_clusters=8)
    w(np.ones((1, 3), np.float32))
    pal = w.palettes()[0]
    assert pal.n_clusters == 2
    np.testing.assert_array_equal(pal.decode(), to_numpy(inner.kernel))
