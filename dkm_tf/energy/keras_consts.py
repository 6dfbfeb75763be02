"""Ops of a Functional / Sequential Keras model that scale or shift by constants.

`x * 2.0`, `x + c`, `x - c`, `x / 3.0` (one `KerasTensor` operand and a constant), a
`Rescaling` layer and a `Normalization` layer are what a `.tflite` runs as a MUL / ADD / SUB
by a constant (a division by a constant is a MUL by its inverse; TF 2.21 converter), except
where the converter folds them into the linear conv or dense layer before them (a scalar or
per-channel constant, that layer's output read by this op only), as it folds a batch norm
(`bn_folding`); a SUB (`x - c`, a `Normalization` with a mean) into a conv only, not into a
FULLY_CONNECTED (listed folded into a Dense before 2026-12-07: `_fits`). The Keras reader
therefore lists such a folded op ("folded into <layer>", not charged), charges a division by
a constant as a "mul" (was listed "unsupported operation TrueDivide") and a `Normalization`
layer as its SUB and MUL (`keras_lowered`; was "unsupported layer type"). The traced reader
does the same (`traced_consts`).
"""

import dataclasses
import math

_CONST_OPS = {"Add": "add", "Subtract": "add", "Multiply": "mul", "TrueDivide": "mul",
              "Divide": "mul"}


_MAX_CHAIN = 41  # the converter folds the first 41 MULs / ADDs of a chain (TF 2.21)


class _LastAxis:
    axis = -1


class _AnyAxis:  # a scalar scale / shift: folds on any channel axis
    axis = -1


@dataclasses.dataclass
class _Axis:
    axis: int


class _LastAxisSub(_LastAxis):  # starts with a SUB: the converter folds it into a conv,
    sub = True  # never into a FULLY_CONNECTED (`_fits`)


class _AnyAxisSub(_AnyAxis):
    sub = True


def _constant(op, call):
    """The constant operand of a binary op call with one `KerasTensor` operand: `(value,
    at)`, `at` its position, else None."""
    for node in getattr(op, "_inbound_nodes", None) or []:
        if not node.outputs or node.outputs[0] is not call[1][0]:
            continue
        args = list(node.arguments.args)
        if len(args) != 2 or len(node.input_tensors) != 1:
            return None
        at = 0 if args[1] is node.input_tensors[0] else 1
        return args[at], at
    return None


def _per_channel(value):
    import numpy as np

    shape = np.shape(value)
    return math.prod(shape[:-1]) == 1 if shape else True


def _scalar(value):
    import numpy as np

    return value is None or np.size(value) == 1


def fold_of(inner, call, counts, keras, outer=None):
    """The name of the layer op `inner` (a batch norm, a `Rescaling` / `Normalization`, a
    constant Add / Subtract / Multiply / TrueDivide) is folded into at `call`, else None.
    `outer`: the context of the nested model the call is in (`bn_folding.source`). Also
    where it reads (only) such an op that is folded itself, on the channel axis of the layer
    the chain folds into (or a scalar): the converter folds the chain (`conv(x) * 0.5 + 1.0`:
    the ADD into the conv's bias; before 2026-12-07 it was charged, Keras / file hierarchy
    1.8627, paper 1.0240; a per-column MUL after a batch norm after a channels_first conv,
    which the file keeps, was listed folded: 0.5503, paper 0.9734), through a `Dropout`, a
    nested model's output and a `Lambda`'s graph (`t * 0.5` in a Lambda, then `+ 1.0`:
    1.8627 before), for the first 41 MULs / ADDs after the conv (a batch norm is two), as
    the TF 2.21 converter folds them (was 16 ops: 10 pairs of `* 1.01 + 0.01`, 3.5892; 20
    batch norms 6.1795)."""
    found = _fold_layer(inner, call, counts, keras, outer, 0)
    return None if found is None else found.name


def _fold_layer(inner, call, counts, keras, outer, above):
    """As `fold_of`, the layer itself; `above`: the MULs / ADDs of the ops after it in the
    chain being followed (the converter folds the first `_MAX_CHAIN` after the conv)."""
    def into(norm, counts, keras, x, outer):
        total = above + _n_ops(inner, keras)
        return None if total > _MAX_CHAIN else _producer(norm, counts, keras, x, outer) or (
            _chained(norm, x, counts, keras, outer, total))

    return _fold_here(inner, call, counts, keras, outer, into)


def _n_ops(op, keras):
    """The MULs / ADDs a foldable op is: a batch norm, a `Normalization` 2, a `Rescaling`
    with a scale and an offset 2, another 1."""
    import numpy as np

    L = keras.layers
    if isinstance(op, L.Rescaling):
        return 1 + bool(np.any(np.asarray(op.scale) != 1) and np.any(np.asarray(op.offset) != 0))
    return 2 if isinstance(op, (L.BatchNormalization, L.Normalization)) else 1


def _producer(norm, counts, keras, x, outer):
    """`bn_folding.folded_into`, the layer."""
    from dkm_tf.energy.bn_folding import source

    try:
        x = norm.input if x is None else x
    except (AttributeError, ValueError):
        return None
    producer = source(x, counts, keras, outer)
    return producer if producer is not None and _fits(producer, norm, len(x.shape), keras) \
        else None


def _fits(producer, norm, rank, keras):
    """`bn_folding.folds_after`; a scalar (`_AnyAxis`) on either channel axis."""
    from dkm_tf.energy.bn_folding import folds_after

    inner = producer.layer if isinstance(producer, keras.layers.Wrapper) else producer
    if getattr(norm, "sub", False) and isinstance(inner, keras.layers.Dense):
        return False  # FULLY_CONNECTED, SUB: `Dense(8)(x) - 1.0` 0.8654 before 2026-12-07
    if norm in (_AnyAxis, _AnyAxisSub):
        return any(folds_after(producer, _Axis(a), rank, keras) for a in (1, rank - 1))
    return folds_after(producer, norm, rank, keras)


def _chained(norm, x, counts, keras, outer, above):
    """Where `x` is the output of a foldable op read by this call only, the layer that op
    folds into (`_fold_layer`) where `norm` folds there too (on its channel axis)."""
    found = None if x is None else _op_output(x, counts, keras, outer)
    if found is None:
        return None
    op, ins, y, op_counts, op_outer = found
    target = _fold_layer(op, (list(ins), [y]), op_counts, keras, op_outer, above)
    return target if target is not None and _fits(target, norm, len(x.shape), keras) else None


def _op_output(x, counts, keras, outer):
    """`(op, its call's inputs, its output, counts, outer)` of the op of a graph `x` comes
    from (`bn_folding.source_at`: through removed ops and nested models' outputs, and into a
    `Lambda`'s graph), None where `x` is read twice or comes from no single-output op."""
    from dkm_tf.energy.bn_folding import _calls, consumers, graph_ops, source_at
    from dkm_tf.energy.keras_wrapped import lambda_model

    found = source_at(x, counts, keras, outer)
    if found is None or not found[1]:
        return None
    op, ins, op_counts, op_outer = found
    nodes = [n for n in getattr(op, "_inbound_nodes", None) or [] if [
        id(t) for t in n.input_tensors] == [id(t) for t in ins]]
    if len(nodes) != 1 or len(nodes[0].outputs) != 1:
        return None
    y = nodes[0].outputs[0]
    sub = lambda_model(op, (list(ins), [y]), keras)
    if sub is None:
        return op, ins, y, op_counts, op_outer
    inside = (keras.tree.flatten(sub.inputs), list(ins), op_counts, op_outer)
    inner = keras.tree.flatten(sub.outputs)
    if len(inner) != 1 or len(inside[0]) != len(ins):
        return None
    ops = [(o, _calls(sub, o)) for o in graph_ops(sub)]
    return _op_output(inner[0], consumers(sub, ops, keras), keras, inside)


def _fold_here(inner, call, counts, keras, outer, folded_into):
    """`fold_of` for one op: `folded_into(norm, counts, keras, x, outer)` where its kind
    folds (a batch norm, a per-channel scale / shift)."""
    L = keras.layers
    x = call[0][0] if not isinstance(call, Exception) and call[0] else None
    if isinstance(inner, L.BatchNormalization):
        return folded_into(inner, counts, keras, x, outer)
    if x is None:
        return None
    if isinstance(inner, (L.Rescaling, L.Normalization)):
        scale = getattr(inner, "scale", None)
        if isinstance(inner, L.Rescaling) and not (_per_channel(scale) and
                                                   _per_channel(inner.offset)):
            return None
        axis = getattr(inner, "axis", (-1,))  # Normalization: statistics per channel only
        if isinstance(inner, L.Normalization) and tuple(axis or ()) not in ((), (-1,), (len(
                x.shape) - 1,)):  # None: one scalar mean and variance
            return None
        sub = isinstance(inner, L.Normalization) and _starts_with_sub(inner, keras)
        return folded_into((_AnyAxisSub if sub else _AnyAxis) if isinstance(
            inner, L.Rescaling) and _scalar(scale) and _scalar(inner.offset) else (
                _LastAxisSub if sub else _LastAxis), counts, keras, x, outer)
    if type(inner).__name__ in _CONST_OPS:
        found = _constant(inner, call)
        if found is not None and _per_channel(found[0]) and not (
                type(inner).__name__ in ("Subtract", "TrueDivide", "Divide") and found[1] == 0):
            sub = type(inner).__name__ == "Subtract"
            return folded_into((_AnyAxisSub if sub else _AnyAxis) if _scalar(found[0]) else (
                _LastAxisSub if sub else _LastAxis), counts, keras, x, outer)
    return None


def _starts_with_sub(layer, keras):
    """Whether `Normalization` `layer` runs as a SUB of its mean first (not inverted, a mean
    not all 0: `keras_lowered.affine_ops`), which the converter folds into a conv but not
    into a FULLY_CONNECTED (its MUL after the SUB stays too: before 2026-12-07 both were
    listed folded into a Dense, Keras / file hierarchy 0.7625)."""
    from dkm_tf.energy.keras_lowered import affine_ops

    return not getattr(layer, "invert", False) and affine_ops(layer, keras)[:1] == ["add"]


def const_op_records(op, call, in_shapes, out_shape):
    """`(records, reason)` of a TrueDivide (`x / c`) or Divide (`keras.ops.divide(x, c)`,
    unsupported before 2026-12-07: Keras / file hierarchy 0.85) with one `KerasTensor`
    operand: a division by a constant is a "mul" record; a constant divided by activations
    is listed. None for other ops."""
    from dkm_tf.energy import shapes as sh

    if type(op).__name__ not in ("TrueDivide", "Divide") or isinstance(call, Exception):
        return None
    found = _constant(op, call)
    if found is None:
        return None
    if found[1] == 0:
        return [], "a constant divided by activations (a reciprocal): not priced"
    if any(d is None for d in out_shape[1:]):
        return [], f"unknown dimension in shapes {in_shapes} -> {out_shape}"
    return [sh.eltwise_shape(op.name, elements=math.prod(out_shape[1:]), eltwise_op="mul",
                             n_inputs=2, op=type(op).__name__)], None


def normalization_records(layer, name, in_shape, out_shape, common):
    """A `Normalization` layer: a SUB of its mean and a MUL by its inverse standard
    deviation, as the converter runs it (`keras_lowered`; was one "affine" record); none for
    mean 0 and variance 1 (not adapted: an identity, which the converter removes:
    EfficientNetB0's, 27,648 elements at 96x96); with `invert=True` a MUL by the standard
    deviation and an ADD of the mean (listed "not modelled" before 2026-12-07: Keras / file
    hierarchy 0.37)."""
    from dkm_tf.energy.keras_lowered import normalization_ops_records

    return normalization_ops_records(layer, name, out_shape, common)
