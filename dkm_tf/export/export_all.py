"""Write several ``.tflite`` formats of one clustered model side by side (for ``dkm-tf``)."""

from __future__ import annotations

import os

from dkm_tf.core.files import tilde_note
from dkm_tf.core.validate import check_bool, check_int
from dkm_tf.export import convert as convert_lib
from dkm_tf.export.calibration import CalibrationError
from dkm_tf.export.export_args import inputs_by_name
from dkm_tf.export.latency import benchmark_latency
from dkm_tf.export.tflite import check_export_args, to_tflite
from dkm_tf.export.tflm import tflm_available
from dkm_tf.export.verify import ExportVerificationError

__all__ = ["DEFAULT_TARGETS", "EXPORT_TARGETS", "ExportReports", "export_all"]

# label -> to_tflite keyword arguments
EXPORT_TARGETS = {
    "float": {"format": "float"},
    "fp16": {"format": "fp16"},
    "int8": {"format": "int8", "int8_mode": "dynamic"},
    "int8_full": {"format": "int8", "int8_mode": "full"},
    "palettized": {"format": "palettized", "decode": "once"},
    "palettized_all": {"format": "palettized", "decode": "once", "keep_float": None},
    "palettized_per_invoke": {"format": "palettized", "decode": "per_invoke"},
    "tflm": {"format": "tflm"},
}
DEFAULT_TARGETS = ("float", "int8", "palettized")


class ExportReports(dict):
    """What :func:`export_all` returns: label -> :class:`~dkm_tf.export.ExportReport` of each
    file written, and ``refused``: label -> the reason, for each target asked for that was
    not written (each also warned about).

    Args:
        *args, **kwargs: as ``dict``'s (label -> report); ``refused`` starts empty.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused = {}


def export_all(model, palettes, out_dir, sample_inputs=None, targets=DEFAULT_TARGETS, *,
               stem="model", latency=False, threads=(1, 2), runs=100):
    """Export ``model`` in several formats into ``out_dir`` and report each.

    Args:
        model: Keras model whose clustered weights equal the palettes' decoded values.
        palettes: list of :class:`~dkm_tf.core.palette.Palette`.
        out_dir: existing, writable directory; files are ``<stem>.<label>.tflite``.
        sample_inputs: verification inputs (see :func:`~dkm_tf.export.to_tflite`; a dict keyed
            by the model's input names too).
        targets: labels from :data:`EXPORT_TARGETS`. A target that cannot be written is
            left out of the returned dict, named with the reason in its ``refused``, and a
            ``UserWarning`` says so, while the other targets are written: ``"int8_full"``
            for a model with a recurrent loop (TensorFlow's calibrator crashes on it:
            :func:`~dkm_tf.export.model_check.check_full_int8`; refused before any work)
            or without ``sample_inputs``, its calibration data here (refused before any work;
            :class:`~dkm_tf.export.calibration.CalibrationError` when it is the only target),
            ``"tflm"`` when ``tflite-micro`` is not installed or TFLite Micro refuses the
            palettes (e.g. a depthwise kernel clustered per channel: more than 128 values
            in one table), and any target whose file disagrees with Keras
            (:class:`~dkm_tf.export.ExportVerificationError`), as ``dkm-tf compress`` does.
            When no target is written, the first refusal met while writing one (a
            verification or calibration error, TFLite Micro's) is raised, and
            ``CalibrationError`` where ``"int8_full"`` without ``sample_inputs`` is the
            only target; a target refused before it is tried (``"int8_full"`` of a
            recurrent model, ``"tflm"`` without ``tflite-micro``) only warns, so where it is
            the only target the returned dict is empty and ``refused`` says why.
        stem: file name stem.
        latency: also measure invoke latency of the LiteRT formats, interleaved, with
            ``ai_edge_litert`` at each thread count in ``threads``.
        threads: thread counts for the latency measurement.
        runs: timed invokes per model and thread count.

    Returns:
        :class:`ExportReports`, a dict label -> :class:`~dkm_tf.export.ExportReport`
        (``report.latency`` holds ``{"1t": {...}, "2t": {...}}`` when ``latency``) with
        ``refused``: label -> reason, for the targets not written.

    Example:
        >>> os.makedirs("out", exist_ok=True)  # doctest: +SKIP
        >>> reports = export_all(plain, palettes, "out", x[:8], latency=True)  # doctest: +SKIP
        >>> reports["palettized"].latency["1t"]["median_ms"]  # doctest: +SKIP
    """
    if isinstance(targets, str) or not isinstance(targets, (list, tuple)) or not targets:
        raise TypeError(f"Invalid type for argument `targets`. Expected a non-empty list of "
                        f"labels from {list(EXPORT_TARGETS)}. Received: targets={targets!r}")
    unknown = [t for t in targets if t not in EXPORT_TARGETS]
    if unknown or len(set(targets)) < len(targets):  # a repeat exported the file twice
        raise ValueError(f"Invalid value for argument `targets`. Expected distinct labels from "
                         f"{list(EXPORT_TARGETS)}. Received: targets={list(targets)!r}")
    if not isinstance(out_dir, (str, os.PathLike)) or not os.path.isdir(out_dir):
        raise ValueError(f"Invalid value for argument `out_dir`. Expected an existing "
                         f"directory. Received: out_dir={out_dir!r}" + tilde_note(out_dir))
    if not isinstance(stem, str) or not stem.strip(".") or os.sep in stem or "/" in stem:
        raise ValueError("Invalid value for argument `stem`. Expected a non-empty file name "
                         f"stem without '/' (not only dots). Received: stem={stem!r}")
    check_bool("latency", latency)
    if latency:
        # as ints: benchmark_latency refused np.int64 runs / threads, after the export
        runs = check_int("runs", runs, minimum=1)
        if not isinstance(threads, (list, tuple)) or not threads:
            raise TypeError("Invalid type for argument `threads`. Expected a non-empty list "
                            f"of thread counts. Received: threads={threads!r}")
        threads = [check_int("threads", n, minimum=1) for n in threads]
    needs = sorted({EXPORT_TARGETS[t]["format"] for t in targets} & {"palettized", "tflm"})
    if needs and not palettes:
        raise ValueError(f"Invalid value for argument `palettes`. Targets of format {needs} "
                         f"need the palettes of the clustered weights. Received: "
                         f"palettes={palettes!r}")
    check_export_args(model, sample_inputs)
    sample_inputs = inputs_by_name("sample_inputs", sample_inputs, model)  # a dict: as a list
    reports = ExportReports()
    skipped = _unconvertible(model, targets, sample_inputs)  # warned about already
    reports.refused.update(skipped)
    specs = convert_lib.input_specs(model, sample_inputs)
    float_content = convert_lib.convert(model, specs, "none")
    errors = []  # the refusals of this loop, each warned about (the first raised if alone)

    def target_file(label):
        return os.path.join(out_dir, f"{stem}.{label}.tflite")

    for label in targets:
        if label in reports.refused:
            continue
        if label == "tflm" and not tflm_available():
            reports.refused[label] = ("tflite-micro is not installed (pip install "
                                      "tflite-micro)")
            continue
        try:
            reports[label] = to_tflite(model, target_file(label), palettes=palettes,
                                       sample_inputs=sample_inputs,
                                       float_content=float_content, **EXPORT_TARGETS[label])
        except (ValueError, RuntimeError) as e:  # TFLite Micro's refusals, any verification's
            if label != "tflm" and not isinstance(e, (ExportVerificationError,
                                                      CalibrationError)):
                raise  # a bad argument: every target would fail alike
            errors.append(e)
            reports.refused[label] = " ".join(str(e).split())
        except OSError as e:  # a full disk: say which files are this call's and which are not
            raise _stopped(e, label, reports, targets, target_file) from e
    removed = {}  # label: the earlier run's file removed
    for label in reports.refused:  # an earlier run's file there would pass for this model's
        path = target_file(label)
        if os.path.isfile(path):
            os.remove(path)
            removed[label] = path
            reports.refused[label] += f" (the file an earlier run left at {path} was removed)"
    if errors and not reports:  # nothing else to report: the refusal itself, and what went
        gone = list(removed.values())
        if gone:
            errors[0].args = (f"{errors[0]} (the file(s) an earlier run left at {gone} were "
                              "removed)", *errors[0].args[1:])
        raise errors[0]
    for label in [t for t in targets if t in reports.refused
                  and (t not in skipped or t in removed)]:  # a skip was warned of before
        _warn(f"export_all did not write target {label!r} for model {model.name!r}: "
              f"{reports.refused[label].rstrip('.')}. The other targets were written: "
              f"{list(reports)} (the returned reports' `refused` holds the reason).")
    if latency:
        timed = {k: r.path for k, r in reports.items() if r.format != "tflm"}
        x = None
        if sample_inputs is not None:
            x = [a[0] for a in convert_lib.as_input_list(sample_inputs)]
        for n in threads:
            res = benchmark_latency(timed, x, threads=n, runs=runs)
            for label, stats in res.items():
                reports[label].latency[f"{n}t"] = stats
    return reports


def _warn(message, stacklevel=3):
    """A ``UserWarning`` pointing at the caller of ``export_all`` (``stacklevel``: from here)."""
    import warnings  # noqa: PLC0415

    warnings.warn(message, UserWarning, stacklevel=stacklevel)


def _unconvertible(model, targets, sample_inputs):
    """``{target: reason}`` for the targets of ``targets`` that ``model`` cannot be converted
    to, each warned about: ``"int8_full"`` with a recurrent loop, whose calibration segfaults
    (the whole run was lost; ``to_tflite`` refuses it), or without ``sample_inputs``, its only
    calibration data here (``to_tflite``'s refusal advised ``representative_data``, which
    ``export_all`` has not; :class:`CalibrationError` when it is the only target)."""
    from dkm_tf.export.model_check import recurrent_loops  # noqa: PLC0415

    loops = recurrent_loops(model) if "int8_full" in targets else []
    if "int8_full" in targets and not loops and sample_inputs is None:
        why = ("Invalid value for argument `sample_inputs`. Expected samples of the data the "
               "model will run on for target 'int8_full': export_all calibrates full int8 on "
               "sample_inputs (it takes no representative_data). Received: sample_inputs=None; "
               "calibrated on seeded standard-normal noise instead, a file verifies on that "
               "noise and is wrong on real inputs (HED: relative error 0.666 on its real inputs, "
               "over the 0.5 tolerance; 0.049 calibrated on them). Pass sample_inputs to "
               "export_all, or use the 'int8' target (dynamic range), which needs no "
               "calibration.")
        if len(targets) == 1:
            raise CalibrationError(why)
        _warn(f"export_all skipped target 'int8_full' for model {model.name!r}: {why}", 4)
        return {"int8_full": why}
    if not loops:
        return {}
    why = (f"its recurrent layer(s) {loops[:5]} crash TensorFlow's full-integer calibrator "
           "(segmentation fault); the 'int8' target (dynamic range) quantizes its weights.")
    _warn(f"export_all skipped target 'int8_full' for model {model.name!r}: {why}", 4)
    return {"int8_full": why}


def _stopped(error, label, reports, targets, target_file):
    """The ``OSError`` (same errno) of a write that failed at target ``label``: the error, the
    files this call wrote, and the files (``target_file(label)``) of the targets not written
    that an earlier run left (they are not this model's export)."""
    rest = [t for t in targets if t not in reports]  # refused ones too: not this model's
    stale = [p for p in map(target_file, rest) if os.path.isfile(p)]
    why = error.strerror or error
    return OSError(error.errno, f"export_all stopped at target {label!r}: {why}. Written by "
                                f"this call: {[r.path for r in reports.values()]}; not written: "
                                f"{rest}" + (f"; the files an earlier run left for them are "
                                             f"still there and are not this model's: {stale}"
                                             if stale else ""))
