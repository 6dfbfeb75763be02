"""Shared test helpers."""

import numpy as np


def assert_all_close(actual, desired, atol=1e-6, rtol=1e-6, msg=""):
    """``np.testing.assert_allclose`` that accepts tensors."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), atol=atol, rtol=rtol,
                               err_msg=msg)


def small_cnn(seed=0, input_shape=(8, 8, 1)):
    """A tiny conv + dense classifier with a BatchNormalization layer (not clusterable)."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        L.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        L.BatchNormalization(name="bn"),
        L.DepthwiseConv2D(3, padding="same", name="dw"),
        L.Flatten(name="flat"),
        L.Dense(10, name="out"),
    ], name="small_cnn")
