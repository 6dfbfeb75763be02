"""Helpers of the export depth tests (sessions 25-26): a chain of Dense layers."""

import keras


def dense_chain(x, n):
    """``x`` through ``n`` Dense(6, tanh) layers (``n`` layers with weights on the chain)."""
    for _ in range(n):
        x = keras.layers.Dense(6, activation="tanh")(x)
    return x
