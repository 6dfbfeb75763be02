"""Tests of dkm_retrain: it trains a copy with the penalty and hands back a plain model."""

import keras
import numpy as np
import pytest

from dkm_tf.training import attach
from dkm_tf.training.retrain import dkm_retrain
from tests.testing import small_cnn


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n)


def test_retrain_copies_trains_and_detaches():
    x, y = _data()
    model = small_cnn()
    l2 = keras.regularizers.L2(1e-3)
    model.get_layer("c1").kernel.regularizer = l2
    model.get_layer("c1").kernel_regularizer = l2  # so that the clone has it too
    before = [w.copy() for w in model.get_weights()]
    out, hist = dkm_retrain(model, (x, y), (x[:32], y[:32]), n_clusters=4, lam=1e-2,
                            epochs=2, learning_rate=1e-3, batch_size=32, refresh_every=1,
                            sparsity={"c1": 0.25})
    assert out is not model
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the input model is untouched
    assert model.get_layer("c1").kernel.regularizer is l2
    assert not attach.kmeans_regularizers(out)
    assert out.get_layer("c1").kernel.regularizer is not None  # the existing L2 is kept
    assert out.get_layer("dw").depthwise_regularizer is None
    assert len(hist.history["kmeans_penalty"]) == 2
    assert "val_kmeans_penalty" in hist.history and "accuracy" in hist.history
    changed = [not np.array_equal(a, b) for a, b in zip(before, out.get_weights())]
    assert any(changed)


def test_retrain_keeps_compiled_loss_and_checks_arguments():
    x, y = _data(48)
    model = small_cnn()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseTopKCategoricalAccuracy(3, name="top3")])
    out, hist = dkm_retrain(model, (x, y), n_clusters={"c1": 2}, relaxation="spectral",
                            epochs=1, batch_size=16, include_dense=False)
    assert "top3" in hist.history and "kmeans_penalty" in hist.history
    with pytest.raises(ValueError, match=r"`epochs`.*Received: epochs=0"):
        dkm_retrain(model, (x, y), n_clusters=2, epochs=0)
    with pytest.raises(ValueError, match=r"`train_data`"):
        dkm_retrain(model, (x, y, y), n_clusters=2, epochs=1)


def test_retrain_takes_a_schedule_and_explains_subclassed_models():
    from tests.testing import subclassed_model

    x, y = _data(48)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=3)
    out, hist = dkm_retrain(small_cnn(), (x, y), n_clusters=4, epochs=1, batch_size=16,
                            learning_rate=schedule)
    assert len(hist.history["loss"]) == 1 and out is not None
    with pytest.raises(ValueError, match="`learning_rate`.*LearningRateSchedule"):
        dkm_retrain(small_cnn(), (x, y), n_clusters=4, learning_rate=-1.0)
    with pytest.raises(TypeError, match="subclassed model"):
        dkm_retrain(subclassed_model(), (x, y), n_clusters=4, epochs=1)
