"""The export/ command-line tools: thin absl wrappers over dkm_tf.export.cli."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from test_export_tflite import clustered_copy

from dkm_tf.export import cli
from dkm_tf.models import digits_cnn

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = digits_cnn()
    palettes = clustered_copy(model, 8)
    model.save(d / "m.keras")
    (d / "palettes.json").write_text(json.dumps([p.to_dict() for p in palettes]))
    np.save(d / "x.npy", np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1)).astype("f4"))
    return d


def test_run_to_tflite_with_palettes_file(saved):
    r = cli.run_to_tflite(saved / "m.keras", palettes_path=saved / "palettes.json",
                          samples_path=saved / "x.npy", decode="per_invoke")
    assert r.path == str(saved / "m.palettized_per_invoke.tflite")
    assert pathlib.Path(r.path).exists() and all(c.ok for c in r.comparisons)
    assert "palettized weights: 4" in cli.run_inspect(r.path)


def test_run_to_tflite_clusters_when_asked(saved, tmp_path):
    out = tmp_path / "k4.tflite"
    r = cli.run_to_tflite(saved / "m.keras", out, n_clusters=4)
    assert {t["K"] for t in r.tensors} == {4}
    assert any("float inputs standard normal" in n for n in r.notes)
    with pytest.raises(ValueError, match="either `palettes_path` or `n_clusters`"):
        cli.run_to_tflite(saved / "m.keras", out, n_clusters=4,
                          palettes_path=saved / "palettes.json")


def test_run_to_tflite_kept_dtype(saved, tmp_path):
    """The auto policy keeps the digits CNN's convs float; kept_dtype='float16' halves them."""
    reports = {kd: cli.run_to_tflite(saved / "m.keras", tmp_path / f"{kd}.tflite",
                                     palettes_path=saved / "palettes.json",
                                     samples_path=saved / "x.npy", kept_dtype=kd)
               for kd in ("float32", "float16")}
    kept = {kd: {t["palette"]: t["storage"] for t in r.tensors if t.get("kept")}
            for kd, r in reports.items()}
    assert kept["float32"] and set(kept["float32"]) == set(kept["float16"])
    assert set(kept["float16"].values()) == {"float16 (kept)"}
    assert reports["float16"].bytes < reports["float32"].bytes


def test_scripts_run(saved):
    out = saved / "cli.tflite"
    cmd = [sys.executable, str(ROOT / "export" / "to_tflite.py"), f"--model={saved / 'm.keras'}",
           f"--palettes={saved / 'palettes.json'}", f"--output={out}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                              "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "palettized/once" in res.stdout and out.exists()
    res = subprocess.run([sys.executable, str(ROOT / "export" / "inspect_tflite.py"),
                          f"--tflite={out}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "palette indices (once, K=8)" in res.stdout


def _script(*args):
    return subprocess.run([sys.executable, str(ROOT / "export" / "to_tflite.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                               "PATH": "/usr/bin:/bin"})


def test_script_refuses_existing_output(saved, tmp_path):
    """An existing file (given or the default name) is never replaced without --overwrite."""
    model = tmp_path / "m.keras"
    model.write_bytes((saved / "m.keras").read_bytes())
    for out, flag in ((tmp_path / "mine.tflite", [f"--output={tmp_path / 'mine.tflite'}"]),
                      (tmp_path / "m.palettized.tflite", [])):   # the default output name
        out.write_bytes(b"the main job's file")
        res = _script(f"--model={model}", f"--palettes={saved / 'palettes.json'}", *flag)
        assert res.returncode == 2, res.stderr[-2000:]
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, res.stderr
        assert "--overwrite" in lines[0] and str(out) in lines[0] and "exists" in lines[0]
        assert out.read_bytes() == b"the main job's file"
        assert "Traceback" not in res.stderr


def test_script_overwrite_replaces(saved, tmp_path):
    out = tmp_path / "old.tflite"
    out.write_bytes(b"stale")
    res = _script(f"--model={saved / 'm.keras'}", f"--palettes={saved / 'palettes.json'}",
                  f"--output={out}", "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "palettized/once" in res.stdout
    data = out.read_bytes()
    assert data != b"stale" and data[4:8] == b"TFL3"   # a real flatbuffer replaced it


@pytest.mark.parametrize("args, expected", [
    (["--n_clusters=0"], "argument `n_clusters`"),  # used to blame `palettes`
    (["--palettes={x}"], "Invalid palettes file .*it is not JSON"),
    (["--palettes={p}", "--samples={junk}"], "Invalid samples file .*a .npy array or a .npz"),
])
def test_script_bad_input_is_one_line_and_writes_nothing(saved, tmp_path, args, expected):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an array")
    out = tmp_path / "o.tflite"
    fill = {"x": saved / "x.npy", "p": saved / "palettes.json", "junk": junk}
    res = _script(f"--model={saved / 'm.keras'}", f"--output={out}",
                  *[a.format(**fill) for a in args])
    assert res.returncode == 1, res.stderr[-2000:]
    ours = [line for line in res.stderr.splitlines() if line.startswith("to_tflite.py")]
    assert len(ours) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]  # + TF's logs
    assert ours[0].startswith("to_tflite.py: error: ") and re.search(expected, ours[0]), ours
    assert not out.exists()


def test_samples_from_an_npz_like_dkm_tf_compress_reads(saved, tmp_path):
    x = np.load(saved / "x.npy")
    np.savez(tmp_path / "d.npz", x_train=x[:1], x_test=x)
    np.testing.assert_array_equal(cli.load_samples(tmp_path / "d.npz"), x)
    np.savez(tmp_path / "one.npz", inputs=x)
    np.testing.assert_array_equal(cli.load_samples(tmp_path / "one.npz"), x)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(ValueError, match=r"x_test or x_train, or one array; it has \['a', 'b'\]"):
        cli.load_samples(tmp_path / "two.npz")
