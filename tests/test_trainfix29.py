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


def test_the_note_names_the_empty_epochs():
    assert ran_out_note("finetune", [4, 4]) is None
    assert ran_out_note("finetune", []) is None
    assert "in 2 of its 5 epochs and none in epoch(s) 2-3, 5:" in ran_out_note(
        "x", [3, 0, 0, 2, 0])
    assert ran_out_note("x", [0]).startswith("x trained no batch in its 1 epoch(s)")
