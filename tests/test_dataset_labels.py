"""Labels inside a ``tf.data.Dataset`` / ``keras.utils.PyDataset`` are checked before any work,
as array labels are (training.data_checks.dataset_labels); Fisher data takes Python lists and,
with a sparse cross-entropy, refuses labels that are not class ids of the model.

Before: fractional labels in a dataset trained silently (accuracy 0.0, labels truncated by the
loss), strings and labels out of the model's classes failed inside ``fit`` after the
clustering; ``fisher_importance(labels="data")`` computed the Fisher of class 0 for labels 0.5.
"""

import numpy as np
import pytest
from testing import dense_classifier, tf_backend_only

pytestmark = tf_backend_only("tf.data datasets")

N, C = 32, 3
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(N, 4)).astype(np.float32)
Y = _RNG.integers(0, C, N)
BAD = {  # labels -> (error, message)
    "fractional": (np.full(N, 0.5, np.float32), ValueError, "whole numbers"),
    "string": (np.array(["cat", "dog"] * (N // 2)), TypeError, "y of numbers"),
    "out_of_range": (np.full(N, 5), ValueError, r"class labels in \[0, 2\]"),
    "negative": (np.full(N, -1), ValueError, r"class labels in \[0, 2\]"),
}


def _model(units=C, loss=None):
    return dense_classifier(units, loss)


def _pydataset(y):
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]

    return Batches()


def _forms(y):
    import tensorflow as tf

    return {
        "slices": tf.data.Dataset.from_tensor_slices((X, y)).shuffle(N, seed=0).batch(8),
        "dict_x": tf.data.Dataset.from_tensor_slices(({"inp": X}, y)).batch(8),
        "mapped": tf.data.Dataset.from_tensor_slices((X, y)).map(lambda a, b: (a * 2, b)).batch(8),
        "pydataset": _pydataset(y),
    }


def _entry_points():
    import dkm_tf
    from dkm_tf.pipeline import train_classifier

    return {
        "finetune": lambda d: dkm_tf.finetune(_model(), d, n_clusters=4, epochs=1),
        "dkm_retrain": lambda d: dkm_tf.dkm_retrain(_model(), d, n_clusters=4, epochs=1),
        "compress": lambda d: dkm_tf.compress(_model(), d, method="finetune", n_clusters=4,
                                              finetune_epochs=1, verbose=0),
        "compress_dkm": lambda d: dkm_tf.compress(_model(), d, method="dkm+finetune",
                                                  n_clusters=4, dkm_epochs=1, verbose=0),
        "train_classifier": lambda d: train_classifier(_model(), d, epochs=1),
    }


@pytest.fixture
def no_fit(monkeypatch):
    """Training reached = the labels were not checked before the work."""
    import keras

    def fit(*args, **kwargs):
        raise AssertionError("fit reached: the labels were not checked before any work")

    monkeypatch.setattr(keras.Model, "fit", fit)


@pytest.mark.parametrize("entry", ["finetune", "dkm_retrain", "compress", "compress_dkm",
                                   "train_classifier"])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_dataset_labels_refused_by_every_entry_point(entry, kind, no_fit):
    y, error, message = BAD[kind]
    with pytest.raises(error, match=f"argument `train_data`.*{message}"):
        _entry_points()[entry](_forms(y)["slices"])


@pytest.mark.parametrize("form", ["slices", "dict_x", "mapped", "pydataset"])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_labels_refused_in_every_dataset_form(form, kind, no_fit):
    import dkm_tf

    y, error, message = BAD[kind]
    with pytest.raises(error, match=f"argument `train_data`.*{message}"):
        dkm_tf.finetune(_model(), _forms(y)[form], n_clusters=4, epochs=1)


def test_val_data_labels_are_checked(no_fit):
    import dkm_tf

    with pytest.raises(ValueError, match=r"argument `val_data`.*\[0, 2\]"):
        dkm_tf.finetune(_model(), _forms(Y)["slices"], _forms(BAD["out_of_range"][0])["mapped"],
                        n_clusters=4, epochs=1)


def test_every_label_of_tensor_slices_is_read_not_only_the_first_batch(no_fit):
    """from_tensor_slices through batch / shuffle / prefetch / repeat: all labels, read from
    the source arrays; a zip of datasets too."""
    import tensorflow as tf

    import dkm_tf
    from dkm_tf.pipeline import train_classifier

    late = Y.copy()
    late[-1] = 7  # the first batches are clean
    ds = tf.data.Dataset.from_tensor_slices((X, late)).shuffle(N, seed=1).batch(8).repeat(2)
    with pytest.raises(ValueError, match=r"labels from 0 to 7 \(all 32 labels of the dataset"):
        dkm_tf.finetune(_model(), ds.prefetch(1), n_clusters=4, epochs=1)
    zipped = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(X),
                                  tf.data.Dataset.from_tensor_slices(late))).batch(8)
    with pytest.raises(ValueError, match="labels from 0 to 7"):
        train_classifier(_model(), zipped, epochs=1)


def test_first_batch_read_says_so(no_fit):
    import dkm_tf

    with pytest.raises(ValueError, match=r"\(the labels of the dataset's first batch\)"):
        dkm_tf.finetune(_model(), _forms(BAD["fractional"][0])["mapped"], n_clusters=4, epochs=1)


def test_string_labels_refused_from_the_spec_even_of_a_generator(no_fit):
    import tensorflow as tf

    import dkm_tf

    def gen():
        yield X[:8], np.array([b"a"] * 8)

    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.string)))
    with pytest.raises(TypeError, match="argument `train_data`.*dtype string"):
        dkm_tf.finetune(_model(), ds, n_clusters=4, epochs=1)


def test_generators_and_reshuffled_maps_are_not_read():
    """Reading would consume a one-shot generator, or move a reshuffling shuffle to the next
    epoch's order: such datasets are left as they were (their labels are not read). A shuffle
    that does not reshuffle is not read through either (outside a from_tensor_slices source):
    its first batch fills the whole buffer (tests/test_review13.py)."""
    import tensorflow as tf

    from dkm_tf.training.data_checks import dataset_labels

    it = iter([(X[:8], np.full(8, 0.5, np.float32)), (X[8:16], Y[8:16].astype(np.float32))])
    ds = tf.data.Dataset.from_generator(lambda: it, output_signature=(
        tf.TensorSpec((None, 4), tf.float32), tf.TensorSpec((None,), tf.float32)))
    assert dataset_labels("train_data", ds) == (None, None)
    assert next(it)[1][0] == 0.5  # not consumed
    shuffled = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(N, seed=3).map(
        lambda a, b: (a, b)).batch(N)
    order = [b.numpy().tolist() for _, b in shuffled]
    assert dataset_labels("train_data", shuffled) == (None, None)
    again = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(N, seed=3).map(
        lambda a, b: (a, b)).batch(N)
    dataset_labels("train_data", again)
    assert [b.numpy().tolist() for _, b in again] == order  # the first epoch's order kept
    fixed = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(
        N, seed=3, reshuffle_each_iteration=False).map(lambda a, b: (a, b)).batch(N)
    assert dataset_labels("train_data", fixed) == (None, None)


def test_valid_datasets_train_as_before(monkeypatch):
    """Nothing valid is refused, and reading the labels changes nothing training sees (the
    same losses as with the labels not read): int and whole-number float labels, a
    PyDataset, one-hot labels with a categorical loss, a binary classifier, a multi-output
    model."""
    import keras
    import tensorflow as tf

    import dkm_tf
    from dkm_tf.pipeline import train_classifier
    from dkm_tf.training import data_checks

    def losses(form):
        return dkm_tf.finetune(_model(), _forms(Y)[form], n_clusters=4, epochs=2)[2].history["loss"]

    read = {form: losses(form) for form in ("slices", "mapped", "pydataset")}
    monkeypatch.setattr(data_checks, "dataset_labels", lambda name, data: (None, None))
    for form, got in read.items():
        np.testing.assert_array_equal(got, losses(form))
    monkeypatch.undo()
    floats = tf.data.Dataset.from_tensor_slices((X, Y.astype(np.float32))).batch(8)
    assert train_classifier(_model(), floats, epochs=1).history["loss"]
    onehot = tf.data.Dataset.from_tensor_slices((X, np.eye(C, dtype=np.float32)[Y])).batch(8)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True)
    assert dkm_tf.finetune(_model(loss=cce), onehot, n_clusters=4, epochs=1)[2]
    binary = tf.data.Dataset.from_tensor_slices((X, (Y > 0).astype(np.float32))).batch(8)
    assert train_classifier(_model(units=1), binary, epochs=1).history["loss"]
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), name="inp")
    two = keras.Model(inp, {"a": keras.layers.Dense(C, name="a")(inp),
                            "b": keras.layers.Dense(2, name="b")(inp)})
    two.compile(loss={"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      "b": "mse"})
    heads = tf.data.Dataset.from_tensor_slices(
        (X, {"a": Y, "b": np.full((N, 2), 0.5, np.float32)})).batch(8)
    assert dkm_tf.finetune(two, heads, n_clusters=4, epochs=1)[2].history["loss"]


# ----------------------------------------------------------------------------- Fisher data
def _fisher(y, loss="sparse_categorical_crossentropy", labels="data"):
    import keras

    from dkm_tf.graph.sensitivity import fisher_importance

    if loss == "sparse_categorical_crossentropy":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = _model()
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    out = fisher_importance(model, (X[:8], y), loss, labels=labels, variables=kernels)
    return [out[id(k)] for k in kernels]


def test_fisher_data_takes_lists_as_the_training_functions_do():
    import keras

    import dkm_tf

    for labels in ("data", "model"):
        for got, want in zip(_fisher(Y[:8].tolist(), labels=labels),
                             _fisher(Y[:8], labels=labels)):
            np.testing.assert_allclose(got, want, rtol=1e-12)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    listed = dkm_tf.share_weights(_model(), 4, weighting="fisher", loss=loss,
                                  data=(X[:8].tolist(), Y[:8].tolist()))
    arrays = dkm_tf.share_weights(_model(), 4, weighting="fisher", loss=loss, data=(X[:8], Y[:8]))
    assert len(listed.palettes) == len(arrays.palettes) == 2
    for got, want in zip(listed.palettes, arrays.palettes):
        np.testing.assert_array_equal(got.codebook, want.codebook)
        np.testing.assert_array_equal(got.indices, want.indices)


@pytest.mark.parametrize("y, error, message", [
    (np.full(8, 0.5, np.float32), ValueError, "whole numbers"),
    (np.r_[Y[:7], 7], ValueError, r"class labels in \[0, 2\]"),
    (np.r_[Y[:7], -1], ValueError, r"class labels in \[0, 2\]"),
    (np.array(["a"] * 8), TypeError, "integer class ids"),
])
def test_fisher_sparse_labels_must_be_class_ids(y, error, message):
    with pytest.raises(error, match=f"argument `data`.*{message}"):
        _fisher(y)


def test_fisher_other_losses_keep_their_targets():
    """Soft labels with a categorical cross-entropy and regression targets are legitimate;
    whole-number float class ids equal integer ones."""
    import keras

    cce = keras.losses.CategoricalCrossentropy(from_logits=True)
    assert all(np.isfinite(f).all() for f in _fisher(np.full((8, C), 1 / C, np.float32), cce))
    assert all(np.isfinite(f).all() for f in _fisher(np.full((8, C), 0.5, np.float32), "mse"))
    for got, want in zip(_fisher(Y[:8].astype(np.float32)), _fisher(Y[:8])):
        np.testing.assert_allclose(got, want, rtol=1e-12)


# -------------------------------------------------------------------- distillation targets
def test_distillation_targets_labels_like_the_training_functions(monkeypatch):
    import keras

    import dkm_tf

    teacher = _model()
    want = dkm_tf.distillation_targets(teacher, X, Y)
    np.testing.assert_array_equal(dkm_tf.distillation_targets(teacher, X, Y.astype(np.float32)),
                                  want)
    with pytest.raises(ValueError, match="argument `labels`.*whole numbers"):
        dkm_tf.distillation_targets(teacher, X, np.full(N, 0.5, np.float32))

    def predict(*args, **kwargs):
        raise AssertionError("predict reached: the labels were not checked first")

    monkeypatch.setattr(keras.Model, "predict", predict)
    with pytest.raises(ValueError, match=r"argument `labels`.*\[0, 3\)"):
        dkm_tf.distillation_targets(teacher, X, np.full(N, 5))
