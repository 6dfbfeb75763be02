"""Smoke tests of two bench scripts whose committed tables had drifted from the library.

* ``bench/mobile_latency.py``'s ``before_policy`` replaces the exporter's keep-float planner;
  when the planner gained a ``dense`` argument the replacement raised a TypeError inside the
  script's per-model ``try``, so every model was recorded as failed and the run still exited 0.
* ``bench/kernel_clustering.py --smoke`` asked ``bench/_real_models.py`` for a 32x32 HED twin,
  which ``HED()`` (built for 64x64 inputs) cannot take.
* ``bench/factorised_conv.py`` reports conv-then-add FLOPs (U = max_i U_i) beside the bytes
  and latency of the models it builds; with ``factorise_convs``' ``form="auto"`` default those
  models ran add-then-conv instead (K=256 Zipf: 46 slots where the table said U = 44).

Both run in one fresh Python process (the scripts define absl flags and edit ``sys.path`` on
import), on a tiny model, up to the first ``factorise_convs`` call, and up to loading HED.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

CHILD = r"""
import importlib.util, json, sys, tempfile
import numpy as np

def load(name):
    spec = importlib.util.spec_from_file_location(name, f"{ROOT}/bench/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

out = {}
import keras
import dkm_tf
from dkm_tf.export import palettize

ml = load("mobile_latency")
keras.utils.set_random_seed(0)
inp = keras.Input((10, 10, 3))
h = keras.layers.Conv2D(8, 3, name="small")(inp)
h = keras.layers.Flatten()(h)
model = keras.Model(inp, keras.layers.Dense(4, name="head")(h))
x = np.random.default_rng(0).standard_normal((2, 10, 10, 3)).astype(np.float32)
res = dkm_tf.share_weights(model, 4)
planner = palettize.plan_keep_float
with tempfile.TemporaryDirectory() as tmp, ml.before_policy():
    rep = dkm_tf.export.to_tflite(res.model, f"{tmp}/b.tflite", "palettized", res.palettes, x)
out["planner_restored"] = palettize.plan_keep_float is planner
out["before_kept"] = sorted(t["palette"] for t in rep.tensors if t.get("kept")
                            and "before:" in t["route"])

fc = load("factorised_conv")
from dkm_tf.core.kernel_flops import kernel_flops
import dkm_tf.graph.factorise as fz

real = fz.factorise_convs

class Stop(Exception):
    pass

def spy(*args, **kwargs):
    new, report = real(*args, **kwargs)
    out["slots"] = int(new.get_layer("conv").slot_centroids.shape[1])
    raise Stop

fz.factorise_convs = spy
try:
    fc.run_one(256, "zipf", 1, tempfile.gettempdir())
except Stop:
    pass
_, idx, _ = fc.make_factors(256, "zipf")
out["channel_multiplier"] = int(kernel_flops(idx, in_hw=(fc.H, fc.W), kernel=3)
                                .channel_multiplier)

import argparse
kc = load("kernel_clustering")
import _real_models as zoo

try:
    zoo.hed_twin(32)
    out["hed32"] = "no error"
except ValueError as e:
    out["hed32"] = str(e)
sizes = []

def spy_hed(size=64):
    sizes.append(size)
    raise Stop

zoo.load_hed = spy_hed
try:
    kc.run_hed(argparse.Namespace(smoke=True, ks=[16]))
except Stop:
    pass
out["hed_sizes"] = sizes
print("RESULT " + json.dumps(out))
"""


def test_mobile_latency_before_policy_and_factorised_conv_form():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", f"ROOT = {str(ROOT)!r}\n" + CHILD],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    # the old rule kept the small stride-1 conv (its im2col copies more values than it has)
    assert out["before_kept"] == ["small/kernel"], out
    assert out["planner_restored"] is True
    # the factorised model runs the form whose FLOPs the table reports: U = max_i U_i
    assert out["channel_multiplier"] == 44
    assert out["slots"] == out["channel_multiplier"], out
    # HED() is built for 64x64 inputs: the twin says so, and kernel_clustering's smoke asks 64
    assert "size must be 64" in out["hed32"], out["hed32"]
    assert out["hed_sizes"] == [64], out
