"""Benchmark: Deep k-Means methods on real MNIST with LeNet-5 (Caffe), all from one baseline.

Protocols (Wu et al., ICML 2018, §4.1.1 / Figure 1, and the whole-model test of issue 4):

1. ``layer``: one conv layer clustered at a time (scalar units, K in 2..32, CR about 6x-32x),
   the other layers untouched and frozen out of the clustering; methods ``wr``, ``finetune``,
   ``dkm`` (hard), ``dkm`` (spectral).
2. ``model``: every conv and dense kernel at K in {16, 8, 4, 2}; methods ``wr``, ``finetune``,
   ``dkm`` hard / spectral, ``dkm+finetune``.
3. ``sparse``: the sparsity-promoting variant with row units for the convs and entropy-coded
   indices, searching the highest whole-model CR whose accuracy stays within 0.3 pt;
   ``sparse_staged`` the same variant with a gradual schedule (:func:`run_sparse_staged`),
   ``sparse_distill`` the latter with knowledge distillation from the baseline,
   ``sparse_distill_xl`` with more epochs at high sparsity and 15 of fine-tuning (the recipe
   that reaches >= 100x within 0.3 pt; about 15 minutes a run).
4. ``tfmot``: tfmot's cluster_weights on the same baseline weights, under tf_keras in a
   subprocess (``--tfmot_python``, default $DKM_TF_TFMOT_PYTHON).

Writes bench/results/dkm_mnist.{json,md,png}. About 20-40 minutes on 2 CPU cores.

  python bench/dkm_mnist.py [--protocols layer,model,sparse,sparse_staged,sparse_distill,
                              sparse_distill_mild,sparse_distill_long,sparse_distill_xl,
                             sparse_distill_xl_k4,k2_staged,tfmot,long,soft,step_time]
      [--lam 1.0] [--append]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from dkm_tf import data, models, palette, pipeline  # noqa: E402
from dkm_tf.graph.copying import copy_model  # noqa: E402
from dkm_tf.graph.share import share_weights  # noqa: E402
from dkm_tf.training.finetune import finetune  # noqa: E402
from dkm_tf.training.retrain import dkm_retrain  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CACHE = ROOT / "bench" / ".cache"
LAYERS = ("conv1", "conv2", "fc1", "fc2")
PAPER_FIG1 = ("Paper Figure 1 (read off the plot, methods.md): Deep k-Means keeps about 99 % "
              "on conv1/conv2 of LeNet-5 up to CR ~ 30x where WR collapses; no table is "
              "published.")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def baseline(train, test):
    """LeNet-5 trained as in tfmot_measured.md §1 (Adam 1e-3 x5, 1e-4 x2, batch 128, seed 0)."""
    path = CACHE / "lenet5_seed0.weights.h5"
    model = models.lenet5_caffe(seed=0)
    if path.is_file():
        model.load_weights(path)
        return model
    pipeline.train_classifier(model, train, epochs=5, batch_size=128, learning_rate=1e-3)
    pipeline.train_classifier(model, train, epochs=2, batch_size=128, learning_rate=1e-4)
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return model


def _cr(model, palettes):
    """The row's compression ratios: clustered kernels and whole model, log2 K and entropy."""
    rep = palette.size_report(palettes, other_params=model.count_params()
                              - sum(p.n_values for p in palettes))
    return {"cr_log2": rep.totals["cr_clustered_log2"],
            "cr_entropy": rep.totals["cr_clustered_entropy"],
            "cr_model_log2": rep.totals["cr_model_log2"],
            "cr_model_entropy": rep.totals["cr_model_entropy"]}


def run_method(method, base, train, test, k, *, only=None, lam, epochs, unit="scalar",
               sparsity=0.0, relaxation="hard", granularity="per_tensor", per_layer=None):
    """One compression run.

    ``only`` restricts clustering to one layer (the others skipped); ``per_layer`` maps layer
    names to ``{"n_clusters": K, "sparsity": p}`` (sparse protocol).
    """
    overrides = {name: None for name in LAYERS if only and name != only}
    if per_layer:
        overrides = {name: dict(cfg) for name, cfg in per_layer.items()}
        k = max(cfg["n_clusters"] for cfg in per_layer.values())
        sparsity = {name: cfg["sparsity"] for name, cfg in per_layer.items()}
    t = time.perf_counter()
    work = base
    if method.startswith("dkm"):
        ks = {only: k} if only else k
        if per_layer:
            ks = {name: cfg["n_clusters"] for name, cfg in per_layer.items()}
        work, _ = dkm_retrain(base, train, n_clusters=ks, lam=lam, relaxation=relaxation,
                              unit=unit, epochs=epochs, learning_rate=1e-4, batch_size=128,
                              sparsity=sparsity, include_dense=True, refresh_every=1)
    if per_layer:  # sparse sharing step first; fine-tuning then re-clusters losslessly
        work, pals, _ = share_weights(work, k, unit=unit, granularity=granularity,
                                      overrides=overrides)
    if method.endswith("finetune"):
        ft_over = ({n: {"n_clusters": c["n_clusters"]} for n, c in per_layer.items()}
                   if per_layer else overrides or None)
        model, ft_pals, _ = finetune(work, train, n_clusters=k, unit=unit, epochs=epochs,
                                     learning_rate=1e-3 if k <= 4 else 1e-4, batch_size=128,
                                     granularity=granularity, overrides=ft_over)
        if not per_layer:  # with per_layer the index histograms are those of the sparse step
            pals = ft_pals
    elif per_layer:
        model = work
    else:
        model, pals, _ = share_weights(work, k, unit=unit, granularity=granularity,
                                       overrides=overrides or None, sparsity=sparsity)
    acc = pipeline.evaluate_accuracy(model, test)
    row = {"method": method + ("" if not method.startswith("dkm") else f" ({relaxation})"),
           "K": k if not per_layer else {n: c["n_clusters"] for n, c in per_layer.items()},
           "layer": only or "all", "unit": unit, "granularity": granularity,
           "sparsity": sparsity,
           "acc": acc, "seconds": time.perf_counter() - t, **_cr(model, pals)}
    log(f"{row['method']:<24} layer={row['layer']:<5} K={k!s:<3} acc={100 * acc:.2f}% "
        f"CR={row['cr_log2']:.1f}x (H: {row['cr_entropy']:.1f}x) {row['seconds']:.0f}s")
    return row


def _cosine(lr, epochs, steps, alpha=0.01):
    import keras  # noqa: PLC0415

    return keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps, alpha=alpha)


def run_long(base, train, test, granularity, lam):
    """K=2 whole model with a longer schedule: dkm 5 epochs (Adam 1e-3), then 15 epochs of
    hard-sharing fine-tuning with a cosine learning rate (1e-3 -> 1e-5)."""
    t = time.perf_counter()
    steps = -(-len(train[0]) // 128)
    work, _ = dkm_retrain(base, train, n_clusters=2, lam=lam, unit="scalar", epochs=5,
                          learning_rate=1e-3, batch_size=128, refresh_every=1)
    work, pals, _ = finetune(work, train, n_clusters=2, epochs=15,
                             learning_rate=_cosine(1e-3, 15, steps), batch_size=128,
                             granularity=granularity)
    acc = pipeline.evaluate_accuracy(work, test)
    row = {"method": "dkm+finetune (hard), long cosine schedule", "K": 2, "layer": "all",
           "unit": "scalar", "granularity": granularity, "sparsity": 0.0, "acc": acc,
           "seconds": time.perf_counter() - t, **_cr(work, pals)}
    log(f"long schedule K=2 {granularity}: acc={100 * acc:.2f}% CR={row['cr_log2']:.1f}x")
    return row


def run_k2_staged(base, train, test, lam, stages=((8, 3), (4, 3), (2, 5)), finetune_epochs=20):
    """K=2 whole model per tensor reached gradually, with distillation from the baseline.

    Each stage re-trains with the hard penalty at K (Adam 1e-3) and snaps to K centroids;
    then ``finetune_epochs`` of hard-sharing fine-tuning (cosine 1e-3 -> 1e-5). Every stage
    trains with :class:`dkm_tf.DistillationLoss` (T=4, α=0.5).
    """
    from dkm_tf.training.distill import DistillationLoss, distillation_targets  # noqa: PLC0415

    t = time.perf_counter()
    steps = -(-len(train[0]) // 128)
    train = (train[0], distillation_targets(base, train[0], train[1]))
    loss = DistillationLoss(num_classes=10, temperature=4.0, alpha=0.5)
    work = copy_model(base)
    for k, epochs in stages:
        work.compile(loss=loss)
        work, _ = dkm_retrain(work, train, n_clusters=k, lam=lam, unit="scalar", epochs=epochs,
                              learning_rate=1e-3, batch_size=128, refresh_every=1)
        work = share_weights(work, k).model
        log(f"K={k} stage: snapped acc={100 * pipeline.evaluate_accuracy(work, test):.2f}%")
    work.compile(loss=loss)
    work, pals, _ = finetune(work, train, n_clusters=2, epochs=finetune_epochs,
                             learning_rate=_cosine(1e-3, finetune_epochs, steps),
                             batch_size=128)
    acc = pipeline.evaluate_accuracy(work, test)
    row = {"method": f"dkm (K {'->'.join(str(k) for k, _ in stages)}, distilled) + finetune "
                     f"({sum(e for _, e in stages)} + {finetune_epochs} epochs)",
           "K": 2, "layer": "all", "unit": "scalar", "granularity": "per_tensor",
           "sparsity": 0.0, "acc": acc, "seconds": time.perf_counter() - t, **_cr(work, pals)}
    log(f"K=2 staged: acc={100 * acc:.2f}%")
    return row


def run_soft(base, train, test, k=2, epochs=10, tau=(1e-2, 1e-4), lr=1e-3):
    """Whole model, K per tensor, soft assignments (DKM, Cho et al., ICLR 2022): the forward
    pass uses the attention-weighted centroids, the temperature decays exponentially from
    ``tau[0]`` to ``tau[1]`` over the epochs, Adam with a cosine learning rate (lr -> lr/100);
    strip snaps every weight to its nearest centroid (the accuracy is the stripped model's)."""
    from dkm_tf.training.clustering import cluster_weights, strip_clustering  # noqa: PLC0415
    from dkm_tf.training.soft import TemperatureSchedule  # noqa: PLC0415

    t = time.perf_counter()
    steps = -(-len(train[0]) // 128)
    model = cluster_weights(base, k, assignment="soft", temperature=tau[0])
    model.compile(keras.optimizers.Adam(_cosine(lr, epochs, steps)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*train, epochs=epochs, batch_size=128, verbose=0,
              callbacks=[TemperatureSchedule(tau[0], tau[1], epochs)])
    soft_acc = pipeline.evaluate_accuracy(model, test)
    plain, pals = strip_clustering(model)
    acc = pipeline.evaluate_accuracy(plain, test)
    row = {"method": f"soft (DKM), tau {tau[0]:g} -> {tau[1]:g} exponential, {epochs} epochs "
                     f"Adam cosine {lr:g}", "K": k, "layer": "all", "unit": "scalar",
           "granularity": "per_tensor", "sparsity": 0.0, "acc": acc, "acc_soft": soft_acc,
           "seconds": time.perf_counter() - t, **_cr(plain, pals)}
    log(f"soft K={k} tau {tau}: soft forward {100 * soft_acc:.2f}%, stripped (hard) "
        f"{100 * acc:.2f}% in {row['seconds']:.0f}s")
    return row


def step_times(base, train, k=2, steps=20, rounds=6, tau=1e-3):
    """Median train-step time (batch 128) of the plain model, hard and soft clustering.

    The three models train in turns (``rounds`` x ``steps`` batches each, after one warm-up
    turn that traces the step), so a change of machine load hits them alike.
    """
    from dkm_tf.training.clustering import cluster_weights  # noqa: PLC0415

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    x, y = train[0][:128 * steps], train[1][:128 * steps]
    runs = {"plain": copy_model(base), "hard": cluster_weights(base, k),
            "soft": cluster_weights(base, k, assignment="soft", temperature=tau)}
    times = {name: [] for name in runs}
    for model in runs.values():
        model.compile(keras.optimizers.Adam(1e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=1, batch_size=128, verbose=0)  # trace
    for _ in range(rounds):
        for name, model in runs.items():
            timer = Timer()
            timer.times = times[name]
            model.fit(x, y, epochs=1, batch_size=128, verbose=0, callbacks=[timer])
    out = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
    out["soft_over_plain"] = out["soft"] / out["plain"]
    out["hard_over_plain"] = out["hard"] / out["plain"]
    out["load_average"] = os.getloadavg()[0]
    log(f"train step (batch 128, median ms): {out}")
    return out


SPARSE_FINAL_P = {"conv1": 0.2, "conv2": 0.75, "fc1": 0.97, "fc2": 0.7}
SPARSE_FINAL_K = {"conv1": 8, "conv2": 4, "fc1": 3, "fc2": 4}
# fractions of the final sparsity per stage (each stage: epochs, then a snap)
# more epochs at the high sparsities, where the accuracy is lost
SPARSE_RAMP_LONG = ((0.3, 2), (0.5, 2), (0.65, 2), (0.78, 3), (0.88, 3), (0.94, 4), (0.98, 4),
                    (1.0, 5), (1.0, 5))
# still more epochs from 94 % of the final sparsity on (the accuracy is lost there)
SPARSE_RAMP_XL = ((0.3, 2), (0.5, 2), (0.65, 2), (0.78, 3), (0.88, 3), (0.94, 5), (0.98, 5),
                  (1.0, 5), (1.0, 5), (1.0, 6))
# fc1 with three non-zero levels instead of two (about 5 % more bits)
SPARSE_FINAL_K_FC1_4 = {"conv1": 8, "conv2": 4, "fc1": 4, "fc2": 4}
# a milder split (conv1 dense, fc1 3.5 % kept) that still targets ~105x
SPARSE_FINAL_P_MILD = {"conv1": 0.0, "conv2": 0.85, "fc1": 0.965, "fc2": 0.7}
SPARSE_RAMP = ((0.3, 2), (0.5, 2), (0.65, 2), (0.78, 3), (0.88, 3), (0.94, 3), (0.98, 3),
               (1.0, 3), (1.0, 4))


def run_sparse_staged(base, train, test, lam, final_p=None, final_k=None, ramp=SPARSE_RAMP,
                      finetune_epochs=10, distill=False):
    """The sparsity variant with a gradual schedule (gradual pruning, Zhu & Gupta 2017).

    Each stage re-trains with the penalty at a growing fraction ``r`` of the final per-layer
    sparsity p (K=16 for the survivors, ``epochs`` of Adam 1e-3, cosine in the last stage)
    and then snaps: the
    p·r smallest weights become exactly 0, the rest their centroid, so the next stage starts
    from pruned weights. Then 3 epochs at the final K, a last snap, and ``finetune_epochs``
    of hard-sharing fine-tuning (cosine 1e-3). CR H uses the snapped indices. With
    ``distill`` every stage trains with :class:`dkm_tf.DistillationLoss` (T=4, α=0.5) from
    the uncompressed baseline.
    """
    from dkm_tf.training.distill import DistillationLoss, distillation_targets  # noqa: PLC0415

    final_p, final_k = final_p or SPARSE_FINAL_P, final_k or SPARSE_FINAL_K
    t = time.perf_counter()
    steps = -(-len(train[0]) // 128)
    if distill:
        train = (train[0], distillation_targets(base, train[0], train[1]))

    def compiled(model):
        if distill:
            model.compile(loss=DistillationLoss(num_classes=10, temperature=4.0, alpha=0.5))
        return model

    work = compiled(copy_model(base)) if distill else base  # never re-compile the baseline

    def snap(model, ks, ps):
        over = {n: {"n_clusters": ks[n], "sparsity": ps[n]} for n in LAYERS}
        res = share_weights(model, 16, overrides=over)
        return compiled(res.model), res.palettes

    for i, (r, epochs) in enumerate(ramp):
        ps = {n: final_p[n] * r for n in LAYERS}
        lr = _cosine(1e-3, epochs, steps, 0.05) if i == len(ramp) - 1 else 1e-3
        work, _ = dkm_retrain(work, train, n_clusters=16, lam=lam, unit="scalar", epochs=epochs,
                              learning_rate=lr, batch_size=128, refresh_every=1, sparsity=ps)
        work, _ = snap(work, {n: 16 for n in LAYERS}, ps)
        log(f"sparse stage r={r}: snapped acc={100 * pipeline.evaluate_accuracy(work, test):.2f}%")
    work, _ = dkm_retrain(work, train, n_clusters=final_k, lam=lam, unit="scalar", epochs=3,
                          learning_rate=_cosine(5e-4, 3, steps, 0.05), batch_size=128,
                          refresh_every=1, sparsity=final_p)
    work, pals = snap(work, final_k, final_p)
    model, _, _ = finetune(work, train, n_clusters=16, epochs=finetune_epochs,
                           learning_rate=_cosine(1e-3, finetune_epochs, steps, 0.05),
                           batch_size=128, overrides={n: {"n_clusters": final_k[n]}
                                                      for n in LAYERS})
    acc = pipeline.evaluate_accuracy(model, test)
    row = {"method": "dkm (hard, sparse, gradual) + finetune"
           + (", distilled" if distill else "")
           + f" ({sum(e for _, e in ramp)} stage + 3 + {finetune_epochs} epochs)",
           "K": dict(final_k),
           "layer": "all", "unit": "scalar", "granularity": "per_tensor",
           "sparsity": dict(final_p), "acc": acc, "seconds": time.perf_counter() - t,
           **_cr(model, pals)}
    log(f"sparse staged: acc={100 * acc:.2f}% CR H={row['cr_entropy']:.1f}x")
    return row


def run_tfmot(base, python):
    if not python or not os.path.exists(python):
        return {"skipped": "no tfmot interpreter (set --tfmot_python or DKM_TF_TFMOT_PYTHON)"}
    with tempfile.TemporaryDirectory() as tmp:
        wpath, out = f"{tmp}/w.npz", f"{tmp}/out.json"
        np.savez(wpath, **{f"w{i}": w for i, w in enumerate(base.get_weights())})
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        proc = subprocess.run([python, str(ROOT / "bench" / "_tfmot_lenet.py"), wpath,
                               str(data.mnist_dir()), out], env=env, text=True,
                              capture_output=True, timeout=3600)
        if proc.returncode != 0:
            return {"skipped": "tfmot run failed: " + proc.stderr[-1500:]}
        log(proc.stdout.strip())
        return {"rows": json.loads(pathlib.Path(out).read_text())}


NOTES = {
    "model": "Long schedule: dkm 5 epochs (Adam 1e-3), then 5 epochs of fine-tuning at 1e-3 "
             "and 2 at 1e-4. Long cosine schedule: dkm 5 epochs (Adam 1e-3), then 15 epochs "
             "of hard-sharing fine-tuning with a cosine learning rate 1e-3 -> 1e-5 "
             "(`run_long`).",
    "sparse": "Rows with fixed p: dkm+finetune, 3 epochs each, row units for the convs. "
              "`gradual`: scalar units, the per-layer sparsity reached in stages (2-5 epochs "
              "each, weights snapped to exact zeros / centroids after each stage), 3 epochs "
              "at the final K, 10 epochs of fine-tuning (`run_sparse_staged`); `distilled`: "
              "the same with `dkm_tf.DistillationLoss` (T=4, α=0.5) from the baseline. Rows "
              "that give `(S stage + 3 + F epochs)`: S epochs over the sparsity stages, 3 at the "
              "final K, F of fine-tuning (`sparse_distill_xl`: 5-6 epochs per stage from 94 % "
              "of the final sparsity on, 15 of fine-tuning; `_k4`: fc1 with three non-zero "
              "levels). Runs are not seeded (shuffling): repeated rows show the spread.",
}


def write(results):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dkm_mnist.json").write_text(json.dumps(results, indent=2))
    base = results["baseline_acc"]
    md = ["# Deep k-Means on MNIST / LeNet-5 (Caffe): all methods from one baseline", "",
          f"{results['meta']['time']}, {results['meta']['cpus']} CPUs, Keras "
          f"{results['meta']['keras']}. Baseline test accuracy **{100 * base:.2f} %** "
          "(tfmot_measured.md recipe, seed 0). CR counts clustered kernels only, codebooks at "
          "32 bits; `log2` = fixed-length indices, `H` = entropy-coded indices. "
          f"Regularizer λ = {results['meta']['lam']}, re-training "
          f"{results['meta']['epochs']} epoch(s) at Adam 1e-4; fine-tuning "
          f"{results['meta']['epochs']} epoch(s) (Adam 1e-3 for K ≤ 4, else 1e-4).", ""]
    for proto, title in (("layer", "1. One conv layer at a time (Figure 1 protocol)"),
                         ("model", "2. Whole model (all conv + dense kernels)"),
                         ("sparse", "3. Sparsity variant, entropy-coded indices")):
        rows = [r for r in results["rows"] if r["protocol"] == proto]
        if not rows:
            continue
        md += [f"## {title}", "", "| layer | K | method | unit | p | acc % | Δ pt | CR log2 | "
               "CR H | model CR H |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            unit = r["unit"] + (" per channel" if r.get("granularity") == "per_channel" else "")
            md.append(f"| {r['layer']} | {r['K']} | {r['method']} | {unit} | "
                      f"{r['sparsity']} | {100 * r['acc']:.2f} | {100 * (r['acc'] - base):+.2f} | "
                      f"{r['cr_log2']:.1f} | {r['cr_entropy']:.1f} | "
                      f"{r['cr_model_entropy']:.1f} |")
        md += ["", NOTES[proto], ""] if proto in NOTES else [""]
    tf = results.get("tfmot", {})
    md += ["## tfmot (same baseline weights, tf_keras subprocess, kmeans++ init)", ""]
    if "rows" in tf:
        md += ["| K | recipe | acc % |", "|---|---|---|"]
        md += [f"| {r['K']} | {r['recipe']} | {100 * r['acc']:.2f} |" for r in tf["rows"]]
    else:
        md.append(f"not run: {tf.get('skipped', 'not requested')}")
    st = results.get("step_time_ms")
    if st:
        md += ["", "## Train-step time, LeNet-5, K=2 per tensor (batch 128, median of 120 steps)",
               "",
               f"Load average {st.get('load_average', 0):.1f} on the shared machine.", "",
               "| plain | hard | soft (DKM) | hard / plain | soft / plain |",
               "|---|---|---|---|---|",
               f"| {st['plain']:.1f} ms | {st['hard']:.1f} ms | {st['soft']:.1f} ms | "
               f"{st['hard_over_plain']:.2f}x | {st['soft_over_plain']:.2f}x |"]
    md += ["", PAPER_FIG1, ""]
    (RESULTS / "dkm_mnist.md").write_text("\n".join(md) + "\n")
    plot(results)


def plot(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    panels = [("layer", "conv1"), ("layer", "conv2"), ("model", "all")]
    for i, (proto, layer) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        rows = [r for r in results["rows"] if r["protocol"] == proto and r["layer"] == layer]
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["cr_log2"], 100 * r["acc"]) for r in rows if r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.axhline(100 * results["baseline_acc"], color="k", lw=0.5, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(90, 100)
        ax.set_title(f"{'one layer: ' + layer if proto == 'layer' else 'whole model'}")
        ax.set_xlabel("compression ratio (log2 K indices)")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(RESULTS / "dkm_mnist.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocols", default="layer,model,sparse,tfmot")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--soft_epochs", type=int, default=10)
    ap.add_argument("--tfmot_python", default=os.environ.get("DKM_TF_TFMOT_PYTHON"))
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of bench/results/dkm_mnist.json and add to them")
    args = ap.parse_args()
    protocols = set(args.protocols.split(","))
    train, test = data.load_mnist()
    base = baseline(train, test)
    base_acc = pipeline.evaluate_accuracy(base, test)
    log(f"baseline LeNet-5: {100 * base_acc:.2f}%")
    results = {"meta": {"time": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
                        "keras": keras.__version__, "lam": args.lam, "epochs": args.epochs},
               "baseline_acc": base_acc, "rows": []}
    if args.append and (RESULTS / "dkm_mnist.json").is_file():
        old = json.loads((RESULTS / "dkm_mnist.json").read_text())
        results["rows"], results["meta"] = old["rows"], old["meta"]
        if "tfmot" in old:
            results["tfmot"] = old["tfmot"]
        if "step_time_ms" in old:
            results["step_time_ms"] = old["step_time_ms"]
    kw = {"lam": args.lam, "epochs": args.epochs}

    def add(proto, row):
        row["protocol"] = proto
        results["rows"].append(row)
        write(results)

    if "layer" in protocols:
        for layer in ("conv1", "conv2"):
            for k in (2, 4, 8, 16, 32):
                for method, relax in (("wr", "hard"), ("finetune", "hard"), ("dkm", "hard"),
                                      ("dkm", "spectral")):
                    add("layer", run_method(method, base, train, test, k, only=layer,
                                            relaxation=relax, **kw))
    if "model" in protocols:
        for k in (16, 8, 4, 2):
            for method, relax in (("wr", "hard"), ("finetune", "hard"), ("dkm", "hard"),
                                  ("dkm", "spectral"), ("dkm+finetune", "hard")):
                add("model", run_method(method, base, train, test, k, relaxation=relax, **kw))
        add("model", run_method("dkm+finetune", base, train, test, 2, granularity="per_channel",
                                **kw))
    if "sparse" in protocols:
        for fc1_p in (0.9, 0.95, 0.97):
            per_layer = {"conv1": {"n_clusters": 8, "sparsity": 0.3},
                         "conv2": {"n_clusters": 8, "sparsity": 0.7},
                         "fc1": {"n_clusters": 4, "sparsity": fc1_p},
                         "fc2": {"n_clusters": 4, "sparsity": 0.7}}
            add("sparse", run_method("dkm+finetune", base, train, test, None, unit="auto",
                                     per_layer=per_layer, lam=kw["lam"], epochs=3))
    if "sparse_staged" in protocols:
        add("sparse", run_sparse_staged(base, train, test, args.lam))
    if "sparse_distill" in protocols:
        add("sparse", run_sparse_staged(base, train, test, args.lam, distill=True))
    if "sparse_distill_long" in protocols:
        add("sparse", run_sparse_staged(base, train, test, args.lam, distill=True,
                                        ramp=SPARSE_RAMP_LONG))
    if "sparse_distill_xl" in protocols:
        add("sparse", run_sparse_staged(base, train, test, args.lam, distill=True,
                                        ramp=SPARSE_RAMP_XL, finetune_epochs=15))
    if "sparse_distill_xl_k4" in protocols:
        add("sparse", run_sparse_staged(base, train, test, args.lam, distill=True,
                                        ramp=SPARSE_RAMP_XL, finetune_epochs=15,
                                        final_k=SPARSE_FINAL_K_FC1_4))
    if "sparse_distill_mild" in protocols:
        add("sparse", run_sparse_staged(base, train, test, args.lam, distill=True,
                                        final_p=SPARSE_FINAL_P_MILD))
    if "k2_staged" in protocols:
        add("model", run_k2_staged(base, train, test, args.lam))
    if "long" in protocols:
        for granularity in ("per_tensor", "per_channel"):
            add("model", run_long(base, train, test, granularity, args.lam))
    if "soft" in protocols:
        add("model", run_soft(base, train, test, epochs=args.soft_epochs))
    if "step_time" in protocols:
        results["step_time_ms"] = step_times(base, train)
        write(results)
    if "tfmot" in protocols:
        results["tfmot"] = run_tfmot(base, args.tfmot_python)
        write(results)
    write(results)
    log("wrote bench/results/dkm_mnist.{json,md,png}")


if __name__ == "__main__":
    main()
