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
from dkm_tf.export.refusal import nan_max, tolerance_hint  # noqa: F401 (re-exported)

__all__ = ["FLOAT_LAYERS_PER_STEP", "INT8_UNIT_FLOOR", "NOISE_FACTOR", "depth_tolerance",
           "noise_floor", "output_depths", "output_errors", "output_rel_errors",
           "output_tolerances", "per_output", "tolerance_hint", "unit_report", "weighted_depth"]

INT8_UNIT_FLOOR = 2.0 / 127.0  # two int8 steps of the whole output's max |keras|
NOISE_FACTOR = 10  # noise_floor's factor; to_tflite only notes noise over tolerance / it


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
    return nan_max(errs), nan_max(output_rel_errors(got, reference))  # a NaN output: NaN


def output_rel_errors(got, reference):
    """Per output, ``max |got - reference| / max |reference|`` (floored at 1e-30): a list."""
    errs = [float(np.max(np.abs(g - r))) if r.size else 0.0 for g, r in zip(got, reference)]
    scales = [max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-30) for r in reference]
    return [e / s for e, s in zip(errs, scales)]


def per_output(tolerance, n):
    """``(tolerance, per-output tolerances)`` of a number or a sequence of ``n`` numbers (one
    per output): the number and ``()``, or the sequence's largest and the tuple (``()`` too
    when all are equal: one tolerance).

    Raises:
        ValueError: a sequence of another length than ``n``.
    """
    if np.ndim(tolerance) == 0:
        return float(tolerance), ()
    tols = tuple(float(t) for t in tolerance)
    if len(tols) != n:
        raise ValueError(f"Invalid value for argument `tolerance`. Expected a number or one "
                         f"per output ({n}). Received: {len(tols)} values {tols}")
    return max(tols), (tols if len(set(tols)) > 1 else ())


def unit_report(got, reference, tolerance, unit_floor=None, skip=()):
    """``(worst, excess)`` over the output units (last axis unless ``unit_floor`` names the
    axes, outputs with >= 2 units).

    Args:
        got, reference: the file's and Keras' outputs (lists of arrays, same shapes).
        tolerance: the relative tolerance, applied to each unit's own max |keras| (or one
            per output, a sequence).
        unit_floor: fraction of the output's max |keras| a unit may be off beyond that
            (int8: :data:`INT8_UNIT_FLOOR`), one per output (a number or one per unit: float
            files, :func:`~dkm_tf.export.unit_check.unit_floors`; a dict ``{axis: floors}``
            checks the units of each axis, e.g. ``{1: ..., -1: ...}`` a channels_first map's
            channels and columns), or None: report only (``excess`` NaN).
        skip: output indices not checked per unit (class scores, read by the top-1 check).

    Returns:
        ``worst``: "output k unit j: max |keras| s (output's S), max abs error e (...)"
        (with ``unit_floor``: "max abs error e, allowed a (...)", ``a`` the unit's absolute
        allowance) of the unit with the largest error over its allowance among the checked
        units (with ``unit_floor``), else of the unit with the largest error on its own max |keras|
        ("" when no output has several units, or none is checked);
        ``excess``: the largest ``error / (tolerance x unit max |keras| + unit_floor x output
        max |keras|)`` over checked units (> 1: refused), NaN when none is checked.
    """
    worst, best, excess = "", -1.0, float("nan")
    for k, (g, r) in enumerate(zip(got, reference)):
        if r.ndim < 2 or not r.size or (unit_floor is not None and k in skip):
            continue
        floor = unit_floor[k] if isinstance(unit_floor, (list, tuple)) else unit_floor
        for axis, fl in (floor.items() if isinstance(floor, dict) else [(-1, floor)]):
            if r.shape[axis] < 2:
                continue
            axes = tuple(d for d in range(r.ndim) if d != axis % r.ndim)
            err = np.max(np.abs(np.asarray(g, np.float64) - r), axis=axes)
            scale = np.max(np.abs(np.asarray(r, np.float64)), axis=axes)
            whole = float(scale.max())
            tol = tolerance if np.ndim(tolerance) == 0 else tolerance[k]
            if unit_floor is None:
                score = err / np.maximum(scale, 1e-30)
                unit = "x its max |keras|"
            else:
                allowed = tol * scale + fl * max(whole, 1e-30)  # absolute, one per unit
                with np.errstate(divide="ignore", invalid="ignore"):  # tolerance=0: 0 allowed
                    score = err / allowed  # an error > 0 is inf (refused), none is NaN (not)
                unit = "of what it is allowed"
                excess = max(float(score.max()), -1.0 if excess != excess else excess)
            j = int(np.argmax(score))
            if score[j] > best and err[j] > 0:
                best = float(score[j])
                limit = "" if unit_floor is None else f", allowed {allowed[j]:.3g}"
                of = "" if axis == -1 else f" of axis {axis}"
                worst = (f"output {k} unit {j}{of}: max |keras| {scale[j]:.3g} (the output's "
                         f"{whole:.3g}), max abs error {err[j]:.3g}{limit} ({score[j]:.3g} "
                         f"{unit})")
    return worst, float(excess)


def noise_floor(tolerance, noise, n, notes):
    """The default ``tolerance``, or :data:`NOISE_FACTOR` x Keras' own ``noise`` when larger
    (deep networks, saturated softmax outputs), with a note saying so. Not applied by
    ``to_tflite`` since h27: each run of the file is compared with Keras at its own batch
    (:mod:`dkm_tf.export.keras_ref`), and the floor let files wrong by less than it through.

    ``noise``: one number (for every output), or one per output (``verify.keras_noise``'s
    ``per_output``): each output's tolerance is then raised by its own noise only, a number
    ``tolerance`` becoming one per output, and the note names the outputs raised. With one
    number for all, a batch-dependent output's noise loosened a quiet head beside it (noise
    1.1e-4: a file with the head 1e-4 off was verified at 1.1e-3 and written, h26). A tuple
    of per-output tolerances is raised output by output."""
    if np.ndim(noise) and len(noise) == 1:
        noise = float(noise[0])
    if np.ndim(noise) == 0 or (np.ndim(tolerance) and len(tolerance) != len(noise)):
        return _one_floor(tolerance, float(np.max(noise)), n, notes)
    tols = [float(tolerance)] * len(noise) if np.ndim(tolerance) == 0 else list(tolerance)
    raised = [max(t, NOISE_FACTOR * z) for t, z in zip(tols, noise)]
    ks = [k for k, (t, r) in enumerate(zip(tols, raised)) if r > t]
    if not ks:
        return tolerance
    shown = [f"output {k} {tols[k]:.3g} to {raised[k]:.3g} (noise {noise[k]:.3g})" for k in ks]
    shown = shown if len(shown) <= 4 else [*shown[:2], f"... {len(ks) - 3} more", shown[-1]]
    notes.append(f"tolerance raised to {NOISE_FACTOR}x Keras' own noise on the output (its "
                 f"relative batch-1 vs batch-{n} difference on these samples), output by "
                 f"output: {'; '.join(shown)}; other outputs kept theirs")
    return tuple(raised)


def _one_floor(tolerance, noise, n, notes):
    """:func:`noise_floor` with one ``noise`` for every output."""
    if NOISE_FACTOR * noise <= min(np.ravel(tolerance)):
        return tolerance
    raised = NOISE_FACTOR * noise
    was = f"{tolerance:g}" if np.ndim(tolerance) == 0 else "/".join(
        f"{t:.3g}" for t in sorted(set(tolerance)) if t < raised)
    notes.append(f"tolerance {was} raised to {raised:.3g}: Keras' own "
                 f"outputs differ by {noise:.3g} (relative) between batch 1 and batch {n} on "
                 f"these samples")
    return raised if np.ndim(tolerance) == 0 else tuple(max(t, raised) for t in tolerance)
