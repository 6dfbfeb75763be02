"""Errors of a ``.tflite``'s outputs against Keras, per output and per output unit.

:func:`output_errors` gives each output's ``max |tflite - keras| / max |keras|`` over the
whole output tensor. That scale hides a small unit beside a large one: in an int8 regressor
whose unit 0 spans ~500 and unit 1 ~1, unit 1 could be off by 250 (250x its own range) under
the 0.5 int8 tolerance. :func:`unit_report` therefore reads every unit (the last axis: a
regressor's targets, a map's channels) on its own range, and with ``unit_floor`` refuses a unit
whose error exceeds ``tolerance x its own range + unit_floor x the output's range``: the
tolerance on its own scale plus what quantizing the shared output tensor explains (int8:
:data:`INT8_UNIT_FLOOR`, two int8 steps of the output's range; a unit of range 1 beside one
of 500 may be off by 0.5 + 7.9).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.depth import (  # noqa: F401 (re-exported)
    FLOAT_LAYERS_PER_STEP,
    depth_tolerance,
    output_depths,
    output_tolerances,
    weighted_depth,
)

__all__ = ["FLOAT_LAYERS_PER_STEP", "INT8_UNIT_FLOOR", "NOISE_FACTOR", "depth_tolerance",
           "noise_floor", "output_depths", "output_errors", "output_tolerances", "tolerance_hint",
           "unit_report", "weighted_depth"]

INT8_UNIT_FLOOR = 2.0 / 127.0  # two int8 steps of the whole output's max |keras|
NOISE_FACTOR = 10  # a default tolerance is at least this many times Keras' own noise


def output_errors(got, reference, what, error=ValueError):
    """(max abs error, relative error) of outputs ``got`` against Keras' ``reference``.

    The relative error is the largest over outputs of that output's max abs error over its
    own max |keras| (floored at 1e-30): one scale pooled over every output would let a small
    head be wrong by its whole range beside a large one. ``error``: the exception class
    raised when the output count or a shape differs."""
    if len(got) != len(reference):
        raise error(f"The .tflite has {len(got)} outputs, the Keras model "
                    f"{len(reference)} ({what}).")
    for k, (g, r) in enumerate(zip(got, reference)):
        if g.shape != r.shape:
            raise error(f"Output {k} of the .tflite has shape {g.shape}, the Keras model's "
                        f"{r.shape} ({what}): the file does not compute every sample of the "
                        "batch.")
    errs = [float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, reference)]
    scales = [max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-30) for r in reference]
    return max(errs), max(e / s for e, s in zip(errs, scales))


def unit_report(got, reference, tolerance, unit_floor=None, skip=()):
    """``(worst, excess)`` over the output units (last axis, outputs with >= 2 units).

    Args:
        got, reference: the file's and Keras' outputs (lists of arrays, same shapes).
        tolerance: the relative tolerance, applied to each unit's own max |keras|.
        unit_floor: fraction of the output's max |keras| a unit may be off beyond that
            (int8: :data:`INT8_UNIT_FLOOR`), or None: report only (``excess`` NaN).
        skip: output indices not checked per unit (class scores, read by the top-1 check).

    Returns:
        ``worst``: "output k unit j: max |keras| s (output's S), max abs error e (...)" of the
        unit with the largest error over its allowance among the checked units (with
        ``unit_floor``), else of the unit with the largest error on its own max |keras|
        ("" when no output has several units, or none is checked);
        ``excess``: the largest ``error / (tolerance x unit max |keras| + unit_floor x output
        max |keras|)`` over checked units (> 1: refused), NaN when none is checked.
    """
    worst, best, excess = "", -1.0, float("nan")
    for k, (g, r) in enumerate(zip(got, reference)):
        if r.ndim < 2 or r.shape[-1] < 2 or not r.size or (
                unit_floor is not None and k in skip):
            continue
        axes = tuple(range(r.ndim - 1))
        err = np.max(np.abs(np.asarray(g, np.float64) - r), axis=axes)
        scale = np.max(np.abs(np.asarray(r, np.float64)), axis=axes)
        whole = float(scale.max())
        if unit_floor is None:
            score = err / np.maximum(scale, 1e-30)
            unit = "x its max |keras|"
        else:
            score = err / (tolerance * scale + unit_floor * max(whole, 1e-30))
            unit = "of what it is allowed"
            excess = max(float(score.max()), -1.0 if excess != excess else excess)
        j = int(np.argmax(score))
        if score[j] > best and err[j] > 0:
            best = float(score[j])
            worst = (f"output {k} unit {j}: max |keras| {scale[j]:.3g} (the output's "
                     f"{whole:.3g}), max abs error {err[j]:.3g} ({score[j]:.3g} {unit})")
    return worst, float(excess)


def noise_floor(tolerance, noise, n, notes):
    """The default ``tolerance``, or :data:`NOISE_FACTOR` x Keras' own ``noise`` when larger
    (deep networks, saturated softmax outputs), with a note saying so."""
    if NOISE_FACTOR * noise <= tolerance:
        return tolerance
    notes.append(f"tolerance {tolerance:g} raised to {NOISE_FACTOR * noise:.3g}: Keras' own "
                 f"outputs differ by {noise:.3g} (relative) between batch 1 and batch {n} on "
                 f"these samples")
    return NOISE_FACTOR * noise


def tolerance_hint(bad):
    """The sentence a verification refusal ends with when a failed comparison of ``bad``
    exceeds its relative tolerance (not a top-1 or unit failure alone): a larger
    ``tolerance`` passes it, after checking the outputs (a deep float chain's rounding, the
    ``Export`` limitations). ``export/to_tflite.py`` names its ``--tolerance`` instead."""
    if not any(c.rel_error > c.tolerance for c in bad):
        return ""
    return (" (if the file's outputs are right for your use, checked yourself, a larger "
            "tolerance writes it: to_tflite(tolerance=...))")

