"""The k-means regularizer on half-precision layers, and the wrapper's LoRA message.

Measured before 2026-12-05: ``attach_regularizer`` on a ``dtype="bfloat16"`` (or
``"float16"``) Dense attached, then ``fit`` failed at its first step ("Cannot convert a list
containing a tensor of dtype bfloat16 to float32"): the penalty was returned in the weight's
dtype and Keras sums the model's losses in float32 (Keras' own ``"l2"`` fails the same way).
"""

import keras
import numpy as np
import pytest

import dkm_tf


def _model(dtype):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, dtype=dtype, name="fc1"),
                             keras.layers.Dense(3, name="fc2")])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_regularizer_on_a_half_precision_layer_trains_and_logs_the_numpy_penalty(dtype):
    model = _model(dtype)
    dkm_tf.attach_regularizer(model, n_clusters=2, lam=0.5, include_dense=True)
    reg = model.get_layer("fc1").kernel_regularizer
    w = np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(model.get_layer("fc1").kernel, "float32")), np.float64)
    penalty = float(keras.ops.convert_to_numpy(reg(model.get_layer("fc1").kernel)))
    # numpy reference: 0.5 * lam * ||W - nearest centroid||^2 after the 1-D k-means of w
    flat = np.sort(w.ravel())
    best = min(((flat[:i] - flat[:i].mean()) ** 2).sum() + ((flat[i:] - flat[i:].mean()) ** 2).sum()
               for i in range(1, flat.size))
    assert penalty == pytest.approx(0.25 * best, rel=2e-2)  # half-precision kernel values
    model.compile(keras.optimizers.SGD(0.01), "mse")
    rng = np.random.default_rng(0)
    hist = model.fit(rng.normal(size=(16, 6)).astype("float32"),
                     rng.normal(size=(16, 3)).astype("float32"), epochs=2, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))
    assert all(keras.backend.standardize_dtype(loss.dtype) == "float32" for loss in model.losses)


def test_wrapping_a_lora_layer_directly_names_the_ways_that_work():
    layer = keras.layers.Dense(4, name="fc")
    layer.build((None, 3))
    layer.enable_lora(2)
    with pytest.raises(ValueError, match=r"'fc'.*LoRA is enabled.*cluster_weights\(model\) "
                                         r"merges it.*merge_lora"):
        dkm_tf.ClusterWeights(layer, n_clusters=2)  # eagerly: the layer is built
