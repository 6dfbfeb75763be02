"""Benchmark: peak extra memory of share_weights, cluster_weights + strip_clustering and
cluster_values, as a multiple of the data they are given.

Writes bench/results/memory.json and bench/results/memory.md.

Every case runs in a fresh Python process. The process builds its input (a ~30 M-parameter
model of big Conv2D / Dense layers with random weights, or 50 M random float32 values), runs
the operation once on a tiny input (imports, first-use allocations), collects garbage, reads
its resident set size (``VmRSS``), resets the kernel's peak counter (``5 >
/proc/self/clear_refs``), runs the operation and reads the peak (``VmHWM``):

    ratio = (VmHWM - VmRSS before) / bytes of the input (model weights or values)

so the model (or array) itself and the interpreter are not counted, while everything the
operation allocates is, the returned copy included: ``share_weights`` returns a new model
(1x at least), ``cluster_weights`` a wrapped model (the inner float kernels, 1x, plus uint8
indices, 0.25x) which is kept alive while ``strip_clustering`` builds the plain model (1x).
A second process per case runs the operation under ``tracemalloc`` (numpy reports its array
allocations to it; TensorFlow's tensors are not seen), which shows how much of the peak is
numpy arrays.

The "before" column is the same measurement of the package at a git commit (default
``bd21e80``, the code before the memory work), extracted with ``git archive`` into a
temporary folder and run in the same invocation, so the two columns are side by side.

  python bench/memory.py                 # both columns (needs git and ~4 GB of free memory)
  python bench/memory.py --before-ref ''  # current code only
  python bench/memory.py --quick         # 3 M parameters, 5 M values (smoke test)
"""

import argparse
import gc
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BEFORE_REF = "bd21e80"
CASES = ("share_weights", "cluster_strip", "cluster_values")
GOALS = {"share_weights": 3.0, "cluster_strip": 3.0, "cluster_values": 2.0}


# --------------------------------------------------------------------------- in the child
def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_model(n_params, seed=0):
    """Conv2D and Dense layers scaled so that the model has about ``n_params`` weights."""
    import keras
    import numpy as np

    s = max(1, round((n_params / 31e6) ** 0.5 * 8)) / 8  # width factor
    c1, c2, d1, d2 = (int(256 * s), int(512 * s), int(4096 * s), int(2048 * s))
    inp = keras.Input((8, 8, 64))
    x = keras.layers.Conv2D(c1, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(c2, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(c2, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(d1, activation="relu")(x)
    x = keras.layers.Dense(d1, activation="relu")(x)
    x = keras.layers.Dense(d2, activation="relu")(x)
    out = keras.layers.Dense(10)(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    for v in model.weights:  # random values without a float64 detour
        v.assign(rng.standard_normal(v.shape, dtype=np.float32) * 0.05)
    return model


def _operation(case, k):
    import dkm_tf

    if case == "share_weights":
        return lambda model: dkm_tf.share_weights(model, k)
    if case == "cluster_strip":
        def run(model):
            clustered = dkm_tf.cluster_weights(model, k)
            return clustered, dkm_tf.strip_clustering(clustered)
        return run
    return lambda x: dkm_tf.cluster_values(x, k)


def _make_input(case, size, seed=0):
    import numpy as np

    if case == "cluster_values":
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(int(size), dtype=np.float32)
        return x, x.nbytes
    model = build_model(size, seed)
    return model, sum(int(v.numpy().nbytes) for v in model.weights)


def child(case, size, k, trace):
    """Measure one case in this process; print one JSON line."""
    op = _operation(case, k)
    small, _ = _make_input(case, 70_000 if case == "cluster_values" else 1e5, seed=1)
    op(small)  # warm-up: imports, first-use allocations
    del small
    data, nbytes = _make_input(case, size)
    gc.collect()
    before = _status("VmRSS")
    if trace:
        import tracemalloc

        tracemalloc.start()
    _reset_peak()
    t = time.perf_counter()
    result = op(data)
    seconds = time.perf_counter() - t
    peak = _status("VmHWM")
    row = {"case": case, "input_bytes": nbytes, "rss_before": before, "rss_peak": peak,
           "extra_bytes": peak - before, "ratio": (peak - before) / nbytes, "seconds": seconds}
    if trace:
        row["traced_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        row["traced_ratio"] = row["traced_peak_bytes"] / nbytes
        tracemalloc.stop()
    del result
    print("RESULT " + json.dumps(row), flush=True)


# --------------------------------------------------------------------------- in the parent
def _run_child(root, case, size, k, trace):
    env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", case,
           "--size", str(size), "--k", str(k)] + (["--trace"] if trace else [])
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{case} failed in {root}:\n{proc.stderr[-3000:]}")


def _checkout(ref, dest):
    """The dkm_tf package at git ``ref``, extracted under ``dest``."""
    archive = subprocess.run(["git", "archive", ref, "dkm_tf"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def measure(root, sizes, k, trace=True):
    out = {}
    for case in CASES:
        row = _run_child(root, case, sizes[case], k, trace=False)
        if trace:
            row.update({key: v for key, v in _run_child(root, case, sizes[case], k, True).items()
                        if key.startswith("traced")})
        out[case] = row
        print(f"  {case:<15} {row['ratio']:.2f}x ({row['extra_bytes'] / 2**20:,.0f} MiB extra "
              f"on {row['input_bytes'] / 2**20:,.0f} MiB), {row['seconds']:.1f} s", flush=True)
    return out


FLOORS = {  # what the call returns, in input bytes (float32 weights, K <= 256)
    "share_weights": "1.25x: the model copy (1x) + uint8 palette indices (0.25x)",
    "cluster_strip": "2.5x: wrapped model (float kernels 1x + uint8 indices 0.25x) + plain "
                     "model (1x) + palettes (0.25x)",
    "cluster_values": "1x: the int32 indices",
}
NOTES = """
Where the copies were, and what removed them:

* `cluster_values` (1-D, > 65,536 values, the histogram engine): `np.bincount` converts its
  int32 input to int64 and its float32 weights to float64 (2x + 2x), and the bins and the
  indices were separate arrays. Both passes now run over blocks of 262,144 values and the
  indices overwrite the bins in place (`core/_kmeans1d.py`).
* `share_weights`: every kernel was read into numpy up front and kept to the end (1x); each
  job made a transposed copy of its kernel (`to_units`), a stacked copy of the int32 indices and
  kept int32 indices in the palette (1x for the model); `Palette.decode` made an int64 copy
  of the indices and a transposed float copy. Now a job reads its kernel when it runs, k-means
  reads the kernel in unit order through a transposed view (`scalar_kmeans` takes any layout),
  palettes keep their indices in the smallest unsigned type (uint8 for K <= 256), and
  `decode` writes the kernel slab by slab into one C-contiguous array (`core/codebook.py`).
* `cluster_weights` + `strip_clustering`: the same decode and palette indices, kernels read
  by the k-means workers (not all at submission), and `compact` counting indices in slabs
  (`np.bincount` of uint8 indices made an int64 copy, 2x of the kernel).
"""


def write(results):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=2) + "\n")
    after, before = results["after"], results.get("before") or {}
    params = after["share_weights"]["input_bytes"] // 4
    lines = ["# Peak extra memory", "",
             f"{platform.platform()}, Python {platform.python_version()}; K = {results['k']}; "
             f"a model of 3 Conv2D and 4 Dense layers with {params / 1e6:.1f} M random "
             f"float32 weights, and {after['cluster_values']['input_bytes'] // 4 / 1e6:.0f} M "
             "random float32 values. Ratio = (peak RSS - RSS before the call) / input "
             "bytes: the input itself is not counted, what the call returns is "
             "(see bench/memory.py).", "",
             f"before: the package at git {results.get('before_ref') or '-'}, measured in "
             "the same run; after: the working tree. Seconds are wall time of the call.", "",
             "| operation | input | before | after | goal | returned (floor) | "
             "numpy peak after (tracemalloc) | s before | s after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        a, b = after[case], before.get(case, {})
        traced = f"{a['traced_ratio']:.2f}x" if "traced_ratio" in a else "-"
        fmt = (lambda r, key, f: f.format(r[key]) if key in r else "-")
        lines.append(f"| {case} | {a['input_bytes'] / 2**20:,.0f} MiB | "
                     f"{fmt(b, 'ratio', '{:.2f}x')} | {a['ratio']:.2f}x | <= {GOALS[case]:.0f}x | "
                     f"{FLOORS[case]} | {traced} | {fmt(b, 'seconds', '{:.1f}')} | "
                     f"{a['seconds']:.1f} |")
    (RESULTS / "memory.md").write_text("\n".join(lines) + "\n" + NOTES)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--before-ref", default=BEFORE_REF)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--no-trace", action="store_true")
    p.add_argument("--child", choices=CASES)
    p.add_argument("--size", type=float)
    p.add_argument("--trace", action="store_true")
    a = p.parse_args()
    if a.child:
        child(a.child, a.size, a.k, a.trace)
        return
    params, values = (3e6, 5e6) if a.quick else (30e6, 50e6)
    sizes = {"share_weights": params, "cluster_strip": params, "cluster_values": values}
    results = {"k": a.k, "before_ref": a.before_ref or None, "sizes": sizes}
    if a.before_ref:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"before (git {a.before_ref}):", flush=True)
            results["before"] = measure(_checkout(a.before_ref, pathlib.Path(tmp)), sizes, a.k,
                                        trace=not a.no_trace)
    print("after (working tree):", flush=True)
    results["after"] = measure(ROOT, sizes, a.k, trace=not a.no_trace)
    if not a.quick:
        write(results)
    print(json.dumps({c: results["after"][c]["ratio"] for c in CASES}))


if __name__ == "__main__":
    main()
