"""Run tests/_backend_scenarios.py on a Keras backend in a subprocess, and check its results.

Shared by tests/test_backend_jax.py and tests/test_backend_torch.py. Keras picks its backend
at import, so the pytest process (TensorFlow backend) cannot switch: each backend runs in a
process of its own, started with ``KERAS_BACKEND`` set, and prints one JSON line.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "_backend_scenarios.py")
K = 4  # tests/_backend_scenarios.py's K
# The TensorFlow run every other backend is compared with (one per test session).
TF_SCENARIOS = ("wrapper", "regularizer", "callbacks", "distill", "share", "export", "soft",
                "fisher")
# The scenarios every other backend runs, each with its check (``check``).
SCENARIOS = ("wrapper", "regularizer", "callbacks", "distill", "share", "serialize", "export",
             "soft", "fisher")
_CACHE = {}


def run_scenarios(backend, names, python=None, timeout=600):
    """``{scenario: result}`` of the scenarios run with ``KERAS_BACKEND=backend``."""
    key = (backend, tuple(names), python)
    if key not in _CACHE:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get(
                       "PYTHONPATH")])))
        proc = subprocess.run([python or sys.executable, SCRIPT, *names], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stderr[-4000:]
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        assert results.pop("backend") == backend
        _CACHE[key] = results
    results = _CACHE[key]
    return results


def scenario(results, name):
    """One scenario's result; fails with the subprocess' traceback when it raised."""
    out = results[name]
    if "error" in out:
        pytest.fail(f"scenario {name!r} raised:\n{out['error']}")
    if "unavailable" in out:
        pytest.skip(f"scenario {name!r}: the feature is not in this tree ({out['unavailable']})")
    return out


def close(actual, desired, rtol=1e-5, atol=1e-6, msg=""):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(desired, np.float64),
                               rtol=rtol, atol=atol, err_msg=msg)


def check_palettes(palettes, k=K, exact_k=True):
    """Every stripped kernel is exactly codebook[indices] with <= K distinct values."""
    assert palettes, "no palette"
    for layer, p in palettes.items():
        assert p["decoded_equal"] and p["in_codebook"], (layer, p)
        assert p["n_clusters"] <= k, (layer, p)
        if exact_k:
            assert p["unique"] <= k, (layer, p)


# ------------------------------------------------------------------ per-scenario checks
def check_wrapper(out):
    check_palettes(out["palettes"])
    assert out["strip_max_diff"] <= 1e-6
    assert out["loss"][-1] < out["loss"][0]


def check_regularizer(out, backend):
    # the penalty the compiled step adds to the loss = the numpy reference, also after the
    # weights changed and F was refreshed (a stale traced F would give another value)
    for step in ("attached", "after_set_weights_and_refresh"):
        close(out[step]["penalty_in_loss"], out[step]["reference"], rtol=1e-4, atol=2e-5,
              msg=step)
        close(out[step]["eager"], out[step]["reference"], rtol=1e-5, msg=step)
    assert out["loss"][-1] < out["loss"][0]
    assert out["refresh_count"] == 5  # train begin + 4 epochs
    assert out["logged_penalty"] is not None and len(out["logged_penalty"]) == 4
    assert all(v > 0 for v in out["logged_penalty"])
    lazy = out["unbuilt_refreshkmeans"]
    assert lazy["ok"], lazy
    close(lazy["penalty_in_loss"], lazy["reference"], rtol=1e-4, atol=2e-5)
    plain = out["unbuilt_plain_fit"]
    if backend == "jax":  # a jitted step cannot create the state: a clear error
        assert not plain["ok"] and plain["type"] == "RuntimeError", plain
        assert "attach_regularizer" in plain["message"]
        assert "RefreshKMeans" in plain["message"]
    else:  # the state is built from the variable at the first call
        assert plain["ok"], plain
        close(plain["penalty_in_loss"], plain["reference"], rtol=1e-4, atol=2e-5)


def check_callbacks(out):
    assert out["refresh_count"] == 3  # train begin + 2 epochs
    assert out["step_refresh_count"] == 4  # train begin + 6 steps / 2
    # learning rate 0: the weights never change, so every logged value is the reference
    close(out["logged"], [out["reference"]] * 2, rtol=1e-5)
    close(out["val_logged"], [out["reference"]] * 2, rtol=1e-5)
    assert all(np.isfinite(out["reassign_loss"]))
    check_palettes(out["reassign_palettes"])


def check_distill(out):
    close(out["loss_value"], out["reference"], rtol=1e-5)
    assert out["targets_teacher_diff"] <= 1e-6
    assert out["fit_loss"][-1] < out["fit_loss"][0]
    check_palettes(out["palettes"])


def check_share(out):
    check_palettes(out["palettes"])
    check_palettes(out["row_palettes"], exact_k=False)  # K rows of 3 values each
    assert out["skipped"] == []
    assert out["original_unchanged"]


def check_serialize(out):
    assert "ClusterWeights" in out["wrapped_types"]
    assert out["wrapped_max_diff"] <= 1e-6
    assert out["loaded_trains"]
    check_palettes(out["loaded_palettes"])
    assert out["regularizers_loaded"] == 3
    assert out["reg_max_diff"] <= 1e-6


def check_soft(out):
    check_palettes(out["palettes"])  # hard nearest-centroid assignment at strip
    assert out["loss"][-1] < out["loss"][0]


def check_fisher(out):
    check_palettes(out["palettes"])
    assert out["skipped"] == []
    assert all(np.isfinite([out["ce_fisher"], out["ce_plain"], out["ce_float"]]))
    check_palettes(out["palettes_refined"])  # refine="gptq": still <= K values, stored
    assert np.isfinite(out["ce_refined"])
    assert all("output-refined" in n for n in out["refined_notes"]), out["refined_notes"]


def check_export_refused(out, backend):
    """Export (and energy's traced reader) refuse a non-TF backend with a clear message."""
    for key, words in (("export", ("needs the TensorFlow backend", "KERAS_BACKEND=tensorflow",
                                   repr(backend))),
                       ("energy_traced", ("needs the TensorFlow backend", repr(backend)))):
        assert not out[key]["ok"] and out[key]["type"] == "RuntimeError", out[key]
        for word in words:
            assert word in out[key]["message"], (key, word, out[key]["message"])
    assert out["energy"]["ok"], out["energy"]  # layer shapes: no tracing, any backend


def check_same_numerics(other, tf, names):
    """The same scenario on another backend gives TensorFlow's numbers (float rounding)."""
    for name in names:
        a, b = other[name], tf[name]
        for key in ("loss", "fit_loss", "reassign_loss", "logits"):
            if key in b:
                close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
        for path, values in b.get("kernels", {}).items():
            close(a["kernels"][path], values, rtol=1e-4, atol=1e-5, msg=f"{name}.{path}")
        if name == "export":
            close(a["energy"]["value"], b["energy"]["value"], rtol=1e-12)
        if name == "fisher":
            close([a["ce_fisher"], a["ce_plain"]], [b["ce_fisher"], b["ce_plain"]], rtol=1e-4)
            close(a["ce_refined"], b["ce_refined"], rtol=1e-3)  # argmins on other floats
        if name == "share":  # post-training k-means is numpy: identical
            assert a["kernels"] == b["kernels"]


def check(results, name, backend):
    """Run the check of scenario ``name`` on ``backend``'s results."""
    out = scenario(results, name)
    if name == "regularizer":
        check_regularizer(out, backend)
    elif name == "export":
        check_export_refused(out, backend)
    else:
        globals()[f"check_{name}"](out)


def check_same_as_tensorflow(other, tf):
    """Every TensorFlow scenario that ran gives the same numbers on the other backend."""
    names = [n for n in TF_SCENARIOS if "unavailable" not in tf[n]]
    for name in names:
        scenario(other, name)
        scenario(tf, name)
    check_same_numerics(other, tf, names)
