"""Follow-ups of the probes: overrides that cluster nothing, the fine-tuning learning rate
under per-layer K, the interpreter named in the export notes and the formats table, a
dataset given to ``distillation_targets``, and ``tflite_accuracy`` on files an older
TensorFlow's ``tf.lite`` cannot run at a batch.

Each test says what the old code did (measured before the fix). Old TensorFlow versions are
faked (``tf.__version__``) and LiteRT hidden, as in test_versions_policy.py; the files read
are real ones written by this TensorFlow.
"""

import io

import numpy as np
import pytest
import tensorflow as tf

import dkm_tf
import dkm_tf.export as ex
from dkm_tf import cli, cli_tables, pipeline
from dkm_tf.core import interpreters as core
from dkm_tf.export import interpreters as exp_interpreters
from dkm_tf.export import verify
from dkm_tf.graph.share import share_weights
from dkm_tf.models import digits_cnn

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, (12, 8, 8, 1)).astype(np.float32)
Y = np.arange(12) % 10


def _dense(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)),
                             keras.layers.Dense(16, activation="relu", name="d1"),
                             keras.layers.Dense(3, name="d2")])


XD = RNG.normal(size=(32, 8)).astype(np.float32)
YD = np.arange(32) % 3


# --- a) overrides leaving every layer float: refused before any work ---------------------

@pytest.mark.parametrize("method", pipeline.METHODS)
@pytest.mark.parametrize("overrides", [{"Dense": None}, {"d1": None, "d2": None}])
def test_compress_refuses_overrides_that_leave_nothing_to_cluster(monkeypatch, method,
                                                                  overrides):
    """Old: "dkm" / "dkm+finetune" raised attach_regularizer's "n_clusters={'d1': None, ...}
    gives no K" only once re-training began (after the test-set evaluation); "finetune"
    fine-tuned the float model for nothing (0 palettes, 0.59 s), "wr" returned 0 palettes."""
    from dkm_tf.graph import share
    from dkm_tf.training import finetune, retrain

    def never(*a, **k):
        raise AssertionError("work started")

    for module, name in ((retrain, "dkm_retrain"), (finetune, "finetune"),
                         (pipeline, "evaluate_accuracy"), (pipeline, "share_weights"),
                         (share, "share_weights")):
        monkeypatch.setattr(module, name, never)
    with pytest.raises(ValueError, match=r"`overrides`.*at least one layer clustered.*"
                       r"Received: overrides=.*leave every clusterable layer of model "
                       r"'sequential\w*' float \(d1, d2\)"):
        pipeline.compress(_dense(), (XD, YD), (XD, YD), method=method, overrides=overrides,
                          verbose=0, dkm_epochs=1, finetune_epochs=1)


def test_compress_keeps_overrides_that_leave_one_layer_clustered():
    res = pipeline.compress(_dense(), (XD, YD), method="wr", overrides={"d2": None},
                            n_clusters=4, verbose=0)
    assert [p.layer_name for p in res.palettes] == ["d1"]


def test_cli_refuses_before_training_the_builtin_model(monkeypatch, tmp_path, capsys):
    """Old: `dkm-tf compress --method dkm --overrides '{"Dense": null, "Conv2D": null}'`
    trained the built-in CNN (30 epochs by default), then failed with exit 1
    (attach_regularizer: "gives no K to any of the kernels"). New: usage error, exit 2."""
    def never(*a, **k):
        raise AssertionError("the built-in model was trained")

    monkeypatch.setattr(pipeline, "train_classifier", never)
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--method", "dkm", "--overrides",
                  '{"Dense": null, "Conv2D": null}', "--epochs", "1", "--notflite",
                  "--noplots", "--quiet", "--output_dir", str(tmp_path / "o")],
                 stdout=out, stderr=err)
    text = err.getvalue()
    assert rc == 2, text
    assert "invalid --overrides" in text and "at least one layer clustered" in text
    assert "(conv1, conv2, fc1, fc2)" in text and not (tmp_path / "o").exists()


# --- b) fine-tuning learning rate from the smallest per-layer K --------------------------

@pytest.mark.parametrize("k,overrides,lr", [
    (16, None, 1e-4),
    (16, {"d1": {"n_clusters": 2}}, 1e-3),  # old: 1e-4 (read the global K only)
    (4, {"Dense": {"n_clusters": 16}}, 1e-4),  # old: 1e-3
    (16, {"Dense": {"n_clusters": 4}, "d2": None}, 1e-3),  # old: 1e-4
    (2, {"d1": None}, 1e-3),
    (16, {"d1": None, "d2": {"n_clusters": 3}}, 1e-3),  # old: 1e-4
])
@pytest.mark.parametrize("method", ["finetune", "dkm+finetune"])
def test_finetune_learning_rate_follows_the_smallest_clustered_k(monkeypatch, method, k,
                                                                 overrides, lr):
    from dkm_tf.training import finetune

    seen, real = [], finetune.finetune

    def spy(*a, **kw):
        seen.append(kw["learning_rate"])
        return real(*a, **kw)

    monkeypatch.setattr(finetune, "finetune", spy)
    pipeline.compress(_dense(), (XD, YD), method=method, n_clusters=k, overrides=overrides,
                      verbose=0, finetune_epochs=1, dkm_epochs=1)
    assert seen == [lr]


def test_an_explicit_finetune_learning_rate_is_kept(monkeypatch):
    from dkm_tf.training import finetune

    seen, real = [], finetune.finetune
    monkeypatch.setattr(finetune, "finetune", lambda *a, **kw: (
        seen.append(kw["learning_rate"]), real(*a, **kw))[1])
    pipeline.compress(_dense(), (XD, YD), method="finetune", n_clusters=16, verbose=0,
                      overrides={"d1": {"n_clusters": 2}}, finetune_learning_rate=5e-4,
                      finetune_epochs=1)
    assert seen == [5e-4]


# --- e) the TFLM note names the TFLite Micro interpreter ----------------------------------

needs_tflm = pytest.mark.skipif(not ex.tflm_available(), reason="needs tflite-micro")


@pytest.fixture(scope="module")
def clustered():
    model = digits_cnn()
    _, palettes, _ = share_weights(model, 4, inplace=True)
    return model, palettes


@needs_tflm
@pytest.mark.parametrize("version,litert", [("2.21.0", False), ("2.20.0", True),
                                            ("2.18.0", False)])
def test_tflm_notes_name_the_interpreter_that_verified_it(monkeypatch, tmp_path, clustered,
                                                         version, litert):
    """Old: without LiteRT the TFLM file's notes said "verified with tf.lite.Interpreter
    only"; under 2.20 with LiteRT "verified with ai_edge_litert only"; under 2.18 without
    LiteRT the export raised RuntimeError. Every one was verified in TFLite Micro alone."""
    model, palettes = clustered
    monkeypatch.setattr(verify, "litert_available", lambda: litert)
    monkeypatch.setattr(tf, "__version__", version)
    rep = ex.to_tflite(model, tmp_path / "m.tflite", "tflm", palettes, X[:4])
    assert [c.interpreter for c in rep.comparisons] == ["tflm"] and rep.comparisons[0].ok
    text = " ".join(rep.notes)
    assert "tf.lite" not in text and "ai_edge_litert" not in text, rep.notes
    assert "verified in the TFLite Micro interpreter" in text


def test_other_formats_keep_their_interpreter_note(monkeypatch, tmp_path, clustered):
    model, _ = clustered
    monkeypatch.setattr(verify, "litert_available", lambda: False)
    rep = ex.to_tflite(model, tmp_path / "f.tflite", "float", None, X[:4])
    assert [c.interpreter for c in rep.comparisons] == ["tflite"]
    assert any("verified with tf.lite.Interpreter only" in n for n in rep.notes)


# --- d) the formats table names the runtime that timed and scored the files --------------

def _report(kind, fmt="float"):
    comp = verify.Comparison(kind, 0.0, 0.0, 1e-5, 4)
    return ex.ExportReport(f"m.{fmt}.tflite", fmt, "", 1000, 900, 1000, 1000, 250, [],
                           [comp], [])


@pytest.mark.parametrize("kind,name", [("tflite", "tf.lite"), ("litert", "LiteRT")])
def test_table_legend_names_the_runtime_of_the_reports(kind, name):
    """Old: "LiteRT on 1 CPU thread" / "in LiteRT" whatever interpreter ran the files."""
    reports = {"float": _report(kind), "int8": _report(kind, "int8")}
    text = cli_tables.tflite_table(reports, {"float": 0.9, "int8": 0.9})
    assert f"batch 1, {name} on 1 CPU thread" in text
    assert f"top-1 accuracy of the file in {name}, test set" in text
    other = {"tf.lite": "LiteRT", "LiteRT": "tf.lite"}[name]
    assert other not in text
    assert cli_tables.table_runtime(reports) == name


def test_table_legend_without_interpreter_information_names_both():
    reports = {"float": _report("tflite"), "int8": _report("litert", "int8")}
    assert cli_tables.table_runtime(reports) == "LiteRT or tf.lite"
    assert cli_tables.table_runtime({}) == "LiteRT or tf.lite"
    assert cli_tables.table_runtime({"tflm": _report("tflm", "tflm")}) == "LiteRT or tf.lite"


# --- f) distillation_targets with a dataset x ---------------------------------------------

def _datasets():
    import keras

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return XD[i * 8:(i + 1) * 8]

    return {"dataset (x, y)": tf.data.Dataset.from_tensor_slices((XD, YD)).batch(8),
            "dataset x": tf.data.Dataset.from_tensor_slices(XD).batch(8),
            "dataset x of 1-sample batches": tf.data.Dataset.from_tensor_slices(XD).batch(1),
            "PyDataset": Batches(), "generator": (XD[i:i + 8] for i in range(0, 32, 8))}


@pytest.mark.parametrize("label", list(_datasets()))
def test_distillation_targets_refuses_a_dataset_x(label):
    """Old: "Expected one label per sample of x (4). Received: 32 labels" (4 = batches); a
    dataset of 32 one-sample batches passed that check; a generator: "object of type
    'generator' has no len()"."""
    with pytest.raises(TypeError, match=r"Invalid type for argument `x`\. Expected inputs as "
                       r"arrays aligned with `labels`.*dataset or generator is not accepted"):
        dkm_tf.distillation_targets(_dense(), _datasets()[label], YD)


def test_distillation_targets_still_takes_arrays_and_tensors():
    teacher = _dense()
    ref = dkm_tf.distillation_targets(teacher, XD, YD)
    assert ref.shape == (32, 6)
    np.testing.assert_allclose(dkm_tf.distillation_targets(teacher, tf.constant(XD), YD), ref,
                               atol=1e-6)
    np.testing.assert_allclose(dkm_tf.distillation_targets(teacher, XD.tolist(), YD), ref,
                               atol=1e-6)


# --- g) tflite_accuracy checks the file before tf.lite runs it at a batch ------------------

@pytest.fixture(scope="module")
def int8_files(tmp_path_factory, clustered):
    """A dynamic-range int8 file and a decode="per_invoke" K=4 file (INT2 indices)."""
    out = tmp_path_factory.mktemp("acc")
    model, palettes = clustered
    ex.to_tflite(model, out / "dyn.tflite", "int8", None, X[:4], int8_mode="dynamic")
    ex.to_tflite(model, out / "int2.tflite", "palettized", palettes, X[:4],
                 decode="per_invoke")
    return out / "dyn.tflite", out / "int2.tflite"


@pytest.fixture
def batches_run(monkeypatch):
    """The batch sizes each interpreter that tflite_accuracy makes is invoked at."""
    real, seen = exp_interpreters.make_interpreter, []

    class Spy:
        def __init__(self, it):
            self.it = it

        def __getattr__(self, name):
            return getattr(self.it, name)

        def invoke(self):
            seen.append(int(self.it.get_input_details()[0]["shape"][0]))
            return self.it.invoke()

    monkeypatch.setattr(exp_interpreters, "make_interpreter",
                        lambda *a, **k: Spy(real(*a, **k)))
    return seen


def _old_tf_lite_only(monkeypatch, version):
    monkeypatch.setattr(core, "litert_available", lambda: False)
    monkeypatch.setattr(tf, "__version__", version)


def test_tflite_accuracy_runs_dynamic_int8_one_sample_at_a_time_on_2_19(
        monkeypatch, int8_files, batches_run):
    """Old: tf.lite ran the dynamic-range int8 file at batch 12 (batch 256, capped by the
    samples) after allocating it at batch 1: on TensorFlow 2.19 a segmentation fault."""
    reference = pipeline.tflite_accuracy(int8_files[0], (X, Y))  # this TensorFlow, batched
    assert max(batches_run) == len(X)
    batches_run.clear()
    _old_tf_lite_only(monkeypatch, "2.19.1")
    acc = pipeline.tflite_accuracy(int8_files[0], (X, Y))
    assert batches_run == [1] * len(X)
    assert acc == pytest.approx(reference, abs=1 / len(X))
    notes = []
    assert pipeline.tflite_accuracy(int8_files[0], (X, Y), notes=notes) == acc
    assert len(notes) == 1 and "one sample per invoke" in notes[0]
    assert "dynamic-range int8 file at batch 12" in notes[0]


def test_tflite_accuracy_skips_an_int2_file_with_a_note(monkeypatch, int8_files, batches_run):
    """Old: tf.lite of TensorFlow 2.19 / 2.20 was asked to load the INT2 file ("Unsupported
    data type 19 in tensor"); faked here, the old code ran it and returned a number."""
    _old_tf_lite_only(monkeypatch, "2.20.0")
    assert pipeline.tflite_accuracy(int8_files[1], (X, Y)) is None
    assert batches_run == []
    notes = []
    assert pipeline.tflite_accuracy(int8_files[1], (X, Y), notes=notes) is None
    assert len(notes) == 1 and "cannot load INT2 tensors" in notes[0]
    assert "pip install 'dkm-tf[litert]'" in notes[0]


def test_tflite_accuracy_on_2_20_runs_dynamic_int8_batched(monkeypatch, int8_files,
                                                          batches_run):
    _old_tf_lite_only(monkeypatch, "2.20.0")
    notes = []
    assert pipeline.tflite_accuracy(int8_files[0], (X, Y), notes=notes) is not None
    assert max(batches_run) == len(X) and notes == []
