"""Session 28: a custom or ``Lambda`` last layer whose outputs are probability rows trains with
the cross-entropy ``from_logits=False``, on the command line as in Python.

``dkm-tf compress --model FILE`` (and ``dkm_tf.compress`` / ``finetune`` / ``dkm_retrain`` of
an uncompiled model) gave such a model the default cross-entropy with ``from_logits=True``:
its last activation cannot be read from the op that made the output, and the training inputs
were not looked at. A softmax written by hand (exp / sum) then trained the cross-entropy of
softmax(probabilities), silently (MNIST 14x14 MLP, K=2, 5 fine-tune epochs: held-out accuracy
73.4 % / cross-entropy 0.861, now 74.7 % / 0.807); a ``keras.ops.softmax`` in a ``Lambda`` or
custom layer trained the same on TensorFlow (Keras takes its logits) but Keras warned. The
outputs on the first training inputs are read now (rows of probabilities: from_logits=False,
and a note says so), as a model compiled with ``SparseCategoricalCrossentropy()`` trains."""

import re
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf import cli, pipeline  # noqa: E402
from dkm_tf.cli_custom import loss_note  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402
from dkm_tf.training.compile_settings import compile_settings, sample_inputs  # noqa: E402

L = keras.layers
ARGS = {"method": "finetune", "n_clusters": 4, "finetune_epochs": 2, "seed": 0}
NOTE = "trained with the cross-entropy from_logits=False: the model's last layer is not one"


@keras.saving.register_keras_serializable(package="test_clisoftmax28")
class HandSoftmax(L.Layer):
    """A softmax written by hand: no Softmax op, so neither dkm_tf nor Keras can see it."""

    def call(self, t):
        e = keras.ops.exp(t - keras.ops.max(t, axis=-1, keepdims=True))
        return e / keras.ops.sum(e, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="test_clisoftmax28")
class Scaled(L.Layer):
    """A custom last layer of logits (twice its input): not probabilities."""

    def call(self, t):
        return 2.0 * t


@keras.saving.register_keras_serializable(package="test_clisoftmax28")
def ops_softmax(t):
    """A Lambda's function (registered: the file loads in safe mode)."""
    return keras.ops.softmax(t)


def _data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 6)).astype("float32")
    y = np.argmax(x[:, :3] + 0.3 * rng.normal(size=(160, 3)), axis=1).astype("int32")
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=x[:128], y_train=y[:128], x_test=x[128:], y_test=y[128:])
    return path, (x[:128], y[:128]), (x[128:], y[128:])


def _model(last, **compile_args):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, last(L.Dense(3, name="o")(L.Dense(8, activation="relu",
                                                              name="h")(inp))))
    if compile_args:
        model.compile(**compile_args)
    return model


def _save(model, path):
    model.save(str(path))
    return str(path)


def _cli(path, npz, out):
    with warnings.catch_warnings(record=True) as caught:  # Keras' "received from_logits=True"
        warnings.simplefilter("always")
        result = cli.run_compress(path, dataset=npz, output_dir=str(out), tflite=False,
                                  plots=False, quiet=True, progress=Progress(enabled=False),
                                  **ARGS)
    return result, [str(w.message) for w in caught if "from_logits" in str(w.message)]


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(
        a.get_weights(), b.get_weights(), strict=True))


def _nll(loss, model, data):
    """``loss`` on ``model``'s held-out outputs and the numpy cross-entropy of them."""
    p = np.asarray(model(data[0]), np.float64)
    expected = -np.mean(np.log(p[np.arange(len(data[1])), data[1]]))
    return float(loss(data[1], p.astype("float32"))), float(expected)


LASTS = {"hand_written": lambda t: HandSoftmax(name="p")(t),
         "lambda_ops_softmax": lambda t: L.Lambda(ops_softmax, name="p")(t)}
_COMPILED = {}


def _compiled_reference(name, train, test):
    """dkm_tf.compress of the model ending in LASTS[name], compiled with
    SparseCategoricalCrossentropy() (probabilities): the same in every test, trained once."""
    if name not in _COMPILED:
        kw = {"optimizer": "adam", "loss": keras.losses.SparseCategoricalCrossentropy()}
        _COMPILED[name] = dkm_tf.compress(_model(LASTS[name], **kw), train, test,
                                          progress=Progress(enabled=False), **ARGS)
    return _COMPILED[name]


@pytest.mark.parametrize("name", list(LASTS))
@pytest.mark.parametrize("compiled", [False, True], ids=["plain_file", "compiled_file"])
def test_the_cli_trains_a_custom_softmax_as_the_api_compiled_with_probabilities(
        tmp_path, name, compiled):
    npz, train, test = _data(tmp_path)
    kw = {"optimizer": "adam", "loss": keras.losses.SparseCategoricalCrossentropy()}
    path = _save(_model(LASTS[name], **(kw if compiled else {})), tmp_path / "m.keras")
    result, warned = _cli(path, npz, tmp_path / "out")
    assert warned == []  # Keras warned of from_logits=True on a softmax's output
    reference = _compiled_reference(name, train, test)
    assert _max_diff(result.model, reference.model) < 1e-6
    assert result.model.loss.get_config()["from_logits"] is False
    got, expected = _nll(result.model.loss, result.model, test)  # -mean log p_y, not of
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # softmax(p)
    assert sum(n.startswith(NOTE) for n in result.notes) == 1
    said = " ".join(result.notes)
    assert "call dkm_tf.compress in Python on the model compiled with another loss" in said
    assert "from_logits=True" not in said  # the compiled file's note said it trained so


def test_the_api_trains_an_uncompiled_hand_softmax_with_probabilities_and_notes_it(tmp_path):
    _, train, test = _data(tmp_path)
    plain = dkm_tf.compress(_model(lambda t: HandSoftmax(name="p")(t)), train, test,
                            progress=Progress(enabled=False), **ARGS)
    compiled = _compiled_reference("hand_written", train, test)
    assert _max_diff(plain.model, compiled.model) < 1e-6
    assert sum(n.startswith(NOTE) for n in plain.notes) == 1
    assert not any(n.startswith(NOTE) for n in compiled.notes)  # its own loss: nothing read
    assert "compile the model to train it with another loss" in " ".join(plain.notes)


def test_dkm_retrain_and_a_tf_dataset_read_the_probabilities_too(tmp_path):
    tf = pytest.importorskip("tensorflow")
    _, train, _ = _data(tmp_path)
    model = _model(lambda t: HandSoftmax(name="p")(t))
    ds = tf.data.Dataset.from_tensor_slices(train).batch(32)
    for data in (train, ds):
        assert compile_settings(model, data=data)["loss"].get_config()["from_logits"] is False
    assert compile_settings(model)["loss"].get_config()["from_logits"] is True  # no data
    retrained, _ = dkm_tf.dkm_retrain(model, ds, n_clusters=4, epochs=1, seed=0)
    assert retrained.loss.get_config()["from_logits"] is False


def test_a_custom_last_layer_of_logits_keeps_from_logits_and_gets_no_note(tmp_path):
    npz, _, test = _data(tmp_path)
    path = _save(_model(lambda t: Scaled(name="p")(t)), tmp_path / "m.keras")
    result, warned = _cli(path, npz, tmp_path / "out")
    assert warned == []
    assert result.model.loss.get_config()["from_logits"] is True
    assert not any(n.startswith(NOTE) for n in result.notes)


def test_a_known_activation_reads_no_inputs(tmp_path):
    # a softmax layer says it: the data (a dataset would be iterated) is not looked at
    _, train, _ = _data(tmp_path)
    assert sample_inputs(_model(L.Softmax()), train) is None
    assert sample_inputs(_model(lambda t: HandSoftmax()(t)), train) is train[0]


def test_the_cli_note_on_a_files_from_logits_says_the_data_was_read(tmp_path):
    # a hand softmax compiled with from_logits=True (the user's slip): trained with False,
    # read from its outputs on the --dataset inputs; compiled with False: no note (it was
    # "trains it with from_logits=True, read from the model's output activation")
    _, train, _ = _data(tmp_path)
    for saved, said in ((True, re.compile(r"from_logits=True; dkm-tf compress trains with it "
                                          r"with from_logits=False, read from the model's "
                                          r"output activation and its outputs on the "
                                          r"--dataset inputs")), (False, None)):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=saved)
        path = _save(_model(lambda t: HandSoftmax(name="p")(t), optimizer="adam", loss=loss),
                     tmp_path / f"m{saved}.keras")
        note = loss_note(path, "finetune", None, keras.models.load_model(path, compile=False),
                         train)
        assert note is None if said is None else said.search(note), note


@pytest.mark.parametrize(("units", "loss", "said"), [
    (3, keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
     "was compiled with loss 'CategoricalCrossentropy' (label_smoothing=0.1); dkm-tf "
     "compress trains with the "
     "cross-entropy of the model's output (class-id labels) without it"),
    (3, keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0,
                                                   reduction="sum"),
     "'SparseCategoricalCrossentropy' (ignore_class=0, reduction='sum'); dkm-tf compress "
     "trains "
     "with the cross-entropy of the model's output (class-id labels) without them"),
    (1, keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2),
     "'BinaryCrossentropy' (label_smoothing=0.2); dkm-tf compress trains with")],
    ids=["cce_smoothing", "scce_ignore_sum", "bce_smoothing"])
def test_a_cross_entropy_with_settings_the_default_lacks_is_noted(tmp_path, units, loss, said):
    # KNOWN_LIMITATIONS: "trains with the cross-entropy of the output, not the loss the file
    # was compiled with (a note says so)": a cross-entropy with label smoothing, ... had none
    _, train, _ = _data(tmp_path)
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(units, name="o")(inp))
    model.compile(optimizer="adam", loss=loss)
    path = _save(model, tmp_path / "m.keras")
    note = loss_note(path, "finetune", None, keras.models.load_model(path, compile=False), train)
    assert note is not None and said in note, note
    assert "call dkm_tf.compress in Python on the model compiled with it" in note
    assert "from_logits" not in note  # the same from_logits: only the settings are noted


def test_the_cli_reports_a_label_smoothing_it_does_not_train_with(tmp_path):
    npz, _, _ = _data(tmp_path)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    path = _save(_model(lambda t: t, optimizer="adam", loss=loss), tmp_path / "m.keras")
    plain = _save(_model(lambda t: t), tmp_path / "plain.keras")
    result, _ = _cli(path, npz, tmp_path / "out")
    expected, _ = _cli(plain, npz, tmp_path / "out2")
    assert _max_diff(result.model, expected.model) < 1e-6  # trained without it, as said
    assert sum("label_smoothing=0.1" in n for n in result.notes) == 1
    assert not any("label_smoothing" in n for n in expected.notes)


def test_train_classifier_reads_a_custom_softmax_too(tmp_path):
    _, train, test = _data(tmp_path)
    model = _model(lambda t: HandSoftmax(name="p")(t))
    pipeline.train_classifier(model, train, epochs=1)
    assert model.loss.get_config()["from_logits"] is False
    got, expected = _nll(model.loss, model, test)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_a_saved_copys_carried_label_smoothing_is_noted(tmp_path):
    _, train, _ = _data(tmp_path)
    model = _model(lambda t: t, optimizer="adam", loss=keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1))
    path = _save(dkm_tf.share_weights(model, 4).model, tmp_path / "copy.keras")
    note = loss_note(path, "finetune", None, keras.models.load_model(path, compile=False), train)
    assert note is not None and ("carries the loss 'CategoricalCrossentropy' of the model it "
                                 "was copied from (label_smoothing=0.1)") in note, note


# Review R6 of the above: what the reads moved (from_generator, shuffle), a layer that is a
# softmax only at inference, several outputs.

class _Count(keras.callbacks.Callback):
    """Counts the batches trained."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1


@keras.saving.register_keras_serializable(package="test_clisoftmax28")
class InferenceSoftmax(L.Layer):
    """Logits while training (the loss takes them), a hand-written softmax at inference."""

    def call(self, t, training=None):
        if training:
            return t
        return HandSoftmax()(t)


def _one_shot(tf, x, y):
    gen = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32))  # a one-shot generator
    return tf.data.Dataset.from_generator(lambda: gen, output_signature=(
        tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int32)))


UNREAD = "trained with the cross-entropy from_logits=True: the model's last layer is not one"


@pytest.mark.filterwarnings("ignore:Your input ran out of data")  # Keras', at any end of a
@pytest.mark.parametrize("last", [lambda t: HandSoftmax(name="p")(t),  # generator's data
                                  lambda t: Scaled(name="p")(t)], ids=["hand", "logits"])
def test_a_one_shot_generator_is_not_read_and_trains_all_its_batches(tmp_path, last,
                                                                     monkeypatch):
    # a read of its first batch consumed it: fine-tuning trained 2 of the 4 batches
    tf = pytest.importorskip("tensorflow")
    _, (x, y), test = _data(tmp_path)
    count = _Count()
    model, _, _ = dkm_tf.finetune(_model(last), _one_shot(tf, x, y), n_clusters=4, epochs=1,
                                  seed=0, callbacks=[count])
    assert count.n == 4
    assert model.loss.get_config()["from_logits"] is True  # not read: as before
    count, fit = _Count(), keras.Model.fit  # compress takes no callbacks: counted in fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, callbacks=None, **k: fit(
        self, *a, callbacks=[*(callbacks or []), count], **k))
    result = dkm_tf.compress(_model(last), _one_shot(tf, x, y), test, n_clusters=4,
                             method="finetune", finetune_epochs=1, seed=0,
                             progress=Progress(enabled=False))
    assert count.n == 4
    said = [n for n in result.notes if n.startswith(UNREAD)]
    assert len(said) == 1 and "could not be read without changing what training" in said[0]


@pytest.mark.parametrize("last", [lambda t: HandSoftmax(name="p")(t),
                                  lambda t: Scaled(name="p")(t)], ids=["hand", "logits"])
def test_a_shuffled_dataset_trains_in_the_order_of_a_compiled_model(tmp_path, last):
    # its first batch read moved training to another order: weights 1.1e-3 off those of the
    # model compiled with the same loss (nothing read); its source arrays are read instead
    tf = pytest.importorskip("tensorflow")
    _, train, _ = _data(tmp_path)
    probabilities = isinstance(_model(last).layers[-1], HandSoftmax)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    out = []
    for kw in ({}, {"optimizer": "adam", "loss": loss}):
        keras.utils.set_random_seed(0)
        ds = tf.data.Dataset.from_tensor_slices(train).shuffle(128, seed=1).batch(32)
        model, _, _ = dkm_tf.finetune(_model(last, **kw), ds, n_clusters=4, epochs=1, seed=0)
        out.append(model)
    assert out[0].loss.get_config()["from_logits"] is (not probabilities)
    assert _max_diff(out[0], out[1]) < 1e-7


def test_a_mapped_dataset_is_read_once_by_compress(tmp_path, monkeypatch):
    # a map of known ops (no generator, no shuffle): its first batch is read, once for the
    # labels and the inputs (it was read three times), and the probabilities it shows train
    # with from_logits=False
    tf = pytest.importorskip("tensorflow")
    _, train, test = _data(tmp_path)
    ds = tf.data.Dataset.from_tensor_slices(train).batch(32).map(lambda a, b: (a * 1.0, b))
    reads, take = [], tf.data.Dataset.take

    def counted(self, *a, **k):
        reads.append(self is ds)
        return take(self, *a, **k)

    monkeypatch.setattr(tf.data.Dataset, "take", counted)
    result = dkm_tf.compress(_model(lambda t: HandSoftmax(name="p")(t)), ds, test,
                             progress=Progress(enabled=False), **ARGS)
    assert result.model.loss.get_config()["from_logits"] is False
    assert sum(n.startswith(NOTE) for n in result.notes) == 1
    assert reads.count(True) == 1


def test_a_softmax_only_at_inference_keeps_from_logits(tmp_path):
    # called with training=False only, it read probabilities and trained its training-time
    # logits with from_logits=False (held-out accuracy 0.475 -> 0.278)
    _, train, test = _data(tmp_path)
    model = _model(lambda t: InferenceSoftmax(name="p")(t))
    assert compile_settings(model, data=train)["loss"].get_config()["from_logits"] is True
    result = dkm_tf.compress(model, train, test, progress=Progress(enabled=False), **ARGS)
    assert result.model.loss.get_config()["from_logits"] is True
    assert not any(n.startswith(NOTE) for n in result.notes)


def test_the_training_call_moves_no_batch_statistics(tmp_path):
    _, train, _ = _data(tmp_path)
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, HandSoftmax()(L.Dense(3)(L.BatchNormalization()(inp))))
    before = [w.copy() for w in model.get_weights()]
    assert compile_settings(model, data=(train[0] * 5 + 3, train[1]))["loss"].get_config()[
        "from_logits"] is False
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_several_outputs_are_not_read(tmp_path):
    # output 0 a hand softmax, output 1 logits: one loss from_logits=False trained output 1's
    # logits as probabilities (held-out accuracy 0.4475 -> 0.24); now as before (logits)
    _, (x, y), _ = _data(tmp_path)

    def model(**kw):
        keras.utils.set_random_seed(0)
        inp = keras.Input((6,))
        h = L.Dense(8, activation="relu", name="h")(inp)
        out = keras.Model(inp, [HandSoftmax(name="p")(L.Dense(3, name="o0")(h)),
                                L.Dense(3, name="o1")(h)])
        if kw:
            out.compile(**kw)
        return out

    assert sample_inputs(model(), (x, [y, y])) is None
    loss = compile_settings(model(), data=(x, [y, y]))["loss"]
    assert loss.get_config()["from_logits"] is True
    trained, _, _ = dkm_tf.finetune(model(), (x, [y, y]), n_clusters=4, epochs=1, seed=0)
    assert all(v.get_config()["from_logits"] is True for v in keras.tree.flatten(trained.loss))
    logits = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference, _, _ = dkm_tf.finetune(model(optimizer="adam", loss=logits), (x, [y, y]),
                                      n_clusters=4, epochs=1, seed=0)
    assert _max_diff(trained, reference) < 1e-7


def test_a_mean_reduction_is_not_noted(tmp_path):
    # reduction="mean" divides by the batch size as the default does (no sample weights)
    _, train, _ = _data(tmp_path)
    model = _model(lambda t: t, optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean"))
    path = _save(model, tmp_path / "m.keras")
    assert loss_note(path, "finetune", None, keras.models.load_model(path, compile=False),
                     train) is None


@pytest.mark.parametrize("noise", ["dropout", "gaussian_noise"])
def test_a_hand_softmax_then_dropout_is_read_before_the_dropout(tmp_path, noise):
    # review R10: read at training=True the dropped-out rows do not sum to 1, so a hand
    # softmax then Dropout(0.2) trained through a second softmax, with no note (held-out
    # 0.485 -> 0.443); a Dense(softmax) then Dropout is read through it (output_activation)
    _, train, _ = _data(tmp_path)
    make = {"dropout": lambda: L.Dropout(0.2), "gaussian_noise": lambda: L.GaussianNoise(0.1)}
    model = _model(lambda t: make[noise]()(HandSoftmax(name="p")(t)))
    assert compile_settings(model, data=train)["loss"].get_config()["from_logits"] is False
    logits = _model(lambda t: make[noise]()(Scaled(name="s")(t)))
    assert compile_settings(logits, data=train)["loss"].get_config()["from_logits"] is True


def test_a_sequential_hand_softmax_then_dropout_is_read_before_the_dropout(tmp_path):
    # review R11: keras.Model(model.input, ...) fails on a Sequential ("never been called"),
    # the cut was skipped and the model trained through a second softmax with no note
    _, train, _ = _data(tmp_path)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(3), HandSoftmax(), L.Dropout(0.2)])
    assert compile_settings(model, data=train)["loss"].get_config()["from_logits"] is False
