"""The dkm-tf command: plain functions and the real entry point."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app
from testing import small_cnn

from dkm_tf import cli


def test_run_compress_builtin_demo(tmp_path, capsys):
    result = cli.run_compress(None, method="wr", epochs=3, n_clusters=8,
                              output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "CR log2K" in out and "test accuracy" in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "clustered.keras", "report.json", "clustered.float.tflite", "clustered.int8.tflite",
        "clustered.palettized.tflite", "clustered.palettized_per_invoke.tflite"}
    assert "palettized" in out and "ms (1 thread)" in out
    report = json.loads((tmp_path / "report.json").read_text())
    sizes = {k: v["bytes"] for k, v in report["tflite"].items()}
    assert sizes["palettized"] == (tmp_path / "clustered.palettized.tflite").stat().st_size
    assert sizes["palettized"] < 0.3 * sizes["float"]
    assert sizes["palettized_per_invoke"] < sizes["palettized"]
    assert report["method"] == "wr"
    assert len(report["size"]["rows"]) == 4
    assert 0.0 <= report["accuracy_after"] <= 1.0
    for p in result.palettes:
        kernel = getattr(result.model.get_layer(p.layer_name), p.weight_name).numpy()
        assert np.unique(kernel).size <= 8


def test_run_compress_user_model(tmp_path):
    path = tmp_path / "user.keras"
    small_cnn().save(path)
    result = cli.run_compress(str(path), n_clusters=4, unit="row", granularity="per_channel",
                              output_dir=str(tmp_path / "out"), tflite=False)
    assert result.method == "wr" and result.accuracy_before is None
    assert ("bn", result.skipped[0][1]) == result.skipped[0]
    assert (tmp_path / "out" / "clustered.keras").is_file()


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        cli.run_compress(str(tmp_path / "nope.keras"), output_dir=str(tmp_path))
    assert not (tmp_path / "clustered.keras").exists()


def test_usage_errors():
    with pytest.raises(app.UsageError, match="Expected a command"):
        cli.main(["dkm-tf"])
    with pytest.raises(app.UsageError, match="Expected a command"):
        cli.main(["dkm-tf", "shrink"])


def test_entry_point_end_to_end(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "dkm_tf.cli", "compress", "--epochs", "2", "--method", "wr",
         "--n_clusters", "4", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "whole model" in proc.stdout
    assert (tmp_path / "clustered.keras").is_file()
    bad = subprocess.run([sys.executable, "-m", "dkm_tf.cli", "compress", "--unit", "filter"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "filter" in bad.stderr


def test_run_energy_on_a_saved_model(tmp_path):
    path = tmp_path / "m.keras"
    small_cnn().save(path)
    text = cli.run_energy(str(path))
    assert "TOTAL" in text and "c1" in text
    with pytest.raises(FileNotFoundError):
        cli.run_energy(str(tmp_path / "missing.keras"))


def test_builtin_demo_defaults_to_finetuning(tmp_path):
    result = cli.run_compress(None, epochs=2, finetune_epochs=1, n_clusters=4, tflite=False,
                              output_dir=str(tmp_path))
    assert result.method == "finetune"
    for p in result.palettes:
        kernel = getattr(result.model.get_layer(p.layer_name), p.weight_name).numpy()
        assert np.unique(kernel).size <= 4
