"""Session 29 (trainfix): training stages that trained no batch are noted.

A ``tf.data.Dataset.from_generator`` over a one-shot Python generator is used up by the first
pass over it: ``compress(method="dkm+finetune")`` trained its DKM stage on it (epoch 1 only:
4 batches, then 0 in epoch 2) and its fine-tune stage on no batch, with no note (only Keras'
"Your input ran out of data", which Keras gives at the normal end of any dataset of unknown
length too). Each epoch's batches are counted now: an epoch of none is a ``compress`` note, and
a ``UserWarning`` of ``finetune`` / ``dkm_retrain`` called alone. A generator FUNCTION (a new
generator each call) trains every epoch, with no note.
"""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf import pipeline  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402
from dkm_tf.training.batches import ran_out_note  # noqa: E402

L = keras.layers
RAN_OUT = "ignore:Your input ran out of data:UserWarning"  # Keras', at any end of a generator
SIG = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int32))


def _xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def _batches(x, y):
    return ((x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16))  # 4 batches


def _one_shot():
    gen = _batches(*_xy())  # made once: the second pass over the dataset gets nothing
    return tf.data.Dataset.from_generator(lambda: gen, output_signature=SIG)


def _fresh():
    return tf.data.Dataset.from_generator(lambda: _batches(*_xy()), output_signature=SIG)


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(2, name="o")(L.Dense(8, activation="relu", name="h")(inp)))


class _Count(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.n = []

    def on_epoch_begin(self, epoch, logs=None):
        self.n.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.n[-1] += 1


def _compress(data, monkeypatch):
    count, fit = _Count(), keras.Model.fit  # compress takes no callbacks: counted in fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, callbacks=None, **k: fit(
        self, *a, callbacks=[*(callbacks or []), count], **k))
    result = dkm_tf.compress(_model(), data, method="dkm+finetune", n_clusters=4, dkm_epochs=2,
                             finetune_epochs=2, seed=0, verbose=0,
                             progress=Progress(enabled=False))
    return result, count.n


@pytest.mark.filterwarnings(RAN_OUT)
def test_compress_notes_the_stages_a_one_shot_generator_left_without_batches(monkeypatch):
    result, counts = _compress(_one_shot(), monkeypatch)
    assert counts == [4, 0, 0, 0]  # DKM: 4 then 0; fine-tune: 0 and 0 (as before the fix)
    said = [n for n in result.notes if "one-shot Python generator" in n]
    assert len(said) == 2
    assert said[0].startswith("dkm_retrain trained 4 batch(es) in 1 of its 2 epochs and none "
                              "in epoch(s) 2: the training data ran out")
    assert said[1].startswith("finetune trained no batch in its 2 epoch(s)")
    assert "from_generator(lambda: gen(...))" in said[1]
    assert len(result.palettes) == 2  # the work is kept: still clustered (K <= 4)
    assert all(len(np.unique(w)) <= 4 for w in (
        result.model.get_layer("h").kernel.numpy(), result.model.get_layer("o").kernel.numpy()))


@pytest.mark.filterwarnings(RAN_OUT)
def test_a_generator_function_trains_every_epoch_of_both_stages_without_a_note(monkeypatch):
    result, counts = _compress(_fresh(), monkeypatch)
    assert counts == [4, 4, 4, 4]
    assert not [n for n in result.notes if "generator" in n]


@pytest.mark.filterwarnings(RAN_OUT)
@pytest.mark.parametrize("train", ["finetune", "dkm_retrain"])
def test_the_training_functions_warn_of_epochs_without_a_batch(train):
    kw = {"n_clusters": 4, "epochs": 3, "seed": 0}
    call = getattr(dkm_tf, train)
    with pytest.warns(UserWarning, match=rf"^{train} trained 4 batch\(es\) in 1 of its 3 "
                      r"epochs and none in epoch\(s\) 2-3: the training data ran out"):
        call(_model(), _one_shot(), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "Your input ran out of data", UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        call(_model(), _fresh(), **kw)  # a generator function: no warning
        x, y = _xy()
        call(_model(), (x, y), **kw)  # arrays: none


@pytest.mark.filterwarnings(RAN_OUT)
def test_train_classifier_warns_of_epochs_without_a_batch():
    with pytest.warns(UserWarning, match=r"^train_classifier trained 4 batch\(es\) in 1 of "
                      r"its 2 epochs and none in epoch\(s\) 2: the training data ran out"):
        pipeline.train_classifier(_model(), _one_shot(), epochs=2)


def test_the_note_names_the_empty_epochs():
    assert ran_out_note("finetune", [4, 4]) is None
    assert ran_out_note("finetune", []) is None
    assert "in 2 of its 5 epochs and none in epoch(s) 2-3, 5:" in ran_out_note(
        "x", [3, 0, 0, 2, 0])
    assert ran_out_note("x", [0]).startswith("x trained no batch in its 1 epoch(s)")


# -- a one-unit custom sigmoid ------------------------------------------------------------
# A hand-written 1 / (1 + exp(-x)) last layer of one unit trained as logits (binary
# cross-entropy from_logits=True on probabilities: the loss of sigmoid(p), silently). Its
# outputs are read now: in [0, 1] on the first training inputs AND in [0, 1] (and moving) when
# the last layer's input (before weightless one-input ops: a keras.ops chain) is scaled by
# -100..100 is a sigmoid; logits that happen to lie in
# [0, 1] on the sample leave it once scaled (or are a known Keras layer: not read at all).

SIGMOID_NOTE = ("trained with the cross-entropy from_logits=False: the model's last layer is "
                "not one")


@keras.saving.register_keras_serializable(package="test_trainfix29")
class HandSigmoid(L.Layer):
    """A sigmoid written by hand: no Sigmoid op, so neither dkm_tf nor Keras can see it."""

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-t))


@keras.saving.register_keras_serializable(package="test_trainfix29")
class Shift(L.Layer):
    """Logits that happen to lie in [0, 1] on the data (0.5 + t / 100)."""

    def call(self, t):
        return 0.5 + 0.01 * t


@keras.saving.register_keras_serializable(package="test_trainfix29")
class SmallDense(L.Layer):
    """A custom Dense(1) of logits with its own (small) weights: outputs in [0, 1] here."""

    def build(self, shape):
        constant = keras.initializers.Constant  # (assign() in build is lost in a sublayer)
        self.w = self.add_weight(shape=(shape[-1], 1), initializer=constant(0.01))
        self.b = self.add_weight(shape=(1,), initializer=constant(0.5))

    def call(self, t):
        return keras.ops.matmul(t, self.w) + self.b


def _unit_model(last=None, activation=None):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    out = L.Dense(1, activation=activation, name="o")(L.Dense(8, activation="relu",
                                                              name="h")(inp))
    return keras.Model(inp, last(out) if last is not None else out)


def _bce(p, y):
    p = np.asarray(p, np.float64).reshape(-1)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


@pytest.mark.parametrize("last", [lambda t: HandSigmoid(name="p")(t),
                                  lambda t: L.Dropout(0.5)(HandSigmoid(name="p")(t)),
                                  lambda t: 1.0 / (1.0 + keras.ops.exp(-t))],
                         ids=["hand", "hand_then_dropout", "keras_ops_chain"])
def test_a_hand_written_sigmoid_unit_trains_as_probabilities_with_a_note(last):
    x, y = _xy()
    p = np.asarray(_unit_model(last)(x[:32]))
    assert 0 < p.min() and p.max() < 1  # the read is not trivial: values inside (0, 1)
    result = dkm_tf.compress(_unit_model(last), (x, y), (x, y), method="finetune",
                             n_clusters=4, finetune_epochs=1, seed=0, verbose=0,
                             progress=Progress(enabled=False))
    loss = result.model.loss
    assert isinstance(loss, keras.losses.BinaryCrossentropy)
    assert loss.get_config()["from_logits"] is False  # was True: sigmoid(p) trained
    q = np.asarray(result.model(x), np.float64)
    np.testing.assert_allclose(float(loss(y[:, None].astype("float32"), q.astype("float32"))),
                               _bce(q, y), rtol=1e-4)  # the cross-entropy of p, not sigmoid(p)
    said = [n for n in result.notes if n.startswith(SIGMOID_NOTE)]
    assert len(said) == 1 and "(a sigmoid)" in said[0]


@pytest.mark.parametrize("last", [None, lambda t: Shift(name="p")(t),
                                  lambda t: SmallDense(name="p")(t),
                                  lambda t: SmallDense(name="p")(L.Activation("tanh")(t)),
                                  lambda t: SmallDense(name="p")(L.Activation("sigmoid")(t)),
                                  lambda t: SmallDense(name="p")(L.UnitNormalization()(t))],
                         ids=["keras_dense", "custom_shift", "custom_weights",
                              "custom_weights_after_tanh", "custom_weights_after_sigmoid",
                              "custom_weights_after_unit_normalization"])
def test_logits_that_happen_to_lie_in_0_1_stay_logits(last):
    # custom_weights_after_*: a layer with weights of its own is the whole tail and its own
    # input is scaled; scaling the Dense before the bounded activation kept 0.5 + 0.01 * t in
    # [0, 1] at every scale, read as a sigmoid (review R3)
    from dkm_tf.training.common import default_loss
    from dkm_tf.training.compile_settings import probabilities_note

    x, y = _xy()
    model = _unit_model(last)
    if last is None:  # a Keras Dense(1) of logits, moved into [0, 1] on the data
        model.get_layer("o").kernel.assign(np.full((8, 1), 0.01, "float32"))
        model.get_layer("o").bias.assign(np.array([0.5], "float32"))
    p = np.asarray(model(x[:32]))
    assert 0 < p.min() and p.max() < 1  # logits inside (0, 1) on every sampled input
    assert default_loss(model, x=x).get_config()["from_logits"] is True
    assert probabilities_note(model, (x, y)) is None


def test_the_cli_trains_a_hand_sigmoid_file_with_probabilities(tmp_path):
    from dkm_tf import cli

    x, y = _xy()
    npz = str(tmp_path / "d.npz")
    np.savez(npz, x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    path = str(tmp_path / "m.keras")
    _unit_model(lambda t: HandSigmoid(name="p")(t)).save(path)
    result = cli.run_compress(path, dataset=npz, output_dir=str(tmp_path / "out"),
                              tflite=False, plots=False, quiet=True, method="finetune",
                              n_clusters=4, finetune_epochs=1, seed=0,
                              progress=Progress(enabled=False))
    assert result.model.loss.get_config()["from_logits"] is False
    assert sum(n.startswith(SIGMOID_NOTE) for n in result.notes) == 1


# -- a loss setting Keras does not save ----------------------------------------------------
# Keras 3.15's Huber.get_config() has no delta: a file compiled with Huber(delta=0.25) loads
# back with delta 1.0 and `dkm-tf compress` trained it so with no note (nothing in the file
# says the delta). Now a note says the delta is Keras' default whatever it was compiled with.

HUBER_NOTE = "was compiled with Huber, whose delta Keras"


def _regressor_file(tmp_path, loss):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(1, name="o")(L.Dense(8, activation="relu", name="h")(inp)))
    model.compile(optimizer="adam", loss=loss)
    path = str(tmp_path / "r.keras")
    model.save(path)
    x, y = _xy()  # whole-number targets (the CLI's --dataset labels are integers)
    npz = str(tmp_path / "r.npz")
    np.savez(npz, x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    return path, npz


@pytest.mark.parametrize("loss", [keras.losses.Huber(delta=0.25), "mse"], ids=["huber", "mse"])
def test_the_cli_notes_the_huber_delta_a_file_cannot_hold(tmp_path, loss):
    from dkm_tf import cli

    path, npz = _regressor_file(tmp_path, loss)
    result = cli.run_compress(path, dataset=npz, output_dir=str(tmp_path / "out"),
                              tflite=False, plots=False, quiet=True, method="finetune",
                              n_clusters=4, finetune_epochs=1, seed=0,
                              progress=Progress(enabled=False))
    said = [n for n in result.notes if HUBER_NOTE in n]
    if loss == "mse":
        assert said == []
        return
    assert len(said) == 1 and "trains it with delta=1.0 (Keras' default)" in said[0]
    trained = result.model.loss  # the loss it trained with: delta 1.0, as the note says
    got = float(trained(np.zeros((1, 1), "float32"), np.full((1, 1), 2.0, "float32")))
    np.testing.assert_allclose(got, 1.0 * (2.0 - 0.5 * 1.0), rtol=1e-6)  # not 0.25 * 1.875


# -- a model as the last layer (review R11) -------------------------------------------------
# A nested Functional / Sequential last layer counted as "a last layer with weights": the whole
# sub-model's input was scaled, so a bounded op inside it (Dense -> tanh -> a custom Dense of
# logits in [0, 1]) kept them in [0, 1] at every scale: read as a sigmoid (from_logits=False).
# The sub-model is opened now and its own last layer read; a custom layer of weighted
# sublayers (which cannot be opened) is not read.

@keras.saving.register_keras_serializable(package="test_trainfix29")
class Block(L.Layer):
    """A custom layer of sublayers with weights: Dense(8) -> tanh -> logits in [0, 1]."""

    def __init__(self, head=None, **kwargs):
        super().__init__(**kwargs)
        self.d, self.o = L.Dense(8), head or SmallDense()

    def call(self, t):
        return self.o(keras.ops.tanh(self.d(t)))


def _logits_head():
    return [L.Dense(8), L.Activation("tanh"), SmallDense()]


def _nested(kind, layers):
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        return keras.Sequential([keras.Input((6,)), L.Dense(6), keras.Sequential(layers)])
    if kind == "seq_in_seq":
        return keras.Sequential([keras.Input((6,)), keras.Sequential(
            [L.Dense(6), keras.Sequential(layers)])])
    s = keras.Input((6,))
    t = s
    for layer in layers:
        t = layer(t)
    inp = keras.Input((6,))
    return keras.Model(inp, keras.Model(s, t, name="head")(inp))


@pytest.mark.parametrize("build", [
    lambda: _nested("functional", _logits_head()),
    lambda: _nested("sequential", _logits_head()),
    lambda: _nested("seq_in_seq", _logits_head()),
    lambda: _nested("functional", [L.Dense(8), L.UnitNormalization(), SmallDense()]),
    lambda: keras.Model(inp := keras.Input((6,)), Block()(inp))],
    ids=["functional", "sequential", "sequential_in_sequential", "unit_normalization",
         "custom_block"])
def test_logits_in_0_1_inside_a_nested_last_layer_stay_logits(build):
    from dkm_tf.training.common import default_loss
    from dkm_tf.training.compile_settings import probabilities_note

    x, y = _xy()
    keras.utils.set_random_seed(0)
    model = build()
    p = np.asarray(model(x[:32]), np.float64)
    assert 0 < p.min() and p.max() < 1  # logits inside (0, 1) on every sampled input
    assert default_loss(model, x=x).get_config()["from_logits"] is True  # was False
    note = probabilities_note(model, (x, y))
    if isinstance(model.layers[-1], Block):  # cannot be opened: logits, said
        assert note.startswith(OPAQUE_NOTE), note
    else:
        assert note is None


OPAQUE_NOTE = ("trained with the cross-entropy from_logits=True: the model's last layer is a "
               "custom layer of sublayers with weights")


@keras.saving.register_keras_serializable(package="test_trainfix29")
class SigmoidBlock(L.Layer):
    """A custom layer of a Dense(1) sublayer and a hand sigmoid: cannot be opened."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(1)

    def call(self, t):
        return 1.0 / (1.0 + keras.ops.exp(-self.d(t)))


def test_a_hand_sigmoid_in_a_custom_layer_of_sublayers_trains_as_logits_with_a_note():
    # read as a sigmoid before (its input scaled); not read now, as Block above cannot be
    # told from it: from_logits=True, and a note says how to train it as probabilities
    from dkm_tf.training.common import default_loss
    from dkm_tf.training.compile_settings import probabilities_note

    x, y = _xy()
    keras.utils.set_random_seed(0)
    model = keras.Model(inp := keras.Input((6,)), SigmoidBlock()(inp))
    p = np.asarray(model(x[:32]), np.float64)
    assert 0 < p.min() and p.max() < 1
    assert default_loss(model, x=x).get_config()["from_logits"] is True
    note = probabilities_note(model, (x, y))
    assert note.startswith(OPAQUE_NOTE) and note.endswith("BinaryCrossentropy()"), note


@pytest.mark.filterwarnings("ignore:cluster_weights left 1 layer:UserWarning")  # SmallDense
def test_compress_trains_a_nested_head_of_logits_in_0_1_as_logits():
    x, y = _xy()
    result = dkm_tf.compress(_nested("functional", _logits_head()), (x, y), method="finetune",
                             n_clusters=4, finetune_epochs=1, seed=0, verbose=0,
                             progress=Progress(enabled=False))
    assert result.model.loss.get_config()["from_logits"] is True  # was False
    assert not [n for n in result.notes if n.startswith(SIGMOID_NOTE)]


@pytest.mark.parametrize("kind", ["functional", "sequential", "seq_in_seq"])
def test_a_hand_sigmoid_inside_a_nested_last_layer_is_still_read(kind):
    from dkm_tf.training.common import default_loss

    x, _ = _xy()
    model = _nested(kind, [L.Dense(8, activation="tanh"), L.Dense(1), HandSigmoid()])
    p = np.asarray(model(x[:32]), np.float64)
    assert 0 < p.min() and p.max() < 1
    assert default_loss(model, x=x).get_config()["from_logits"] is False


def test_a_model_built_on_a_list_of_one_input_is_read_without_structure_warnings():
    from dkm_tf.training.common import default_loss

    x, _ = _xy()
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model([inp], HandSigmoid()(L.Dense(1)(inp)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "structure of `inputs` doesn't match" raised
        loss = default_loss(model, x=x)  # inside the probe: read as logits before
    assert loss.get_config()["from_logits"] is False
