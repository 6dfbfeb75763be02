"""Data and override checks of the training entry points, made before any work.

``finetune`` / ``dkm_retrain`` read Python lists of numbers as arrays (a list ``y`` was an
IndexError after the clustering), refuse labels that match no class (0.5 was truncated by the
loss, strings failed inside ``fit``, 5 of 3 classes failed there) and datasets that repeat
forever behind a ``.filter`` (``fit`` never returned); an infinite PyDataset is told to set a
finite ``num_batches`` (not ``.take(n)``, which it has not). ``distillation_targets`` reads a
list ``x`` (was "object of type 'float' has no len()"). ``cluster_weights(weighting="fisher")``
refuses an ``init`` or per-layer ``preserve_sparsity`` it would ignore (before the Fisher
pass), and ``unit="kernel"`` with a codebook refuses override keys that name no layer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dkm_tf
from dkm_tf.graph import kernel_share, sensitivity
from dkm_tf.training import finetune as finetune_module
from dkm_tf.training import retrain as retrain_module

RNG = np.random.default_rng(0)
X = RNG.standard_normal((24, 8)).astype(np.float32)
Y = RNG.integers(0, 3, 24)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model(units=3, activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu",
                                                                    name="d1"),
                             keras.layers.Dense(units, activation=activation, name="d2")],
                            name="tiny")


def _conv_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="c1"),
                             keras.layers.Conv2D(4, 3, name="c2")], name="convs")


class _Work(Exception):
    """Raised by the first expensive step: the checks passed."""


@pytest.fixture
def no_work(monkeypatch):
    """The first expensive step of each entry point raises :class:`_Work`."""
    def work(*a, **k):
        raise _Work
    monkeypatch.setattr(finetune_module, "cluster_weights", work)
    monkeypatch.setattr(retrain_module, "copy_model", work)
    monkeypatch.setattr(sensitivity, "fisher_importance", work)
    monkeypatch.setattr(kernel_share, "cluster_groups", work)
    for name in ("fit", "predict"):
        monkeypatch.setattr(keras.Model, name, work)


def _finetune(data, model=None):
    return dkm_tf.finetune(model or _model(), data, n_clusters=2, epochs=1, seed=0)


def _retrain(data, model=None):
    return dkm_tf.dkm_retrain(model or _model(), data, n_clusters=2, epochs=1, seed=0)


TRAINERS = [pytest.param(_finetune, id="finetune"), pytest.param(_retrain, id="dkm_retrain")]


def test_lists_of_numbers_train_as_arrays():
    # was IndexError: tuple index out of range (Keras read list(y) as 24 label sets)
    want = _finetune((X, Y))[0].get_weights()
    got = _finetune((X.tolist(), list(Y)))[0].get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    model, history = _retrain((X, list(Y)))
    assert len(history.history["loss"]) == 1


@pytest.mark.parametrize("train", TRAINERS)
@pytest.mark.parametrize("labels, error, match", [
    (Y + 0.5, ValueError, "whole numbers"),          # was truncated by the loss, trained
    (Y.astype(str), TypeError, "map class names"),    # was "Invalid dtype" inside fit
    (Y + 5, ValueError, r"labels in \[0, 2\]"),       # was a loss error inside fit
])
def test_labels_that_match_no_class_are_refused_before_any_work(train, labels, error, match,
                                                                 no_work):
    with pytest.raises(error, match=f"argument `train_data`.*{match}"):
        train((X, labels))


@pytest.mark.parametrize("train", TRAINERS)
def test_val_labels_are_checked_too(train, no_work):
    fn = (lambda d, v: dkm_tf.finetune(_model(), d, v, n_clusters=2, epochs=1)) \
        if train is _finetune else (lambda d, v: dkm_tf.dkm_retrain(_model(), d, v,
                                                                    n_clusters=2, epochs=1))
    with pytest.raises(ValueError, match=r"argument `val_data`.*labels in \[0, 2\]"):
        fn((X, Y), (X, Y + 3))


def test_labels_the_loss_reads_as_they_are_pass(monkeypatch):
    seen = []

    def fit(self, x, y=None, **kwargs):
        seen.append(np.asarray(y))
        raise _Work
    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(_Work):  # whole-number floats: class ids
        _finetune((X, Y.astype(np.float32)))
    assert seen[-1].dtype.kind == "i" and np.array_equal(seen[-1], Y)
    with pytest.raises(_Work):  # soft labels of a binary cross-entropy stay as they are
        _finetune((X, np.full(24, 0.3, np.float32)), _model(1, "sigmoid"))
    assert np.allclose(seen[-1], 0.3)
    model = _model(2)
    model.compile(loss="mse")  # integer regression targets: no class range
    with pytest.raises(_Work):
        _retrain((X, RNG.integers(0, 9, (24, 2))), model)


@pytest.mark.parametrize("train", TRAINERS)
def test_a_dataset_that_repeats_forever_behind_a_filter_is_refused(train, no_work):
    ds = tf.data.Dataset.from_tensor_slices((X, Y))
    with pytest.raises(ValueError, match=r"\.repeat\(\) without a count, counter"):  # was: hung
        train(ds.repeat().filter(lambda x, y: y >= 0).batch(8))
    with pytest.raises(_Work):  # bounded: trains
        train(ds.repeat().filter(lambda x, y: y >= 0).take(24).batch(8))


def test_repeats_forever_has_one_home():
    from dkm_tf import pipeline_args, pipeline_metrics
    from dkm_tf.training import data_checks

    assert pipeline_args.repeats_forever is data_checks.repeats_forever
    assert pipeline_args.check_labels is data_checks.check_labels
    assert pipeline_metrics.class_ids is data_checks.class_ids
    assert pipeline_metrics.as_arrays is data_checks.as_arrays


class _Endless(keras.utils.PyDataset):
    def __init__(self):
        super().__init__()

    @property
    def num_batches(self):
        return None

    def __getitem__(self, index):
        return X[:8], Y[:8]


@pytest.mark.parametrize("train", TRAINERS)
def test_an_infinite_pydataset_is_told_what_it_can_do(train, no_work):
    with pytest.raises(ValueError, match="infinite _Endless") as info:
        train(_Endless())
    assert "finite num_batches" in str(info.value)
    assert ".take(" not in str(info.value) and ".repeat(" not in str(info.value)


def test_distillation_targets_read_a_list_of_numbers():
    teacher = _model()
    want = dkm_tf.distillation_targets(teacher, X, Y)
    got = dkm_tf.distillation_targets(teacher, X.tolist(), list(Y))  # was a TypeError
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kwargs, match", [
    ({"init": "random"}, r"argument `init`.*'kmeans\+\+'"),
    ({"overrides": {"d1": {"init": "random"}}}, r"overrides\['d1'\].*init='kmeans\+\+'"),
    ({"overrides": {"Dense": {"preserve_sparsity": True}}},
     r"overrides\['Dense'\].*preserve_sparsity=False"),  # was raised after the Fisher pass
])
def test_fisher_weighting_refuses_settings_it_would_ignore(kwargs, match, no_work):
    # init was silently ignored: the weighted k-means runs its own k-means++
    with pytest.raises(ValueError, match=match):
        dkm_tf.cluster_weights(_model(), 2, weighting="fisher", data=(X, Y), loss=LOSS,
                               **kwargs)
    with pytest.raises(_Work):  # the same without those settings reaches the Fisher pass
        dkm_tf.cluster_weights(_model(), 2, weighting="fisher", data=(X, Y), loss=LOSS,
                               overrides={"d1": {"n_clusters": 3}})


def test_fisher_weighting_clusters_with_allowed_overrides():
    out = dkm_tf.cluster_weights(_model(), 2, weighting="fisher", data=(X, Y), loss=LOSS,
                                 overrides={"d1": {"n_clusters": 3}, "d2": None})
    _, palettes = dkm_tf.strip_clustering(out)
    assert [(p.layer_name, p.n_clusters) for p in palettes] == [("d1", 3)]


def test_kernel_codebook_refuses_override_keys_that_name_no_layer(no_work):
    # was silently ignored: every conv clustered, the typo excluded nothing
    with pytest.raises(ValueError, match=r"Keys \['c_1'\] match no layer.*'c_1' -> \['c1'\]"):
        dkm_tf.cluster_weights(_conv_model(), 2, unit="kernel", codebook="shared",
                               overrides={"c_1": None})
    with pytest.raises(ValueError, match=r"Keys \['Conv3D'\]"):
        dkm_tf.cluster_weights(_conv_model(), 2, unit="kernel", codebook="layer",
                               overrides={"Conv3D": None})
    with pytest.raises(_Work):  # a real key reaches the k-means
        dkm_tf.cluster_weights(_conv_model(), 2, unit="kernel", codebook="shared",
                               overrides={"c1": None})


def test_kernel_codebook_override_leaves_a_layer_float():
    out, report = dkm_tf.cluster_weights(_conv_model(), 2, unit="kernel", codebook="shared",
                                         overrides={"c1": None}, return_report=True)
    assert [row[0] for row in report.clustered] == ["c2"]
    assert "c1" in [row[0] for row in report.skipped]
    assert out.get_layer("c1").__class__ is keras.layers.Conv2D
