"""Benchmark: latency and size of palettized LSTM exports (decode chains in front of the
WHILE loop, the input kernel's products of all time steps computed there too) against the
float file, and against the exports of two earlier commits, in one interleaved run.

Writes bench/results/recurrent_latency.json and bench/results/recurrent_latency.md.

Model: ``Input((T, 16)) -> LSTM(64) -> Dense(10)``, Keras' initialisers under
``keras.utils.set_random_seed(0)``, for T = 20 and 80 time steps; ``share_weights(K=16)``
(per-tensor codebooks: kernel, recurrent kernel, dense kernel), then ``to_tflite`` as
``float``, palettized ``decode="once"`` and ``decode="per_invoke"``, each verified against
Keras by ``to_tflite``. The "before" files are the same ``.keras`` model clustered and
exported by the package at ``--before-ref`` (default ``04c4a8a^``, the commit before the
decode chains moved out of the loop), the "prev" files by the package at ``--prev-ref``
(default ``64da4cc``, decode chains in front of the loop but the input kernel's
FULLY_CONNECTED still in the body, once per step), each extracted with ``git archive`` and
run in a child process of the same invocation.

Latency: ``tf.lite`` interpreter (the README's figure), 1 thread, every file of one T loaded
in one process and invoked in interleaved blocks (:func:`dkm_tf.export.benchmark_latency`
with ``reference="float"``): the ratio is the median over rounds of (file / float in the same
round), measured in two passes. The machine is shared, so absolute times carry noise; the
paired ratios much less.

  python bench/recurrent_latency.py [--runs 300] [--before-ref 04c4a8a^ | '']
                                    [--prev-ref 64da4cc | '']
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from dkm_tf.core.files import write_text_atomic

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BEFORE_REF = "04c4a8a^"
PREV_REF = "64da4cc"
STEPS = (20, 80)
FEATURES, UNITS, K = 16, 64, 16

# run by the child (old package on sys.path) and by this process (working tree)
EXPORT_CODE = r"""
import json, sys
import numpy as np
import keras
import dkm_tf
from dkm_tf import export
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])
out = {}
shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=__K__)
for decode in ("once", "per_invoke"):
    path = sys.argv[3] + "_" + decode + ".tflite"
    rep = export.to_tflite(shared, path, format="palettized", palettes=palettes,
                           sample_inputs=x, decode=decode)
    out[decode] = {"path": path, "bytes": rep.bytes, "max_rel_error": rep.max_rel_error,
                   "notes": list(rep.notes)}
if len(sys.argv) > 4:
    rep = export.to_tflite(shared, sys.argv[4], format="float", sample_inputs=x)
    out["float"] = {"path": sys.argv[4], "bytes": rep.bytes,
                    "max_rel_error": rep.max_rel_error, "notes": list(rep.notes)}
print("JSON" + json.dumps(out))
""".replace("__K__", str(K))


def build(steps, folder):
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    inp = keras.Input((steps, FEATURES))
    h = keras.layers.LSTM(UNITS, name="lstm")(inp)
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(h), name=f"lstm_t{steps}")
    path = folder / f"lstm_t{steps}.keras"
    model.save(path)
    x = np.random.default_rng(1).standard_normal((4, steps, FEATURES)).astype(np.float32)
    xpath = folder / f"x_t{steps}.npy"
    np.save(xpath, x)
    return path, xpath, x


def export_with(package_parent, model_path, x_path, prefix, float_path=None):
    """Cluster and export in a child process importing dkm_tf from ``package_parent``."""
    args = [sys.executable, "-c", EXPORT_CODE, str(model_path), str(x_path), str(prefix)]
    args += [str(float_path)] if float_path else []
    env = {**os.environ, "PYTHONPATH": str(package_parent), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=package_parent)
    if proc.returncode != 0:
        raise RuntimeError(f"export failed in {package_parent}:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


def extract(ref, folder):
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", sha, "dkm_tf"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return sha


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--before-ref", default=BEFORE_REF)
    parser.add_argument("--prev-ref", default=PREV_REF)
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dkm_tf.export import benchmark_latency

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        shas = {}
        for suffix, ref in (("before", opts.before_ref), ("prev", opts.prev_ref)):
            if ref:
                (tmp / suffix).mkdir()
                shas[suffix] = extract(ref, tmp / suffix)
                print(f"{suffix}: dkm_tf at {shas[suffix]}", flush=True)
        for steps in STEPS:
            print(f"T = {steps}: build, cluster, export", flush=True)
            model_path, x_path, x = build(steps, tmp)
            files = export_with(ROOT, model_path, x_path, tmp / f"after_t{steps}",
                                float_path=tmp / f"float_t{steps}.tflite")
            for suffix in shas:
                old = export_with(tmp / suffix, model_path, x_path, tmp / f"{suffix}_t{steps}")
                files.update({f"{k}_{suffix}": v for k, v in old.items()})
            paths = {label: f["path"] for label, f in files.items()}
            passes = []
            for p in range(2):
                print(f"  latency pass {p + 1}: {', '.join(paths)}", flush=True)
                passes.append(benchmark_latency(paths, x[0], threads=1, runs=opts.runs,
                                                block=5, warmup=20, interpreter="tflite",
                                                reference="float"))
            fbytes = files["float"]["bytes"]
            for label, f in files.items():
                rows.append({"steps": steps, "file": label, "bytes": f["bytes"],
                             "x_float_bytes": round(f["bytes"] / fbytes, 4),
                             "max_rel_error": f["max_rel_error"],
                             "median_ms": [round(q[label]["median_ms"], 4) for q in passes],
                             "x_float": [round(q[label]["ratio"], 3) for q in passes],
                             "notes": f["notes"]})
                print(f"    {label}: {rows[-1]['x_float']} x float, "
                      f"{rows[-1]['x_float_bytes']} x float bytes", flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
           "load_average": os.getloadavg(), "before_ref": shas.get("before"),
           "prev_ref": shas.get("prev"), "runs": opts.runs,
           "model": f"Input((T, {FEATURES})) -> LSTM({UNITS}) -> Dense(10), K = {K}",
           "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "recurrent_latency.json", json.dumps(out, indent=1))
    write_text_atomic(RESULTS / "recurrent_latency.md", markdown(out))
    print("wrote bench/results/recurrent_latency.json and .md", flush=True)


def _span(values, fmt="{:.2f}"):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else \
        f"{fmt.format(lo)}-{fmt.format(hi)}"


def markdown(out):
    lines = ["# Palettized LSTM exports: latency and size vs float (tf.lite, 1 thread)", "",
             f"{out['date']}, {out['machine']}, 1-min load average at the end "
             f"{out['load_average'][0]:.1f}. Generated by `bench/recurrent_latency.py`. "
             f"Model: {out['model']} (share_weights, per-tensor codebooks). `before`: the same "
             f"`.keras` model clustered and exported by dkm_tf at `{out['before_ref']}` "
             "(decode chains inside the WHILE body); `prev`: by dkm_tf at "
             f"`{out.get('prev_ref')}` (decode chains in front of the loop, the input kernel's "
             "FULLY_CONNECTED still run once per step in the body); same run. Without a "
             "suffix: this tree (the input kernel's products of all steps in one product "
             "before the loop). Latency: every file of one T "
             "interleaved in one process, `x float` = median over rounds of file / float in "
             f"the same round, {out['runs']} invokes per file and pass, two passes (a range "
             "when they differ). Shared machine: read the ratios, not the milliseconds.", "",
             "| T | file | bytes | x float bytes | max rel. error vs Keras | median ms | "
             "x float |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        lines.append(f"| {r['steps']} | {r['file']} | {r['bytes']:,} | {r['x_float_bytes']:.3f}"
                     f" | {r['max_rel_error']:.1e} | {_span(r['median_ms'], '{:.3f}')} | "
                     f"{_span(r['x_float'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
