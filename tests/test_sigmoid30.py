"""Session 30 (sigmoid): one-unit models whose sigmoid is not a Keras op.

* A one-unit custom last layer read as a sigmoid by the probe
  (:func:`dkm_tf.training.probabilities.read_activation`) trained with ``from_logits=False``,
  but ``compress`` reported no accuracy for it ("the model's output is not one row of class
  scores per sample"; with ``test_data=(x, None)`` no agreement): the threshold was read only
  from the op that made the output. It is read as training reads it now: the probe (0.5), or
  the binary cross-entropy the model is compiled with (its ``from_logits``: 0 or 0.5).
* A subclassed ``keras.Model`` as the last layer whose ``call`` ends in a hand sigmoid was read
  as "linear" (its last sublayer's activation): trained as logits with no note, and scored
  with the threshold 0 of a logit (every sample class 1: the share of class 1 as accuracy).
  Its last sublayer's "linear" is a guess now: the probe reads it (a model of weighted
  sublayers cannot be opened: logits, noted, and no accuracy unless it is compiled).
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.pipeline_metrics import LOGITS_NOTE, binary_threshold  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402

L = keras.layers
SIGMOID_NOTE = ("trained with the cross-entropy from_logits=False: the model's last layer is "
                "not one")
OPAQUE_NOTE = ("trained with the cross-entropy from_logits=True: the model's last layer is a "
               "custom layer of sublayers with weights")
UNIT_NOTE = "no test accuracy: the model's one output unit is read neither as a probability"


@keras.saving.register_keras_serializable(package="test_sigmoid30")
class HandSigmoid(L.Layer):
    """A sigmoid written by hand: no Sigmoid op for dkm_tf or Keras to see."""

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-t))


@keras.saving.register_keras_serializable(package="test_sigmoid30")
class Twice(L.Layer):
    """Logits of a custom layer (2 t): they leave [0, 1], so the probe reads no sigmoid."""

    def call(self, t):
        return 2.0 * t


@keras.saving.register_keras_serializable(package="test_sigmoid30")
class SubSigmoid(keras.Model):
    """A subclassed model ending in a hand sigmoid over its Dense(1) sublayer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(1)

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-self.d(t)))


@keras.saving.register_keras_serializable(package="test_sigmoid30")
class SubLogits(keras.Model):
    """A subclassed model of logits: its Dense(1) sublayer's output as it is."""

    def __init__(self, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(1, activation=activation)

    def call(self, t):
        return self.d(t)


def _xy(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")


def _model(last):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    return keras.Model(inp, last(L.Dense(8, activation="relu", name="h")(inp)))


def _separating(model):
    """``model`` with weights that nearly separate the classes of :func:`_xy` (its Dense "o"
    reads 1.5 z, z = x0 + 0.5 x1, through relu(z) and relu(-z)), plus noise: its accuracy is
    high at the right threshold and the share of a class at the wrong one."""
    rng = np.random.default_rng(1)
    h = rng.normal(scale=0.05, size=(6, 8)).astype("float32")
    h[:2, 0], h[:2, 1] = (1.0, 0.5), (-1.0, -0.5)
    o = rng.normal(scale=0.05, size=(8, 1)).astype("float32")
    o[:2, 0] = (1.5, -1.5)
    model.get_layer("h").kernel.assign(h)
    model.get_layer("o").kernel.assign(o)
    return model


LASTS = {"hand": lambda t: HandSigmoid(name="p")(L.Dense(1, name="o")(t)),
         "keras_ops_chain": lambda t: 1.0 / (1.0 + keras.ops.exp(-L.Dense(1, name="o")(t))),
         "hand_then_dropout": lambda t: L.Dropout(0.5)(HandSigmoid()(L.Dense(1, name="o")(t)))}


def _compress(model, test, method="wr", train=None):
    x, y = _xy()
    return dkm_tf.compress(model, train or (x[:64], y[:64]), test, method=method, n_clusters=4,
                           finetune_epochs=1, seed=0, verbose=0,
                           progress=Progress(enabled=False))


def _numpy_accuracy(model, x, labels, threshold):
    p = np.asarray(model.predict(x, verbose=0), np.float64)[:, 0]
    return float(np.mean((p > threshold).astype(np.int64) == labels))


@pytest.mark.parametrize("last", list(LASTS.values()), ids=list(LASTS))
def test_compress_reports_the_accuracy_of_a_one_unit_custom_sigmoid(last):
    x, y = _xy()
    xt, yt = x[64:], y[64:]
    model = _separating(_model(last))
    before = _numpy_accuracy(model, xt, yt, 0.5)
    assert before > 0.8 and _numpy_accuracy(model, xt, yt, 0.0) == float(np.mean(yt == 1))
    result = _compress(model, (xt, yt))
    assert result.accuracy_before is not None  # was None: "not one row of class scores"
    assert abs(result.accuracy_before - before) < 1e-12
    assert abs(result.accuracy_after - _numpy_accuracy(result.model, xt, yt, 0.5)) < 1e-12
    assert result.threshold == 0.5 and not any(n.startswith("no test") for n in result.notes)
    assert binary_threshold(model, xt) == 0.5 and binary_threshold(model) is None  # no x


def test_compress_measures_the_agreement_of_a_custom_sigmoid_without_labels():
    x, _ = _xy()
    xt = x[64:]
    model = _separating(_model(LASTS["hand"]))
    result = _compress(model, (xt, None))
    assert result.metric == "agreement with the float model"
    p0 = np.asarray(model.predict(xt, verbose=0))[:, 0] > 0.5
    p1 = np.asarray(result.model.predict(xt, verbose=0))[:, 0] > 0.5
    assert result.accuracy_before == 1.0
    assert abs(result.accuracy_after - float(np.mean(p0 == p1))) < 1e-12
    assert not any(n.startswith((LOGITS_NOTE, "no agreement")) for n in result.notes)


def test_the_threshold_is_the_one_finetune_trained_with():
    x, y = _xy()
    xt, yt = x[64:], y[64:]
    result = _compress(_separating(_model(LASTS["hand"])), (xt, yt), method="finetune")
    loss = result.model.loss
    assert loss.get_config()["from_logits"] is False  # trained as probabilities
    assert sum(n.startswith(SIGMOID_NOTE) for n in result.notes) == 1
    assert abs(result.accuracy_after - _numpy_accuracy(result.model, xt, yt, 0.5)) < 1e-12


@pytest.mark.parametrize("from_logits", [True, False])
def test_a_compiled_binary_cross_entropy_gives_the_threshold(from_logits):
    # a custom last layer the probe cannot read (logits of 2 t leave [0, 1]; a subclassed
    # model of a hand sigmoid cannot be opened): its compiled loss says what it outputs
    x, y = _xy()
    xt, yt = x[64:], y[64:]
    last = (lambda t: Twice()(L.Dense(1)(t))) if from_logits else (lambda t: SubSigmoid()(t))
    model = _model(last)
    assert _compress(model, (xt, yt)).accuracy_before is None  # not read: no accuracy
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=from_logits))
    threshold = 0.0 if from_logits else 0.5
    result = _compress(model, (xt, yt))
    assert result.accuracy_before is not None  # was None: the loss was not read
    assert abs(result.accuracy_before - _numpy_accuracy(model, xt, yt, threshold)) < 1e-12
    assert abs(result.accuracy_after - _numpy_accuracy(result.model, xt, yt, threshold)) < 1e-12
    assert binary_threshold(model, xt) == threshold and binary_threshold(model) == threshold


@pytest.mark.parametrize("loss", ["binary_crossentropy", keras.losses.binary_crossentropy],
                         ids=["name", "function"])
def test_a_binary_cross_entropy_by_name_or_function_reads_probabilities(loss):
    x, _ = _xy()
    model = _model(lambda t: SubSigmoid()(t))
    model.compile(loss=loss)
    assert binary_threshold(model, x) == 0.5


def test_a_subclassed_last_layer_ending_in_a_hand_sigmoid_is_not_read_as_logits():
    from dkm_tf.core.loss_kind import output_activation
    from dkm_tf.training.common import default_loss
    from dkm_tf.training.compile_settings import probabilities_note

    x, y = _xy()
    xt, yt = x[64:], y[64:]
    model = _model(lambda t: SubSigmoid()(t))
    p = np.asarray(model(xt), np.float64)
    assert 0 < p.min() and p.max() < 1
    assert output_activation(model) == ""  # was "linear": its Dense sublayer's
    assert binary_threshold(model, xt) is None  # was 0.0: every sample class 1
    assert default_loss(model, x=x).get_config()["from_logits"] is True  # cannot be opened
    note = probabilities_note(model, (x, y))  # was None: trained as logits silently
    assert note.startswith(OPAQUE_NOTE) and note.endswith("BinaryCrossentropy()"), note
    result = _compress(model, (xt, yt))
    assert result.accuracy_before is None  # was the share of class 1 (threshold 0)
    assert _numpy_accuracy(model, xt, yt, 0.0) == float(np.mean(yt == 1))  # what it gave
    assert sum(n.startswith(UNIT_NOTE) for n in result.notes) == 1, result.notes


def test_a_subclassed_last_layer_of_logits_keeps_threshold_0():
    from dkm_tf.core.loss_kind import output_activation
    from dkm_tf.training.common import default_loss
    from dkm_tf.training.compile_settings import probabilities_note

    x, y = _xy()
    xt, yt = x[64:], y[64:]
    model = _model(lambda t: SubLogits()(t))
    p = np.asarray(model(x[:32]), np.float64)
    assert p.min() < 0 or p.max() > 1  # logits: the probe reads no sigmoid
    assert output_activation(model) == "" and output_activation(model, _guess=True) == "linear"
    assert binary_threshold(model, xt) == 0.0 and binary_threshold(model) == 0.0
    assert default_loss(model, x=x).get_config()["from_logits"] is True
    assert probabilities_note(model, (x, y)) is None
    result = _compress(model, (xt, yt))
    assert abs(result.accuracy_before - _numpy_accuracy(model, xt, yt, 0.0)) < 1e-12


def test_a_subclassed_last_layer_of_a_keras_sigmoid_is_still_read():
    from dkm_tf.training.common import default_loss

    x, _ = _xy()
    model = _model(lambda t: SubLogits(activation="sigmoid")(t))
    assert binary_threshold(model) == 0.5
    assert default_loss(model).get_config()["from_logits"] is False


class _SmallDense(L.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 1), initializer="ones")
        self.b = self.add_weight(shape=(1,), initializer="zeros")

    def call(self, t):
        return keras.ops.matmul(t, self.w) * 0.01 + 0.5 + self.b


def test_a_custom_dense_of_logits_after_a_keras_sigmoid_gets_no_threshold():
    # logits in [0, 1] on the data: the probe scales the custom layer's own input and reads
    # no sigmoid; its training takes them as logits, so no 0.5 is made up for them
    x, _ = _xy()
    model = _model(lambda t: _SmallDense()(L.Activation("sigmoid")(L.Dense(4)(t))))
    p = np.asarray(model(x[:32]), np.float64)
    assert 0 < p.min() and p.max() < 1
    assert binary_threshold(model, x) is None


def test_the_cli_reports_the_accuracy_of_a_hand_sigmoid_file(tmp_path):
    from dkm_tf import cli

    x, y = _xy()
    npz = str(tmp_path / "d.npz")
    np.savez(npz, x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    path = str(tmp_path / "m.keras")
    model = _separating(_model(LASTS["hand"]))
    model.save(path)
    result = cli.run_compress(path, dataset=npz, output_dir=str(tmp_path / "out"),
                              tflite=False, plots=False, quiet=True, method="wr",
                              n_clusters=4, seed=0, progress=Progress(enabled=False))
    assert abs(result.accuracy_before - _numpy_accuracy(model, x[64:], y[64:], 0.5)) < 1e-12
    assert result.threshold == 0.5


@keras.saving.register_keras_serializable(package="test_sigmoid30")
class SubSoftmax(keras.Model):
    """A subclassed model ending in ops.softmax over its Dense(3) sublayer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(3)

    def call(self, t):
        return keras.ops.softmax(self.d(t))


def test_a_subclassed_last_layer_ending_in_a_softmax_trains_as_probabilities():
    # its Dense(3) sublayer's "linear" trained the softmax rows through a second softmax
    from dkm_tf.training.common import default_loss

    x, _ = _xy()
    model = _model(lambda t: SubSoftmax()(t))
    assert default_loss(model, x=x).get_config()["from_logits"] is False  # was True
    assert default_loss(model).get_config()["from_logits"] is True  # not read without x


@pytest.mark.parametrize("kind", ["sigmoid", "logits"])
def test_a_subclassed_model_is_scored_by_what_its_call_gives(kind):
    # a subclassed model itself (not as a layer): its last sublayer's "linear" scored a hand
    # sigmoid at threshold 0 (the share of class 1); logits keep it
    from dkm_tf.pipeline_metrics import evaluate_accuracy

    x, y = _xy()
    keras.utils.set_random_seed(0)
    model = SubSigmoid() if kind == "sigmoid" else SubLogits()
    model(x[:2])
    if kind == "logits":
        assert evaluate_accuracy(model, (x, y)) == _numpy_accuracy(model, x, y, 0.0)
        return
    assert evaluate_accuracy(model, (x, y)) is None  # was the share of class 1
    model.compile(loss=keras.losses.BinaryCrossentropy())
    assert evaluate_accuracy(model, (x, y)) == _numpy_accuracy(model, x, y, 0.5)
