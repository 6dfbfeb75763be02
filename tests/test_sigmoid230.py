"""Session 30 (sigmoid2, review R3 of the sigmoid round): one-unit outputs read wrongly.

* A subclassed model whose last sublayer is itself a model (``self.net = Sequential(...)``)
  was read "linear" with certainty (:func:`output_activation` recursed into it): a hand
  sigmoid in its ``call`` was scored at threshold 0 (every sample class 1), even compiled
  with ``BinaryCrossentropy()``. So was a user subclass of ``Dense`` ending in a hand sigmoid
  (its ``.activation``). Only Keras' (and dkm_tf's) own layer classes give their activation.
* ``train_classifier``'s accuracy metric took its threshold from the probe, not from the loss
  it compiles: a subclassed logits model with outputs in [0, 1] was measured at 0.5.
* A custom sigmoid compiled with ``BinaryCrossentropy(from_logits=True)`` was scored at 0 (the
  share of class 1): no accuracy now, with a note that the loss contradicts the output.
* A subclassed logits head whose logits on the first 32 held-out inputs lie in [0, 1] got no
  accuracy: its outputs leave [0, 1] when its input is scaled, so it is read as logits.
* ``dkm-tf compress`` scores its ``.tflite`` files with ``CompressionResult.threshold``,
  which report.json now holds.
"""

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.core.loss_kind import output_activation  # noqa: E402
from dkm_tf.pipeline_metrics import binary_threshold, evaluate_accuracy  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402

L = keras.layers


@keras.saving.register_keras_serializable(package="test_sigmoid230")
class HandSigmoid2(L.Layer):
    """A sigmoid written by hand: no Sigmoid op for dkm_tf or Keras to see."""

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-t))


class NestedHead(keras.Model):
    """A subclassed head: a Sequential of one Dense(1), then a hand sigmoid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = keras.Sequential([L.Dense(1)])

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-self.net(t)))


class OuterSeq(keras.Model):
    """A subclassed model: a Sequential ending in Dense(1), then keras.ops.sigmoid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = keras.Sequential([L.Dense(8, activation="relu"), L.Dense(1)])

    def call(self, t):
        return keras.ops.sigmoid(self.net(t))


class SigDense(L.Dense):
    """A user subclass of Dense whose call ends in a hand sigmoid (its activation: linear)."""

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-super().call(t)))


class SubLogits(keras.Model):
    """A subclassed model of logits."""

    def __init__(self, hidden=0, **kwargs):
        super().__init__(**kwargs)
        self.h = L.Dense(hidden, activation="relu") if hidden else None
        self.d = L.Dense(1)

    def call(self, t):
        return self.d(self.h(t) if self.h is not None else t)


def _xy(n=96):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")


def _separate(h, o):
    """Weights for h (Dense(8) on 6 inputs) and o (Dense(1) on 8) that nearly separate the
    classes of :func:`_xy` (o reads 1.5 z through relu(z), relu(-z), z = x0 + 0.5 x1)."""
    rng = np.random.default_rng(1)
    k = rng.normal(scale=0.05, size=(6, 8)).astype("float32")
    k[:2, 0], k[:2, 1] = (1.0, 0.5), (-1.0, -0.5)
    v = rng.normal(scale=0.05, size=(8, 1)).astype("float32")
    v[:2, 0] = (1.5, -1.5)
    h.kernel.assign(k)
    o.kernel.assign(v)


def _numpy_accuracy(model, x, labels, threshold):
    p = np.asarray(model.predict(x, verbose=0), np.float64)[:, 0]
    return float(np.mean((p > threshold).astype(np.int64) == labels))


def _compress(model, test, train=None):
    x, y = _xy()
    return dkm_tf.compress(model, train or (x[:64], y[:64]), test, method="wr", n_clusters=4,
                           seed=0, verbose=0, progress=Progress(enabled=False))


def _nested_head_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = L.Dense(8, activation="relu")
    head = NestedHead()
    model = keras.Model(inp, head(h(inp)))
    _separate(h, head.net.layers[0])
    return model


def test_a_subclassed_head_of_a_nested_sequential_then_a_hand_sigmoid_is_not_linear():
    x, y = _xy()
    xt, yt = x[64:], y[64:]
    model = _nested_head_model()
    assert output_activation(model) == ""  # was "linear" (the nested Dense(1))
    assert binary_threshold(model, xt) is None  # a hand sigmoid in a model: not opened
    model.compile(loss=keras.losses.BinaryCrossentropy())
    before = _numpy_accuracy(model, xt, yt, 0.5)
    assert before > 0.8 and _numpy_accuracy(model, xt, yt, 0.0) == float(np.mean(yt == 1))
    result = _compress(model, (xt, yt))
    assert result.threshold == 0.5  # was 0.0: the share of class 1 as accuracy
    assert abs(result.accuracy_before - before) < 1e-12
    assert abs(result.accuracy_after - _numpy_accuracy(result.model, xt, yt, 0.5)) < 1e-12


def test_a_subclassed_model_of_a_sequential_then_a_sigmoid_is_scored_at_0_5():
    x, y = _xy(200)
    keras.utils.set_random_seed(0)
    model = OuterSeq()
    model(x[:2])
    _separate(model.net.layers[0], model.net.layers[1])
    assert output_activation(model) == ""  # was "linear"
    assert evaluate_accuracy(model, (x, y)) is None  # not compiled: unknown
    model.compile(loss="binary_crossentropy")
    expected = _numpy_accuracy(model, x, y, 0.5)
    assert expected > 0.8 and _numpy_accuracy(model, x, y, 0.0) == float(np.mean(y == 1))
    assert abs(evaluate_accuracy(model, (x, y)) - expected) < 1e-12  # was the share of 1


@pytest.mark.parametrize("compiled", [True, False])
def test_a_user_subclass_of_dense_ending_in_a_hand_sigmoid(compiled):
    x, y = _xy()
    xt, yt = x[64:], y[64:]
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h, o = L.Dense(8, activation="relu"), SigDense(1)
    model = keras.Model(inp, o(h(inp)))
    _separate(h, o)
    if compiled:
        model.compile(loss=keras.losses.BinaryCrossentropy())
    assert output_activation(model) == ""  # was "linear": its .activation
    assert output_activation(model, _guess=True) == "linear"
    assert binary_threshold(model, xt) == 0.5  # the loss, or the probe: a sigmoid
    expected = _numpy_accuracy(model, xt, yt, 0.5)
    assert expected > 0.8 and abs(evaluate_accuracy(model, (xt, yt)) - expected) < 1e-12


def test_keras_own_layers_still_give_their_activation():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    for act in ("sigmoid", "linear", "softmax"):
        model = keras.Model(inp, L.Dense(1 if act != "softmax" else 3, activation=act)(inp))
        assert output_activation(model) == act


def test_train_classifier_measures_accuracy_at_the_threshold_of_its_loss():
    # a subclassed logits model whose outputs on the first inputs are in [0, 1]: the metric
    # was BinaryAccuracy(0.5) while training BinaryCrossentropy(from_logits=True)
    from dkm_tf.pipeline import train_classifier

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(256, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 1.0).astype("int32")
    keras.utils.set_random_seed(0)
    model = SubLogits()
    model(x[:2])
    k = np.zeros((8, 1), "float32")
    k[:2, 0] = 0.3
    model.d.kernel.assign(k)
    model.d.bias.assign(np.full((1,), 0.1, "float32"))  # logits 0.1 .. 0.7: in [0, 1]
    logits = np.asarray(model(x), np.float64)[:, 0]
    at0, at05 = np.mean((logits > 0) == y), np.mean((logits > 0.5) == y)
    assert 0 <= logits.min() and logits.max() <= 1 and abs(at0 - at05) > 0.2
    history = train_classifier(model, (x, y), epochs=1, batch_size=256, learning_rate=1e-12)
    assert model.loss.get_config()["from_logits"] is True
    assert abs(history.history["accuracy"][0] - at0) < 1e-6  # one batch, before its step


def _hand_sigmoid_model(from_logits=None):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h, o = L.Dense(8, activation="relu"), L.Dense(1)
    model = keras.Model(inp, HandSigmoid2()(o(h(inp))))
    _separate(h, o)
    if from_logits is not None:
        model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=from_logits))
    return model


def test_a_hand_sigmoid_compiled_from_logits_gets_no_accuracy_with_a_note():
    x, y = _xy()
    xt, yt = x[64:], y[64:]
    model = _hand_sigmoid_model(from_logits=True)
    assert binary_threshold(model, xt) is None  # was 0.0: every sample class 1
    assert binary_threshold(model) == 0.0  # without inputs: the loss
    result = _compress(model, (xt, yt))
    assert result.accuracy_before is None and result.threshold is None
    assert sum("loss contradicts its output" in n for n in result.notes) == 1
    assert _compress(_hand_sigmoid_model(from_logits=False), (xt, yt)).threshold == 0.5


def test_a_subclassed_logits_head_with_logits_in_0_1_on_the_first_inputs_is_read():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(96, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 1.0).astype("int32")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    head = SubLogits()
    model = keras.Model(inp, head(inp))
    k = np.zeros((8, 1), "float32")
    k[:2, 0] = 0.3
    head.d.kernel.assign(k)
    xt, yt = x[64:], y[64:]
    head.d.bias.assign(np.full((1,), 0.05, "float32"))  # logits 0.05 .. 0.65: in [0, 1]
    lo = np.asarray(model(xt[:32]), np.float64)
    assert 0 <= lo.min() and lo.max() <= 1
    result = _compress(model, (xt, yt), train=(x[:64], y[:64]))
    assert result.threshold == 0.0  # was None: no accuracy
    assert abs(result.accuracy_before - _numpy_accuracy(model, xt, yt, 0.0)) < 1e-12


def test_an_opaque_head_note_names_the_first_32_held_out_inputs():
    x, y = _xy()
    model = _nested_head_model()  # not compiled: a hand sigmoid in a model, not opened
    result = _compress(model, (x[64:], y[64:]))
    assert result.accuracy_before is None
    assert any(n.startswith("no test accuracy") and "first 32 held-out inputs" in n
               for n in result.notes)


def test_the_cli_scores_the_tflite_file_of_an_uncompiled_hand_sigmoid(tmp_path):
    from dkm_tf import cli

    x, y = _xy()
    npz = str(tmp_path / "d.npz")
    np.savez(npz, x_train=x[:64], y_train=y[:64], x_test=x[64:], y_test=y[64:])
    path = str(tmp_path / "m.keras")
    _hand_sigmoid_model().save(path)
    out = tmp_path / "out"
    result = cli.run_compress(path, dataset=npz, output_dir=str(out), tflite=True,
                              plots=False, quiet=True, method="wr", n_clusters=4, seed=0,
                              progress=Progress(enabled=False))
    assert result.threshold == 0.5
    report = json.loads((out / "report.json").read_text())
    assert report["threshold"] == 0.5
    expected = _numpy_accuracy(result.model, x[64:], y[64:], 0.5)
    scored = {k: v.get("test_accuracy") for k, v in report["tflite"].items()}
    assert scored and all(v is not None for v in scored.values())  # were None: no threshold
    float_label = next(k for k in scored if "float" in k or "fp32" in k)
    assert abs(scored[float_label] - expected) <= 1 / 32 + 1e-12  # one sample at most


def test_to_dict_holds_the_threshold():
    x, y = _xy()
    result = _compress(_hand_sigmoid_model(from_logits=False), (x[64:], y[64:]))
    assert result.to_dict()["threshold"] == 0.5
    assert json.loads(json.dumps(result.to_dict()))["threshold"] == 0.5
