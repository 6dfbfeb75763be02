"""The forms of training and test data that ``finetune``, ``dkm_retrain``, ``compress`` and
``distillation_targets`` take, and those they refuse before any work.

Refused with a message naming the argument: infinite or empty datasets (``fit`` would never
return, or report a fine-tune that trained nothing), 0 samples, generators and iterators
(read once), datasets without labels or not batched, one-hot labels where class ids are
read. Accepted: a dict of labels for a model with several outputs, as Keras' ``fit`` takes
it, and ``compress(test_data=(x, None))`` (agreement with the float model).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dkm_tf
from dkm_tf import pipeline
from dkm_tf.training import finetune as finetune_module

RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 8)).astype(np.float32)
Y = RNG.integers(0, 3, 32)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
                             keras.layers.Dense(3)], name="tiny")


def _two_outputs(seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((8,), name="x")
    h = keras.layers.Dense(6, activation="relu", name="fc")(i)
    out = {"digit": keras.layers.Dense(3, name="digit")(h),
           "parity": keras.layers.Dense(2, name="parity")(h)}
    model = keras.Model(i, out, name="two_out")
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"digit": sce, "parity": sce})
    return model


def _ds(x=X, y=Y, batch=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


class _Batches(keras.utils.PyDataset):
    def __init__(self, n):
        super().__init__()
        self.n = n

    @property
    def num_batches(self):
        return self.n

    def __getitem__(self, i):
        return X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]


@pytest.fixture
def no_work(monkeypatch):
    """Fail a test that reaches clustering or training (every check comes before them)."""
    def fail(*a, **k):
        pytest.fail("reached the clustering or the training")
    monkeypatch.setattr(keras.Model, "fit", fail)
    monkeypatch.setattr(finetune_module, "cluster_weights", fail)
    monkeypatch.setattr(pipeline, "evaluate_accuracy", fail)


def _run(fn, data):
    if fn == "finetune":
        return dkm_tf.finetune(_model(), data, n_clusters=2, epochs=1)
    if fn == "dkm_retrain":
        return dkm_tf.dkm_retrain(_model(), data, n_clusters=2, epochs=1)
    return dkm_tf.compress(_model(), data, (X, Y), method="finetune", n_clusters=2,
                           finetune_epochs=1, verbose=0)


FUNCTIONS = ["finetune", "dkm_retrain", "compress"]


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_an_infinite_dataset_is_refused_before_any_work(fn, no_work):
    with pytest.raises(ValueError, match=r"`train_data`. Expected a finite dataset .*"
                       r"Received: an infinite tf.data.Dataset .*\.take\(n\)"):
        _run(fn, _ds().repeat())
    with pytest.raises(ValueError, match=r"`train_data`. Expected a finite dataset .*"
                       r"an infinite _Batches"):
        _run(fn, _Batches(None))


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_empty_training_data_is_refused_before_any_work(fn, no_work):
    with pytest.raises(ValueError, match=r"`train_data`. Expected at least 1 sample. "
                       r"Received: x with 0 samples"):
        _run(fn, (X[:0], Y[:0]))
    with pytest.raises(ValueError, match=r"`train_data`. Expected a dataset with at least 1 "
                       r"batch. Received: an empty tf.data.Dataset"):
        _run(fn, _ds().take(0))
    with pytest.raises(ValueError, match=r"an empty _Batches"):
        _run(fn, _Batches(0))


@pytest.mark.filterwarnings("ignore:Your input ran out of data")  # Keras, unknown length
def test_a_dataset_of_unknown_length_still_trains():
    unknown = _ds().filter(lambda x, y: True)
    assert int(unknown.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    _, _, history = dkm_tf.finetune(_model(), unknown, n_clusters=2, epochs=1)
    assert len(history.history["loss"]) == 1
    with pytest.raises(ValueError, match="infinite"):
        dkm_tf.finetune(_model(), unknown.repeat(), n_clusters=2, epochs=1)


def test_empty_test_data_and_inputs_are_refused(no_work):
    with pytest.raises(ValueError, match=r"`test_data`. Expected at least 1 sample"):
        dkm_tf.compress(_model(), None, (X[:0], Y[:0]), n_clusters=2, verbose=0)
    with pytest.raises(ValueError, match=r"`x`. Expected at least 1 sample"):
        dkm_tf.distillation_targets(_model(), X[:0], Y[:0])


@pytest.mark.parametrize("make", [
    lambda: (b for b in [(X[:16], Y[:16]), (X[16:], Y[16:])]),
    lambda: iter(_ds())])
@pytest.mark.parametrize("fn", FUNCTIONS)
def test_generators_and_iterators_are_refused(fn, make, no_work):
    with pytest.raises(TypeError, match=r"`train_data`. Expected an \(x, y\) pair of arrays, "
                       r"a batched tf.data.Dataset or a keras.utils.PyDataset \(a generator "
                       r"or iterator is read once"):
        _run(fn, make())


def test_one_hot_test_labels_are_refused_not_misread(no_work):
    one_hot = np.eye(3, dtype=np.int32)[Y]
    with pytest.raises(ValueError, match=r"`test_data`. Expected labels y of shape "
                       r"\(samples,\) or \(samples, 1\): class ids .*Received: y of shape "
                       r"\(1, 3\)"):
        dkm_tf.compress(_model(), None, (X[:1], one_hot[:1]), n_clusters=2, verbose=0)
    with pytest.raises(ValueError, match=r"`test_data`. Expected labels y of shape"):
        dkm_tf.compress(_model(), None, (X, one_hot.astype(np.float32)), n_clusters=2,
                        verbose=0)


def test_evaluate_accuracy_reads_class_ids_only():
    model = _model()
    pred = model.predict(X, verbose=0).argmax(1)
    assert pipeline.evaluate_accuracy(model, (X, pred[:, None])) == 1.0
    with pytest.raises(ValueError, match=r"`data`. Expected labels y of shape \(samples,\)"):
        pipeline.evaluate_accuracy(model, (X[:1], np.eye(3, dtype=np.int32)[pred[:1]]))


def test_one_hot_labels_for_a_sparse_loss_are_refused_before_clustering(no_work):
    one_hot = np.eye(3, dtype=np.float32)[Y]
    for fn in ("finetune", "dkm_retrain"):
        with pytest.raises(ValueError, match=r"`train_data`. Expected labels y of shape "
                           r"\(samples,\) or \(samples, 1\): class ids, as the sparse "
                           r"categorical cross-entropy loss reads them"):
            _run(fn, (X, one_hot))
    with pytest.raises(ValueError, match=r"`train_data`. Expected labels y of shape"):
        _run("finetune", _ds(y=one_hot))


def test_a_dataset_without_labels_or_batches_is_refused_before_clustering(no_work):
    with pytest.raises(ValueError, match=r"`train_data`. Expected a dataset of \(x, y\) "
                       r"batches \(the loss needs labels y\)"):
        _run("finetune", tf.data.Dataset.from_tensor_slices(X).batch(8))
    with pytest.raises(ValueError, match=r"`train_data`. Expected a batched dataset: elements "
                       r"x of shape \(batch, 8\) .*Received: elements x of shape \(8,\); "
                       r"call .batch\(n\)"):
        _run("finetune", tf.data.Dataset.from_tensor_slices((X, Y)))


def test_a_dict_of_labels_trains_a_model_with_two_outputs():
    labels = {"digit": Y, "parity": Y % 2}
    _, _, history = dkm_tf.finetune(_two_outputs(), (X, labels), n_clusters=2, epochs=1)
    assert np.isfinite(history.history["loss"][0])
    _, history = dkm_tf.dkm_retrain(_two_outputs(), (X[:2], {"digit": Y[:2], "parity": Y[:2] % 2}),
                                    n_clusters=2, epochs=1)
    assert np.isfinite(history.history["loss"][0])
    result = dkm_tf.compress(_two_outputs(), None, (X, labels), n_clusters=2, verbose=0)
    assert result.accuracy_before is None and result.accuracy_after is None
    assert any("2 outputs" in note for note in result.notes)
    with pytest.raises(ValueError, match=r"`train_data`. Expected x and y with the same number "
                       r"of samples .*Received: x: 32, y\['digit'\]: 32, y\['parity'\]: 30"):
        dkm_tf.finetune(_two_outputs(), (X, {"digit": Y, "parity": Y[:30]}), n_clusters=2)


def test_distillation_labels_are_checked_against_x_first():
    teacher = _model()
    with pytest.raises(ValueError, match=r"`labels`. Expected integer class labels of shape "
                       r"\(samples,\) or \(samples, 1\).*Received: labels of shape \(32, 3\)"):
        dkm_tf.distillation_targets(teacher, X, np.eye(3, dtype=np.int32)[Y])
    with pytest.raises(ValueError, match=r"`labels`. Expected one label per sample of x "
                       r"\(32\). Received: 30 labels"):
        dkm_tf.distillation_targets(teacher, X, Y[:30])
    assert dkm_tf.distillation_targets(teacher, X, Y[:, None]).shape == (32, 6)


def test_unlabelled_test_inputs_give_the_agreement_with_the_float_model():
    result = dkm_tf.compress(_model(), None, (X, None), n_clusters=2, verbose=0)
    assert result.metric == "agreement with the float model"
    assert result.accuracy_before == 1.0 and 0.0 <= result.accuracy_after <= 1.0
    assert "agreement with the float model" in result.summary()
