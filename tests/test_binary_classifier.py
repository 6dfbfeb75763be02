"""A binary classifier with one output unit (sigmoid or logit): accuracy, training, export.

The arg-max of one column is always 0, so its accuracy used to be the share of label 0
(63 % for a model that scores 93 %), and the training methods failed inside TensorFlow
(sparse categorical cross-entropy with one class).
"""

import keras
import numpy as np
import pytest
from testing import tf_backend_only

import dkm_tf
from dkm_tf import pipeline

_TRAINED = {}  # (activation, seed): the trained weights; each model is trained once


def _binary(activation, seed=0):
    """A fresh compiled model (its own copy) with the weights of 40 epochs of Adam."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(500, 12)).astype(np.float32)
    y = (x @ rng.normal(size=12) > 1.0).astype(np.int64)  # about a third ones
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1, activation=activation)])
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=activation is None))
    if (activation, seed) not in _TRAINED:
        model.fit(x[:400], y[:400], epochs=40, verbose=0)
        _TRAINED[activation, seed] = model.get_weights()
    model.set_weights(_TRAINED[activation, seed])
    return model, (x[:400], y[:400]), (x[400:], y[400:])


@pytest.mark.parametrize("activation, threshold", [("sigmoid", 0.5), (None, 0.0)])
def test_accuracy_counts_the_score_against_its_threshold(activation, threshold):
    model, _, test = _binary(activation)
    scores = model.predict(test[0], verbose=0)[:, 0]
    want = float(np.mean((scores > threshold) == test[1]))
    assert want > max(np.mean(test[1] == 0), np.mean(test[1] == 1)) + 0.05  # it learned
    assert pipeline.evaluate_accuracy(model, test) == want
    np.testing.assert_array_equal(pipeline.float_predictions(model, test[0]),
                                  (scores > threshold).astype(np.int32))


def test_other_one_unit_outputs_get_no_accuracy():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="relu")])
    x = np.ones((4, 3), np.float32)
    assert pipeline.evaluate_accuracy(model, (x, np.zeros(4, int))) is None
    assert pipeline.float_predictions(model, x) is None


def test_labels_other_than_0_and_1_are_refused_before_any_work():
    model, train, test = _binary("sigmoid")
    with pytest.raises(ValueError, match=r"test_data.*labels 0 and 1.*from 0 to 2"):
        dkm_tf.compress(model, train, (test[0], np.where(test[1] == 1, 2, 0)), method="wr")


@pytest.mark.parametrize("activation", ["sigmoid", None])
def test_finetune_trains_with_binary_cross_entropy(activation):
    model, train, test = _binary(activation)
    model.compiled = False  # as loaded by dkm-tf compress (compile=False): the default loss
    result = dkm_tf.compress(model, train, test, method="finetune", n_clusters=4,
                             finetune_epochs=2, verbose=0)
    scores = result.model.predict(test[0], verbose=0)[:, 0]
    threshold = 0.5 if activation else 0.0
    assert result.accuracy_after == float(np.mean((scores > threshold) == test[1]))
    assert result.accuracy_after > np.mean(test[1] == 0) + 0.1  # not "always 0"


@tf_backend_only()
def test_tflite_accuracy_of_a_binary_file(tmp_path):
    model, _, test = _binary("sigmoid")
    path = str(tmp_path / "b.tflite")
    dkm_tf.export.to_tflite(model, path, format="float", sample_inputs=test[0][:4])
    keras_acc = pipeline.evaluate_accuracy(model, test)
    got = pipeline.tflite_accuracy(path, test, batch_size=7, threshold=0.5)
    assert abs(got - keras_acc) <= 1 / len(test[1])
    assert pipeline.tflite_accuracy(path, test) is None  # no threshold: no class
