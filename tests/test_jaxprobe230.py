"""Session 30 (jaxprobe2): a ``StopIteration`` of the user's own is not taken for data of no
batch.

``training.batches.fit_counted`` (``finetune``, ``dkm_retrain``, ``pipeline.train_classifier``)
caught any ``StopIteration`` raised before the first epoch, on every backend, as Keras' JAX
``fit`` reading data of no batch to build: a bug in a callback (``next(iter(()))`` in
``on_train_begin``) was swallowed on TensorFlow, the call returning a history of no logs and
the warning "trained no batch ... the training data gave none" for data of 64 rows. It is
caught now on JAX only, and only before ``on_train_begin`` (Keras' read to build); a callback's
goes through on both backends (the JAX side: tests/test_jaxprobe30.py,
``test_a_callbacks_stop_iteration_goes_through_on_jax``).
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf import pipeline  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the TensorFlow side; JAX: tests/test_jaxprobe30.py")
L = keras.layers


class Bad(keras.callbacks.Callback):
    """A callback with a bug: a ``StopIteration`` out of ``on_train_begin``."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def on_train_begin(self, logs=None):
        self.calls += 1
        next(iter(()))


def _xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(2, name="o")(L.Dense(8, activation="relu", name="h")(inp)))


def test_train_classifier_lets_a_callbacks_stop_iteration_through():
    bad = Bad()
    with pytest.raises(StopIteration):  # was: {} returned, "trained no batch" warned
        pipeline.train_classifier(_model(), _xy(), epochs=2, batch_size=16, callbacks=[bad])
    assert bad.calls == 1


def test_finetune_lets_a_callbacks_stop_iteration_through():
    with pytest.raises(StopIteration):
        dkm_tf.finetune(_model(), _xy(), n_clusters=4, epochs=2, batch_size=16, seed=0,
                        callbacks=[Bad()])


def test_dkm_retrain_lets_a_callbacks_stop_iteration_through():
    with pytest.raises(StopIteration):
        dkm_tf.dkm_retrain(_model(), _xy(), n_clusters=4, epochs=2, batch_size=16, seed=0,
                           callbacks=[Bad()])
