"""Benchmark: BatchNormalization folded at strip time (per-channel rescaled codebooks, the
default) against re-clustering the folded kernels to one per-tensor codebook, on an MNIST
conv-BN net fine-tuned with hard weight sharing.

Writes bench/results/bn_fold_mnist.json and bench/results/bn_fold_mnist.md.

Net: Conv2D(32, 3) + BN + ReLU, MaxPool, Conv2D(64, 3) + BN + ReLU, MaxPool, Flatten,
Dense(64) + BN + ReLU, Dense(10) (logits): 121,760 clustered kernel weights, 3 BN layers that
fold. Trained 2 epochs (Adam 1e-3, batch 128) on real MNIST (``DKM_TF_MNIST_DIR``) under
``keras.utils.set_random_seed(0)``. For each K (per-tensor codebooks, scalar units):
``cluster_weights`` + 1 epoch of fine-tuning (Adam 1e-4, BN live) + ``strip_clustering``:

* **kept** (default): the fold rescales each folded kernel's palette per output channel
  (codebook of channel c = codebook * s_c, same indices): accuracy of the stripped model, its
  largest output change against the wrapped (unfolded) model relative to the largest output,
  the codebook bytes, and the palettized ``.tflite`` sizes (``per_invoke``; ``once`` with
  ``keep_float=None``);
* **re-clustered**: ``share_weights(stripped, K)`` back to one per-tensor codebook per kernel:
  its accuracy, the share of test predictions that differ from the kept model's, codebook
  bytes and ``.tflite`` sizes.

Every file is verified against its Keras model by ``to_tflite``.

  python bench/bn_fold_mnist.py [--ks 4,16] [--epochs 2] [--finetune_epochs 1]
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from dkm_tf.core.files import write_text_atomic

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def build():
    import keras

    L = keras.layers
    inp = keras.Input((28, 28, 1))
    h = L.Conv2D(32, 3, name="conv1")(inp)
    h = L.ReLU()(L.BatchNormalization(name="bn1")(h))
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(64, 3, name="conv2")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn2")(h))
    h = L.Flatten()(L.MaxPooling2D()(h))
    h = L.Dense(64, name="fc1")(h)
    h = L.ReLU()(L.BatchNormalization(name="bn3")(h))
    return keras.Model(inp, L.Dense(10, name="fc2")(h), name="mnist_conv_bn")


def compile_(model, lr):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def predict(model, x):
    return np.asarray(model.predict(x, batch_size=1000, verbose=0))


def codebook_bytes(palettes):
    return int(sum(p.codebook.size * p.codebook.itemsize for p in palettes))


def tflite_sizes(model, palettes, samples, folder, tag):
    from dkm_tf import export

    out = {}
    for decode, extra in (("per_invoke", {}), ("once", {"keep_float": None})):
        rep = export.to_tflite(model, folder / f"{tag}_{decode}.tflite", format="palettized",
                               palettes=palettes, sample_inputs=samples, decode=decode,
                               **extra)
        out[decode] = {"bytes": rep.bytes, "max_rel_error": rep.max_rel_error}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="4,16")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--finetune_epochs", type=int, default=1)
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import dkm_tf
    from dkm_tf.data import load_mnist

    (x, y), (x_test, y_test) = load_mnist()
    x, x_test = (np.asarray(a, np.float32).reshape(-1, 28, 28, 1) for a in (x, x_test))
    y, y_test = np.asarray(y), np.asarray(y_test)
    keras.utils.set_random_seed(0)
    model = compile_(build(), 1e-3)
    n_clustered = sum(int(np.prod(model.get_layer(n).kernel.shape))
                      for n in ("conv1", "conv2", "fc1", "fc2"))
    print(f"training the float net ({n_clustered:,} kernel weights), {opts.epochs} epochs",
          flush=True)
    t0 = time.time()
    model.fit(x, y, epochs=opts.epochs, batch_size=128, verbose=0)
    float_acc = float(np.mean(predict(model, x_test).argmax(1) == y_test))
    print(f"  float {100 * float_acc:.2f} % ({time.time() - t0:.0f} s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for k in (int(v) for v in opts.ks.split(",")):
            print(f"K = {k}: cluster_weights + {opts.finetune_epochs} epoch(s) + strip",
                  flush=True)
            keras.utils.set_random_seed(0)
            wrapped = compile_(dkm_tf.cluster_weights(model, k), 1e-4)
            wrapped.fit(x, y, epochs=opts.finetune_epochs, batch_size=128, verbose=0)
            y_wrapped = predict(wrapped, x_test)
            kept, kept_pal = dkm_tf.strip_clustering(wrapped)
            y_kept = predict(kept, x_test)
            n_bn = sum(isinstance(layer, keras.layers.BatchNormalization)
                       for layer in kept.layers)
            rel = float(np.max(np.abs(y_kept - y_wrapped)) / np.max(np.abs(y_wrapped)))
            re_model, re_pal, _ = dkm_tf.share_weights(kept, n_clusters=k)
            y_re = predict(re_model, x_test)
            print("  exports", flush=True)
            row = {
                "K": k,
                "unfolded_accuracy": float(np.mean(y_wrapped.argmax(1) == y_test)),
                "kept": {"accuracy": float(np.mean(y_kept.argmax(1) == y_test)),
                         "bn_left": int(n_bn),
                         "max_rel_output_change": rel,
                         "granularities": sorted({p.layout.granularity for p in kept_pal}),
                         "codebook_bytes": codebook_bytes(kept_pal),
                         "tflite": tflite_sizes(kept, kept_pal, x_test[:8], tmp, f"kept{k}")},
                "reclustered": {"accuracy": float(np.mean(y_re.argmax(1) == y_test)),
                                "predictions_changed": float(np.mean(
                                    y_re.argmax(1) != y_kept.argmax(1))),
                                "codebook_bytes": codebook_bytes(re_pal),
                                "tflite": tflite_sizes(re_model, re_pal, x_test[:8], tmp,
                                                       f"re{k}")}}
            rows.append(row)
            print(f"  kept {100 * row['kept']['accuracy']:.2f} % (unfolded "
                  f"{100 * row['unfolded_accuracy']:.2f} %), re-clustered "
                  f"{100 * row['reclustered']['accuracy']:.2f} %", flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
           "python": sys.version.split()[0], "keras": keras.__version__,
           "clustered_weights": n_clustered, "epochs": opts.epochs,
           "finetune_epochs": opts.finetune_epochs, "float_accuracy": float_acc, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS / "bn_fold_mnist.json", json.dumps(out, indent=1))
    write_text_atomic(RESULTS / "bn_fold_mnist.md", markdown(out))
    print("wrote bench/results/bn_fold_mnist.json and .md", flush=True)


def _kb(n):
    return f"{n / 1000:.1f} KB" if n >= 1000 else f"{n} B"


def markdown(out):
    lines = ["# BatchNormalization folded at strip: per-channel codebooks vs re-clustering",
             "", f"{out['date']}, {out['machine']}, Keras {out['keras']}. Generated by "
             "`bench/bn_fold_mnist.py`. MNIST conv-BN net (conv32-BN-pool-conv64-BN-pool-"
             f"dense64-BN-dense10, {out['clustered_weights']:,} clustered kernel weights), "
             f"trained {out['epochs']} epochs: float {100 * out['float_accuracy']:.2f} %. Per "
             f"K: `cluster_weights` (per tensor) + {out['finetune_epochs']} epoch of "
             "fine-tuning + `strip_clustering` (folds BN). **kept**: the default, palettes "
             "rescaled per channel; **re-clustered**: `share_weights` of the stripped model "
             "back to one per-tensor codebook. `.tflite`: palettized `per_invoke`, and `once` "
             "with `keep_float=None`; KB = 1000 bytes.", "",
             "| K | unfolded accuracy | kept: accuracy / output change / codebooks / "
             "`.tflite` per_invoke, once | re-clustered: accuracy (predictions changed) / "
             "codebooks / `.tflite` per_invoke, once |", "|---|---|---|---|"]
    for r in out["rows"]:
        kp, rc = r["kept"], r["reclustered"]
        lines.append(
            f"| {r['K']} | {100 * r['unfolded_accuracy']:.2f} % | "
            f"{100 * kp['accuracy']:.2f} % / {kp['max_rel_output_change']:.1e} rel. / "
            f"{_kb(kp['codebook_bytes'])} / {_kb(kp['tflite']['per_invoke']['bytes'])}, "
            f"{_kb(kp['tflite']['once']['bytes'])} | {100 * rc['accuracy']:.2f} % "
            f"({100 * rc['predictions_changed']:.1f} %) / {_kb(rc['codebook_bytes'])} / "
            f"{_kb(rc['tflite']['per_invoke']['bytes'])}, {_kb(rc['tflite']['once']['bytes'])}"
            " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
