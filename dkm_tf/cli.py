"""The ``dkm-tf`` command.

Usage:
  dkm-tf compress                      # built-in demo: digits CNN, K=16, no network
  dkm-tf compress --model m.keras --n_clusters 8 --unit row --granularity per_channel
  dkm-tf energy --model m.keras        # or a .tflite file

The logic lives in plain functions (:func:`run_compress`, :func:`run_energy`) that the tests
call; :func:`run` parses flags, checks every argument first (:mod:`dkm_tf.cli_args`), and
turns errors into one line on stderr with exit status 2 (usage) or 1 (failure).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

from absl import flags

from dkm_tf.cli_args import (
    COMMANDS,
    CliUsageError,
    check_compress_args,
    check_energy_args,
    help_text,
)
from dkm_tf.core.files import atomic_path

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


def _one_line(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


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
        from dkm_tf.training.serialization import check_model_file  # noqa: PLC0415

        check_model_file(model_path)
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
    """Run the command named in ``argv`` (flags already parsed); returns the exit status."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise CliUsageError("command", f"one of {list(COMMANDS)} (example: dkm-tf compress)",
                            argv[1] if len(argv) > 1 else None)
    if len(argv) > 2:
        raise CliUsageError("arguments", "no positional arguments after the command",
                            " ".join(argv[2:]))
    if argv[1] == "energy":
        check_energy_args(_MODEL.value)
        run_energy(_MODEL.value)
        return 0
    kwargs = {"dataset": _DATASET.value, "method": _METHOD.value,
              "n_clusters": _N_CLUSTERS.value, "unit": _UNIT.value,
              "granularity": _GRANULARITY.value, "init": _INIT.value, "epochs": _EPOCHS.value,
              "finetune_epochs": _FINETUNE_EPOCHS.value, "dkm_epochs": _DKM_EPOCHS.value,
              "lam": _LAM.value, "seed": _SEED.value, "output_dir": _OUTPUT.value,
              "tflite": _TFLITE.value}
    check_compress_args(_MODEL.value, **kwargs)
    run_compress(_MODEL.value, **kwargs)
    return 0


def run(argv, *, stdout=None, stderr=None):
    """The whole command line: parse ``argv``, run, and turn errors into exit statuses.

    ``--help`` / ``-h`` (on the command or a subcommand) prints the flags and returns 0; a
    usage error (unknown command or flag, bad value) prints one line naming the flag, what is
    allowed and what was received, and returns 2; a failure while running prints one line
    and returns 1. ``--verbose`` adds the Python traceback. Nothing is trained or written
    before every argument has been checked.
    """
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    argv = list(argv)
    command = next((a for a in argv[1:] if not a.startswith("-")), None)
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(help_text(command if command in COMMANDS else None), file=stdout)
        return 0
    verbose = any(a in ("--verbose", "-v") for a in argv[1:])
    argv = [a for a in argv if a not in ("--verbose", "-v", "--noverbose")]
    try:
        rest = flags.FLAGS(argv, known_only=False)
    except flags.Error as e:
        print(f"dkm-tf: error: {_one_line(e)} (see dkm-tf --help)", file=stderr)
        return 2
    try:
        if len(rest) == 2 and rest[1] in COMMANDS:
            _import_tensorflow_quietly()
        return main(rest)
    except CliUsageError as e:
        where = f"dkm-tf {command} --help" if command in COMMANDS else "dkm-tf --help"
        print(f"dkm-tf: error: {e} (see {where})", file=stderr)
        return 2
    except KeyboardInterrupt:
        print("dkm-tf: interrupted; nothing half-written was left behind", file=stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line (+ --verbose)
        if verbose:
            traceback.print_exc(file=stderr)
        print(f"dkm-tf: error: {type(e).__name__}: {_one_line(e)}"
              + ("" if verbose else " (run with --verbose for the traceback)"), file=stderr)
        return 1


def _import_tensorflow_quietly():
    """Import TensorFlow with the C-level stderr sent to a buffer: TF 2.21 prints absl/oneDNN
    INFO lines at import whatever ``TF_CPP_MIN_LOG_LEVEL`` says. If the import fails, what
    it printed is shown with the error."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            import tensorflow  # noqa: F401, PLC0415
        except BaseException:
            os.dup2(saved, 2)
            buf.seek(0)
            sys.stderr.write(buf.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def entry_point():
    """Console-script entry (``dkm-tf``): quiet TF's C++ logs, then :func:`run`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    entry_point()
