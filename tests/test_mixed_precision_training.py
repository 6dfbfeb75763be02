"""Mixed precision through clustering, training and the regularizer (found by a probe).

* ``cluster_weights`` / ``strip_clustering`` / ``share_weights`` copies of a model built under
  ``mixed_float16`` took the global policy at copying time (float32 once it is reset), so
  ``compile`` gave them no ``LossScaleOptimizer``: float16 gradients below 6e-8 underflowed
  (codebook update 0 against 1.08e-5 in float32, test below). They keep the model's policy.
* The hard wrapper gathered a float16 copy of its float32 codebook: each centroid's gradient,
  a sum over its weights, was cast to float16 and overflowed under loss scaling (2 of the
  first 4 steps skipped on one device; under MirroredStrategy, whose LossScaleOptimizer looks
  at the first replica's gradients only, a NaN codebook). It gathers the float32 codebook.
* ``SpectralKMeansRegularizer`` on a float16 weight summed its cluster means and squared
  distances in float16: inf for a 100k-weight layer whose penalty is 5.4. Summed in float32.

Every test resets the global policy to float32, pass or fail.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import gradients, tf_backend_only, to_numpy, two_conv_model  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.training.regularizer import SpectralKMeansRegularizer  # noqa: E402


def _mlp(policy, name):
    policy(name)
    try:
        keras.utils.set_random_seed(0)
        inp = keras.Input((16,))
        h = keras.layers.Dense(16, name="d")(inp)
        return keras.Model(inp, keras.layers.Dense(1, dtype="float32", name="head")(h))
    finally:
        policy("float32")


def _tiny_loss(y, p):  # gradients ~1e-10: below float16's smallest subnormal without scaling
    return 1e-10 * keras.ops.mean(keras.ops.square(y - p))


def _codebook_step(model):
    model.compile(keras.optimizers.SGD(1e4), _tiny_loss)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 16)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    cb = model.get_layer("cluster_d").weights[0]
    before = to_numpy(cb).copy()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return float(np.abs(to_numpy(cb) - before).max())


@tf_backend_only("Keras' LossScaleOptimizer runs on TensorFlow here")
def test_clustered_copy_keeps_the_models_mixed_policy_and_its_loss_scaling(policy):
    model = _mlp(policy, "mixed_float16")  # the global policy is float32 again from here
    clustered = dkm_tf.cluster_weights(model, 4)
    assert clustered.dtype_policy.name == "mixed_float16"  # was float32
    moved = _codebook_step(clustered)
    assert type(clustered.optimizer).__name__ == "LossScaleOptimizer"
    ref = _mlp(policy, "float32")
    ref.set_weights(model.get_weights())
    moved32 = _codebook_step(dkm_tf.cluster_weights(ref, 4))
    assert moved32 > 1e-6 and abs(moved - moved32) <= 0.1 * moved32, (moved, moved32)  # was 0
    for copy in (dkm_tf.strip_clustering(clustered)[0], dkm_tf.share_weights(model, 4).model):
        assert copy.dtype_policy.name == "mixed_float16"
    policy("mixed_float16")  # and a float32 model copied under a mixed global policy
    assert dkm_tf.cluster_weights(ref, 4).dtype_policy.name == "float32"


@tf_backend_only("Keras' LossScaleOptimizer runs on TensorFlow here")
def test_kernel_clustering_keeps_the_models_mixed_policy(policy):
    policy("mixed_float16")
    model = two_conv_model()
    policy("float32")
    clustered = dkm_tf.cluster_weights(model, 4, unit="kernel", codebook="shared")
    assert clustered.dtype_policy.name == "mixed_float16"
    assert dkm_tf.strip_clustering(clustered)[0].dtype_policy.name == "mixed_float16"


@tf_backend_only("Keras' LossScaleOptimizer runs on TensorFlow here")
@pytest.mark.parametrize("kw", [{}, {"granularity": "per_channel"}, {"latent": True}])
def test_hard_clustering_under_mixed_float16_skips_no_step(policy, kw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    policy("mixed_float16")
    model = dkm_tf.cluster_weights(two_conv_model(), 4, **kw)
    policy("float32")
    wrapper = model.get_layer("cluster_conv2")
    assert wrapper.compute_dtype == "float16" and wrapper.weights[0].dtype == "float32"
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    # LossScaleOptimizer counts applied steps only: the old float16 codebook gradients
    # overflowed at the initial scale (iterations 2 of 4, scale 32768 -> 8192)
    assert int(to_numpy(model.optimizer.iterations)) == 4
    assert float(to_numpy(model.optimizer.dynamic_scale)) == 32768.0
    assert np.isfinite(history.history["loss"][0])
    plain, palettes = dkm_tf.strip_clustering(model)
    for p in palettes:  # at most K values per codebook group, equal to the palette
        kernel = to_numpy(plain.get_layer(p.layer_name).kernel).astype(np.float64)
        np.testing.assert_array_equal(kernel, np.asarray(p.decode(), np.float64))
        units = dkm_tf.to_units(kernel, p.layout)
        assert max(len(np.unique(g.astype(np.float32))) for g in units) <= 4
    np.testing.assert_allclose(np.asarray(plain(x[:8]), np.float32),
                               np.asarray(model(x[:8]), np.float32), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_regularizer_penalty_of_a_large_half_precision_weight(dtype):
    w = np.random.default_rng(0).normal(0, 3.0, (400, 256)).astype("float32")
    reg = SpectralKMeansRegularizer(4, lam=1e-4, relaxation="hard", seed=0)
    var = keras.Variable(w, dtype=dtype)
    info = reg.refresh(var)  # numpy, float64: the k-means error of the rounded weights
    penalty = float(to_numpy(keras.ops.cast(reg(var), "float32")))
    assert np.isfinite(penalty)  # float16 was inf
    eps = 2.0 ** (-10 if dtype == "float16" else -7)  # one ulp of the result, relative
    np.testing.assert_allclose(penalty, info["penalty"], rtol=eps)
    # gradient lam * (w - its cluster mean), numpy reference from the rounded weights
    wr = to_numpy(keras.ops.cast(var, "float32")).astype(np.float64).reshape(-1)
    assign = np.asarray(reg.assignment).reshape(-1)
    means = np.bincount(assign, wr) / np.maximum(np.bincount(assign), 1)
    (grad,) = gradients(lambda: keras.ops.cast(reg(var), "float32"), [var])
    np.testing.assert_allclose(np.asarray(grad, np.float64).reshape(-1),
                               1e-4 * (wr - means[assign]), rtol=0, atol=2e-6)
