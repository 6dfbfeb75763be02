"""Training-step overhead of the Deep k-Means regularizer (target: <= 1.15x without it).

For each network, three compiled copies with identical weights:

* ``base``: no regularizer;
* ``hard``: ``attach_regularizer(relaxation="hard")`` on every conv kernel;
* ``spectral``: ``attach_regularizer(relaxation="spectral")`` on every conv kernel.

Networks: LeNet-5 (Caffe variant, ``dkm_tf.models.lenet5_caffe``) on real MNIST, batch 128;
a 4-conv VGG-ish net (Conv64-Conv64-Pool-Conv128-Conv128-Pool-Dense10, 3x3 "same", ReLU) on
random 32x32x3 data, batch 64. K = 16 for every conv kernel, row units (d = 5 and 3); for the
spectral relaxation K >= d, so F has its maximal d columns (the worst case for cost).

Each round runs one ``train_on_batch`` step of every variant on the same batch, the order
rotating between rounds, so the three are interleaved step by step (the machine is shared and
its load changes within seconds). Reported: the median step time per variant, the ratio of
medians, and the median of the per-round ratios (steps adjacent in time). Measured separately,
because they are not per-step costs of ``fit(verbose=0)``: the F-step (``refresh_ms``, once
per refresh period) and RefreshKMeans' per-batch read of the penalty (only with a per-batch
progress bar, ``verbose=1``).

Usage: python bench/regularizer_overhead.py [--rounds-lenet 150] [--rounds-vgg 40]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dkm_tf import data, models  # noqa: E402
from dkm_tf.training import attach  # noqa: E402
from dkm_tf.training.callbacks import RefreshKMeans  # noqa: E402

RESULTS = os.path.join(HERE, "results")
VARIANTS = ("base", "hard", "spectral")
N_CLUSTERS = 16
TARGET = 1.15


def vgg_ish(seed=0):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv1"),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(128, 3, padding="same", activation="relu", name="conv3"),
        L.Conv2D(128, 3, padding="same", activation="relu", name="conv4"),
        L.MaxPooling2D(2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(10, name="fc"),
    ], name="vgg_ish")


def make_variant(builder, variant, weights):
    model = builder()
    model.set_weights(weights)
    if variant != "base":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spectral with K >= d is degenerate (expected)
            attach.attach_regularizer(model, N_CLUSTERS, lam=1e-4, relaxation=variant)
    model.compile(keras.optimizers.Adam(1e-4),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def bench_net(name, builder, x, y, batch, rounds):
    weights = builder().get_weights()
    models_ = {v: make_variant(builder, v, weights) for v in VARIANTS}
    batches = [(tf.constant(x[i:i + batch]), tf.constant(y[i:i + batch]))
               for i in range(0, len(x) - batch + 1, batch)]
    for v in VARIANTS:  # warm-up: trace the train function
        for xb, yb in batches[:2]:
            models_[v].train_on_batch(xb, yb)
    times = {v: [] for v in VARIANTS}
    for r in range(rounds):
        xb, yb = batches[r % len(batches)]
        for v in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
            t0 = time.perf_counter()
            models_[v].train_on_batch(xb, yb)
            times[v].append((time.perf_counter() - t0) * 1e3)
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    paired = {v: statistics.median(np.divide(times[v], times["base"])) for v in VARIANTS[1:]}
    refresh_ms, log_us = {}, {}
    for v in VARIANTS[1:]:
        model = models_[v]
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attach.refresh_regularizers(model)
            samples.append((time.perf_counter() - t0) * 1e3)
        refresh_ms[v] = round(statistics.median(samples), 2)
        cb = RefreshKMeans()  # per-batch cost of reading the penalty (fit verbose=1 only)
        cb._regs = attach.kmeans_regularizers(model)
        cb._meters()
        t0 = time.perf_counter()
        for _ in range(200):
            cb._meters()
        log_us[v] = round((time.perf_counter() - t0) / 200 * 1e6, 1)
    conv_weights = sum(int(np.prod(v.shape)) for v, _ in
                       attach.kmeans_regularizers(models_["hard"]))
    return {
        "net": name, "batch": batch, "steps_per_variant": rounds,
        "regularized_conv_weights": conv_weights,
        "median_ms": {v: round(med[v], 3) for v in VARIANTS},
        "iqr_ms": {v: np.percentile(times[v], [25, 75]).round(2).tolist() for v in VARIANTS},
        "ratio_vs_base": {v: round(med[v] / med["base"], 4) for v in VARIANTS[1:]},
        "median_paired_ratio": {v: round(paired[v], 4) for v in VARIANTS[1:]},
        "refresh_ms": refresh_ms,
        "penalty_log_read_us_per_batch": log_us["hard"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds-lenet", type=int, default=150)
    parser.add_argument("--rounds-vgg", type=int, default=40)
    args = parser.parse_args()
    load_before = [round(v, 2) for v in os.getloadavg()]
    (x_tr, y_tr), _ = data.load_mnist()
    rng = np.random.default_rng(0)
    n_mnist = 128 * 16
    x_vgg = rng.normal(size=(64 * 8, 32, 32, 3)).astype("float32")
    y_vgg = rng.integers(0, 10, 64 * 8).astype("int32")
    rows = [
        bench_net("lenet5_caffe (MNIST)", models.lenet5_caffe, x_tr[:n_mnist], y_tr[:n_mnist],
                  128, args.rounds_lenet),
        bench_net("vgg_ish 4-conv (random 32x32x3)", vgg_ish, x_vgg, y_vgg, 64,
                  args.rounds_vgg),
    ]
    result = {
        "what": "train-step time with the k-means regularizer on every conv kernel vs without",
        "target_ratio": TARGET, "n_clusters": N_CLUSTERS, "unit": "row", "lam": 1e-4,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "devices": [d.name for d in tf.config.list_logical_devices()],
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "load_average_1_5_15min": {"before": load_before,
                                   "after": [round(v, 2) for v in os.getloadavg()]},
        "rounds": {"lenet": args.rounds_lenet, "vgg": args.rounds_vgg}, "results": rows,
        "pass": all(r <= TARGET for row in rows for key in ("ratio_vs_base", "median_paired_ratio")
                    for r in row[key].values()),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "regularizer_overhead.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "# Regularizer overhead (train step with vs without the k-means penalty)", "",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs "
        f"(shared), TF {tf.__version__}, Keras {keras.__version__}. K = {N_CLUSTERS}, row "
        "units, penalty on every conv kernel. One `train_on_batch` step per variant per round, "
        f"variant order rotating, {args.rounds_lenet} (LeNet) / {args.rounds_vgg} (VGG) rounds;"
        " median step time, and the median of the per-round ratios (steps adjacent in time, "
        "so less sensitive to the load of a shared machine). Load average (1 min) before / "
        f"after: {load_before[0]} / {result['load_average_1_5_15min']['after'][0]} on "
        f"{os.cpu_count()} cores, so absolute times are inflated by other jobs; the ratios "
        "are the result.",
        "",
        "| net | batch | conv weights | base ms | hard ms | spectral ms | hard / base | "
        "spectral / base | paired ratio (hard / spectral) | F-step (hard / spectral) ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, ratio = r["median_ms"], r["ratio_vs_base"]
        lines.append(
            f"| {r['net']} | {r['batch']} | {r['regularized_conv_weights']:,} | "
            f"{m['base']:.2f} | {m['hard']:.2f} | {m['spectral']:.2f} | {ratio['hard']:.3f} | "
            f"{ratio['spectral']:.3f} | {r['median_paired_ratio']['hard']:.3f} / "
            f"{r['median_paired_ratio']['spectral']:.3f} | {r['refresh_ms']['hard']} / "
            f"{r['refresh_ms']['spectral']} |")
    lines += ["", f"Target: ratio <= {TARGET}. "
              f"{'Met' if result['pass'] else 'NOT met'} for every net and relaxation. The F-step "
              "(k-means or SVD of every regularized kernel) runs once per refresh period (5 "
              "epochs by default), not per step. With a per-batch progress bar (fit verbose=1) "
              "RefreshKMeans also reads the penalty every batch: "
              + ", ".join(f"{r['penalty_log_read_us_per_batch']} us ({r['net']})"
                          for r in rows) + ".", ""]
    with open(os.path.join(RESULTS, "regularizer_overhead.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
