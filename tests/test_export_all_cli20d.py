"""`export_all` with a refused ``"tflm"`` target; ``int8_scales`` from the export command line.

* TFLite Micro refuses a depthwise kernel clustered per channel (one value table per tensor,
  <= 128 values): `export_all(..., targets=("float", "tflm", "int8"))` raised, after writing
  the float file, so no report came back and int8 was never written. Now every other target is
  written and reported, the refusal is in the returned reports' ``refused`` with the reason and
  a UserWarning says so (as the ``"int8_full"`` target of a recurrent model is skipped); when
  no target is left, the refusal is raised. A file that disagrees with Keras
  (ExportVerificationError) is refused alike, whatever its format, as `dkm-tf compress` does.
* ``run_to_tflite`` / ``inapplicable_flags`` (the library side of ``export/to_tflite.py``)
  take ``int8_scales``: ``"shared"`` keeps <= K distinct int8 values in a per-tensor palette's
  weight (counted in the written file, 16 against 93 with the converter's per-channel scales).
"""

import importlib
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from dkm_tf.export import cli
from dkm_tf.graph.share import share_weights
from dkm_tf.pipeline import save_palettes

ea = importlib.import_module("dkm_tf.export.export_all")  # the module, not the function
X_DW = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def depthwise():
    """16 channels x 9 weights, clustered per channel at K=16: 144 values, > 128."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 16)), keras.layers.DepthwiseConv2D(3, name="dw"),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="fc")])
    shared = share_weights(model, 16)
    return shared.model, shared.palettes


def test_a_refused_tflm_target_keeps_the_other_reports(depthwise, tmp_path):
    model, palettes = depthwise
    with pytest.warns(UserWarning, match=r"did not write target 'tflm'.*'dw/kernel'.*"
                                         r"other targets were written: \['float', 'int8'\]"):
        reports = ea.export_all(model, palettes, tmp_path, X_DW,
                                targets=("float", "tflm", "int8"))
    assert list(reports) == ["float", "int8"]
    assert all(r.format == label for label, r in reports.items())
    assert sorted(os.listdir(tmp_path)) == ["model.float.tflite", "model.int8.tflite"]
    assert list(reports.refused) == ["tflm"]
    assert "Invalid palette 'dw/kernel' for format='tflm': 144 distinct values" in \
        reports.refused["tflm"]


def test_tflm_alone_refused_is_raised(depthwise, tmp_path):
    model, palettes = depthwise
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: the error says it
        with pytest.raises(ValueError, match=r"Invalid palette 'dw/kernel' for format='tflm'"):
            ea.export_all(model, palettes, tmp_path, X_DW, targets=["tflm"])
    assert os.listdir(tmp_path) == []


def test_tflm_not_installed_is_refused_not_silently_skipped(depthwise, tmp_path, monkeypatch):
    model, palettes = depthwise
    monkeypatch.setattr(ea, "tflm_available", lambda: False)
    with pytest.warns(UserWarning, match=r"'tflm'.*tflite-micro is not installed"):
        reports = ea.export_all(model, palettes, tmp_path, X_DW, targets=["float", "tflm"])
    assert list(reports) == ["float"] and "not installed" in reports.refused["tflm"]


def test_a_verification_refusal_keeps_the_other_reports(depthwise, tmp_path, monkeypatch):
    """As `dkm-tf compress` does: a file that disagrees with Keras is refused, the others
    written (a bad argument, any other ValueError, is still raised)."""
    model, palettes = depthwise
    real = ea.to_tflite

    def to_tflite(*a, **k):
        if k["format"] == "fp16":
            raise ea.ExportVerificationError("Refusing to write: relative error 0.9 (test)")
        if k["format"] == "int8":
            raise ValueError("Invalid value for argument `x` (test)")
        return real(*a, **k)

    monkeypatch.setattr(ea, "to_tflite", to_tflite)
    with pytest.warns(UserWarning, match=r"did not write target 'fp16'.*0\.9 \(test\)"):
        reports = ea.export_all(model, palettes, tmp_path, X_DW, targets=["fp16", "float"])
    assert list(reports) == ["float"] and "0.9 (test)" in reports.refused["fp16"]
    with pytest.raises(ValueError, match=r"argument `x` \(test\)"):
        ea.export_all(model, palettes, tmp_path, X_DW, targets=["float", "int8"])


def test_a_refused_target_removes_an_earlier_runs_file(depthwise, tmp_path, monkeypatch):
    # review of 2ecf713: the earlier run's model.fp16.tflite (another model's) stayed beside
    # the fresh files under the refused target's name, untouched
    model, palettes = depthwise
    earlier = tmp_path / "model.fp16.tflite"
    earlier.write_bytes(b"TFL3 an earlier run's file")
    real = ea.to_tflite

    def to_tflite(*a, **k):
        if k["format"] == "fp16":
            raise ea.ExportVerificationError("Refusing to write: relative error 0.9 (test)")
        return real(*a, **k)

    monkeypatch.setattr(ea, "to_tflite", to_tflite)
    with pytest.warns(UserWarning, match=r"did not write target 'fp16'.*earlier run left"):
        reports = ea.export_all(model, palettes, tmp_path, X_DW, targets=["fp16", "float"])
    assert not earlier.exists() and (tmp_path / "model.float.tflite").is_file()
    assert "the file an earlier run left at" in reports.refused["fp16"]


# --- int8_scales on the export command line (library side) ---------------------------------

@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    """A conv whose output channels span 1/16 .. 1 of one range, clustered per tensor at
    K=16: the converter's per-channel scales map its 16 values to many int8 values."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(16, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(16, name="fc")])
    conv = model.get_layer("conv")
    conv.kernel.assign(np.asarray(conv.kernel) * (np.arange(16) + 1) / 16.0)
    shared = share_weights(model, 16)
    folder = tmp_path_factory.mktemp("scales20d")
    shared.model.save(folder / "m.keras")
    save_palettes(shared.palettes, folder / "m.keras")
    np.save(folder / "x.npy", np.random.default_rng(0).uniform(-1, 1, (8, 6, 6, 8))
            .astype(np.float32))
    return folder


def test_run_to_tflite_int8_scales(int8_model, tmp_path):
    distinct = {}
    for scales in ("per_channel", "shared"):
        rep = cli.run_to_tflite(int8_model / "m.keras", tmp_path / f"{scales}.tflite",
                                format="int8", int8_scales=scales,
                                palettes_path=int8_model / "m.palettes.json",
                                samples_path=int8_model / "x.npy")
        distinct[scales] = {t["palette"]: t["int8_distinct_total"] for t in rep.tensors}
    assert distinct["per_channel"]["conv/kernel"] > 16           # 93: scales per channel
    assert distinct["shared"] == {"conv/kernel": 16, "fc/kernel": 16}


def test_int8_scales_flag_checks(tmp_path):
    assert cli.inapplicable_flags("int8", int8_scales="shared", palettes=True) == []
    [line] = cli.inapplicable_flags("palettized", int8_scales="shared", palettes=True)
    assert line.startswith("Invalid flag `--int8_scales`: it applies only to --format=int8 "
                           "with palettes")
    assert "--int8_scales=shared with --format=palettized" in line
    [line] = cli.inapplicable_flags("int8", int8_scales="shared")
    assert line.endswith("--format=int8 and neither --palettes nor --n_clusters")
    with pytest.raises(ValueError, match=r"`int8_scales`. Expected one of \['per_channel', "
                                         r"'shared'\]. Received: int8_scales='tensor'"):
        cli.inapplicable_flags("int8", int8_scales="tensor")
    # refused before the model file is read (it does not exist)
    missing = tmp_path / "missing.keras"
    with pytest.raises(ValueError, match=r"Invalid value for argument `int8_scales`"):
        cli.run_to_tflite(missing, tmp_path / "o.tflite", format="int8", int8_scales="per_tensor")
    with pytest.raises(ValueError, match=r"`int8_scales` applies only to format='int8' with "
                                         r"palettes.*palettes=None"):
        cli.run_to_tflite(missing, tmp_path / "o.tflite", format="int8", int8_scales="shared")


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _script(*args):  # export/to_tflite.py's absl flags clash with dkm_tf.cli's: a subprocess
    return subprocess.run([sys.executable, str(ROOT / "export" / "to_tflite.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_script_int8_scales(int8_model, tmp_path):
    m, pal = int8_model / "m.keras", int8_model / "m.palettes.json"
    res = _script(f"--model={m}", f"--palettes={pal}", "--format=int8", "--int8_scales=shared",
                  f"--samples={int8_model / 'x.npy'}", f"--output={tmp_path / 's.tflite'}")
    assert res.returncode == 0, res.stderr
    assert "int8_distinct_per_channel=16" in res.stdout and "<= K distinct int8" in res.stdout
    res = _script(f"--model={m}", f"--palettes={pal}", "--format=int8", "--int8_scales=tensor")
    assert res.returncode == 2 and "<per_channel|shared>" in res.stderr
    res = _script(f"--model={m}", "--format=int8", "--int8_scales=shared")
    assert res.returncode == 2 and "neither --palettes nor --n_clusters" in res.stderr
