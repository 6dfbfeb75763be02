"""The text of a verification refusal (:func:`dkm_tf.export.verify.refuse_if_bad`) and the
advice it ends with.

A refusal advised a larger tolerance for every relative-error failure, also for files that
were plainly wrong (review R1, h25: a full int8 file calibrated on inputs x 0.01, relative
0.992 against 0.5; a float file with two output units swapped, 1.18 against 1e-5).
:func:`tolerance_hint` now says it only where it is plausibly the fix: a float-exact format
(float, fp16, palettized, tflm; an int8 file the converter left float), the default tolerance
(not one the caller chose), and every failing comparison within :data:`HINT_FACTOR` x the
FLOAT tolerance of the output's own depth and sum length (``within``; review R4, h25: measured
against the format's own 1e-4, a palettized file of a 2-layer model 3e-4 off, 1000x its float
rounding, was advised a larger tolerance). The factor is the span the float default itself
grows over with depth (1e-5 at 5 layers with weights to 1e-4): float32 rounding of a chain the
depth and sum counts misjudge stays inside it, while a wrong unit or a swapped output is
orders of magnitude out. fp16 rounds each weight to 2^-11 and its 2e-2 default is set by that,
not by float32 rounding: an fp16 file is advised only within :data:`FP16_HINT_FACTOR` x its
tolerance. A full int8 file over its tolerance is pointed at its calibration
data (``representative_data``) instead, before the sentence saying Keras' own top-1 margin is
below the error where it is (:func:`~dkm_tf.export.top1.margin_hint`: int8 only, the float
formats have no top-1 check, so it never meets the tolerance advice).
"""

from __future__ import annotations

from dkm_tf.export.top1 import margin_hint

__all__ = ["FP16_HINT_FACTOR", "HINT_FACTOR", "HINTS", "nan_max", "over_tolerance", "reasons",
           "refusal_message", "tolerance_hint", "tolerance_text", "worst_output"]

HINT_FACTOR = 10  # a larger tolerance is advised up to this many times the tolerance
FP16_HINT_FACTOR = 2  # an fp16 file: advised up to this many times its own tolerance
HINTS = ("tolerance", "representative_data")
_OWN = "from its own depth or sum length"


def reasons(tol, own):
    """Per output, where its default tolerance in ``tol`` (one per output, else ``()``)
    came from: its own depth or sum length where ``own`` (a float file's), else "" (the
    format's default). (No noise floor raises a tolerance since h27: ``keras_ref``.)"""
    if not isinstance(tol, (tuple, list)):
        return ()
    return tuple(_OWN if own else "" for _ in tol)


def over_tolerance(c):
    """How many times its tolerance comparison ``c``'s relative error is (per output where
    each output has its own: the largest); NaN when the error is NaN."""
    pairs = list(zip(c.output_rel_errors, c.output_tolerances)) or [(c.rel_error, c.tolerance)]
    return nan_max(r / max(t, 1e-300) for r, t in pairs)


def nan_max(values):
    """The largest of ``values``, NaN when one is NaN (Python's ``max`` drops a NaN that is
    not first: ``over_tolerance`` of relative errors (0.1, NaN) against (0.5, 0.4) was 0.2,
    review F4, h26)."""
    values = [float(v) for v in values]
    return float("nan") if any(v != v for v in values) else max(values)


def _nan_text(c):
    """``"; the file produced NaN in output k ..."`` where ``c``'s relative error is NaN
    (Keras' outputs with NaN read so too), else ""."""
    ks = [k for k, r in enumerate(c.output_rel_errors) if r != r]
    if not ks and c.rel_error == c.rel_error:
        return ""
    who = f"output{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}" if ks else "an output"
    return (f"; the file produced NaN in {who} (or Keras did on these samples): no "
            "tolerance admits a NaN")


def tolerance_text(c):
    """``"1e-05"``, or ``"1e-05 to 4e-05 per output"`` where the outputs' differ."""
    t = c.output_tolerances
    return f"{c.tolerance:.3g}" if not t else f"{min(t):.3g} to {max(t):.3g} per output"


def worst_output(c, own=False):
    """``"; output k: relative r (its tolerance t)"`` for the output of comparison ``c``
    furthest over its own tolerance, or "" with one tolerance for all.

    Args:
        c: the comparison.
        own: True: the tolerances are the default float-exact ones, each from its output's
            own depth or sum length, and the text says so; not where the caller passed them or
            they are int8's (review R8, h25: it said so of every per-output tolerance). Or
            one text per output saying where its tolerance came from (:func:`reasons`: a
            noise-raised one is not from its depth, h26), "" for none.
    """
    if not c.output_tolerances:
        return ""
    k = max(range(len(c.output_tolerances)),
            key=lambda j: _over(c.output_rel_errors[j], c.output_tolerances[j]))
    own = own if isinstance(own, (tuple, list)) else [_OWN if own else ""] * (k + 1)
    why = f", {own[k]}" if k < len(own) and own[k] else ""
    return (f"; output {k}: relative {c.output_rel_errors[k]:.3g} (its tolerance "
            f"{c.output_tolerances[k]:.3g}{why})")


def _over(r, t):
    """``r / t``, infinite for a NaN ``r`` (the worst output is a NaN one)."""
    return float("inf") if r != r else r / max(t, 1e-300)


def tolerance_hint(bad, hint="tolerance", within=None):
    """The sentence a verification refusal ends with when a comparison of ``bad`` exceeds its
    relative tolerance (not a top-1 or unit failure alone), or "".

    Args:
        bad: the failed comparisons.
        hint: ``"tolerance"`` (a float-exact format at its default tolerance): a larger
            ``tolerance`` writes it, after checking the outputs, when every such failure is
            within ``within`` (``export/to_tflite.py`` names its ``--tolerance`` instead);
            ``"representative_data"`` (full int8): calibrate on the model's data; None: no
            advice (the caller chose the tolerance).
        within: the largest relative error advised, one number or one per output (a
            comparison without per-output errors is held to the largest), or None:
            :data:`HINT_FACTOR` x each comparison's own tolerance.
    """
    over = [over_tolerance(c) for c in bad]
    failed = [c for c, x in zip(bad, over) if not x <= 1]
    if hint is None or not failed:
        return ""
    if hint == "representative_data":
        return (" (full int8 takes its activation ranges from its calibration samples: pass "
                "representative_data drawn from the data the model will run on)")
    if not all(_advised(c, within) for c in failed):
        return ""
    return (" (float32 rounding of a deep or wide chain can reach this; so can a wrong file: "
            "compare the outputs on your data first; if they are right for your use, a "
            "larger tolerance writes it: to_tflite(tolerance=...))")


def _advised(c, within):
    if within is None:
        return over_tolerance(c) <= HINT_FACTOR
    if not isinstance(within, (tuple, list)):
        return c.rel_error <= within
    rels = c.output_rel_errors
    if len(rels) != len(within):
        return c.rel_error <= max(within)
    return all(r <= w for r, w in zip(rels, within))


def _describe(c, own=False, fmt="int8"):
    top1 = ("" if c.min_top1 != c.min_top1 or c.top1_agreement != c.top1_agreement else
            f", top-1 agreement {c.top1_agreement:.3g} (at least {c.min_top1:g})")
    share = ("2 int8 steps of the output's" if fmt == "int8" else "the tolerance x the "
             "output's max |keras| x the unit's share of its rounding; if the outputs "
             "are right on your data, to_tflite(tolerance=...) writes it")
    unit = (f", {c.worst_unit} (allowed: {tolerance_text(c)} x its max |keras| + {share})"
            if c.unit_excess > 1 and (fmt == "int8" or over_tolerance(c) <= 1) else "")
    return (f"{c.interpreter}: max abs error {c.max_abs_error:.3g}, relative "
            f"{c.rel_error:.3g} (tolerance {tolerance_text(c)}){worst_output(c, own)}{top1}{unit}"
            f"{_nan_text(c)}")


def refusal_message(path, fmt, bad, hint="tolerance", within=None, why=None):
    """The message refusing ``path`` for the failed comparisons ``bad`` (``hint``,
    ``within``: see :func:`tolerance_hint`; ``why``: per output, where its tolerance came
    from, :func:`reasons`; None: from its depth or sum length at ``hint`` ``"tolerance"``),
    then :func:`~dkm_tf.export.top1.margin_hint`'s sentence."""
    own = hint == "tolerance" if why is None else why
    return (f"Refusing to write {path!r}: the {fmt} model disagrees with the Keras model: "
            + "; ".join(_describe(c, own, fmt) for c in bad)
            + tolerance_hint(bad, hint, within)
            + next((h for h in map(margin_hint, bad) if h), ""))
