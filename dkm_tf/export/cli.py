"""Library side of the ``export/`` command-line tools (the scripts only parse flags).

``run_to_tflite`` loads a ``.keras`` model and its palettes (a JSON list of
``Palette.to_dict()``, or clusters every supported weight post-training with
``n_clusters``), exports it with :func:`dkm_tf.export.to_tflite` and returns the report;
``run_inspect`` returns :func:`dkm_tf.export.inspect_tflite`'s summary;
``inapplicable_flags`` the usage errors of flags set where ``--format`` does not use them.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np

__all__ = ["check_output_path", "default_output_path", "inapplicable_flags", "load_palettes",
           "load_samples", "output_collision", "parse_keep_float", "path_flag_errors",
           "run_inspect", "run_to_tflite", "same_samples_error", "script_error_text",
           "script_flags_parser", "tolerance_flag_error"]

# flag -> when it applies (dkm_tf.export.policy.APPLIES, in flag words)
_FLAG_WHEN = {"decode": "--format=palettized",
              "keep_float": "--format=palettized with --decode=once",
              "kept_dtype": "--format=palettized with --decode=once and --keep_float other "
                            "than none",
              "index_packing": "--format=palettized with --decode=once",
              "int8_mode": "--format=int8",
              "int8_scales": "--format=int8 with palettes (--palettes or --n_clusters)",
              "representative_data": "--format=int8 with --int8_mode=full"}
# path flag -> what leaving it out means (an empty value, --samples=, was taken as that)
_WITHOUT = {"model": "the flag is required",
            "output": "leave the flag out for <model stem>.<format>.tflite beside the model",
            "palettes": "leave the flag out for no palettes: --n_clusters, or --format float "
                        "/ fp16 / int8",
            "samples": "leave the flag out for seeded synthetic samples (not with "
                       "--int8_mode=full without --representative_data, which needs this "
                       "file)",
            "representative_data": "leave the flag out for calibration on --samples, judged "
                                   "on a held-out half"}


def default_output_path(model_path, format, decode="once"):  # noqa: A002
    """``<model stem>.<format>[_per_invoke].tflite`` beside the model."""
    stem = os.path.splitext(os.fspath(model_path))[0]
    label = format + ("_per_invoke" if format == "palettized" and decode == "per_invoke" else "")
    return f"{stem}.{label}.tflite"


def output_collision(output_path, **inputs):
    """The name of the input (``model_path=...``, ``palettes_path=...``, ``samples_path=...``)
    that ``output_path`` is the same file as, or None: writing there would destroy it."""
    from dkm_tf.core.files import same_file  # noqa: PLC0415

    return next((name for name, path in inputs.items()
                 if path and same_file(output_path, path)), None)


def check_output_path(output_path, **inputs):
    """Raise a ValueError when ``output_path`` is one of ``inputs`` (see output_collision)."""
    name = output_collision(output_path, **inputs)
    if name:
        raise ValueError(f"Invalid value for argument `output_path`. Expected a path other "
                         f"than the input `{name}` (writing the .tflite there would destroy "
                         f"it). Received: output_path={os.fspath(output_path)!r}, "
                         f"{name}={os.fspath(inputs[name])!r}")


def path_flag_errors(**paths):
    """Usage-error lines (``[]``: none) of the script's path flags (``samples="x.npy"``, ...;
    None: not given): a flag given an empty value (``--samples=``, a shell variable left
    unset) was taken as left out; and --samples and --representative_data naming one file
    (:func:`same_samples_error`)."""
    lines = [f"Invalid value for flag `--{name}`. Expected a path "
             f"({_WITHOUT.get(name, 'leave the flag out for its default')}). Received: an "
             f"empty value (--{name}=)"
             for name, path in paths.items() if path is not None and not str(path).strip()]
    same = same_samples_error(paths.get("samples"), paths.get("representative_data"))
    return lines + ([same] if same else [])


def same_samples_error(samples_path, representative_path):
    """The message refusing --samples and --representative_data naming one file, or None.

    Calibrating on the verification samples verifies the file on its calibration data, while
    representative_data marks the samples held out (no held-out check, "over n samples"):
    the report would say "held out" of calibration samples. Refused rather than taken as
    not held out: leaving --representative_data out gives that, with a held-out check. A
    ``~`` the shell left alone (``--samples=~/x.npy``) is expanded first, as the script does."""
    from dkm_tf.core.files import is_home_tilde, same_file  # noqa: PLC0415

    def expanded(path):
        path = os.fspath(path)
        return os.path.expanduser(path) if is_home_tilde(path) else path

    if not (samples_path and representative_path and str(samples_path).strip()
            and same_file(expanded(samples_path), expanded(representative_path))):
        return None
    return ("Invalid value for flag `--representative_data`. Expected a file other than "
            "--samples: calibrating on the verification samples verifies the file on its "
            "calibration data, not held out (leave --representative_data out to calibrate on "
            "--samples and judge the file on a held-out half of them). Received: "
            f"--representative_data={os.fspath(representative_path)}, "
            f"--samples={os.fspath(samples_path)} (the same file)")


def tolerance_flag_error(tolerance):
    """The usage-error line of ``--tolerance`` (None: not given, the format's default), or
    None: it must be a positive finite number (a relative tolerance, like to_tflite's)."""
    import math  # noqa: PLC0415

    if tolerance is None or (isinstance(tolerance, (int, float)) and not isinstance(
            tolerance, bool) and math.isfinite(tolerance) and tolerance > 0):
        return None
    return ("Invalid value for flag `--tolerance`. Expected a positive finite number (the "
            "relative tolerance of the verification, e.g. 2e-4; leave it out for the format's "
            f"default). Received: --tolerance={tolerance}")


def script_error_text(error):
    """``error``'s message on one line, in the script's words: a verification refusal that
    advises a larger ``to_tflite(tolerance=...)`` (``unit_errors.tolerance_hint``, the
    held-out refusal) names ``--tolerance=...`` instead."""
    return " ".join(str(error).split()).replace("to_tflite(tolerance=...)", "--tolerance=...")


def load_palettes(path):
    """Palettes from a JSON file holding a list of ``Palette.to_dict()``."""
    from dkm_tf.core.palette import Palette  # noqa: PLC0415

    path = os.fspath(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Invalid palettes file {path!r}: expected the JSON list "
                         f"of palettes that dkm-tf compress writes; it is not JSON ({e}).") \
            from None
    except OSError as e:  # missing, a folder: said before the model is loaded
        raise ValueError(f"Invalid palettes file {path!r}: {e.strerror or e}.") from None
    if not isinstance(data, list):
        raise ValueError(f"Invalid palettes file {path!r}: expected a JSON list of palettes, "
                         f"found {type(data).__name__}.")
    try:
        return [Palette.from_dict(d) for d in data]
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # name the file
        raise ValueError(f"Invalid palettes file {path!r}: {e}") from e


def run_to_tflite(model_path, output_path=None, *, format="palettized",  # noqa: A002
                  decode="once", int8_mode="dynamic", palettes_path=None, n_clusters=None,
                  unit="scalar", granularity="per_tensor", samples_path=None,
                  keep_float="auto", kept_dtype="float32", index_packing="dense",
                  int8_scales="per_channel", representative_path=None, tolerance=None):
    """Load, (cluster,) export and verify; returns the :class:`~dkm_tf.export.ExportReport`.

    ``keep_float`` is ``"auto"``, ``"none"``, a latency budget (``"0.1"``) or comma-separated
    layer names; ``kept_dtype`` ``"float32"`` or ``"float16"``; ``index_packing``
    ``"dense"`` or ``"tuples"``; ``int8_scales`` ``"per_channel"`` or ``"shared"``
    (``format="int8"`` with palettes; see :func:`dkm_tf.export.to_tflite`).
    ``representative_path``: a ``.npy`` / ``.npz`` read like ``samples_path``
    (:func:`load_samples`), the calibration data of ``int8_mode="full"``
    (``representative_data``), not the file ``samples_path`` names (:func:`same_samples_error`);
    ``tolerance``: the relative tolerance of the verification (None: the format's default).

    A SavedModel folder, or a file saved while clustering (``ClusterWeights``,
    ``ClusterKernels``), is refused before Keras loads it, with the lines that strip it
    (:func:`dkm_tf.export.model_file.check_export_input`); a ``SpectralKMeansRegularizer``
    loads as a stand-in with no penalty (it does not change the forward pass). A bad output
    path, palettes or samples file is a ValueError naming the file, before the model loads.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.core.files import check_model_file  # noqa: PLC0415
    from dkm_tf.export.model_file import check_export_input, export_custom_objects  # noqa: PLC0415
    from dkm_tf.export.policy import check_applicable  # noqa: PLC0415
    from dkm_tf.export.tflite import INT8_MODES, to_tflite  # noqa: PLC0415

    if palettes_path and n_clusters is not None:
        raise ValueError("Give either `palettes_path` or `n_clusters`, not both "
                         "(--palettes or --n_clusters).")
    check_output_path(output_path or default_output_path(model_path, format, decode),
                      model_path=model_path, palettes_path=palettes_path,
                      samples_path=samples_path,
                      representative_path=representative_path)  # before anything is loaded
    same = same_samples_error(samples_path, representative_path)
    if same:
        raise ValueError(same.replace("flag `--representative_data`", "argument "
                                      "`representative_path`"))
    keep_float = parse_keep_float(keep_float)
    check_applicable(_applicability(  # before loading or clustering
        format, decode, int8_mode, keep_float, kept_dtype, index_packing, int8_scales,
        bool(palettes_path) or n_clusters is not None, representative_path))
    if isinstance(model_path, (str, os.PathLike)):  # a SavedModel folder, a wrapped model
        check_export_input(model_path)
    check_model_file(model_path)
    from dkm_tf.export.export_args import check_path  # noqa: PLC0415

    check_path(output_path or default_output_path(model_path, format, decode))
    palettes = load_palettes(palettes_path) if palettes_path else None  # before the model
    samples = load_samples(samples_path) if samples_path else None
    representative = (load_samples(representative_path, "representative_data")
                      if representative_path else None)
    from dkm_tf.graph import factorised  # noqa: F401, PLC0415 - registers FactorisedConv2D
    model = keras.models.load_model(os.fspath(model_path), compile=False,
                                    custom_objects=export_custom_objects())
    from dkm_tf.export import convert as convert_lib  # noqa: PLC0415
    from dkm_tf.export.model_check import check_built_model  # noqa: PLC0415

    check_built_model(model)  # refusals to_tflite makes, before any clustering
    unread = _compile_as_classifier(model, model_path) if format == "int8" else None
    convert_lib.check_int8_mode(model, format, int8_mode, INT8_MODES, (samples, representative))
    if n_clusters is not None:  # post-training k-means (no fine-tuning): share_weights
        from dkm_tf.graph.share import share_weights  # noqa: PLC0415

        model, palettes, _ = share_weights(model, n_clusters, unit=unit,
                                           granularity=granularity)
    out = output_path or default_output_path(model_path, format, decode)
    return _export_noting(  # the logits note says which loss the file has
        to_tflite, unread, model, out, format=format, palettes=palettes,
        sample_inputs=samples, decode=decode, int8_mode=int8_mode, keep_float=keep_float,
        kept_dtype=kept_dtype, index_packing=index_packing, int8_scales=int8_scales,
        representative_data=representative, tolerance=tolerance)


def script_flags_parser(prog):
    """An ``absl.app.run`` flags parser for the ``export/`` scripts: an unknown flag, a bad
    value, a missing required flag or a positional argument is one line on stderr naming
    the flag, exit status 2 (absl's own parser exits 1 with two lines)."""
    import sys  # noqa: PLC0415

    from absl import flags  # noqa: PLC0415

    def parse(argv):
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as e:
            print(f"{prog}: error: {' '.join(str(e).split())} (see {prog} --help)",
                  file=sys.stderr)
            sys.exit(2)
        if len(rest) > 1:
            print(f"{prog}: error: expected flags only (--name=value); received the "
                  f"positional argument(s) {' '.join(rest[1:])!r} (see {prog} --help)",
                  file=sys.stderr)
            sys.exit(2)
        return rest

    return parse


def parse_keep_float(keep_float):
    """``--keep_float``'s text: ``"none"`` -> None, a number -> a latency budget, other text
    but ``"auto"`` -> comma-separated layer names (anything else is returned as given)."""
    if keep_float in (None, "none"):
        return None
    if isinstance(keep_float, str) and keep_float != "auto":
        try:
            return float(keep_float)  # a latency budget
        except ValueError:
            return [n.strip() for n in keep_float.split(",") if n.strip()]
    return keep_float


def _applicability(format, decode, int8_mode, keep_float, kept_dtype,  # noqa: A002
                   index_packing, int8_scales="per_channel", palettes=False,
                   representative_data=None):
    from dkm_tf.core.validate import check_choice  # noqa: PLC0415
    from dkm_tf.export.palettize import DECODE_MODES, INDEX_PACKINGS, KEPT_DTYPES  # noqa: PLC0415
    from dkm_tf.export.policy import APPLIES  # noqa: PLC0415
    from dkm_tf.export.tflite import FORMATS, INT8_MODES, INT8_SCALES  # noqa: PLC0415

    for name, value, allowed in (("format", format, FORMATS), ("decode", decode, DECODE_MODES),
                                 ("int8_mode", int8_mode, INT8_MODES),
                                 ("int8_scales", int8_scales, INT8_SCALES),
                                 ("kept_dtype", kept_dtype, KEPT_DTYPES),
                                 ("index_packing", index_packing, INDEX_PACKINGS)):
        check_choice(name, value, allowed)
    args = {name: default for name, (default, *_rest) in APPLIES.items()}
    args.update(format=format, palettes=["<palettes>"] if palettes else None, decode=decode,
                int8_mode=int8_mode, keep_float=keep_float, kept_dtype=kept_dtype,
                index_packing=index_packing, int8_scales=int8_scales,
                representative_data=representative_data or None)
    return args


def inapplicable_flags(format, decode="once", int8_mode="dynamic",  # noqa: A002
                       keep_float="auto", kept_dtype="float32", index_packing="dense",
                       int8_scales="per_channel", palettes=False, representative_data=None):
    """One usage-error line per flag set to a non-default value that ``format`` (and
    ``decode``, ``keep_float``; ``palettes``: whether --palettes or --n_clusters is given)
    does not use (``representative_data``: the --representative_data path, or None);
    ``[]`` when all apply. Flag values as typed. A value outside a flag's
    choices is a ValueError naming them."""
    from dkm_tf.export.policy import inapplicable  # noqa: PLC0415

    flags = {"format": format, "decode": decode, "int8_mode": int8_mode,
             "keep_float": keep_float, "kept_dtype": kept_dtype, "index_packing": index_packing,
             "int8_scales": int8_scales, "representative_data": representative_data}
    lines = []
    for name, _ in inapplicable(_applicability(format, decode, int8_mode,
                                               parse_keep_float(keep_float), kept_dtype,
                                               index_packing, int8_scales, palettes,
                                               representative_data)):
        shown = ["format"] + (["decode"] if format == "palettized" and name != "decode"
                              else []) + (["keep_float"] if name == "kept_dtype" else []) + (
            ["int8_mode"] if name == "representative_data" and format == "int8" else [])
        lines.append(f"Invalid flag `--{name}`: it applies only to {_FLAG_WHEN[name]}; leave "
                     f"it out otherwise. Received: --{name}={flags[name]} with "
                     + " ".join(f"--{f}={flags[f]}" for f in shown)
                     + (" and neither --palettes nor --n_clusters"
                        if name == "int8_scales" and format == "int8" else ""))
    return lines


def load_samples(path, what="samples"):
    """Sample inputs from a ``.npy`` array, or a ``.npz`` (its ``x_test``, else ``x_train``,
    else its only array: the files ``dkm-tf compress --dataset`` reads); ``what`` names the
    file in errors (``"samples"``, ``"representative_data"``)."""
    path = os.fspath(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # EOF: an empty file
        why = (f"{type(e).__name__}: {e}" if "pickled" not in str(e) else  # numpy's last try
               "neither a .npy nor a .npz (zip) file: truncated, damaged or another kind")
        raise ValueError(f"Invalid {what} file {path!r}: expected a .npy array or a .npz "
                         f"with x_test or x_train ({why}).") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    with loaded:
        keys = [k for k in ("x_test", "x_train") if k in loaded.files] or loaded.files
        if len(keys) != 1 and keys[0] not in ("x_test", "x_train"):
            raise ValueError(f"Invalid {what} file {path!r}: expected a .npz with x_test or "
                             f"x_train, or one array; it has {loaded.files}.")
        try:
            return loaded[keys[0]]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"Invalid {what} file {path!r}: its array {keys[0]} does not "
                             f"read back, the file is damaged ({type(e).__name__}: "
                             f"{e}).") from None


def run_inspect(path):
    """The printable summary of :func:`dkm_tf.export.inspect_tflite`."""
    from dkm_tf.export.inspect import inspect_tflite  # noqa: PLC0415

    return inspect_tflite(path).summary()


def _compile_as_classifier(model, model_path):
    """Compile ``model`` (loaded with ``compile=False``) with the loss its file was compiled
    with when that loss says it is a classifier (a cross-entropy) and nothing else does: the
    int8 check then reads it as the classifier it is and does not note it as read as one of
    logits by assumption. The check itself is the same (its arg-max). A custom loss is
    recorded as the model's source loss (:func:`dkm_tf.core.loss_kind.keep_source_loss`): the
    note gives it as the reason, not "it is not compiled". A regression or multi-label loss is
    not given (the arg-max is still checked, as documented): returns the note naming it."""
    from dkm_tf.core import loss_kind as lk  # noqa: PLC0415
    from dkm_tf.core.custom_code import compiled_loss_name  # noqa: PLC0415

    loss = compiled_loss_name(model_path)
    if not loss or not lk.assumed_logits(model):
        return None
    if (found := lk.non_class_loss(model, loss)) is not None:
        return (f"int8: top-1 check of its arg-max: the file {lk.file_loss_said(loss)} "
                f"({found[1]}), which export/to_tflite.py does not read (it loads the model "
                "with compile=False), so the model was read as a classifier of logits; "
                "`dkm-tf compress --model` and to_tflite of the model compiled with that loss "
                "check it unit by unit")
    if lk.assumed_logits(model, loss):  # a loss dkm_tf does not know: the note's reason
        object.__setattr__(model, lk.SOURCE_LOSS, loss)
        return None
    try:
        model.compile(loss=loss)
    except (ValueError, TypeError):  # a name Keras cannot resolve here: noted as before
        pass
    return None


def _export_noting(to_tflite, unread, *args, **kwargs):
    """``to_tflite(*args, **kwargs)`` with ``unread`` (:func:`_compile_as_classifier`'s note)
    in place of to_tflite's own "read as a classifier of logits" note, and in a refusal by
    the arg-max check (not one by the relative error: the note is not its cause)."""
    from dkm_tf.export.verify import ExportVerificationError  # noqa: PLC0415

    if not unread:
        return to_tflite(*args, **kwargs)
    try:
        report = to_tflite(*args, **kwargs)
    except ExportVerificationError as e:
        if type(e) is not ExportVerificationError:
            raise
        if not any(c.top1_agreement < c.min_top1 for c in getattr(e, "comparisons", ())):
            raise  # a refusal by the relative error alone
        raise ExportVerificationError(f"{e} ({unread[len('int8: '):]})") from e
    report.notes[:] = [n for n in report.notes if not n.startswith(
        "int8: top-1 check of its arg-max: the model was read as a classifier")] + [unread]
    return report
