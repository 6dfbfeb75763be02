"""Argument checks of the ``dkm-tf`` command (no Keras, no TensorFlow); its commands, their
flags and the ``--help`` text are in :mod:`dkm_tf.cli_commands`, re-exported here.

Every check runs before any training or file work, so a bad flag costs milliseconds, not a
training run: :func:`check_compress_args` / :func:`check_energy_args` raise
:class:`CliUsageError`, whose message names the flag, what is allowed and what was received.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import sys

from dkm_tf.cli_commands import (  # noqa: F401 - re-exported: the names people import
    COMMAND_FLAGS,
    COMMANDS,
    EXTRA_FLAGS,
    help_text,
)
from dkm_tf.core import validate
from dkm_tf.core.validate import CALIBRATION_SAMPLES

MAX_CLUSTERS = 65_536
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
NEEDS_DATA = ("finetune", "dkm", "dkm+finetune")


class CliUsageError(ValueError):
    """A bad command line: ``--flag``, what is allowed, what was received."""

    def __init__(self, flag, expected, received):
        self.flag, self.expected, self.received = flag, expected, received
        name = flag if flag in ("command", "arguments") else f"--{flag}"
        super().__init__(f"invalid {name}: expected {expected}; received {received!r}")


def _int(flag, value, low, high=None):
    """Refuse all but an integer in ``[low, high]``; numpy integers pass, as in
    :func:`dkm_tf.compress` (``run_compress(n_clusters=np.int32(4))`` was refused)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and (
        value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise CliUsageError(flag, bound, value)


def path_flag(flag, path):
    """``path`` (None, a str or an ``os.PathLike`` of str) as a str or None; else a usage error
    naming ``--flag`` (a pathlib.Path failed deep inside with an AttributeError)."""
    from dkm_tf.core.files import str_path  # noqa: PLC0415

    text = None if path is None else str_path(path)
    if path is None or text is not None:
        return text
    raise CliUsageError(flag, "a path (str or os.PathLike of str)", path)


def _model_file(path, suffixes):
    from dkm_tf.core.files import tilde_note  # noqa: PLC0415

    path = path_flag("model", path)
    if not os.path.exists(path):
        raise CliUsageError("model", f"an existing file ({', '.join(suffixes)})"
                            + tilde_note(path), path)
    if not os.path.isfile(path):
        raise CliUsageError("model", f"a file ({', '.join(suffixes)}), not a folder", path)
    if not path.lower().endswith(suffixes):
        raise CliUsageError("model", f"a file ending in {', '.join(suffixes)}", path)
    if not os.access(path, os.R_OK):
        raise CliUsageError("model", "a readable file", path)


def load_dataset(name, model=None):
    """``dkm_tf.data.load_dataset`` for ``--dataset``: a ``.npz`` whose values are bad
    (negative or huge labels, NaN inputs: not visible in its headers) is a usage error, as
    is data that does not fit ``model`` (the loaded ``--model``: :func:`check_dataset_fits`)."""
    from dkm_tf import data  # noqa: PLC0415 (numpy only at import)

    try:
        loaded = data.load_dataset(name)
    except data.DatasetFileError as e:
        raise CliUsageError("dataset", e.expected, f"{name} ({e.received})") from None
    if model is None and isinstance(loaded[0][0], dict):  # x_train.<input name> keys
        raise CliUsageError("dataset", "one input array x_train for the built-in CNN (one "
                            "array per input is for a --model of several inputs)", name)
    return loaded if model is None else check_dataset_fits(model, loaded, name)


def _dataset(name):
    """Check ``--dataset``; True if it has labels (a .npz without y_train: False)."""
    from dkm_tf import data  # noqa: PLC0415 (numpy only at import)

    name = path_flag("dataset", name)
    if name.endswith(".npz"):
        try:
            return "y_train" in data.check_npz(name)
        except data.DatasetFileError as e:
            raise CliUsageError("dataset", e.expected, f"{name} ({e.received})") from None
    if name not in data.DATASETS:
        raise CliUsageError("dataset", f"one of {sorted(data.DATASETS)} or a .npz file "
                            f"with {', '.join(data.NPZ_KEYS)}", name)
    if name == "mnist":  # the four IDX files, gzip'd or not, as data.load_mnist reads them
        folder = data.mnist_dir()
        missing = [stem for stem in data.MNIST_FILES if data._find(folder, stem) is None]
        if missing:
            raise CliUsageError("dataset", "mnist with the IDX files in $DKM_TF_MNIST_DIR "
                                f"(looked in {folder}; missing {', '.join(missing)})", name)
    return True


def _output_dir(path, flag="output_dir"):
    from dkm_tf.core.files import tilde_note  # noqa: PLC0415

    path = path_flag(flag, path)
    if not path or tilde_note(path):  # not a folder literally named ~ in the working one
        raise CliUsageError(flag, "a folder path" + tilde_note(path), path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliUsageError(flag, "a folder (it exists and is a file)", path)
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise CliUsageError(flag, f"a folder this user can write ({probe} is not)", path)


def keras_backend():
    """The Keras backend this process runs or will run, without importing Keras: Keras'
    own answer once imported, else ``$KERAS_BACKEND``, else keras.json's, else TensorFlow."""
    if "keras" in sys.modules and hasattr(sys.modules["keras"], "backend"):
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def check_compress_args(model_path=None, *, dataset=None, method=None, n_clusters=16,
                        unit="scalar", granularity="per_tensor", init="kmeans++", epochs=30,
                        finetune_epochs=3, dkm_epochs=5, lam=1.0, seed=0,
                        output_dir="dkm_tf_out", tflite=True, plots=True, plots_dir=None,
                        quiet=False, codebook="layer", transforms=1, scale_bits=16,
                        weighting="none", refine="none",
                        calibration_samples=CALIBRATION_SAMPLES,
                        custom_objects=None):
    """Check every ``dkm-tf compress`` argument; raise :class:`CliUsageError` on the first bad
    one. (``unit``, ``granularity``, ``init`` and ``method`` are enums absl already checked.)"""
    del init  # an absl enum
    if custom_objects is not None and model_path is None:
        raise CliUsageError("custom_objects", "it with --model only (the custom code of "
                            "your model file)", custom_objects)
    backend = keras_backend()
    if tflite and backend != "tensorflow":
        raise CliUsageError("tflite", f"--notflite on Keras' {backend!r} backend (the "
                            "TFLite converter traces with TensorFlow; export the saved "
                            "clustered.keras from a KERAS_BACKEND=tensorflow process)", True)
    _kernel_flags(unit, codebook, transforms, scale_bits, granularity=(granularity, "per_tensor"),
                  weighting=(weighting, "none"), refine=(refine, "none"))
    for flag, value in (("plots", plots), ("quiet", quiet)):
        if not isinstance(value, bool):
            raise CliUsageError(flag, "true or false", value)
    if model_path is not None:
        _model_file(model_path, MODEL_SUFFIXES)
    if dataset is not None and not _dataset(dataset):
        _unlabelled(model_path, dataset, method)
    if model_path is not None and dataset is None and method in NEEDS_DATA:
        raise CliUsageError("method", "wr with --model and no --dataset (the other methods "
                            "train, so they need --dataset)", method)
    _calibration_flags(model_path, dataset, method, weighting, refine, calibration_samples)
    _int("n_clusters", n_clusters, 1, MAX_CLUSTERS)
    _int("epochs", epochs, 1 if model_path is None else 0)
    _int("finetune_epochs", finetune_epochs, 0)
    _int("dkm_epochs", dkm_epochs, 0)
    if not (isinstance(lam, numbers.Real) and not isinstance(lam, bool)  # True was taken
            and math.isfinite(lam) and lam >= 0):
        raise CliUsageError("lam", "a finite number >= 0", lam)
    _int("seed", seed, 0, 2**32 - 1)
    _output_dir(output_dir)
    if plots_dir is not None:
        if not plots:
            raise CliUsageError("plots_dir", "no --plots_dir with --noplots (no plot is "
                                "written)", plots_dir)
        _output_dir(plots_dir, "plots_dir")
    _check_run_outputs(model_path, output_dir, plots_dir)


def run_outputs(output_dir, plots_dir=None):
    """The files a ``dkm-tf compress`` run removes (an earlier run's) and writes: its own
    names in ``output_dir`` and the plots in ``plots_dir`` (default ``output_dir``)."""
    from dkm_tf.cli_tables import TARGETS  # noqa: PLC0415
    from dkm_tf.plots import PLOT_FILES  # noqa: PLC0415

    names = [os.path.join(output_dir, n) for n in ("report.json", "clustered.keras",
             "clustered.palettes.json", *(f"clustered.{t}.tflite" for t in TARGETS))]
    return names + [os.path.join(plots_dir or output_dir, n) for n in PLOT_FILES]


def _check_run_outputs(model_path, output_dir, plots_dir):
    """Each file the run writes can be written (not a folder), and --model is none of them
    (``dkm-tf compress --model dkm_tf_out/clustered.keras`` again, into the same
    --output_dir, would remove and replace it: the input model would be lost)."""
    from dkm_tf.core.files import same_file  # noqa: PLC0415

    for path in run_outputs(output_dir, plots_dir):
        if os.path.isdir(path):
            flag = "plots_dir" if plots_dir is not None and path.endswith(".png") else "output_dir"
            raise CliUsageError(flag, f"a folder where {os.path.basename(path)} can be written "
                                f"({path} is a folder)", output_dir if flag == "output_dir"
                                else plots_dir)
        if model_path is not None and same_file(model_path, path):
            raise CliUsageError(
                "output_dir", f"a folder other than the one holding --model as "
                f"{os.path.basename(path)} (a run replaces that file there, so the input "
                f"model would be lost: give another --output_dir, or copy the model "
                "elsewhere first)", output_dir)


def _unlabelled(model_path, dataset, method):
    """An unlabelled .npz (x_train, optionally x_test) serves a --model's post-training k-means:
    x_train calibrates --refine / --weighting (plain wr reads no data), x_test gives the
    agreement with the float model, and either feeds the TFLite step its inputs."""
    if model_path is None:
        raise CliUsageError("dataset", "a labelled .npz (x_train, y_train, x_test, y_test) "
                            "to train the built-in model", f"{dataset} (no labels)")
    if method not in (None, "wr"):
        raise CliUsageError("method", "wr with an unlabelled --dataset (the other methods "
                            "train on labels)", method)


def check_outputs(n_outputs, method, dataset):
    """A model with several outputs (a detector's box and score heads) has no single array
    of class labels to train on: --method finetune / dkm need a single-output classifier."""
    if n_outputs > 1 and method in NEEDS_DATA:
        raise CliUsageError("method", f"wr for a model with {n_outputs} outputs (--method "
                            f"{method} trains on the class labels of --dataset {dataset}, "
                            "which need a single-output classifier)", method)


def _calibration_flags(model_path, dataset, method, weighting, refine, samples):
    """--weighting / --refine: post-training k-means calibrated on the training data."""
    for flag, value in (("weighting", weighting), ("refine", refine)):
        if value == "none":
            continue
        if method not in (None, "wr"):
            raise CliUsageError(flag, f"none with --method {method} (it calibrates "
                                "post-training k-means: --method wr)", value)
        if model_path is not None and dataset is None:
            raise CliUsageError(flag, "none with --model and no --dataset (it calibrates on "
                                "the training samples of --dataset)", value)
    _int("calibration_samples", samples, 1)
    default = validate.CALIBRATION_SAMPLES  # read at each call: one value for every check
    if weighting == refine == "none" and samples != default:  # not silently unused
        raise CliUsageError("calibration_samples", f"{default} (the default) unless "
                            "--weighting or --refine is given (only they calibrate)", samples)


def _kernel_flags(unit, codebook, transforms, scale_bits, **others):
    """--codebook / --transforms / --scale_bits: kernel clustering (Son et al., ECCV 2018);
    ``others``: flag -> (value, default) of options scaled kernel clustering lacks."""
    if transforms not in (1, 2, 4, 8):
        raise CliUsageError("transforms", "1, 2, 4 or 8", transforms)
    if scale_bits not in (8, 16, 32):
        raise CliUsageError("scale_bits", "16, 8 or 32", scale_bits)
    for flag, value, default in (("codebook", codebook, "layer"), ("transforms", transforms, 1)):
        if value != default and unit != "kernel":
            raise CliUsageError(flag, f"{default} unless --unit kernel (unit is {unit})", value)
    if scale_bits != 16 and (unit != "kernel" or (codebook == "layer" and transforms == 1)):
        raise CliUsageError("scale_bits", "16 unless --unit kernel with --codebook shared or "
                            "--transforms > 1", scale_bits)
    if unit == "kernel" and (codebook != "layer" or transforms != 1):  # graph.kernel_route
        for flag, (value, default) in others.items():
            if value != default:
                raise CliUsageError(flag, f"{default} with --unit kernel --codebook {codebook} "
                                    f"--transforms {transforms} (scaled kernel clustering "
                                    "does not support it)", value)


def check_export_size(model, tflite, dataset):
    """The TFLite step exports at a fixed input size: the model's own, else that of the inputs
    of --dataset. A model that leaves it open (``Input((None, None, 3))``, a subclassed model)
    without --dataset is refused before any k-means (run after the model loads), as is a
    model with float16 / bfloat16 layers (mixed precision) or float64 ones, which the
    exporters refuse."""
    if not tflite:
        return
    from dkm_tf.export.model_check import float64_layers, half_precision_layers  # noqa: PLC0415

    for odd, what in ((half_precision_layers(model), "half precision"),
                      (float64_layers(model), "float64")):
        if odd:  # to_tflite would refuse it after the training
            raise CliUsageError("model", "a model whose layers compute in float32 for the "
                                f"TFLite files ({len(odd)} compute in {what}, e.g. "
                                f"{odd[0][0]!r} ({odd[0][1]}): rebuild it with float32 "
                                "layers, or --notflite)", model.name)
    if dataset is not None:
        return
    from dkm_tf.export.convert import open_dims  # noqa: PLC0415 (loads TensorFlow)

    why = open_dims(model)
    if why:
        raise CliUsageError("dataset", f"a .npz whose x_test (or x_train) has the input size "
                            f"to export, because {why} (or --notflite to skip the TFLite "
                            "files)", dataset)


def check_command_flags(command, given):
    """Flags of the other command (``given``: those on the command line) are refused: the
    command would ignore them."""
    other = [f for f in given if f not in COMMAND_FLAGS[command] + EXTRA_FLAGS.get(command, ())
             and f != "quiet"]
    if other:
        what = "compress flags" if command == "energy" else f"--{other[0]}"
        reads = ("--model and --input_shape only" if command == "energy" else
                 "the input size from the model, or from --dataset for the TFLite files")
        raise CliUsageError(other[0], f"no {what} with dkm-tf {command} (it reads {reads})",
                            f"--{other[0]}" + (f" (and {len(other) - 1} more)"
                                               if len(other) > 1 else ""))


def parse_input_shape(text):
    """``--input_shape 12,12,3``: positive integers separated by commas, no batch axis."""
    parts = text.split(",") if isinstance(text, str) else []
    if not parts or not all(re.fullmatch(r"\s*[0-9]+\s*", p) and int(p) > 0 for p in parts):
        raise CliUsageError("input_shape", "positive integers separated by commas, without "
                            "the batch axis (e.g. 12,12,3)", text)
    return tuple(int(p) for p in parts)


def check_energy_args(model_path, given=(), input_shape=None):
    """Check ``dkm-tf energy``'s ``--model`` (required: .keras, .h5, .hdf5 or .tflite) and
    ``--input_shape`` (the input size of a model or .tflite that leaves it open; the reader
    refuses one the model does not accept); ``given``:
    the flags on the command line (compress flags, which energy would ignore, are refused).
    Returns the input shape as a tuple, or None."""
    if not model_path:
        raise CliUsageError("model", "a .keras, .h5 or .tflite file (dkm-tf energy needs it)",
                            model_path)
    _model_file(model_path, (*MODEL_SUFFIXES, ".tflite"))
    check_command_flags("energy", given)
    if input_shape is None:
        return None
    return parse_input_shape(input_shape)  # the reader checks it fits the model or file


def input_shape_error(error, input_shape):
    """The :class:`CliUsageError` naming --input_shape for the energy reader's
    ``InputShapeError``: a model whose layer shapes need the input size, or that fixes
    another one than ``input_shape`` (the parsed flag)."""
    if error.fixed is None:
        expected = ("the input size without the batch axis, positive integers separated by "
                    f"commas (e.g. 12,12,3), because {error.why}")
    else:
        expected = (f"{','.join(map(str, error.fixed))} or no --input_shape, because "
                    f"{error.why}")
    return CliUsageError("input_shape", expected, None if input_shape is None else
                         ",".join(map(str, input_shape)))


def dataset_words(error):
    """A :class:`~dkm_tf.pipeline_args.DataMismatchError` of ``dkm_tf.compress`` in the
    words of ``--dataset``: its ``train_data`` is the training part (``x_train``,
    ``y_train`` in a ``.npz``), its ``test_data`` the held-out part (``x_test``, ``y_test``)."""
    text = " ".join(str(error).split())
    for arg, part in (("train_data", "training part (x_train, y_train)"),
                      ("test_data", "held-out part (x_test, y_test)")):
        text = text.replace(f"argument `{arg}`", f"the {part}").replace(f"`{arg}`", part)
    return text


def check_dataset_fits(model, data, dataset):
    """``--dataset``'s ``(train, test)`` checked against ``--model``'s inputs (their size
    and number) before any work; returns ``data``. Held-out inputs without labels are run
    through the float model first: a size or input count that does not fit it was Keras'
    error there (exit status 1), not one naming --dataset."""
    from dkm_tf.data_inputs import arrange  # noqa: PLC0415
    from dkm_tf.training.common import check_data  # noqa: PLC0415 (loads Keras)

    def error(expected, received):  # a .npz of one array per input (x_train.<input name>)
        return CliUsageError("dataset", f"{expected} for --model", f"{dataset} ({received})")

    data = tuple(part and (arrange(model, part[0], split, error), part[1])
                 for part, split in zip(data, ("x_train", "x_test")))
    for name, part in zip(("train_data", "test_data"), data):
        try:
            check_data(name, part and (part[0], None), model, required=False, labels=False)
        except ValueError as e:
            several = len(getattr(model, "inputs", None) or ()) > 1
            hint = ("; a .npz gives a model of several inputs one array per input, keyed "
                    "x_train.<name> / x_test.<name>, as dkm_tf.compress a dict" if several else "")
            raise CliUsageError("dataset", f"data that fits --model ({dataset_words(e)}"
                                f"{hint})", dataset) from e
    return data
