"""The ``dkm-tf`` command.

Usage:
  dkm-tf compress                      # built-in demo: digits CNN, K=16, no network
  dkm-tf compress --model m.keras --n_clusters 8 --unit row --granularity per_channel
  dkm-tf energy --model m.keras        # or a .tflite file

The logic lives in plain functions (:func:`run_compress`, :func:`run_energy`) that the tests
call; ``main`` only parses flags.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

from dkm_tf.core.files import atomic_path

COMMANDS = ("compress", "energy")

_MODEL = flags.DEFINE_string("model", None, "Path to a .keras model (default: train the "
                             "built-in digits CNN).")
_DATASET = flags.DEFINE_string("dataset", None, "Data for training/evaluation: digits, mnist "
                               "or keras:<name> (default: digits for the built-in model, none "
                               "for --model).")
_METHOD = flags.DEFINE_enum("method", None, ["wr", "finetune", "dkm", "dkm+finetune"],
                            "Compression method (default: finetune for the built-in demo, wr "
                            "for --model without --dataset).")
_N_CLUSTERS = flags.DEFINE_integer("n_clusters", 16, "K, centroids per codebook.")
_UNIT = flags.DEFINE_enum("unit", "scalar", ["scalar", "row", "kernel", "auto"],
                          "Clustering unit.")
_GRANULARITY = flags.DEFINE_enum("granularity", "per_tensor", ["per_tensor", "per_channel"],
                                 "One codebook per tensor or per output channel.")
_INIT = flags.DEFINE_enum("init", "kmeans++", ["kmeans++", "linear", "density", "random"],
                          "k-means initialisation.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Training epochs of the built-in model.")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 3, "Fine-tuning epochs (methods "
                                        "finetune and dkm+finetune).")
_DKM_EPOCHS = flags.DEFINE_integer("dkm_epochs", 5, "Re-training epochs with the regularizer.")
_LAM = flags.DEFINE_float("lam", 1.0, "Regularizer strength lambda (the paper's 1e-4 is too "
                          "weak for a few epochs of Adam; see dkm_tf.compress).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output_dir", "dkm_tf_out", "Where to write the results.")
_TFLITE = flags.DEFINE_bool("tflite", True, "Also write float, int8 and palettized .tflite "
                            "files, verified against Keras, with their sizes and latencies.")


def _log(msg):
    print(msg, flush=True)


def _atomic_write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def run_compress(model_path=None, *, dataset=None, method=None, n_clusters=16, unit="scalar",
                 granularity="per_tensor", init="kmeans++", epochs=30, finetune_epochs=3,
                 dkm_epochs=5, lam=1.0, seed=0, output_dir="dkm_tf_out", tflite=True):
    """Run ``dkm-tf compress``; returns the :class:`~dkm_tf.pipeline.CompressionResult`."""
    import keras  # noqa: PLC0415

    from dkm_tf import data as data_lib  # noqa: PLC0415
    from dkm_tf import models, pipeline  # noqa: PLC0415
    from dkm_tf.graph.copying import save_model_atomic  # noqa: PLC0415

    if model_path is None:
        dataset = dataset or "digits"
        method = method or "finetune"
        train, test = data_lib.load_dataset(dataset)
        _log(f"[data] {dataset}: {len(train[1])} train / {len(test[1])} test images")
        model = models.digits_cnn(input_shape=train[0].shape[1:], seed=seed)
        _log(f"[train] built-in {model.name} ({model.count_params():,} params), "
             f"{epochs} epochs")
        t = time.perf_counter()
        pipeline.train_classifier(model, train, epochs=epochs)
        _log(f"[train] done in {time.perf_counter() - t:.1f} s")
    else:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"--model {model_path!r}: no such file.")
        model = keras.models.load_model(model_path, compile=False)
        train = test = None
        if dataset:
            train, test = data_lib.load_dataset(dataset)
        method = method or ("wr" if train is None else "finetune")
        _log(f"[model] {model_path}: {model.name} ({model.count_params():,} params)")
    result = pipeline.compress(
        model, train, test, method=method, n_clusters=n_clusters, unit=unit,
        granularity=granularity, init=init, seed=seed, finetune_epochs=finetune_epochs,
        dkm_epochs=dkm_epochs, lam=lam)
    _log(result.summary())
    out_model = os.path.join(output_dir, "clustered.keras")
    save_model_atomic(result.model, out_model)
    _log(f"[write] {out_model} ({os.path.getsize(out_model):,} bytes)")
    if tflite:
        samples = test[0][:16] if test is not None else None
        result.tflite = write_tflite(result, output_dir, samples)
    report = result.to_dict()
    report["tflite"] = {k: (v.to_dict() if hasattr(v, "to_dict") else str(v))
                        for k, v in result.tflite.items()}
    report_path = os.path.join(output_dir, "report.json")
    _atomic_write_text(report_path, json.dumps(report, indent=2, default=str))
    _log(f"[write] {report_path}")
    return result


def write_tflite(result, output_dir, sample_inputs=None):
    """Write float / int8 / palettized .tflite files and print size and latency side by side.

    Two palettized files: ``palettized`` (decode once at load, near-float speed) and
    ``palettized_per_invoke`` (the smallest file, decoded on every invoke).
    """
    from dkm_tf import export  # noqa: PLC0415

    _log("[tflite] converting and verifying float, int8 (dynamic range) and palettized "
         "(decode once; decode per invoke) files")
    t = time.perf_counter()
    reports = export.export_all(result.model, result.palettes, output_dir, sample_inputs,
                                targets=("float", "int8", "palettized",
                                         "palettized_per_invoke"),
                                stem="clustered", latency=True, threads=(1,), runs=50)
    _log(f"[tflite] done in {time.perf_counter() - t:.1f} s")
    head = f"{'format':<22}{'bytes':>12}{'x float':>9}{'bits/w':>8}{'ms (1 thread)':>15}  file"
    lines = [head, "-" * len(head)]
    for label, rep in reports.items():
        if not hasattr(rep, "bytes"):
            lines.append(f"{label:<22} skipped: {rep}")
            continue
        lat = (rep.latency or {}).get("1t", {}).get("median_ms")
        lat_s = f"{lat:.3f}" if lat is not None else "-"
        lines.append(f"{label:<22}{rep.bytes:>12,}{rep.ratio_vs_float:>9.3f}"
                     f"{rep.bits_per_weight:>8.2f}{lat_s:>15}  {rep.path}")
    _log("\n".join(lines))
    return reports


def run_energy(model_path, **kwargs):
    """Run ``dkm-tf energy``; returns the printed text."""
    from dkm_tf import energy  # noqa: PLC0415

    text = energy.energy_cli_text(model_path, **kwargs)
    _log(text)
    return text


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"Expected a command, one of {list(COMMANDS)}. Example: "
                             "dkm-tf compress")
    if len(argv) > 2:
        raise app.UsageError(f"Too many command-line arguments: {argv[2:]}")
    if argv[1] == "energy":
        if not _MODEL.value:
            raise app.UsageError("dkm-tf energy needs --model (a .keras or .tflite file).")
        run_energy(_MODEL.value)
        return 0
    run_compress(_MODEL.value, dataset=_DATASET.value, method=_METHOD.value,
                 n_clusters=_N_CLUSTERS.value, unit=_UNIT.value,
                 granularity=_GRANULARITY.value, init=_INIT.value, epochs=_EPOCHS.value,
                 finetune_epochs=_FINETUNE_EPOCHS.value, dkm_epochs=_DKM_EPOCHS.value,
                 lam=_LAM.value, seed=_SEED.value, output_dir=_OUTPUT.value,
                 tflite=_TFLITE.value)
    return 0


def entry_point():
    """Console-script entry (``dkm-tf``): quiet TF's C++ logs, then run absl."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    entry_point()
