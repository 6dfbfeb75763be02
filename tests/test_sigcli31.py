"""Session 31 (sigcli): one-unit custom last layers read from the file's loss, and warned of.

* ``dkm-tf compress --model file`` loads the file with ``compile=False`` and read only its
  loss name: a custom sigmoid compiled with ``BinaryCrossentropy(from_logits=True)`` got an
  accuracy at 0.5 (and trained with ``from_logits=False``) where ``dkm_tf.compress`` on the
  compiled model gives none, with a note that the loss contradicts the output (and trains
  with ``from_logits=True``); an opaque head (a custom layer of weighted sublayers) compiled
  with a binary cross-entropy got no accuracy where ``compress`` scores it at 0.5. The file's
  Keras binary cross-entropy (class, ``from_logits``; read as JSON, no custom code) now
  compiles such a model (``dkm_tf.cli_unit``); a known activation is read from the model, as
  before.
* Compiled ``from_logits=True``, an opaque head whose outputs on the first 32 held-out inputs
  are in [0, 1] was scored at 0 by ``dkm_tf.compress`` (all class 1: the share of class 1 as
  its accuracy): no accuracy now, with a note, as a custom sigmoid compiled so gets.
* ``train_classifier`` trained a head it cannot open (a hand sigmoid in a custom layer of
  weighted sublayers, a subclassed model as the last layer or the model itself) as logits
  with no word: a ``UserWarning`` with ``compress``' note now.
"""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402

L = keras.layers
ops = keras.ops
CONTRADICTS = "loss contradicts its output"


@keras.saving.register_keras_serializable(package="test_sigcli31")
class SigUnit31(L.Layer):
    """One unit with weights of its own, ending in a hand sigmoid (read as a sigmoid)."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], 1), initializer="glorot_uniform")
        self.b = self.add_weight(shape=(1,), initializer="zeros")

    def call(self, t):
        return 1.0 / (1.0 + ops.exp(-(ops.matmul(t, self.w) + self.b)))


@keras.saving.register_keras_serializable(package="test_sigcli31")
class Opaque31(L.Layer):
    """A Dense(1) sublayer then a hand sigmoid: dkm_tf cannot open it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(1)

    def build(self, shape):
        self.d.build(shape)

    def call(self, t):
        return 1.0 / (1.0 + ops.exp(-self.d(t)))


@keras.saving.register_keras_serializable(package="test_sigcli31")
class BinaryCrossentropy(keras.losses.Loss):
    """A user's loss named like Keras' own (mean squared error): not read as Keras'."""

    def call(self, y_true, y_pred):
        return ops.mean(ops.square(ops.cast(y_true, y_pred.dtype) - y_pred), axis=-1)


class NestedHead31(keras.Model):
    """A subclassed head: a Sequential of one Dense(1), then a hand sigmoid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.net = keras.Sequential([L.Dense(1)])

    def call(self, t):
        return 1.0 / (1.0 + ops.exp(-self.net(t)))


class Whole31(keras.Model):
    """A subclassed model itself ending in a hand sigmoid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.h, self.d = L.Dense(16, activation="relu"), L.Dense(1)

    def call(self, t):
        return 1.0 / (1.0 + ops.exp(-self.d(self.h(t))))


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype("float32"), (d.target >= 5).astype("int32")
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:240], y[:240]), (x[240:340], y[240:340])


_TRAINED = {}  # (head, logits): the fitted weights, one fit per head for the module


def _model(head, loss=None, logits=False):
    """Dense(16) -> ``head``, fitted 3 epochs with the right loss, then compiled with
    ``loss`` (None: not compiled) for saving."""
    if (head, logits) not in _TRAINED:
        train, _ = _data()
        model = _functional(head)
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.BinaryCrossentropy(from_logits=logits))
        model.fit(*train, epochs=3, batch_size=32, verbose=0)
        _TRAINED[head, logits] = model.get_weights()
    fresh = _functional(head)  # not clone_model: its clone of a compiled model is compiled
    fresh.set_weights(_TRAINED[head, logits])
    assert not fresh.compiled
    if loss is not None:
        fresh.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return fresh


def _save(model, path):
    with warnings.catch_warnings():  # Keras' own (the legacy .h5 format)
        warnings.simplefilter("ignore")
        model.save(path)
    return path


def _npz(tmp_path):
    train, test = _data()
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=train[0], y_train=train[1], x_test=test[0], y_test=test[1])
    return path


def _cli(tmp_path, path, method="wr", spy=None):
    from dkm_tf import cli

    with warnings.catch_warnings():  # the CLI's own .h5 / TF messages are not the point
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", "cluster_weights left 1 layer", UserWarning)  # the head
        return cli.run_compress(path, dataset=_npz(tmp_path), output_dir=str(tmp_path / "o"),
                                tflite=False, plots=False, quiet=True, method=method,
                                n_clusters=8, seed=0, finetune_epochs=1,
                                progress=Progress(enabled=False))


def _spy(monkeypatch):
    """The ``from_logits`` of each loss fine-tuning compiles its copy with."""
    from dkm_tf.training import finetune

    seen, real = [], finetune.compile_settings

    def spy(*args, **kwargs):
        settings = real(*args, **kwargs)
        seen.append(settings["loss"].get_config().get("from_logits"))
        return settings

    monkeypatch.setattr(finetune, "compile_settings", spy)
    return seen


def _accuracy(model, x, y, threshold):
    p = np.asarray(model.predict(x, verbose=0), np.float64)[:, 0]
    return float(np.mean((p > threshold).astype(np.int64) == y))


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_a_custom_sigmoid_file_compiled_from_logits_is_read_as_compress_reads_it(
        tmp_path, monkeypatch, ext):
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model = _model(SigUnit31, loss)
    path = _save(model, str(tmp_path / f"m{ext}"))
    seen = _spy(monkeypatch)
    result = _cli(tmp_path, path, method="finetune")
    assert result.threshold is None and result.accuracy_before is None  # were 0.5, 0.91
    assert sum(CONTRADICTS in n for n in result.notes) == 1, result.notes
    assert not any("from_logits=False" in n for n in result.notes), result.notes
    assert seen == [True]  # trained as the file says (was False: the probe's reading)
    if ext == ".keras":  # what dkm_tf.compress gives on the compiled model
        seen.clear()
        train, test = _data()
        with pytest.warns(UserWarning, match="sig_unit31"):  # not clustered: said
            py = dkm_tf.compress(model, train, test, method="finetune", n_clusters=8, seed=0,
                                 finetune_epochs=1, verbose=0, progress=Progress(enabled=False))
        assert (py.threshold, py.accuracy_before, seen) == (None, None, [True])
        assert [n for n in py.notes if CONTRADICTS in n] == [
            n for n in result.notes if CONTRADICTS in n]


@pytest.mark.parametrize("loss, ext", [("binary_crossentropy", ".h5"),
                                       (keras.losses.BinaryCrossentropy(), ".keras"),
                                       (keras.losses.binary_crossentropy, ".keras")])
def test_an_opaque_head_file_is_scored_at_the_threshold_of_its_loss(tmp_path, loss, ext):
    model = _model(Opaque31, loss)
    path = _save(model, str(tmp_path / f"m{ext}"))
    result = _cli(tmp_path, path)
    _, (xt, yt) = _data()
    expected = _accuracy(model, xt, yt, 0.5)
    assert abs(expected - _accuracy(model, xt, yt, 0.0)) > 0.2  # the threshold matters
    assert result.threshold == 0.5  # was None: no accuracy from the command line
    assert abs(result.accuracy_before - expected) < 1e-12
    assert not any("read neither as a probability" in n for n in result.notes), result.notes


def test_an_uncompiled_opaque_file_still_gets_no_accuracy(tmp_path):
    result = _cli(tmp_path, _save(_model(Opaque31), str(tmp_path / "m.keras")))
    assert result.threshold is None and result.accuracy_before is None
    assert any("read neither as a probability" in n for n in result.notes)


def test_known_activations_are_still_read_from_the_model_not_the_file(tmp_path, monkeypatch):
    sig = _model(lambda: L.Dense(1, activation="sigmoid"),
                 keras.losses.BinaryCrossentropy(from_logits=True))
    seen = _spy(monkeypatch)
    result = _cli(tmp_path, _save(sig, str(tmp_path / "s.keras")), method="finetune")
    assert (result.threshold, seen) == (0.5, [False])  # the sigmoid's, noted as before
    assert any("compiled with BinaryCrossentropy from_logits=True" in n for n in result.notes)
    logits = _model(lambda: L.Dense(1), keras.losses.BinaryCrossentropy(), logits=True)
    seen.clear()
    result = _cli(tmp_path, _save(logits, str(tmp_path / "l.keras")), method="finetune")
    assert (result.threshold, seen) == (0.0, [True])
    assert any("compiled with BinaryCrossentropy from_logits=False" in n for n in result.notes)


def test_the_file_loss_is_read_only_where_it_is_keras_own(tmp_path):
    from dkm_tf.cli_unit import file_binary_from_logits

    def saved(loss, name):
        model = keras.Sequential([keras.Input((3,)), L.Dense(1)])
        if loss is not None:
            model.compile(loss=loss)
        return _save(model, str(tmp_path / name))

    assert file_binary_from_logits(saved(BinaryCrossentropy(), "user.keras")) is None
    assert file_binary_from_logits(saved(keras.losses.BinaryFocalCrossentropy(
        from_logits=True), "focal.keras")) is True
    assert file_binary_from_logits(saved([keras.losses.BinaryCrossentropy(
        from_logits=True)], "list.keras")) is True
    assert file_binary_from_logits(saved(keras.losses.binary_crossentropy, "f.keras")) is False
    assert file_binary_from_logits(saved("binary_crossentropy", "s.h5")) is False
    assert file_binary_from_logits(saved(keras.losses.BinaryCrossentropy(from_logits=True),
                                         "o.h5")) is True
    assert file_binary_from_logits(saved("mse", "mse.keras")) is None
    assert file_binary_from_logits(saved(None, "none.keras")) is None



def test_a_saved_copy_is_read_by_the_loss_it_carries_as_load_model_reads_it(tmp_path):
    model = _model(SigUnit31, keras.losses.BinaryCrossentropy(from_logits=True))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "cluster_weights left 1 layer", UserWarning)
        copy = dkm_tf.share_weights(model, 8).model  # uncompiled, carries the loss
    path = _save(copy, str(tmp_path / "c.keras"))
    result = _cli(tmp_path, path)
    train, test = _data()
    py = dkm_tf.compress(dkm_tf.load_model(path), train, test, method="wr", n_clusters=8,
                         seed=0, verbose=0, progress=Progress(enabled=False))
    assert (py.threshold, py.accuracy_before) == (None, None)
    assert (result.threshold, result.accuracy_before) == (None, None)  # were 0.5, 0.85
    assert [n for n in result.notes if CONTRADICTS in n] == [
        n for n in py.notes if CONTRADICTS in n] and any(CONTRADICTS in n for n in py.notes)


def _functional(head):
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    return keras.Model(inp, head()(L.Dense(16, activation="relu")(inp)))


def test_an_opaque_head_compiled_from_logits_with_outputs_in_0_1_gets_no_accuracy(tmp_path):
    # dkm_tf.compress scored it at 0 (every sample class 1: 0.44 here, the share of class 1,
    # where 0.5 gives 0.78); the command line, reading the file's loss, would have followed
    model = _model(Opaque31, keras.losses.BinaryCrossentropy(from_logits=True))
    _, (xt, yt) = _data()
    assert _accuracy(model, xt, yt, 0.0) == float(np.mean(yt == 1))  # all class 1 at 0
    train, test = _data()
    py = dkm_tf.compress(model, train, test, method="wr", n_clusters=8, seed=0, verbose=0,
                         progress=Progress(enabled=False))
    result = _cli(tmp_path, _save(model, str(tmp_path / "m.keras")))
    for r in (py, result):
        assert r.threshold is None and r.accuracy_before is None
        assert sum("loss may contradict its output" in n for n in r.notes) == 1, r.notes


@pytest.mark.parametrize("head", ["opaque", "nested", "whole"])
def test_train_classifier_warns_of_a_head_it_cannot_open(head):
    from dkm_tf.pipeline import train_classifier
    from dkm_tf.training.compile_settings import probabilities_note

    train, _ = _data()
    build = {"opaque": lambda: _functional(Opaque31),
             "nested": lambda: _functional(NestedHead31), "whole": Whole31}[head]
    if head != "whole":  # compress' note of it, on an untrained twin
        note = probabilities_note(build(), train)
        assert note.startswith("trained with the cross-entropy from_logits=True: the model's "
                               "last layer is a custom layer of sublayers with weights"), note
    model = build()
    with pytest.warns(UserWarning) as caught:
        train_classifier(model, train, epochs=1)
    said = [str(w.message) for w in caught if "from_logits=True" in str(w.message)]
    assert len(said) == 1  # was none
    if head == "whole":  # a subclassed model has no output_shape: compress gives no note
        assert said[0].startswith("trained with the cross-entropy from_logits=True: the model "
                                  "is a subclassed model and its outputs"), said[0]
    else:
        assert said[0] == note
    assert model.loss.get_config()["from_logits"] is True  # read as compress trains it


@pytest.mark.parametrize("head", ["sigunit", "dense"])
def test_train_classifier_warns_of_nothing_it_reads(head):
    from dkm_tf.pipeline import train_classifier

    train, _ = _data()
    model = _functional(SigUnit31 if head == "sigunit" else (lambda: L.Dense(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_classifier(model, train, epochs=1)
    assert model.loss.get_config()["from_logits"] is (head == "dense")
