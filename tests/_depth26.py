"""Helpers of the export depth tests (sessions 25-26): a chain of Dense layers, a layer whose
output depends on the batch."""

import keras


def dense_chain(x, n):
    """``x`` through ``n`` Dense(6, tanh) layers (``n`` layers with weights on the chain)."""
    for _ in range(n):
        x = keras.layers.Dense(6, activation="tanh")(x)
    return x


@keras.saving.register_keras_serializable(package="dkm_tf_tests")
class BatchMix(keras.layers.Layer):
    """x + eps * (batch mean): outputs that depend on the batch, as float reordering does."""

    def __init__(self, eps=1e-4, **kwargs):
        super().__init__(**kwargs)
        self.eps = eps

    def call(self, x):
        return x + self.eps * keras.ops.mean(x, axis=0, keepdims=True)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}
