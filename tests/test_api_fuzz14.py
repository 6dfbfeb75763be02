"""Argument fuzz of the public API (session 14): one bad argument at a time.

Each case below failed before this session's fixes: a bad value accepted (silently wrong
or trained on), an exception that does not name the argument, a raw numpy / Keras error,
or a numpy scalar (``np.int64``, ``np.float32``) refused where a Python number is taken.
Every refusal is a ``ValueError`` / ``TypeError`` naming the argument, raised before any
k-means, training or prediction.
"""

import numpy as np
import pytest

import dkm_tf

V = np.random.default_rng(0).standard_normal(50)
LAYOUT = dkm_tf.layout_for((4, 3), "dense")


def _energy():
    from dkm_tf import energy  # noqa: PLC0415

    return energy


def _fc():
    return _energy().dense_shape("fc", in_features=4, units=3)


def _tensor(**kw):
    return dkm_tf.cluster_tensor(np.zeros((4, 3), np.float32), kind="dense", n_clusters=2, **kw)


CASES = [
    # k-means: empty input named (was "Cannot cluster an empty array.")
    ("cluster_values empty", lambda: dkm_tf.cluster_values(np.zeros(0), 2), ValueError,
     r"`x`.*at least one value.*shape \(0,\)"),
    ("cluster_values no vectors", lambda: dkm_tf.cluster_values(np.zeros((0, 2)), 2),
     ValueError, r"`x`.*non-empty \(N, d\).*shape \(0, 2\)"),
    # assignment_entropy (was OverflowError / a numpy UFuncTypeError)
    ("entropy K beyond int32", lambda: dkm_tf.assignment_entropy(np.array([0, 1]), 2**64),
     ValueError, r"`n_clusters`.*<= 2,147,483,647.*n_clusters=18446744073709551616"),
    ("entropy of text", lambda: dkm_tf.assignment_entropy(np.array(["a", "b"])), ValueError,
     r"`indices`.*integers >= 0.*<U1"),
    # count_unique's axis (True counted along axis 1; others raised raw errors)
    ("count_unique axis True", lambda: dkm_tf.count_unique(np.zeros((3, 4)), axis=True),
     TypeError, r"`axis`.*integer in \[-2, 2\).*axis=True of type bool"),
    ("count_unique axis float", lambda: dkm_tf.count_unique(np.zeros((3, 4)), axis=1.0),
     TypeError, r"`axis`.*axis=1.0 of type float"),
    ("count_unique axis str", lambda: dkm_tf.count_unique(np.zeros((3, 4)), axis="1"),
     TypeError, r"`axis`.*axis='1'"),
    ("count_unique axis out of range", lambda: dkm_tf.count_unique(np.zeros((3, 4)), axis=5),
     ValueError, r"`axis`.*\[-2, 2\).*axis=5"),
    ("count_unique axis huge", lambda: dkm_tf.count_unique(np.zeros((3, 4)), axis=2**64),
     ValueError, r"`axis`"),
    # units: the argument of the wrong shape is named
    ("to_units kernel of another shape", lambda: dkm_tf.to_units(np.zeros((3, 4)), LAYOUT),
     ValueError, r"`kernel`.*\(4, 3\).*kernel of shape \(3, 4\)"),
    ("to_units kernel None", lambda: dkm_tf.to_units(None, LAYOUT), ValueError,
     r"`kernel`.*shape \(\)"),
    ("from_units units of another shape", lambda: dkm_tf.from_units(np.zeros((1, 11, 1)),
                                                                     LAYOUT), ValueError,
     r"`units`.*\(1, 12, 1\).*units of shape \(1, 11, 1\)"),
    # palette names (a non-str name matched no layer: accepted before)
    ("cluster_tensor layer_name None", lambda: _tensor(layer_name=None), TypeError,
     r"`layer_name`.*str.*None"),
    ("cluster_tensor weight_name int", lambda: _tensor(weight_name=3), TypeError,
     r"`weight_name`.*str.*3 of type int"),
    # energy
    ("estimate_layer kept_fraction nan", lambda: _energy().estimate_layer(
        _fc(), kept_fraction=float("nan")), ValueError, r"`kept_fraction`.*\(0, 1\]"),
    ("estimate_layer kept_fraction str", lambda: _energy().estimate_layer(
        _fc(), kept_fraction="1"), TypeError, r"`kept_fraction`.*'1' of type str"),
    ("estimate_shapes model_name int", lambda: _energy().estimate_shapes(
        [_fc()], model_name=3), TypeError, r"`model_name`.*str.*3 of type int"),
    ("estimate_shapes notes one str", lambda: _energy().estimate_shapes(
        [_fc()], notes="a note"), TypeError, r"`notes`.*list or tuple of strings.*'a note'"),
    ("estimate_shapes skipped one str", lambda: _energy().estimate_shapes(
        [_fc()], skipped="a"), TypeError, r"`skipped`.*\(name, reason\) pairs"),
    ("estimate_shapes skipped not pairs", lambda: _energy().estimate_shapes(
        [_fc()], skipped=[("a", "b", "c")]), ValueError, r"`skipped`.*\(name, reason\)"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_argument_is_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_numpy_scalars_are_taken_where_numbers_are():
    energy = _energy()
    np.testing.assert_allclose(energy.estimate_layer(_fc(), kept_fraction=np.float32(1.0))
                               .paper_total, energy.estimate_layer(_fc()).paper_total)
    half = energy.estimate_layer(_fc(), kept_fraction=np.float64(0.5))
    assert half.kept_fraction == 0.5 and isinstance(half.kept_fraction, float)
    x = np.arange(12).reshape(3, 4) % 2
    np.testing.assert_array_equal(dkm_tf.count_unique(x, axis=np.int64(-1)), [1, 1, 1, 1])
    assert dkm_tf.assignment_entropy(np.array([0, 1]), np.int64(2)) == 1.0


def test_notes_and_skipped_as_lists_still_work():
    r = _energy().estimate_shapes([_fc()], notes=["n1"], skipped=[["pool", "no weights"]],
                                  model_name="m")
    assert r.notes == ("n1",) and r.skipped == (("pool", "no weights"),)


# ------------------------------------------------------------------ Keras-level entry points
@pytest.fixture(scope="module")
def m():
    import types  # noqa: PLC0415

    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    ns = types.SimpleNamespace()
    ns.dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d1"),
                                 keras.layers.Dense(3, name="d2")], name="dense")
    ns.conv = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="c1"),
                                keras.layers.Flatten(), keras.layers.Dense(3, name="fc")],
                               name="conv")
    rng = np.random.default_rng(0)
    ns.x = rng.standard_normal((16, 4)).astype(np.float32)
    ns.xc = rng.standard_normal((16, 6, 6, 1)).astype(np.float32)
    ns.y = np.arange(16) % 3
    return ns


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if Keras trains or predicts: refusals come before any work."""
    import keras  # noqa: PLC0415

    def work(*args, **kwargs):
        raise AssertionError("work started before the argument was refused")

    for name in ("fit", "predict"):
        monkeypatch.setattr(keras.Model, name, work)


def _nan(x):
    x = x.copy()
    x[3, ...] = np.nan
    return x


MODEL_CASES = [
    # NaN inputs trained NaN weights and failed only at the palette ("the codebook holds NaN")
    ("finetune NaN x", lambda m: dkm_tf.finetune(m.dense, (_nan(m.x), m.y), epochs=1),
     ValueError, r"`train_data`.*finite samples.*NaN or infinite values among 64"),
    ("finetune NaN val x", lambda m: dkm_tf.finetune(m.dense, (m.x, m.y), (_nan(m.x), m.y),
                                                     epochs=1), ValueError, r"`val_data`.*finite"),
    ("dkm_retrain NaN x", lambda m: dkm_tf.dkm_retrain(m.conv, (_nan(m.xc), m.y),
                                                       n_clusters=2, epochs=1), ValueError,
     r"`train_data`.*finite samples"),
    # finetune's seed reaches keras.utils.set_random_seed (< 2**32)
    ("finetune seed 2**32", lambda m: dkm_tf.finetune(m.dense, (m.x, m.y), epochs=1,
                                                      seed=2**32), ValueError,
     r"`seed`.*\[0, 4294967295\].*seed=4294967296"),
    # distillation_targets: num_classes checked (was a numpy UFuncTypeError, a label error
    # for True / -1, or accepted: 2.5 and 0), batch_size bounded, NaN x refused
    ("distillation num_classes str", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, num_classes="3"), TypeError, r"`num_classes`.*num_classes='3'"),
    ("distillation num_classes True", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, num_classes=True), TypeError, r"`num_classes`.*of type bool"),
    ("distillation num_classes float", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, num_classes=3.0), TypeError, r"`num_classes`.*3.0 of type float"),
    ("distillation num_classes 0", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, num_classes=0), ValueError, r"`num_classes`.*integer in \[2, "),
    ("distillation num_classes not the teacher's", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, num_classes=5), ValueError,
     r"`num_classes`.*teacher's output width, 3.*num_classes=5"),
    ("distillation batch_size huge", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, batch_size=2**64), ValueError, r"`batch_size`"),
    ("distillation NaN x", lambda m: dkm_tf.distillation_targets(m.dense, _nan(m.x), m.y),
     ValueError, r"`x`.*finite samples.*NaN inputs give NaN targets"),
    # DistillationLoss: an infinite temperature was taken
    ("DistillationLoss temperature inf", lambda m: dkm_tf.DistillationLoss(
        3, temperature=float("inf")), ValueError, r"`temperature`.*finite number > 0"),
    ("DistillationLoss alpha str", lambda m: dkm_tf.DistillationLoss(3, alpha="0.5"),
     TypeError, r"`alpha`.*'0.5' of type str"),
    # callbacks: verbose / log_penalty (int() took "1", 1.7 and -3; 1 passed as True)
    ("RefreshKMeans verbose str", lambda m: dkm_tf.RefreshKMeans(verbose="1"), TypeError,
     r"`verbose`.*verbose='1'"),
    ("RefreshKMeans verbose float", lambda m: dkm_tf.RefreshKMeans(verbose=1.7), TypeError,
     r"`verbose`.*1.7 of type float"),
    ("RefreshKMeans verbose negative", lambda m: dkm_tf.RefreshKMeans(verbose=-3), ValueError,
     r"`verbose`.*\[0, 2\].*verbose=-3"),
    ("RefreshKMeans log_penalty 1", lambda m: dkm_tf.RefreshKMeans(log_penalty=1),
     ValueError, r"`log_penalty`.*True, False, 'batch' or 'epoch'.*log_penalty=1"),
    ("ReassignClusters verbose negative", lambda m: dkm_tf.ReassignClusters(verbose=-1),
     ValueError, r"`verbose`.*\[0, 2\].*verbose=-1"),
    # export
    ("to_tflite empty path", lambda m: dkm_tf.export.to_tflite(m.dense, "", "float"),
     ValueError, r"`path`.*an empty path: path=''"),
    ("export_all a target twice", lambda m: dkm_tf.export.export_all(
        m.dense, None, ".", m.x, targets=["float", "float"]), ValueError,
     r"`targets`.*distinct labels.*\['float', 'float'\]"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_bad_model_argument_is_named_before_any_work(m, no_work, tmp_path, monkeypatch,
                                                     call, error, pattern):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=pattern):
        call(m)
    assert not list(tmp_path.iterdir())  # no file left behind


def test_numpy_scalars_reach_keras_as_python_numbers(m):
    """np.int64 seeds / epochs and np.float32 temperatures were refused (by Keras'
    set_random_seed, dkm_retrain's epochs check, DistillationLoss)."""
    model, palettes, history = dkm_tf.finetune(m.dense, None, epochs=0, n_clusters=2,
                                               seed=np.int64(0))
    assert history is None and palettes
    clone, hist = dkm_tf.dkm_retrain(m.conv, (m.xc, m.y), n_clusters=2, epochs=np.int64(1),
                                     batch_size=8)
    assert len(hist.history["loss"]) == 1
    loss = dkm_tf.DistillationLoss(3, temperature=np.float32(2.0), alpha=np.float64(0.25))
    assert (loss.temperature, loss.alpha) == (2.0, 0.25)
    assert isinstance(loss.temperature, float)
    targets = dkm_tf.distillation_targets(m.dense, m.x, m.y, num_classes=np.int64(3),
                                          batch_size=np.int64(8))
    assert targets.shape == (16, 6)
    assert dkm_tf.RefreshKMeans(verbose=np.int64(1), log_penalty=np.True_).log_penalty is True
    assert dkm_tf.RefreshKMeans(verbose=True).verbose == 1
    assert dkm_tf.ReassignClusters(verbose=np.True_).verbose == 1


def _pm():
    from dkm_tf import pipeline_metrics  # noqa: PLC0415

    return pipeline_metrics


PIPELINE_CASES = [
    # compress named `learning_rate` (finetune's name) and took inf, which trained NaN
    # weights and failed at the palette
    ("compress finetune_learning_rate inf", lambda m: dkm_tf.compress(
        m.dense, (m.x, m.y), method="finetune", finetune_learning_rate=float("inf"),
        verbose=0), ValueError, r"`finetune_learning_rate`.*finite number > 0"),
    ("compress finetune_learning_rate str", lambda m: dkm_tf.compress(
        m.dense, (m.x, m.y), method="finetune", finetune_learning_rate="0.01", verbose=0),
     TypeError, r"`finetune_learning_rate`.*'0.01' of type str"),
    # a progress that is no Progress failed mid-run with an AttributeError
    ("compress progress str", lambda m: dkm_tf.compress(m.dense, progress="bar", verbose=0),
     TypeError, r"`progress`.*dkm_tf.progress.Progress.*'bar' of type str"),
    # accuracy helpers: batch sizes / max_samples reached Keras or the interpreter loop
    ("evaluate_accuracy batch_size float", lambda m: _pm().evaluate_accuracy(
        m.dense, (m.x, m.y), batch_size=8.0), TypeError, r"`batch_size`.*8.0 of type float"),
    ("evaluate_accuracy batch_size 0", lambda m: _pm().evaluate_accuracy(
        m.dense, (m.x, m.y), batch_size=0), ValueError, r"`batch_size`.*\[1, 2147483647\]"),
    ("evaluate_accuracy batch_size True", lambda m: _pm().evaluate_accuracy(
        m.dense, (m.x, m.y), batch_size=True), TypeError, r"`batch_size`.*of type bool"),
    ("float_predictions batch_size huge", lambda m: _pm().float_predictions(
        m.dense, m.x, batch_size=2**64), ValueError, r"`batch_size`"),
    ("agreement_data batch_size -1", lambda m: _pm().agreement_data(
        m.dense, m.x, batch_size=-1), ValueError, r"`batch_size`.*batch_size=-1"),
    ("tflite_accuracy max_samples 0", lambda m: _pm().tflite_accuracy(
        "missing.tflite", (m.x, m.y), max_samples=0), ValueError,
     r"`max_samples`.*>= 1.*max_samples=0"),
    ("tflite_accuracy batch_size str", lambda m: _pm().tflite_accuracy(
        "missing.tflite", (m.x, m.y), batch_size="8"), TypeError, r"`batch_size`.*'8'"),
    ("tflite_accuracy path None", lambda m: _pm().tflite_accuracy(None, (m.x, m.y)),
     TypeError, r"`path`.*\.tflite file path.*None"),
    ("tflite_accuracy threshold nan", lambda m: _pm().tflite_accuracy(
        "missing.tflite", (m.x, m.y), threshold=float("nan")), ValueError, r"`threshold`"),
    # export_all: a stem of dots named hidden files "..float.tflite"
    ("export_all stem '..'", lambda m: dkm_tf.export.export_all(
        m.dense, None, ".", m.x, targets=["float"], stem=".."), ValueError,
     r"`stem`.*not only dots.*stem='\.\.'"),
    # data
    ("load_mnist verify str", lambda m: dkm_tf.data.load_mnist("nowhere", verify="no"),
     TypeError, r"`verify`.*bool.*verify='no'"),
    ("load_npz path int", lambda m: dkm_tf.data.load_npz(3), TypeError,
     r"`path`.*\.npz file path.*path=3 of type int"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in PIPELINE_CASES],
                         ids=[c[0] for c in PIPELINE_CASES])
def test_bad_pipeline_argument_is_named_before_any_work(m, no_work, tmp_path, monkeypatch,
                                                        call, error, pattern):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=pattern):
        call(m)
    assert not list(tmp_path.iterdir())


def test_compress_takes_a_numpy_or_scheduled_finetune_learning_rate(m, capsys):
    """np.float32(1e-3) was refused by finetune's check; a LearningRateSchedule with
    verbose=1 crashed formatting the log line ('unsupported format string')."""
    import keras  # noqa: PLC0415

    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
    for lr, shown in ((np.float32(1e-3), "lr 0.001"), (schedule, "lr ExponentialDecay")):
        r = dkm_tf.compress(m.dense, (m.x, m.y), method="finetune", n_clusters=4,
                            finetune_epochs=1, finetune_learning_rate=lr, batch_size=8,
                            verbose=1)
        assert r.palettes and shown in capsys.readouterr().out


def test_numpy_scalars_in_data_and_export(m, tmp_path):
    (x_tr, _), (x_te, _) = dkm_tf.data.load_digits(test_fraction=np.float32(0.25),
                                                   seed=np.int64(0))
    assert len(x_te) == round(1797 * 0.25) and len(x_tr) + len(x_te) == 1797
    # np.int64 runs / threads passed export_all's check, then benchmark_latency refused them
    reports = dkm_tf.export.export_all(m.dense, None, tmp_path, m.x, targets=["float"],
                                       latency=True, runs=np.int64(2),
                                       threads=(np.int64(1),))
    assert reports["float"].latency["1t"]["median_ms"] > 0
