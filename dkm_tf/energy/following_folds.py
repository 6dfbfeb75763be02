"""Constant scales and shifts the TFLite converter folds into the conv or Dense *after* them.

TF 2.21's converter (MLIR TFL optimize: `FuseBinaryOpToFollowingAffineOp`,
`FuseMulAndFullyConnected`) rewrites a conv or fully connected op whose input is a MUL / DIV /
ADD / SUB by a constant to read that op's input instead, its weights scaled (a MUL) or its bias
shifted (an ADD): `w * (x * c) + b = (w * c) * x + b`, `w * (x + c) + b = w * x + (w * c + b)`.
Measured on converted files (`tests/test_energyfile26.py`):

- a MUL by a one-element constant folds into a `Conv2D` (grouped too, strided, with or without
  bias or activation), a `DepthwiseConv2D` (any depth multiplier), the depthwise half of a
  `SeparableConv2D` and a `Dense` on a 2-D input; a MUL by a vector over the features only into
  such a Dense (not into a conv: a per-channel `Rescaling` before a conv is kept, and so is
  one of equal values);
- an ADD (SUB) of a one-element constant likewise, but into a conv only with
  `padding="valid"` (zero padding would not see the shift); an ADD of a vector never;
- not into a dilated conv (SPACE_TO_BATCH_ND between), a `Conv1D` (EXPAND_DIMS between), a
  Dense on an N-D tensor (a RESHAPE between), a transposed conv, a channels_first conv;
- an op is gone only when every reader takes it: a `Rescaling` also read by a pooling, or by a
  `padding="same"` conv where it shifts, stays whole. A `Rescaling` runs a MUL, then an ADD:
  the ADD folds first, then the MUL into the readers that took the ADD
  (`Rescaling(per_channel, 0.1)` before a valid conv keeps its MUL only).

Looked through: for a MUL, a `ZeroPadding2D` before a valid conv that pads as
`padding="same"` would (the converter makes them one conv; also with a `Dropout`, a
Pipeline or a nested model's boundary between: `conv_after`, 1.7879 before 2026-12-07);
layers the converter removes (`Dropout`, ...: `bn_folding.removed`); a `Rescaling` /
constant op itself folded entirely (two `Rescaling`s before a conv both fold); a nested
Functional model reading the op at one input (the converter inlines it: the readers of its
input inside, `Rescaling(1 / 255)` before a nested Dropout -> conv, before 2026-12-07
charged, Keras / file hierarchy 2.0609); an op ending a nested model, the readers of its
output outside (`keras_reader._walk` threads them: ReLU -> `Rescaling(0.5)` nested before
an outer conv, 1.6217 before), at every place it is returned, an unread place left out
(`_outside`); a `keras.layers.Pipeline` reading the op: its layers, as if called in the
graph (`pipeline_folds`; 2.0609 before 2026-12-07).
"""

from dkm_tf.energy.pad_merging import same_pad
from dkm_tf.energy.scale_ops import affine_takes
from dkm_tf.energy.scale_ops import scale_ops as _ops
from dkm_tf.energy.tensor_readers import conv_after
from dkm_tf.energy.tensor_readers import inside as _inside
from dkm_tf.energy.tensor_readers import outside as _outside
from dkm_tf.energy.tensor_readers import readers as _readers


def _takes(node, kind, value, counts, keras, depth=0, t=None, outer=None):
    """Whether the op of `node` (reading the output of a MUL / ADD by `value`) takes it into
    its weights or bias (module docstring), looking through removed and folded ops; `t`:
    the tensor it reads, where it may read several (a nested model); `outer`: as for
    `_all_take`, of the graph `node` is in. A nested model reading the op: the readers of
    that input inside, and where the input is also an output of the nested model, the
    readers of the call's output (before 2026-12-07 not followed: a `Rescaling` before a
    model passing its input out to a conv outside was charged, Keras / file hierarchy
    1.5304)."""
    L = keras.layers
    op = node.operation
    inner = op.layer if isinstance(op, L.Wrapper) and not isinstance(
        op, (L.TimeDistributed, L.Bidirectional)) else op  # ClusterWeights, ...: its layer
    x = keras.tree.flatten(node.input_tensors)
    at = [i for i, y in enumerate(x) if y is t] if t is not None else [0] if len(x) == 1 else []
    if isinstance(op, keras.Model) and len(at) == 1 and depth <= 32:  # inlined: the readers
        inside = _inside(op, keras, at[0])  # of that input inside
        return inside is not None and _all_take(
            inside[0], kind, value, inside[1], keras, depth + 1, (None, None, counts, outer, (
                keras.tree.flatten(op.outputs), keras.tree.flatten(node.outputs))))
    if len(x) != 1 or len(node.outputs) != 1 or depth > 32:
        return False
    name = type(inner).__name__
    if isinstance(op, L.Pipeline):  # its first layer (`pipeline_folds`)
        from dkm_tf.energy.pipeline_folds import pipeline_takes

        return pipeline_takes(op, node, kind, value, lambda: _all_take(
            node.outputs[0], kind, value, counts, keras, depth + 1, outer), keras, counts, outer)
    affine = affine_takes(inner, kind, value, tuple(x[0].shape))
    if affine is not None:
        return affine
    if name == "ZeroPadding2D" and kind == "mul" and value.size == 1:  # a scale commutes
        conv = conv_after(node.outputs[0], counts, keras, depth + 1, outer)  # with zeros:
        return conv is not None and same_pad(inner, tuple(x[0].shape), conv) and bool(
            affine_takes(conv, kind, value, tuple(x[0].shape)))  # a conv merging the pad
    from dkm_tf.energy.bn_folding import removed

    gone = (not isinstance(op, keras.Model) and removed(op, keras)) or (
        _ops(op, (node.input_tensors, node.outputs), keras) is not None and
        not kept_ops(op, (node.input_tensors, node.outputs), counts, keras, depth + 1,
                     outer)[0])
    return gone and _all_take(node.outputs[0], kind, value, counts, keras, depth + 1, outer)


def _takers(t, keras, depth=0, outer=None):
    """Names of the convs / Dense layers reading `t`, through the ops between; `outer`: as
    for `_all_take`, for the readers outside of a nested model's (a Lambda's graph's) output
    (`(t - 127.5) / 127.5` in a Lambda before a conv: its ADD was noted "folded into  after
    it", no name, before 2026-12-07)."""
    names = set()
    for out in _outside(t, outer) or () if depth < 32 else ():
        names |= _takers(out[0], keras, depth + 1, out[2])
    for n in _readers(t, keras) or ():
        op = n.operation
        if type(getattr(op, "layer", op)).__name__ in ("Conv2D", "DepthwiseConv2D",
                                                       "SeparableConv2D", "Dense"):
            names.add(op.name)
        elif isinstance(op, keras.layers.Pipeline) and len(n.outputs) == 1 and depth < 32:
            from dkm_tf.energy.pipeline_folds import pipeline_taker

            first = pipeline_taker(op, n, keras)
            names |= {first} if first else _takers(n.outputs[0], keras, depth + 1)
        elif depth < 32 and len(n.outputs) == 1:
            at = [i for i, y in enumerate(keras.tree.flatten(n.input_tensors)) if y is t]
            inside = _inside(op, keras, at[0]) if isinstance(op, keras.Model) and at else None
            names |= _takers(n.outputs[0] if inside is None else inside[0], keras, depth + 1,
                             outer if inside is None else None)
    return names


def _all_take(t, kind, value, counts, keras, depth=0, outer=None):
    """Whether every reader of `t` in the model (`counts`: none an output) takes the op;
    `outer`: as `bn_folding.source`, with the nested model's outputs and its call's, where
    `t` may be an output of a nested model (the readers of the call's output then too). Where
    `counts` marks live tensors (`keras_live.live_counts`), only readers that are live calls
    of its graph count (before 2026-12-07 a reader of another graph or one no output uses was
    counted: a `Rescaling` also an output of a nested model was left out as folded, 0.54)."""
    readers, outs = _readers(t, keras), _outside(t, outer)
    if readers is None or outs is None:
        return False
    if ("live", id(t)) in counts:
        readers = [n for n in readers if any(
            ("live", id(o)) in counts for o in keras.tree.flatten(n.outputs))]
    n = counts.get(id(t), 0) - len(outs)
    live = [o for o in outs if o[1].get(id(o[0]), 0)]  # one nothing reads: pruned (a
    pruned, outs = len(live) < len(outs), live  # middle model's tensor may keep no place)
    return bool(readers or outs or pruned) and len(readers) == n and all(
        _takes(r, kind, value, counts, keras, depth, t, outer) for r in readers) and all(
        _all_take(o[0], kind, value, o[1], keras, depth + 1, o[2]) for o in outs)


def kept_ops(op, call, counts, keras, depth=0, outer=None):
    """`(kept, folded)`: the `eltwise_op`s of constant op / `Rescaling` `op` at `call` a
    `.tflite` runs, in order, and those it folds into the layers after it (module
    docstring); `None, []` for another op. `outer`: as for `_all_take`."""
    ops = _ops(op, call, keras)
    if not ops or isinstance(call, Exception):
        return None, []
    out, kept, folded = call[1][0], [o for o, _ in ops], []
    for kind, value in reversed(ops):  # the op the readers read first (an ADD after a MUL)
        if not _all_take(out, kind, value, counts, keras, depth, outer):
            break
        kept.pop()
        folded.append(kind)
    return kept, folded


def drop_folded(op, call, counts, records, keras, outer=None):
    """`(records, note)`: `records` of `op` less the ops the converter folds into the layers
    after it (the last ones: the names of those kept stay), and the note saying so, else
    None. `outer`: where `op` is in a nested model, as for `_all_take`."""
    kept, folded = kept_ops(op, call, counts, keras, outer=outer)
    if not folded or len(records) != len(kept) + len(folded):
        return records, None
    readers = sorted(_takers(call[1][0], keras, outer=outer))
    return records[:len(kept)], (
        f"its {' and '.join(o.upper() for o in reversed(folded))} folded into "
        f"{', '.join(readers)} after it (as a .tflite folds it)")
