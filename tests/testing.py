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


def subclassed_model():
    """A built subclassed model (one Dense layer): Keras cannot clone or trace it generically."""
    import keras

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Sub()
    m(np.zeros((1, 3), np.float32))
    return m
