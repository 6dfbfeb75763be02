"""The JAX backend on the architectures the conv-conv-dense net of test_backend_jax.py does not
reach, compared with TensorFlow, and a model clustered on JAX exported by TensorFlow.

One model holds them all (one compile per fit, for time; tests/_backend_scenarios17.py::zoo):
Conv2D + BatchNormalization (folded at strip), DepthwiseConv2D, SeparableConv2D, a grouped
Conv2D + BatchNormalization, a causal Conv1D, LSTM, GRU, MultiHeadAttention,
Embedding(mask_zero=True) on padded sequences (a masked mean), a nested Sequential, a Dense called
twice, three inputs and two outputs; and a Conv + BN net under the mixed_float16 policy
(Fisher-weighted sharing there: it takes one output). The JAX run is a
subprocess (``KERAS_BACKEND=jax``); the TensorFlow reference runs the same scenario (same
numpy-drawn weights and data) in this process, and loads the ``.keras`` files the JAX process
saved, then exports them. Probed once beyond this (2026-12-06, ``--full`` mode of the
scenarios file, each architecture as its own model): soft assignment, the regularizer's
penalty in the compiled loss (= numpy's within 2e-7), RefreshKMeans and distillation gave
TensorFlow's numbers on JAX too (rtol 1e-4; 2e-3 under mixed_float16); finetune with one
batch per epoch too (3.2e-4 on Conv + BN after 2 Adam steps: KNOWN_LIMITATIONS.md, float
rounding grown by Adam; a shuffled fit visits the data in another order on each backend).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import _backend_checks as bc
from tests import _backend_scenarios17 as sc
from tests._jax_env24e import jax_env

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install -e '.[jax]'): the JAX backend is not tested",
                allow_module_level=True)

# the two BatchNormalization layers are folded at strip: cluster_weights says so
pytestmark = pytest.mark.filterwarnings("ignore:cluster_weights left 2 layer:UserWarning")
NAMES = ("zoo", "mixed")
SCRIPT = os.path.join(bc.REPO, "tests", "_backend_scenarios17.py")
# float32 rounding (rtol 1e-4 as test_backend_jax.py); mixed_float16: an output ulp is
# 2.4e-4 .. 4.9e-4 at these magnitudes (measured JAX vs TF: 4.9e-4 at most)
TOL = {"zoo": {"rtol": 1e-4, "atol": 1e-5}, "mixed": {"rtol": 2e-3, "atol": 2e-3}}


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """``(folder of the .keras files it saved, {scenario: result})`` of the JAX process."""
    folder = tmp_path_factory.mktemp("jax17")
    env = jax_env(TF_CPP_MIN_LOG_LEVEL="2",
                  PYTHONPATH=os.pathsep.join(filter(None, [bc.REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, SCRIPT, str(folder), "--quick", *NAMES], cwd=bc.REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results.pop("backend") == "jax"
    return str(folder), results


@pytest.fixture(scope="module")
def tf_results():
    return {name: sc.run_quick(name, None) for name in NAMES}


def _outputs_keys(out):
    return [k for k in ("float", "hard_wrapped", "hard_plain", "share", "fisher") if k in out]


@pytest.mark.parametrize("name", NAMES)
def test_runs_strips_to_k_values_and_leaves_the_model(name, jax_run, tf_results):
    for backend, out in (("jax", bc.scenario(jax_run[1], name)), ("tensorflow",
                                                                   tf_results[name])):
        msg = f"{backend} {name}"
        for key in ("hard_palettes", "share_palettes", "fisher_palettes"):
            for layer, p in out.get(key, {}).items():
                assert p["decoded_equal"], (msg, key, layer, p)
                assert p["n_clusters"] <= bc.K, (msg, key, layer, p)
                # per-channel codebooks (depthwise, BN folded): K values per channel
                assert p["unique"] <= bc.K * p["groups"], (msg, key, layer, p)
        assert len(out["hard_palettes"]) == (20 if name == "zoo" else 3), msg
        assert out["share_skipped"] == [], msg
        assert out["untouched"], msg  # the user's model: same weights as a fresh copy
        assert out["hard_loss"][-1] < out["hard_loss"][0], msg
        for key in _outputs_keys(out):  # batch 1 = the first sample of batch 3
            b3 = np.asarray(out[key]["b3"])  # zoo: o1 (3 x 3 values), then o2 (3 x 2)
            first = np.concatenate([b3[:3], b3[9:11]]) if name == "zoo" else b3[:3]
            bc.close(first, out[key]["b1"], **TOL[name], msg=f"{msg} {key}")
        # the stripped model computes what the wrapper did (BN folded: float rounding)
        bc.close(out["hard_plain"]["b3"], out["hard_wrapped"]["b3"], **TOL[name], msg=msg)


@pytest.mark.parametrize("name", NAMES)
def test_same_numbers_as_tensorflow(name, jax_run, tf_results):
    jax, tf = bc.scenario(jax_run[1], name), tf_results[name]
    for key in _outputs_keys(tf):
        for n in ("b1", "b3"):
            bc.close(jax[key][n], tf[key][n], **TOL[name], msg=f"{name} {key} {n}")
    bc.close(jax["hard_loss"], tf["hard_loss"], rtol=1e-4, atol=1e-5, msg=f"{name} hard_loss")
    assert jax["hard_palettes"] == tf["hard_palettes"]
    assert jax["share_palettes"] == tf["share_palettes"]


def test_saved_on_jax_loads_and_exports_on_tensorflow(jax_run):
    """A model stripped (and one still wrapped) on JAX, saved as .keras, loaded here: the
    same outputs as on JAX at batch 1 and 4, and its palettized .tflite too."""
    folder, results = jax_run
    out = sc.export_saved(folder, "zoo")
    jax = bc.scenario(results, "zoo")
    for what in ("plain", "wrapped"):
        ref = np.asarray(jax[f"saved_{what}_b4"])
        bc.close(out[f"loaded_{what}_b4"], ref, rtol=1e-5, atol=1e-6, msg=what)
        assert out[f"{what}_palettes"] == 20, what  # palettes_of: every clustered kernel
        scale = np.max(np.abs(ref))
        b4 = np.asarray(out[f"{what}_tflite_b4"])
        # the .tflite's outputs in Keras' order (o1 then o2), batch 4 and batch 1
        bc.close(b4, ref, rtol=0, atol=1e-4 * scale, msg=f"{what} tflite batch 4")
        first = np.concatenate([ref[:3], ref[12:14]])
        bc.close(out[f"{what}_tflite_b1"], first, rtol=0, atol=1e-4 * scale,
                 msg=f"{what} tflite batch 1")
    bc.close(out["wrapped_stripped_b4"], jax["saved_wrapped_b4"], rtol=1e-5, atol=1e-6)


# Keras' own, on TensorFlow alike: a compiled mixed_float16 model's LossScaleOptimizer has 6
# variables, the SGD its config rebuilds at load 2 (the weights load; re-compile to train)
@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer:UserWarning")
def test_mixed_float16_saved_on_jax_loads_and_export_refuses_clearly(jax_run):
    folder, results = jax_run
    out = sc.export_saved(folder, "mixed")
    jax = bc.scenario(results, "mixed")
    for what in ("plain", "wrapped"):
        bc.close(out[f"loaded_{what}_b4"], jax[f"saved_{what}_b4"], rtol=1e-3, atol=1e-3)
        message = out[f"{what}_export_refused"]
        assert "float32" in message and "mixed_float16" in message, message
