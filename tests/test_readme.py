"""The README's Quick tour runs exactly as written, and what it prints is right.

The code block after the ``quick-tour`` marker under "## Quick tour" is extracted verbatim,
run in a fresh interpreter in an empty temp folder, and its printed numbers are checked
against independent figures: the digits CNN's parameter counts, the Deep Compression size
formula, the files it wrote, accuracy bounds, and the "before" accuracy of ``compress``.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARKER = "<!-- quick-tour:"


def tour_code():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick tour\n"):]
    after = section[section.index(MARKER):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("\n```", start) + 1]


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    work = tmp_path_factory.mktemp("tour")
    (work / "tour.py").write_text(tour_code())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "tour.py"], cwd=work, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc.stdout


def _float(pattern, out):
    m = re.search(pattern, out)
    assert m, f"{pattern!r} not in the output:\n{out[-3000:]}"
    return float(m.group(1))


def test_tour_block_is_a_whole_program():
    code = tour_code()
    assert "(...)" not in code and "..." not in code   # no placeholder arguments
    compile(code, "README quick tour", "exec")
    for name in ("data.load_digits()", "models.digits_cnn()", "share_weights",
                 "cluster_weights", "strip_clustering", "attach_regularizer", "to_tflite",
                 "Interpreter", "energy.estimate", "dkm_tf.compress"):
        assert name in code


def test_tour_accuracies(tour):
    _, out = tour
    base = _float(r"float model: accuracy ([0-9.]+), 38282 params", out)
    assert 0.90 <= base <= 1.0
    assert _float(r"share_weights K=16: accuracy ([0-9.]+)", out) >= base - 0.03
    finetuned = _float(r"cluster_weights K=4 \+ fine-tuning: accuracy ([0-9.]+)", out)
    assert finetuned >= 0.85
    assert _float(r"regularizer \+ k-means K=4: accuracy ([0-9.]+)", out) >= 0.75
    # the palettized file in LiteRT classifies like the Keras model it came from (450 images)
    litert = _float(r"palettized .tflite in LiteRT: accuracy ([0-9.]+)", out)
    assert abs(litert - finetuned) <= 1 / 450 + 1e-9
    # compress() got the untouched model: its "before" is the float model's accuracy
    before = _float(r"test accuracy: ([0-9.]+)% before", out)
    assert before == pytest.approx(100 * base, abs=0.006)
    assert _float(r"% before, ([0-9.]+)% after", out) >= 85.0


def test_tour_size_report(tour):
    _, out = tour
    # digits CNN: kernels 3*3*1*16, 3*3*16*32, 512*64, 64*10; biases 16+32+64+10 = 122
    n = {"conv1": 144, "conv2": 4608, "fc1": 32768, "fc2": 640}
    for name, count in n.items():
        assert re.search(rf"{name}/kernel\s+scalar\s+1\s+{count}\s+16\s+4\s", out), name
    assert "whole model (122 other params at 32 bits)" in out
    # Deep Compression: CR = N·32 / (N·log2 K + K·32), plus 122 float params on both sides
    orig = (sum(n.values()) + 122) * 32
    comp = sum(c * 4 + 16 * 32 for c in n.values()) + 122 * 32
    assert _float(r"whole model \(122 other params at 32 bits\): CR ([0-9.]+)x", out) == \
        pytest.approx(orig / comp, abs=0.006)
    clustered = sum(n.values()) * 32 / sum(c * 4 + 16 * 32 for c in n.values())
    assert _float(r"clustered tensors: CR ([0-9.]+)x", out) == pytest.approx(clustered,
                                                                            abs=0.006)


def test_tour_files_and_energy(tour):
    work, out = tour
    pal = (work / "digits.tflite").stat().st_size
    flt = (work / "digits_float.tflite").stat().st_size
    assert f"bytes: palettized {pal}, float {flt}" in out
    assert pal < 0.3 * flt
    assert "palettized/once: digits.tflite" in out
    e_float = _float(r"energy \(hierarchy model\): float file ([0-9.e+]+)", out)
    e_pal = _float(r"palettized file ([0-9.e+]+)", out)
    assert e_pal < e_float
    assert "palettes stored in the file (once decode)" in out
