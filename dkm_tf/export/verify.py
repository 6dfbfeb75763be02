"""Run a ``.tflite`` in the LiteRT interpreters and compare it with the Keras model.

Errors are reported as ``max |tflite - keras| / max |keras|`` over samples, for each output
against its own range, then the largest over outputs ("relative to the output range"):
meaningful for logits, probabilities and maps alike, and a [0, 1] head beside one in the
hundreds cannot hide behind the larger range.

Every LiteRT check runs the file twice in one interpreter: one sample per invoke (batch 1), then
all samples in one invoke after ``resize_tensor_input`` (batch n > 1), then sample 0 at batch 1
again (bit for bit the first result). Output shapes must equal Keras' (not one row for 4 samples).
Each run is compared with Keras at its own batch (:mod:`dkm_tf.export.keras_ref`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core import interpreters as _interpreters
from dkm_tf.core.interpreters import (  # noqa: F401 (re-exported)
    INTERPRETERS,
    litert_available,
    make_interpreter,
    tflite_unsupported,
)
from dkm_tf.core.validate import check_choice, invalid
from dkm_tf.export import interpreters as _exp_interpreters
from dkm_tf.export.canonical import static_batch  # noqa: F401 (re-exported)
from dkm_tf.export.keras_ref import keras_one_by_one, keras_outputs  # noqa: F401
from dkm_tf.export.refusal import nan_max, refusal_message
from dkm_tf.export.top1 import (  # noqa: F401 (re-exported)
    class_score_outputs,
    margin_hint,
    top1_agreement,
    top1_margin,
)
from dkm_tf.export.unit_errors import (  # noqa: F401 (re-exported)
    NOISE_FACTOR,
    noise_floor,
    output_errors,
    output_rel_errors,
    per_output,
    tolerance_hint,
    unit_report,
)

__all__ = ["INTERPRETERS", "Comparison", "ExportVerificationError", "TFLiteUnverifiableError",
           "batch_inputs", "choose_interpreters", "class_score_outputs", "compare",
           "keras_outputs", "make_interpreter", "run_tflite", "static_batch", "top1_agreement",
           "verify_batches"]


class ExportVerificationError(ValueError):
    """The written model disagrees with the Keras model beyond the tolerance."""


class TFLiteUnverifiableError(ExportVerificationError, RuntimeError):
    """This TensorFlow's ``tf.lite`` cannot run the file, so it was neither verified nor
    written (:func:`dkm_tf.export.interpreters.tflite_file_refusal` says why)."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Agreement between one interpreter and Keras.

    Attributes:
        interpreter: ``"litert"`` (``ai_edge_litert``), ``"tflite"`` (``tf.lite``) or ``"tflm"``.
        max_abs_error: largest absolute difference over outputs and samples.
        rel_error: the largest over outputs of ``max |tflite - keras| / max |keras|``, each
            output against its own range.
        tolerance: the allowed ``rel_error`` (with ``output_tolerances``, the largest).
        n_samples: samples compared.
        batch_size: the largest batch run in one invoke (1: batch 1 only, e.g. TFLite Micro).
        batch_rel_error: ``rel_error`` of that batch run alone (included in ``rel_error``).
        batch_refused: the interpreter's error when the batch run failed loudly (the file
            cannot change its batch, e.g. a recurrent layer converted with a fixed one);
            empty when it ran.
        top1_agreement: fraction of samples whose arg-max equals Keras' (the lowest over the
            :func:`class_score_outputs`); NaN when no output is one.
        min_top1: the required ``top1_agreement`` (int8 formats), NaN when not checked.
        top1_margin: Keras' own median top-1 minus top-2 score on these samples
            (:func:`~dkm_tf.export.top1.top1_margin`); below ``max_abs_error``, the samples
            do not separate the classes and the refusal says so. NaN when not read.
        worst_unit: the checked output unit (last axis / axis 1) most over its allowance, else
            the unit most wrong on its own max |keras|, with both and the run ("at batch n")
            when the batch run's was worse (:func:`~dkm_tf.export.unit_errors.unit_report`).
        unit_excess: the largest unit error over what is allowed to it (> 1: refused; int8
            outputs not read by the top-1 check); NaN when not checked.
        measured_on: ``"samples"``, ``"calibration samples"`` (full int8 calibrated on them)
            or ``"held-out samples"`` (:func:`~dkm_tf.export.held_out.held_out_check`).
        output_tolerances: per output, its allowed relative error where the outputs' differ
            (a float file: each output's depth), else ``()`` (``tolerance`` for all).
        output_rel_errors: per output, its relative error (with ``output_tolerances``).
    """

    interpreter: str
    max_abs_error: float
    rel_error: float
    tolerance: float
    n_samples: int
    batch_size: int = 1
    batch_rel_error: float = float("nan")
    batch_refused: str = ""
    top1_agreement: float = float("nan")
    min_top1: float = float("nan")
    top1_margin: float = float("nan")
    worst_unit: str = ""
    unit_excess: float = float("nan")
    measured_on: str = "samples"
    output_tolerances: tuple = ()
    output_rel_errors: tuple = ()

    @property
    def ok(self):
        top1_ok = not self.top1_agreement < self.min_top1  # NaN on either side: not checked
        rel_ok = all(r <= t for r, t in zip(self.output_rel_errors, self.output_tolerances)) \
            if self.output_tolerances else self.rel_error <= self.tolerance
        return bool(rel_ok and top1_ok and not self.unit_excess > 1)

    def to_dict(self):
        return {**dataclasses.asdict(self), "ok": self.ok}


def default_interpreters():
    """:func:`~dkm_tf.core.interpreters.default_interpreters` (this module's LiteRT probe)."""
    return _interpreters.default_interpreters(litert_available())


def choose_interpreters(interpreters):
    """``(interpreters, notes)`` an export is verified in: the defaults, or ``interpreters``.

    Raises:
        ValueError: an unknown name, or ``"tflite"`` under TensorFlow < 2.19.
        RuntimeError: the default under TensorFlow < 2.19 without ``ai_edge_litert``.
    """
    why = tflite_unsupported()
    if interpreters is None:
        chosen = default_interpreters()
        if "litert" not in chosen:  # TF 2.19 / 2.20: verify_batches refuses what it can't run
            return chosen, ["ai_edge_litert not installed (pip install dkm-tf[litert]): verified "
                            "with tf.lite.Interpreter only" + _exp_interpreters.tflite_note()]
        return chosen, [f"{why}: verified with ai_edge_litert only"] if why else []
    for kind in interpreters:
        check_choice("interpreters", kind, INTERPRETERS[:2])
    old = _interpreters.tflite_refusal(None, ()) if "tflite" in interpreters else None
    if old:
        raise invalid("interpreters", f"['litert'] ({old})", list(interpreters))
    return tuple(interpreters), []


def batch_inputs(inputs, n=4):
    """Inputs for the batch check: the samples when there are >= 2, else ``n`` variants of one.

    The variants of a single sample stay within its value range (mirrored along axis 1,
    scaled by 0.9; integer inputs only mirrored), so quantized formats see calibrated values.
    """
    if len(inputs[0]) >= 2:
        return inputs
    out = []
    for a in inputs:
        v = [a, a[:, ::-1] if a.ndim >= 2 else a]
        v += [x * 0.9 if a.dtype.kind == "f" else x for x in v]
        out.append(np.concatenate((v * n)[:n]).astype(a.dtype))
    return out


def _runner(kind, content):
    """The signature runner of ``content`` with its input keys in Keras order (the Keras
    input names: :mod:`dkm_tf.export.io_names`)."""
    from dkm_tf.export.io_names import file_keys  # noqa: PLC0415

    return make_interpreter(kind, content).get_signature_runner(), file_keys(content)


def _feed(runner, inputs):
    runner, keys = runner
    if len(keys) != len(inputs):
        raise ValueError(f"The .tflite takes {len(keys)} input(s) {keys}; received "
                         f"{len(inputs)} array(s)")
    res = runner(**dict(zip(keys, inputs)))
    return [np.array(res[f"output_{k}"]) for k in range(len(res))]


def run_tflite(content, inputs, kind="litert", batch=1):
    """Outputs (list of arrays, samples stacked) of the ``.tflite``.

    ``batch=1`` invokes once per sample; ``batch=None`` runs all samples in one invoke
    (the signature runner resizes the inputs); TFLite Micro runs batch 1 only.
    """
    n = len(inputs[0])
    if kind != "tflm" and batch is None:
        return _feed(_runner(kind, content), inputs)
    if kind == "tflm":
        from dkm_tf.export.tflm import tflm_interpreter  # noqa: PLC0415

        # decoded weights live in the arena: give it room for ~10x the compressed size
        it = tflm_interpreter(content, arena_size=max(40 * len(content), 1 << 24))
        outs = []
        for i in range(n):
            for j, a in enumerate(inputs):
                it.set_input(a[i:i + 1], j)
            it.invoke()
            outs.append([np.array(it.get_output(k)) for k in range(_n_outputs(content))])
    else:
        runner = _runner(kind, content)
        outs = [_feed(runner, [a[i:i + 1] for a in inputs]) for i in range(n)]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def _n_outputs(content):
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    return len(FlatModel.from_bytes(content).graph.outputs)


def _errors(got, reference, what):
    """:func:`~dkm_tf.export.unit_errors.output_errors`, raising ExportVerificationError."""
    return output_errors(got, reference, what, ExportVerificationError)


def keras_noise(model, inputs, reference, per_output=False, one_by_one=None):
    """How far Keras' outputs for ``inputs`` one at a time (``one_by_one``, when already run:
    :func:`~dkm_tf.export.keras_ref.keras_one_by_one`) are from ``reference`` (all at once;
    0 for 1 sample), relative as in :func:`compare`; ``per_output``: a list. Reported only:
    each run of the file is compared with Keras at its own batch."""
    if len(inputs[0]) < 2:
        return [0.0] * len(reference) if per_output else 0.0
    got = keras_one_by_one(model, inputs) if one_by_one is None else one_by_one
    rels = (_errors(got, reference, "Keras at batch 1"), output_rel_errors(got, reference))[1]
    return rels if per_output else max(rels)


def refuse_if_bad(path, fmt, comparisons, hint="auto", within=None, why=None):
    """Raise :class:`ExportVerificationError` (its ``comparisons``: those that failed) with
    :func:`~dkm_tf.export.refusal.refusal_message` for ``hint``, ``within`` and ``why``
    (``hint`` ``"auto"``: ``"tolerance"``, none for ``fmt`` ``"int8"``)."""
    if bad := [c for c in comparisons if not c.ok]:
        hint = (None if fmt == "int8" else "tolerance") if hint == "auto" else hint
        error = ExportVerificationError(refusal_message(path, fmt, bad, hint, within, why))
        error.comparisons = bad  # cli._export_noting reads their top-1 agreement
        raise error


def compare(reference, content, inputs, kind, tolerance, batch=None, min_top1=None,
            unit_floor=None):
    """Run ``content`` in interpreter ``kind`` and compare with ``reference`` outputs.

    Args:
        reference: Keras' outputs for ``inputs`` one sample per call (list of arrays,
            :func:`~dkm_tf.export.keras_ref.keras_one_by_one`): the batch-1 runs' reference.
        content: the ``.tflite`` bytes.
        inputs: list of input arrays, run one sample per invoke.
        kind: ``"litert"``, ``"tflite"`` or ``"tflm"``.
        tolerance: allowed ``max|tflite - keras| / max|keras|``, or one per output.
        batch: ``(batch inputs, their Keras outputs in one call)`` to run in one invoke after the
            batch-1 run, in the same interpreter (then sample 0 once more at batch 1);
            None for batch 1 only.
        min_top1: required top-1 agreement with Keras (see :class:`Comparison`), or None.
        unit_floor: a number (int8) or one per output (a tuple, ``unit_check``, a dict by axis
            for a map's channels): each unit is held to ``tolerance`` on its own range plus it
            x the output's (int8: outputs the top-1 check does not read); None: reported only.

    Raises:
        ExportVerificationError: output count or shapes differ from Keras, or the resize
            back to batch 1 changes the result.
    """
    top1 = {"min_top1": float("nan") if min_top1 is None else float(min_top1), "top1_margin":
            top1_margin(reference)}
    skip = () if min_top1 is None or type(unit_floor) is tuple else class_score_outputs(reference)
    tol, tols = per_output(tolerance, len(reference))
    tolerance = tols or tol
    if kind == "tflm" or batch is None:
        got = run_tflite(content, inputs, kind)
        err, rel = _errors(got, reference, "batch 1")
        worst = unit_report(got, reference, tolerance, unit_floor, skip)
        return Comparison(kind, err, rel, tol, len(inputs[0]),
                          top1_agreement=top1_agreement(got, reference), **top1,
                          worst_unit=worst[0], unit_excess=worst[1],
                          **_per_output(tols, output_rel_errors(got, reference)))
    runner = _runner(kind, content)
    n = len(inputs[0])
    got = [_feed(runner, [a[i:i + 1] for a in inputs]) for i in range(n)]
    got = [np.concatenate([o[k] for o in got]) for k in range(len(got[0]))]
    err, rel = _errors(got, reference, "batch 1")
    rels = output_rel_errors(got, reference)
    top1["top1_agreement"] = top1_agreement(got, reference)
    top1["worst_unit"], top1["unit_excess"] = unit_report(got, reference, tolerance,
                                                          unit_floor, skip)
    b_inputs, b_ref = batch
    nb = len(b_inputs[0])
    try:
        b_got = _feed(runner, b_inputs)
    except (RuntimeError, ValueError) as e:  # refused loudly: fixed batch, no garbage
        msg = " ".join(str(e).split())[:300]
        return Comparison(kind, err, rel, tol, n, 1, float("nan"),
                          f"{type(e).__name__}: {msg}", **top1, **_per_output(tols, rels))
    b_err, b_rel = _errors(b_got, b_ref, f"batch {nb} in one invoke")
    b_worst, b_unit = unit_report(b_got, b_ref, tolerance, unit_floor, skip)
    if b_unit == b_unit and not b_unit <= top1["unit_excess"]:  # larger, or batch 1's NaN
        top1["worst_unit"], top1["unit_excess"] = f"{b_worst} at batch {nb}", b_unit
    again = _feed(runner, [a[:1] for a in inputs])
    if any(not np.array_equal(x, y[:1], equal_nan=True) for x, y in zip(again, got)):
        raise ExportVerificationError(
            "The .tflite gives a different result for sample 0 at batch 1 after running a "
            f"batch of {nb} in the same interpreter (stale shapes after resize).")
    rels = [nan_max((a, b)) for a, b in zip(rels, output_rel_errors(b_got, b_ref))]
    return Comparison(kind, nan_max((err, b_err)), nan_max((rel, b_rel)), tol, n, nb, b_rel,
                      **top1, **_per_output(tols, rels))


def _per_output(tols, rels):
    """Comparison's ``output_tolerances`` / ``output_rel_errors`` (none for one tolerance)."""
    return {"output_tolerances": tols, "output_rel_errors": tuple(rels)} if tols else {}


def verify_batches(content, reference, inputs, batch, interpreters, tolerance, notes,
                   min_top1=None, fixed_size=None, unit_floor=None):
    """:func:`compare` in every interpreter at batch 1 and n; fix the batch where it cannot vary.

    A file converted at a fixed batch (``canonical.static_batch``), or one whose batch run the
    interpreter refuses, gets :func:`~dkm_tf.export.canonical.fix_batch` (signature
    ``[1, ...]`` plus a guard), is compared again, and must then refuse batch n in every
    interpreter; ``notes`` says why. TFLite Micro files are compared at batch 1 only.
    ``fixed_size`` (why the samples' size is the only one, or None): the inputs' other
    dimensions get :func:`~dkm_tf.export.canonical.fix_size`, and another size must raise.
    ``unit_floor``: see :func:`compare`.

    Returns:
        ``(content, comparisons, dynamic_batch)``.

    Raises:
        ExportVerificationError: wrong output shapes, a stale resize, or a fixed-batch file
            that still runs batch n, or a file 2.19 / 2.20's ``tf.lite`` cannot run.
    """
    from dkm_tf.export.canonical import fix_batch  # noqa: PLC0415

    def run_all():
        return [compare(reference, content, inputs, k, tolerance, batch, min_top1, unit_floor)
                for k in interpreters]

    if tuple(interpreters) == ("tflm",):
        return content, run_all(), False
    why = "tflite" in interpreters and _exp_interpreters.tflite_file_refusal(
        content, len(batch[0][0]))  # TF 2.19 / 2.20; fix_batch / fix_size add RESHAPEs only
    if why:
        raise TFLiteUnverifiableError(why)
    if fixed_size:
        content = _fix_size(content, inputs, interpreters, fixed_size, notes)
    reason = None
    if static_batch(content):
        reason = ("the converter needs a fixed batch for this model (a recurrent layer's "
                  "loop, or a channels_first Conv2DTranspose)")
        content = fix_batch(content)
    comps = run_all()
    refused = [c for c in comps if c.batch_refused]
    if reason is None and refused:
        reason = (f"the interpreter refuses a batch of {len(batch[0][0])} "
                  f"({refused[0].batch_refused[:200]})")
        content = fix_batch(content)
        comps = run_all()
    if reason is not None:
        ran = [c.interpreter for c in comps if not c.batch_refused]
        if ran:
            raise ExportVerificationError(
                f"The .tflite is fixed at batch 1, yet {ran} ran a batch of "
                f"{len(batch[0][0])} without an error.")
        notes.append(f"batch fixed at 1: {reason}; input signature [1, ...], another batch "
                     "raises an error")
    return content, comps, reason is None


def _fix_size(content, inputs, interpreters, why, notes):
    """:func:`~dkm_tf.export.canonical.fix_size`, then check that another size raises."""
    from dkm_tf.export.canonical import fix_size  # noqa: PLC0415

    content, guarded = fix_size(content)
    if not guarded:
        return content
    other = [np.zeros((1, *(d + 1 for d in a.shape[1:])), a.dtype) for a in inputs]
    for kind in interpreters:
        try:
            _feed(_runner(kind, content), other)
        except (RuntimeError, ValueError):
            continue
        raise ExportVerificationError(
            f"The .tflite is fixed at the samples' input size, yet {kind} ran inputs of "
            f"shapes {[a.shape for a in other]} without an error.")
    sizes = ", ".join("x".join(str(d) for d in a.shape[1:]) for a in inputs)
    notes.append(f"input size fixed at {sizes} (the samples'; {why}): another size raises an "
                 "error; export with samples of the size you will run")
    return content
