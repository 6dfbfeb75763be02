"""Data forms that gave silently wrong figures or crashed late, found by a probe of the data
users hand to ``compress``, ``evaluate_accuracy``, ``train_classifier`` and ``--dataset``.

Labels must be class ids: fractional floats (0.5, truncated by the loss and matching no class
in the accuracy), strings and labels outside the model's classes are refused before any work;
whole-number floats, booleans and Python lists are read as class ids. A dataset that repeats
forever behind a ``.filter`` (unknown length) is refused instead of hanging. Train and test
inputs scaled differently (0-255 against [0, 1]) get a note. ``.npz`` inputs that are not real
numbers are refused from the headers.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import subclassed_model

import dkm_tf
from dkm_tf import data, pipeline
from dkm_tf.training import finetune as finetune_module

RNG = np.random.default_rng(0)
X = RNG.standard_normal((40, 8)).astype(np.float32)
Y = RNG.integers(0, 3, 40)


def _model(activation=None, units=3, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
                             keras.layers.Dense(units, activation=activation)], name="tiny")


def _recount(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == np.ravel(y)))


@pytest.fixture
def no_work(monkeypatch):
    """Fail a test that reaches prediction, clustering or training."""
    def fail(*a, **k):
        pytest.fail("reached the prediction, the clustering or the training")
    for name in ("fit", "predict"):
        monkeypatch.setattr(keras.Model, name, fail)
    monkeypatch.setattr(finetune_module, "cluster_weights", fail)


def _compress(train, test, method="finetune", model=None):
    return dkm_tf.compress(model or _model(), train, test, method=method, n_clusters=2,
                           finetune_epochs=1, verbose=0)


@pytest.mark.parametrize("labels, error, match", [
    (Y + 0.5, ValueError, "whole numbers"),            # was 0.0 accuracy
    (Y.astype(str), TypeError, "map class names"),      # was 0.0 accuracy
    (Y + 5, ValueError, r"labels in \[0, 2\]"),         # was 0.0 accuracy
    (np.zeros(0, int), ValueError, "at least 1 sample"),  # was UnboundLocalError in Keras
])
def test_evaluate_accuracy_refuses_labels_that_match_no_class(labels, error, match, no_work):
    x = X[:0] if labels.size == 0 else X
    with pytest.raises(error, match=match):
        pipeline.evaluate_accuracy(_model(), (x, labels))


def test_evaluate_accuracy_checks_a_subclassed_models_classes_from_its_scores():
    keras.utils.set_random_seed(0)
    model = subclassed_model(3, None)  # no output_shape before it runs
    with pytest.raises(ValueError, match=r"labels in \[0, 2\]"):  # was 0.0
        pipeline.evaluate_accuracy(model, (X, Y + 3))
    assert pipeline.evaluate_accuracy(model, (X, Y)) == _recount(model, X, Y)


def test_evaluate_accuracy_reads_lists_floats_and_refuses_a_dataset():
    model = _model()
    want = _recount(model, X, Y)
    assert pipeline.evaluate_accuracy(model, (X, list(Y))) == want  # was None (per output)
    assert pipeline.evaluate_accuracy(model, (X.tolist(), Y)) == want  # was a Keras error
    assert pipeline.evaluate_accuracy(model, (X, Y.astype(np.float32))) == want
    two_batches = tf.data.Dataset.from_tensor_slices((X, Y)).batch(20)  # was unpacked: None
    with pytest.raises(TypeError, match=r"an \(x, y\) pair"):
        pipeline.evaluate_accuracy(model, two_batches)


@pytest.mark.parametrize("which", ["train", "test"])
@pytest.mark.parametrize("labels, error, match", [
    (Y + 0.5, ValueError, "whole numbers"),  # train: truncated to Y by the loss; test: 0.0
    (Y.astype(str), TypeError, "map class names"),  # train: failed in fit; test: 0.0
    ((Y + 5).astype(np.float64), ValueError, r"labels in \[0, 2\]"),  # test: 0.0
])
def test_compress_refuses_labels_that_are_not_class_ids(which, labels, error, match, no_work):
    train, test = ((X, labels), (X, Y)) if which == "train" else ((X, Y), (X, labels))
    with pytest.raises(error, match=f"{which}_data"):
        _compress(train, test)
    with pytest.raises(error, match=match):
        _compress(train, test)


def test_compress_reads_python_lists_and_whole_number_float_labels():
    model = _model()
    result = _compress((X.tolist(), list(Y)), (X, Y.astype(np.float32)), model=model)
    assert result.accuracy_before == _recount(model, X, Y)  # was an IndexError inside fit
    assert result.accuracy_after == _recount(result.model, X, Y)
    wr = dkm_tf.compress(model, None, (X, list(Y)), method="wr", n_clusters=2, verbose=0)
    assert wr.accuracy_before == _recount(model, X, Y)  # was None: no accuracy, no note
    assert wr.accuracy_after == _recount(wr.model, X, Y)


def test_a_dataset_that_repeats_forever_behind_a_filter_is_refused(no_work):
    ds = tf.data.Dataset.from_tensor_slices((X, Y))
    endless = ds.repeat().filter(lambda x, y: y >= 0).batch(8)  # cardinality unknown: hung
    assert int(endless.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    with pytest.raises(ValueError, match=r"\.repeat\(\) without a count, counter"):
        _compress(endless, (X, Y))
    with pytest.raises(ValueError, match=r"\.repeat\(\) without a count, counter"):
        pipeline.train_classifier(_model(), endless, epochs=1)
    from dkm_tf.pipeline_args import repeats_forever

    assert not repeats_forever(ds.repeat(2).filter(lambda x, y: y >= 0).batch(8))
    assert not repeats_forever(endless.take(3))
    assert not repeats_forever(ds.batch(8))


def test_train_and_test_inputs_on_other_scales_get_a_note():
    pixels = np.round(255 * (X - X.min()) / (X.max() - X.min()))
    unit = (pixels / 255).astype(np.float32)
    result = dkm_tf.compress(_model(), (unit, Y), (pixels.astype(np.uint8), Y), method="wr",
                             n_clusters=2, verbose=0)
    (note,) = [n for n in result.notes if "scaled differently" in n]
    lo, hi = np.percentile(pixels, [1, 99])
    assert f"test_data inputs in [{lo:.4g}, {hi:.4g}]" in note
    same = dkm_tf.compress(_model(), (unit, Y), (unit, Y), method="wr", n_clusters=2, verbose=0)
    assert not any("scaled differently" in n for n in same.notes)


def test_one_outlier_or_an_all_zero_side_is_no_other_scale():
    """The note compared min / max: one count of 300 among values 0-2, or a test set of
    all-zero one-hot rows, said "scaled differently?" of data on one scale."""
    from dkm_tf.pipeline_args import input_range_note

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 3, (500, 6)).astype(np.float32)
    outlier = counts.copy()
    outlier[0, 0] = 300
    assert input_range_note((outlier, None), (counts[:50], None)) is None
    assert input_range_note((counts, None), (np.zeros((20, 6), np.float32), None)) is None
    assert input_range_note((counts, None), (255 * counts[:50], None)) is not None


@pytest.mark.parametrize("activation, units, loss, from_logits", [
    (None, 3, keras.losses.SparseCategoricalCrossentropy, True),
    ("softmax", 3, keras.losses.SparseCategoricalCrossentropy, False),  # was from_logits=True
    ("sigmoid", 1, keras.losses.BinaryCrossentropy, False),  # was a crash in fit
])
def test_train_classifier_fits_the_loss_to_the_output(activation, units, loss, from_logits):
    model = _model(activation, units)
    y = Y % 2 if units == 1 else Y
    history = pipeline.train_classifier(model, (X, y), epochs=1, batch_size=8)
    assert isinstance(model.loss, loss) and model.loss.from_logits == from_logits
    assert np.isfinite(history.history["loss"]).all()


def test_train_classifier_checks_labels_before_fitting(no_work):
    with pytest.raises(ValueError, match=r"labels in \[0, 2\]"):  # was a NaN loss on GPU
        pipeline.train_classifier(_model(), (X, Y + 3), epochs=1)
    with pytest.raises(ValueError, match="whole numbers"):
        pipeline.train_classifier(_model(), (X, Y + 0.5), epochs=1)


def test_train_classifier_trains_on_every_batch_of_a_dataset():
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)  # was unpacked into fit(x, y)
    history = pipeline.train_classifier(_model(), ds, epochs=1)
    assert len(history.history["loss"]) == 1


@pytest.mark.parametrize("x", [
    X.astype(np.complex64),  # was cast silently (imaginary part dropped)
    X.astype(str),           # was parsed from text silently
    np.zeros(40, dtype=[("a", "f4"), ("b", "f4")])[:, None],  # was a TypeError from numpy
])
def test_npz_inputs_that_are_not_real_numbers_are_refused(tmp_path, x):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=Y, x_test=x, y_test=Y)
    with pytest.raises(data.DatasetFileError, match="real numbers"):
        data.check_npz(path)
    with pytest.raises(data.DatasetFileError, match="real numbers"):
        data.load_dataset(str(path))


@pytest.mark.parametrize("kind", ["subclassed", "subclassed_called", "sequential_no_input"])
def test_train_classifier_takes_models_without_an_output_shape(kind):
    """train_classifier read model.output_shape, which a subclassed model and a Sequential
    built without an Input do not have (AttributeError; they trained before)."""
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d1, self.d2 = keras.layers.Dense(6), keras.layers.Dense(3)

        def call(self, x):
            return self.d2(self.d1(x))

    model = (Sub() if kind.startswith("subclassed") else
             keras.Sequential([keras.layers.Dense(6), keras.layers.Dense(3)]))
    if kind.endswith("called"):
        model(X[:1])
    history = pipeline.train_classifier(model, (X, Y), epochs=1)
    assert np.isfinite(history.history["loss"][-1])


@keras.saving.register_keras_serializable(package="dkm_tf_tests")
class _NanGate(keras.layers.Layer):
    def call(self, t):
        return keras.ops.where(t[:, :1] < 0, np.nan, 0.0)


def _nan_rows_model():
    """Three class scores, NaN for the inputs whose first feature is negative."""
    inp = keras.Input((8,))
    gate = _NanGate()(inp)
    out = keras.layers.Add()([keras.layers.Dense(3, name="fc")(inp), gate])
    return keras.Model(inp, out)


def test_agreement_leaves_out_inputs_where_the_float_model_outputs_nan():
    """Held-out inputs without labels: rows where the float model outputs NaN predicted -1,
    and compress then refused its own labels ("labels from -1 to 2")."""
    keras.utils.set_random_seed(0)
    model = _nan_rows_model()
    result = dkm_tf.compress(model, test_data=(X, None), n_clusters=4, verbose=0)
    bad = int((X[:, 0] < 0).sum())
    assert 0 < bad < len(X)
    assert any(f"NaN for {bad} of {len(X)} held-out inputs" in n for n in result.notes)
    keep = X[:, 0] >= 0
    ref = np.argmax(model.predict(X[keep], verbose=0), -1)
    assert result.accuracy_before == 1.0
    got = np.argmax(result.model.predict(X[keep], verbose=0), -1)
    assert result.accuracy_after == pytest.approx(np.mean(got == ref))
    with pytest.raises(ValueError, match="outputs NaN"):
        dkm_tf.compress(model, test_data=(X[~keep], None), n_clusters=4, verbose=0)


def test_float16_labels_give_no_overflow_warning():
    from dkm_tf.pipeline_metrics import class_ids

    np.testing.assert_array_equal(class_ids(Y.astype(np.float16)), Y)  # warnings are errors

