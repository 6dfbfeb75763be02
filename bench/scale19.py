"""Benchmark / probe: big single tensors through the operations bench/memory.py does not cover.

Writes bench/results/scale19.json and bench/results/scale19.md.

Every case runs in a fresh Python process (under ``nice -n 10``, ``/usr/bin/time -v`` and a
time cap). The child builds one small model around one big tensor (random float32 weights),
runs the set-up of the case (e.g. ``cluster_weights`` before ``strip_clustering``), collects
garbage, reads ``VmRSS``, resets the peak counter, runs the measured operation and reads
``VmHWM`` (as bench/memory.py does):

    ratio = (VmHWM - VmRSS before) / bytes of the model's weights

The parent reads the child's output line by line as it comes and records the longest
silence (no line on stdout / stderr) while the operation ran: the progress promise.

Checks after each operation (not timed): palette index dtype and range, ``bit_width`` =
ceil(log2 K), every per-tensor scalar codebook against the float64 mean of the original
weights over the same assignment (float32 accumulation errors), and ``decode()`` against the
returned model's kernel.

  python bench/scale19.py                       # small sizes (< 5 min on 2 cores)
  python bench/scale19.py --big                 # the sizes of the brief (~1 h, ~4 GB)
  python bench/scale19.py --only dense --ops share --set dense=2048   # one cell
"""

import argparse
import gc
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time

from memory import _status  # bench/memory.py's /proc reader (this folder is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

SMALL = {"embedding": 5000, "dense": 1024, "conv": 128, "dwsep": 128, "lstm": 256, "mha": 4}
BIG = {"embedding": 50000, "dense": 4096, "conv": 512, "dwsep": 512, "lstm": 1024, "mha": 16}
MODELS = tuple(SMALL)
# op -> (models it applies to); K and granularity come from the op's name
OPS = {
    "share_k16": MODELS, "share_k256": ("embedding", "dense", "conv", "lstm"),
    "share_pc16": ("dense", "conv"), "share_pc256": ("dense", "conv"),
    "share_fisher": ("dense", "conv"), "share_gptq": ("dense", "conv"),
    "share_kernel": ("conv",), "cluster_hard_fit": ("embedding", "dense", "conv", "lstm", "mha"),
    "cluster_soft_fit": ("dense", "conv", "embedding"), "cluster_latent_fit": ("dense",),
    "cluster_kernel": ("conv",), "strip": MODELS, "regularizer_fit": ("dense", "conv"),
    "tflite": ("dense", "conv", "dwsep"), "tflite_k256": ("dense",), "energy": ("dense", "conv"),
}


# --------------------------------------------------------------------------- in the child
def build(kind, size, seed=0):
    """(model, x, y): one big tensor of ``kind`` scaled by ``size``, a 10-class head."""
    import keras
    import numpy as np

    L = keras.layers
    rng = np.random.default_rng(seed)
    n = 8  # samples of the tiny batch
    if kind == "embedding":
        inp = keras.Input((8,), dtype="int32")
        h = L.GlobalAveragePooling1D()(L.Embedding(size, 256)(inp))
        x = rng.integers(0, size, (n, 8)).astype("int32")
    elif kind == "dense":
        inp = keras.Input((size,))
        h = L.Dense(size, activation="relu")(inp)
        x = rng.standard_normal((n, size), dtype=np.float32)
    elif kind in ("conv", "dwsep"):
        inp = keras.Input((8, 8, size))
        if kind == "conv":
            h = L.Conv2D(size, 3, padding="same", activation="relu")(inp)
        else:
            h = L.DepthwiseConv2D(3, padding="same", activation="relu")(inp)
            h = L.SeparableConv2D(size, 3, padding="same", activation="relu")(h)
        h = L.GlobalAveragePooling2D()(h)
        x = rng.standard_normal((n, 8, 8, size), dtype=np.float32)
    elif kind == "lstm":
        inp = keras.Input((4, size // 2))
        h = L.LSTM(size)(inp)
        x = rng.standard_normal((n, 4, size // 2), dtype=np.float32)
    elif kind == "mha":
        d = size * 64
        inp = keras.Input((8, d))
        h = L.GlobalAveragePooling1D()(L.MultiHeadAttention(size, 64)(inp, inp))
        x = rng.standard_normal((n, 8, d), dtype=np.float32)
    else:
        raise ValueError(kind)
    model = keras.Model(inp, L.Dense(10)(h))
    for v in model.weights:
        v.assign(rng.standard_normal(v.shape, dtype=np.float32) * 0.05)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = rng.integers(0, 10, n).astype("int32")
    return model, x, y


def _k_of(op):
    return 256 if op.endswith("256") else 16


def setup_and_op(op, model, x, y):
    """(set-up callable or None, measured callable(state) -> result)."""
    import dkm_tf

    k = _k_of(op)
    if op.startswith("share_"):
        kw = {}
        if op.startswith("share_pc"):
            kw["granularity"] = "per_channel"
        elif op == "share_fisher":
            kw.update(weighting="fisher", data=x)
        elif op == "share_gptq":
            kw.update(refine="gptq", data=x)
        elif op == "share_kernel":
            kw.update(unit="kernel")
        return None, lambda _s: dkm_tf.share_weights(model, k, verbose=True, **kw)
    if op.startswith("cluster_"):
        kw = {"soft": {"assignment": "soft", "temperature": 1e-4}, "latent": {"latent": True},
              "kernel": {"unit": "kernel"}}.get(op.split("_")[1], {})

        def run(_s):
            c = dkm_tf.cluster_weights(model, k, **kw)
            if op.endswith("_fit"):
                import keras

                c.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                c.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
            return c
        return None, run
    if op == "strip":
        return (lambda: dkm_tf.cluster_weights(model, k)), dkm_tf.strip_clustering
    if op == "regularizer_fit":
        def run(_s):
            import keras

            dkm_tf.attach_regularizer(model, k, include_dense=True)
            model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x, y, epochs=1, batch_size=len(x), verbose=0,
                      callbacks=[dkm_tf.RefreshKMeans()])
            return model
        return None, run
    if op.startswith("tflite"):
        import tempfile

        def run(shared):
            from dkm_tf.export import to_tflite

            path = os.path.join(tempfile.mkdtemp(prefix="scale19_"), "m.tflite")
            report = to_tflite(shared.model, path, "palettized", shared.palettes,
                               sample_inputs=x[:2])
            return report, os.path.getsize(path)
        return (lambda: dkm_tf.share_weights(model, k)), run
    if op == "energy":
        def run(shared):
            from dkm_tf import energy

            return energy.estimate(shared.model, palettes=shared.palettes)
        return (lambda: dkm_tf.share_weights(model, k)), run
    raise ValueError(op)


def check_palettes(palettes, original, means=True):
    """Problems found in ``palettes`` (empty list: all fine) and the worst relative gap of a
    scalar codebook to the float64 means of its members (``means``: k-means codebooks)."""
    import numpy as np

    from dkm_tf.core.units import to_units

    problems, worst_rel = [], 0.0
    orig = {}
    for layer in original._flatten_layers(include_self=False):
        for w in layer.weights:
            orig.setdefault((layer.name, w.path.split("/")[-1]), w)
    for p in palettes:
        idx = p.indices
        kk = p.codebook.shape[1]
        if idx.max() >= kk:
            problems.append(f"{p.name}: index {int(idx.max())} >= K={kk}")
        want = np.uint8 if kk <= 256 else np.uint16 if kk <= 65536 else np.int32
        if idx.dtype != want:
            problems.append(f"{p.name}: indices {idx.dtype}, expected {np.dtype(want)}")
        bits = math.ceil(math.log2(max(kk, 2)))
        if p.scales is None and p.bit_width != bits:
            problems.append(f"{p.name}: bit_width {p.bit_width} != ceil(log2 {kk}) = {bits}")
        w = orig.get((p.layer_name, p.weight_name))
        if (w is None or p.scales is not None or p.unit_dim != 1 or not means
                or getattr(p, "preserve_sparsity", False)):
            continue
        vals = np.asarray(w.numpy(), np.float64)
        units = np.asarray(to_units(vals, p.layout), np.float64)
        units = units.reshape(p.codebook.shape[0], -1)
        for g in range(p.codebook.shape[0]):  # each group's codebook: float64 member means
            u, ii = units[g], idx[g].astype(np.int64)
            cnt = np.bincount(ii, minlength=kk)
            mean = np.bincount(ii, weights=u, minlength=kk) / np.maximum(cnt, 1)
            cb = p.codebook[g, :, 0].astype(np.float64)
            used = cnt > 0
            rel = np.max(np.abs(cb[used] - mean[used])) / max(np.max(np.abs(u)), 1e-30)
            worst_rel = max(worst_rel, float(rel))
    return problems, worst_rel


def child(kind, size, op):
    import numpy as np

    rng_model = build(kind, size)
    model, x, y = rng_model
    nbytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    biggest = max(int(np.prod(v.shape)) for v in model.weights)
    setup, run = setup_and_op(op, model, x, y)
    t0 = time.perf_counter()
    state = setup() if setup else None
    t_setup = time.perf_counter() - t0
    gc.collect()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    print("OPSTART", flush=True)
    t = time.perf_counter()
    result = run(state)
    seconds = time.perf_counter() - t
    print("OPEND", flush=True)
    peak = _status("VmHWM")
    row = {"model": kind, "size": size, "op": op, "params": nbytes // 4, "biggest": biggest,
           "input_bytes": nbytes, "extra_bytes": peak - before, "ratio": (peak - before) / nbytes,
           "seconds": seconds, "setup_seconds": t_setup}
    palettes = None
    if hasattr(result, "palettes"):
        palettes = result.palettes
    elif op.startswith("cluster_") or op == "strip":
        import dkm_tf

        try:
            palettes = dkm_tf.palettes_of(state if op == "strip" else result)
        except Exception as e:  # noqa: BLE001  (a probe: record, do not stop)
            row["palettes_error"] = repr(e)[:300]
    if op.startswith("tflite"):
        row["tflite_bytes"] = result[1]
        row["index_bytes_log2"] = sum(p.index_bits("log2") for p in state.palettes) / 8
    if palettes is not None and op not in ("cluster_soft_fit", "cluster_latent_fit",
                                           "cluster_hard_fit", "strip"):
        means = op not in ("share_fisher", "share_gptq")  # weighted / refitted codebooks
        problems, rel = check_palettes(palettes, model, means=means)
        row["problems"] = problems
        if means:
            row["codebook_vs_f64_rel"] = rel
    elif palettes is not None:  # after training the codebook moved: dtype / range only
        problems = []
        for p in palettes:
            kk = p.codebook.shape[1]
            if int(p.indices.max()) >= kk:
                problems.append(f"{p.name}: index >= K")
        row["problems"] = problems
    print("RESULT " + json.dumps(row), flush=True)


# --------------------------------------------------------------------------- in the parent
NOTES = """
## Findings (session 19, helper c) and measurements outside the table

Soft (DKM) training and strip, one Dense (`/tmp` probe of `cluster_weights(assignment="soft",
temperature=1e-4)`, two `fit` steps of batch 8, then `palettes_of` and `strip_clustering`;
peak RSS over the model, MiB):

| kernel | K | code | first step | next step | palettes_of (snap) |
|---|---|---|---|---|---|
| 2048 x 2048 | 16 | before | 9.8 s, 1,780 | 2.7 s, 1,442 | 6.8 s, 659 |
| 2048 x 2048 | 16 | after | 2.1 s, 316 | 0.6 s, 49 | 3.8 s, 83 |
| 2048 x 2048 | 256 | before | > 600 s (killed), 14.6 GB RSS | - | - |
| 2048 x 2048 | 256 | after | 21 s, 368 | 20.5 s, 153 | 108 s, 167 |
| 4096 x 4096 | 16 | after | 4.1 s, 464 | 2.6 s, 313 | 15 s, 387 |

Before: `snap` kept every float64 attention chunk plus W_tilde, autodiff kept every float32
chunk for the backward pass, and every chunk was written out in the XLA graph (256 copies at
K = 256). After: `dkm_tf/training/soft_bounded.py` (recomputing gradient, loop over chunks).

Per-channel `share_weights` of the 4096 x 4096 Dense: K = 16 23.1 s / 20.5x -> 4.7 s / 4.4x,
K = 256 137.6 s / 22.1x -> 76.7 s / 4.9x (groups solved in blocks; identical palettes).
`attach_regularizer` + one step + `RefreshKMeans` on it: 12.2 s / 22.5x -> 8.2 s / 9.1x.

Checked and fine at scale: palette indices uint8 for K <= 256 with max index < K,
`bit_width` = ceil(log2 K), every per-tensor and per-channel scalar codebook within 6e-8
(relative to max |w|) of the float64 member means of the same assignment, also
`cluster_values` of 2^25 + 1 values (int32 indices, 1.06x memory, 0.7 s at K = 16).
Left alone (KNOWN_LIMITATIONS.md): Fisher weighting 25x, GPTQ 41x, `energy.estimate` with
palettes 8x the kernel's bytes; the histogram engine's single exact step leaves 0.1-0.2 % of
values nearer another centroid at K = 256 (1 M and 33 M values; 0 below 65,536 values).
"""



def run_child(kind, size, op, cap):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT), TF_ENABLE_ONEDNN_OPTS="0", PYTHONUNBUFFERED="1")
    cmd = ["nice", "-n", "10", "/usr/bin/time", "-v", "timeout", str(cap), sys.executable,
           str(pathlib.Path(__file__).resolve()), "--child", kind, str(size), op]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, state = [], {"start": None, "last": None, "gap": 0.0, "n": 0}

    def read():
        for line in proc.stdout:
            now = time.perf_counter()
            lines.append(line.rstrip("\n"))
            if line.startswith("OPSTART"):
                state["start"] = state["last"] = now
            elif state["start"] is not None and state.get("end") is None:
                state["gap"] = max(state["gap"], now - state["last"])
                state["last"] = now
                if line.startswith("OPEND"):
                    state["end"] = now
                else:
                    state["n"] += 1
    reader = threading.Thread(target=read)
    reader.start()
    proc.wait()
    reader.join()
    row = None
    for line in lines:
        if line.startswith("RESULT "):
            row = json.loads(line[len("RESULT "):])
        if "Maximum resident set size" in line:
            max_rss = int(line.split(":")[1]) * 1024
    if row is None:
        row = {"model": kind, "size": size, "op": op, "error": "\n".join(lines[-25:])[-2000:],
               "rc": proc.returncode}
    row["max_rss_bytes"] = locals().get("max_rss")
    row["silent_s"] = round(state["gap"], 1)
    row["progress_lines"] = state["n"]
    return row


def write(rows, args):
    RESULTS.mkdir(exist_ok=True)
    meta = {"platform": platform.platform(), "python": platform.python_version(),
            "sizes": args.sizes, "big": args.big, "cpus": os.cpu_count(), "label": args.label}
    out = RESULTS / "scale19.json"
    old = json.loads(out.read_text()) if args.append and out.exists() else {"runs": []}
    old["runs"].append({"meta": meta, "rows": rows})
    out.write_text(json.dumps(old, indent=2) + "\n")
    md = ["# Scale probe (bench/scale19.py)", "",
          "One big random float32 tensor per model; each cell in a fresh process under "
          "nice / time -v. ratio = (peak RSS - RSS before) / model weight bytes; silent = "
          "longest gap without an output line while the operation ran.", ""]
    for run in old["runs"]:
        m = run["meta"]
        md += [f"## {m.get('label') or 'run'}", "", f"{m['platform']}, Python {m['python']}, "
               f"{m['cpus']} CPUs, sizes {m['sizes']}", "",
               "| model | op | params | s | ratio | max RSS MiB | silent s | lines | "
               "cb vs f64 | problems |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            if "error" in r:
                md.append(f"| {r['model']} | {r['op']} | | | | | | | | ERROR rc={r['rc']}: "
                          f"{r['error'].splitlines()[-1][:150] if r['error'] else ''} |")
                continue
            rss = f"{r['max_rss_bytes'] / 2**20:,.0f}" if r.get("max_rss_bytes") else ""
            cb = f"{r['codebook_vs_f64_rel']:.1e}" if "codebook_vs_f64_rel" in r else ""
            md.append(f"| {r['model']} | {r['op']} | {r['params']:,} | {r['seconds']:.1f} | "
                      f"{r['ratio']:.2f}x | {rss} | {r['silent_s']} | {r['progress_lines']} | "
                      f"{cb} | {'; '.join(r.get('problems', []))[:200]} |")
        md.append("")
    (RESULTS / "scale19.md").write_text("\n".join(md) + NOTES)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=3)
    ap.add_argument("--big", action="store_true", help="the brief's sizes")
    ap.add_argument("--only", nargs="*", choices=MODELS)
    ap.add_argument("--ops", nargs="*", choices=tuple(OPS))
    ap.add_argument("--set", nargs="*", default=[], help="model=size overrides")
    ap.add_argument("--cap", type=int, default=600, help="seconds per cell")
    ap.add_argument("--append", action="store_true", help="add to the json instead of replacing")
    ap.add_argument("--label", default="", help="what this run measured (code version, ...)")
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    sizes = dict(BIG if args.big else SMALL)
    for kv in args.set:
        k, v = kv.split("=")
        sizes[k] = int(v)
    args.sizes = sizes
    rows = []
    for op, models in OPS.items():
        if args.ops and op not in args.ops:
            continue
        for kind in models:
            if args.only and kind not in args.only:
                continue
            row = run_child(kind, sizes[kind], op, args.cap)
            rows.append(row)
            msg = row.get("error", "").splitlines()[-1:] if "error" in row else (
                f"{row['seconds']:.1f} s, {row['ratio']:.2f}x, silent {row['silent_s']} s, "
                f"{row.get('problems')}, cb {row.get('codebook_vs_f64_rel')}")
            print(f"{kind:>9} {op:<18} {msg}", flush=True)
    write(rows, args)


if __name__ == "__main__":
    main()
