"""A user subclass of a Keras layer with a softmax / sigmoid activation is read as one (h30).

The sigmoid2 round stopped reading ``.activation`` from user layer classes (a ``Dense``
subclass whose ``call`` ends in a hand sigmoid reads "linear"), for every activation: a
classifier ending in ``MyDense(3, activation="softmax")`` compiled with ``"mse"`` then lost its
accuracy (read as a regressor), was refused as a distillation teacher when compiled with
``"binary_crossentropy"``, and trained through a second softmax (``from_logits=True``) where
its data could not be read (review R11). Only a "linear" reading is doubted now.
"""

import keras
import numpy as np

import dkm_tf
from dkm_tf.core.loss_kind import non_class_loss, output_activation
from dkm_tf.training.common import default_loss
from dkm_tf.training.distill import _check_teacher


class MyDense(keras.layers.Dense):
    pass


def _model(units=3, activation="softmax", loss=None):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          MyDense(units, activation=activation)])
    if loss is not None:
        m.compile(loss=loss)
    return m


def test_a_user_dense_subclass_keeps_its_softmax_and_sigmoid():
    assert output_activation(_model()) == "softmax"
    assert output_activation(_model(1, "sigmoid")) == "sigmoid"
    assert output_activation(_model(1, None)) == ""  # linear: its call may hide a sigmoid


def test_a_softmax_subclass_compiled_with_mse_or_bce_is_a_classifier():
    assert non_class_loss(_model(loss="mse")) is None
    assert non_class_loss(_model(loss="binary_crossentropy")) is None


def test_a_softmax_subclass_is_accepted_as_a_teacher():
    _check_teacher(_model(loss="binary_crossentropy"))  # refused before: a multi-label model


def test_a_softmax_subclass_trains_on_probabilities_without_data():
    assert default_loss(_model()).get_config()["from_logits"] is False
    assert default_loss(_model(1, "sigmoid")).get_config()["from_logits"] is False


def test_compress_reports_the_accuracy_of_a_softmax_subclass_compiled_with_mse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    m = _model(loss="mse")
    y = np.argmax(m.predict(x, verbose=0), axis=1)  # its own predictions: 100 % before
    result = dkm_tf.compress(m, None, (x, y), method="wr", n_clusters=4)
    assert result.accuracy_before == 1.0
    after = np.argmax(result.model.predict(x, verbose=0), axis=1)
    assert abs(result.accuracy_after - float(np.mean(after == y))) < 1e-9
