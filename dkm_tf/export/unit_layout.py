"""The layout of a Functional graph's maps, for the unit-by-unit output check
(:func:`dkm_tf.export.unit_check.unit_axes`).

:func:`layout` reads ``"channels_first"`` / ``"channels_last"`` from the layer producing a map
(its ``data_format``) and walks back through what keeps it: activations, normalization,
dropout, element-wise merges and ``keras.ops``; a Permute, ``ops.transpose``,
``ops.swapaxes`` or ``ops.moveaxis`` keeping the batch first (they move the channels' axis);
a Dense / EinsumDense / attention layer (they act on the last axis); a Concatenate of maps of
one layout; a nested Functional / Sequential model; and a chain of row-major reshapes keeping
the batch (a Reshape, a Flatten that does not transpose, ``ops.reshape`` to ``(-1, sizes)``,
``ops.squeeze`` / ``ops.expand_dims`` on an axis other than the batch's; also across a nested
model's boundary), which keeps a channels_first map's channels on axis 1 where that axis keeps
its size ((C, H, W) -> (C, H*W)). Anything else (a Lambda, a custom layer, even one named as a
Keras layer / op, a subclassed model, a model input, any other reshape: (C, H, W) -> (H, C*W),
a recurrent layer's sequence of maps (N, T, C, H, W), whose axis 1 is time steps) is of
unknown layout: its axis 1 may be time steps (review R3 F2).
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["layout"]

_SAME_LAYOUT_OPS = frozenset((  # keras.ops in a Functional graph that keep the layout
    "Abs", "Add", "Divide", "Exp", "Maximum", "Minimum", "Multiply", "Negative", "Relu",
    "Sigmoid", "Square", "Subtract", "Tanh", "TrueDivide"))
_FORMATS = ("channels_first", "channels_last")


def layout(tensor, ctx=None, depth=0):
    """``"channels_first"`` / ``"channels_last"`` of a Functional graph's tensor, None when
    not known (inputs that disagree, or a walk deeper than 300 layers: unknown).

    Args:
        tensor: a KerasTensor of a Functional / Sequential graph.
        ctx: ``(cache, feeds)``: layouts found (by tensor id) and, inside a nested model, its
            inputs (by id) mapped to ``(the tensor it was called on, the caller's ctx)``;
            None at the top.
        depth: layers walked so far.
    """
    import keras  # noqa: PLC0415

    ctx = ({}, {}) if ctx is None else ctx
    cache, feeds = ctx
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    if op is None or depth > 300:
        return None
    if id(tensor) in cache:
        return cache[id(tensor)]
    L = keras.layers  # noqa: N806
    ins = _inputs(op, history)

    def walk(x):
        return layout(x, ctx, depth + 1)

    fmt = getattr(op, "data_format", None)
    if fmt not in _FORMATS or isinstance(op, L.Flatten):
        fmt = None  # (a Flatten's data_format is its input's, or a transpose: see _reshaped)
    perm = _transposition(op, ins, L)
    if isinstance(op, (L.RNN, L.Bidirectional)):
        fmt = _recurrent(op, tensor, ins, fmt)
    elif _row_major(op, ins, L):  # a row-major reshape: are the channels kept?
        fmt = _reshaped(tensor, ctx, depth)
    elif fmt is None and isinstance(op, L.InputLayer):  # a nested model's input: its caller's
        fmt = layout(feeds[id(tensor)][0], feeds[id(tensor)][1], depth + 1) if id(
            tensor) in feeds else None
    elif fmt is None and isinstance(op, (L.Dense, L.EinsumDense, L.MultiHeadAttention)):
        # acts on the last axis only: axes 1..-2 are its (first) input's, channels included
        eq = str(getattr(op, "equation", "x,y->x")).replace(" ", "")
        fmt = "channels_last" if not ins or len(ins[0].shape) < 3 else walk(
            ins[0]) if eq.split(",")[0][:-1] == eq.split(
            "->")[-1][:-1] else None  # an EinsumDense moving the leading axes: unknown
    elif fmt is None and isinstance(op, L.Embedding):
        fmt = "channels_last"
    elif fmt is None and perm is not None:  # keeping the batch first: a Permute
        fmt = _permuted(walk(ins[0]), perm[1:], len(perm)) if perm[0] == 0 else None
    elif fmt is None and isinstance(op, keras.Model):  # a nested Functional / Sequential
        fmt = _nested(op, history.tensor_index, ins, ctx, depth)
    elif fmt is None and (isinstance(op, L.Concatenate) or _keras_op(
            op, "Concatenate")) and ins and len(tensor.shape) >= 3 and (
            _size(getattr(op, "axis", 0)) or 0) % len(tensor.shape) != 0:
        # maps of one layout joined on any axis but the batch's: axis 1 (or the last) is
        # still the channels (a channels_first map's joined on axis 1: both maps' channels)
        got = set()
        for x in ins:
            got.add(walk(x) if len(x.shape) == len(tensor.shape) else None)
        fmt = got.pop() if len(got) == 1 else None
    elif fmt is None and (isinstance(op, _keep(L)) or _keras_op(op, *_SAME_LAYOUT_OPS)):
        if ins and all(tuple(x.shape) == tuple(tensor.shape) for x in ins):
            got = set()
            for x in ins:  # (a loop, not a comprehension: one stack frame per layer)
                got.add(walk(x))
            fmt = got.pop() if len(got) == 1 else None
    cache[id(tensor)] = fmt
    return fmt


def _inputs(op, history):
    """The input tensors of ``op``'s call that produced a tensor (its ``history``)."""
    import keras  # noqa: PLC0415

    return list(op._inbound_nodes[history.node_index].input_tensors) if isinstance(
        op, keras.Operation) and len(op._inbound_nodes) > history.node_index else []


def _size(d):
    """``d`` as an int when it is an integer of any type (np.int64 included) but a bool."""
    if isinstance(d, (bool, np.bool_)):
        return None
    try:
        return operator.index(d)
    except TypeError:
        return None


def _keras_op(op, *names):
    """Whether ``op`` is Keras' own ``keras.ops`` operation of one of ``names`` (not a layer,
    not a user's class that happens to share the name)."""
    import keras  # noqa: PLC0415

    kind = type(op)
    return kind.__name__ in names and kind.__module__.startswith("keras.") and not isinstance(
        op, keras.layers.Layer)


def _axes(value):
    """An axis argument (an integer or a list / tuple of them) as a list of ints, or None."""
    got = [_size(a) for a in (value if isinstance(value, (list, tuple)) else [value])]
    return None if not got or any(a is None for a in got) else got


def _recurrent(op, tensor, ins, fmt):
    """A recurrent layer's output layout: a ConvLSTM's map (its ``data_format``) where it is
    one step's (its state or last output, one rank below its input); a sequence of maps
    (N, T, ...): channels_last keeps them last, channels_first puts them on axis 2, not 1
    (unknown: review R4); an RNN's (N, units) / (N, T, units): channels_last; else unknown."""
    rank = len(tensor.shape)
    if fmt is not None:  # ConvLSTM1D / 2D / 3D
        seq = not ins or rank >= len(ins[0].shape)
        return fmt if fmt == "channels_last" or not seq else None
    return "channels_last" if rank <= 3 else None


def _transposition(op, ins, L):  # noqa: N803
    """The whole permutation (batch axis included) of a Permute, ``ops.transpose``,
    ``ops.swapaxes`` or ``ops.moveaxis`` on one input; None for any other op or odd axes."""
    if len(ins) != 1:
        return None
    rank = len(ins[0].shape)
    perm = list(range(rank))
    try:
        if isinstance(op, L.Permute):
            perm = [0, *(_size(d) for d in op.dims)]
        elif _keras_op(op, "Transpose"):
            axes = getattr(op, "axes", None)
            perm = perm[::-1] if axes is None else [_size(a) % rank for a in axes]
        elif _keras_op(op, "Swapaxes"):
            a, b = _size(op.axis1) % rank, _size(op.axis2) % rank
            perm[a], perm[b] = perm[b], perm[a]
        elif _keras_op(op, "Moveaxis"):  # numpy's: the other axes in order, each moved in
            src = [a % rank for a in _axes(op.source)]
            dst = [a % rank for a in _axes(op.destination)]
            perm = [a for a in perm if a not in src]
            for d, s in sorted(zip(dst, src)):
                perm.insert(d, s)
        else:
            return None
        return tuple(perm) if sorted(perm) == list(range(rank)) else None
    except (TypeError, AttributeError):  # an axis that is no integer: unknown
        return None


def _reshaped(tensor, ctx, depth):
    """The layout of a reshape's output ``tensor``: the chain of reshapes (:func:`_row_major`,
    also across a nested model's boundary: into its output's graph, out of its input to the
    tensor it was called on) back to a map ``x`` of rank >= 3 is one row-major reshape
    keeping the batch, so a channels_first ``x`` keeps its channels on axis 1 where that axis
    keeps its size (entry ``c * rest + r`` of a sample stays channel c) and a channels_last
    one on the last axis where that does (a Reshape to (C, H*W) of (C, H, W), or to the same
    shape); else None (an axis 1 that may be time steps: review R3 F2). A Flatten that
    transposes (data_format channels_first) ends the walk: unknown."""
    import keras  # noqa: PLC0415

    x, L = tensor, keras.layers  # noqa: N806
    for _ in range(300):
        history = getattr(x, "_keras_history", None)
        op = getattr(history, "operation", None)
        ins = _inputs(op, history)
        if _row_major(op, ins, L):
            x = ins[0]
        elif isinstance(op, L.InputLayer) and id(x) in ctx[1]:  # out of a nested model
            x, ctx = ctx[1][id(x)]
        elif isinstance(op, keras.Model) and (
                inner := _feeds(op, ins, ctx)) is not None:  # into a nested model
            x, ctx = op.outputs[history.tensor_index], ({}, inner)
        else:
            break
    else:
        return None
    out, src = tuple(tensor.shape), tuple(x.shape)
    if x is tensor or len(out) < 3 or len(src) < 3:
        return None
    fmt = layout(x, ctx, depth + 1)
    axis = {"channels_first": 1, "channels_last": -1}.get(fmt)
    kept = axis is not None and _size(out[axis]) is not None and out[axis] == src[axis]
    return fmt if kept else None


def _row_major(op, ins, L):  # noqa: N803
    """Whether ``op`` on ``ins`` is a row-major reshape keeping the batch: a Reshape, a Flatten
    that does not transpose (data_format channels_last, or rank 2), ``ops.squeeze`` /
    ``ops.expand_dims`` on axes other than the batch's (squeeze of every size-1 axis: no, a
    batch of 1 too), a ``keras.ops.reshape`` to ``(-1, known sizes)`` (integers of any type)
    of the input's known per-sample size."""
    if len(ins) != 1:
        return False
    if isinstance(op, L.Reshape):
        return True
    if isinstance(op, L.Flatten):
        return op.data_format != "channels_first" or len(ins[0].shape) <= 2
    rank, expand = len(ins[0].shape), _keras_op(op, "ExpandDims")
    if expand or _keras_op(op, "Squeeze"):
        axes = _axes(getattr(op, "axis", None))
        n = rank + len(axes or ()) if expand else rank  # the rank the axes index
        if axes is None or any(not -n <= a < n for a in axes):
            return False
        axes = {a % n for a in axes}
        return 0 not in axes and (expand or all(ins[0].shape[a] == 1 for a in axes))
    if not _keras_op(op, "Reshape"):
        return False
    to = getattr(op, "newshape", None)
    to = tuple(to) if isinstance(to, (list, tuple, np.ndarray)) else (to,)
    to, src = tuple(_size(d) for d in to), tuple(_size(d) for d in ins[0].shape[1:])
    return len(to) >= 2 and to[0] == -1 and all(
        d is not None and d > 0 for d in to[1:] + src) and np.prod(to[1:]) == np.prod(src)


def _permuted(fmt, dims, rank):
    """The layout after ``Permute(dims)`` of a ``fmt`` map of ``rank`` (batch included)."""
    if fmt is None or sorted(dims) != list(range(1, rank)):
        return None
    where = list(dims).index(1 if fmt == "channels_first" else rank - 1) + 1
    return {1: "channels_first", rank - 1: "channels_last"}.get(where)


def _feeds(model, ins, ctx):
    """A nested Functional / Sequential ``model``'s inputs (by id) mapped to the tensors
    ``ins`` it was called on (with the caller's ``ctx``); {} when they do not match, None for
    a model without a graph (subclassed)."""
    try:
        inner, outer = list(model.inputs), list(model.outputs)
    except Exception:  # noqa: BLE001 (a subclassed model: unknown)
        return None
    if not outer:
        return None
    return {id(t): (x, ctx) for t, x in zip(inner, ins)} if len(inner) == len(ins) and all(
        tuple(t.shape[1:]) == tuple(x.shape[1:]) for t, x in zip(inner, ins)) else {}


def _nested(model, index, ins, ctx, depth):
    """The layout of a nested model's output ``index``, its inputs fed by the caller's."""
    try:
        feeds = _feeds(model, ins, ctx)
        return None if feeds is None else layout(model.outputs[index], ({}, feeds), depth + 1)
    except Exception:  # noqa: BLE001 (a subclassed model: unknown)
        return None


def _keep(L):  # noqa: N803
    """Keras layers whose output keeps their inputs' layout."""
    return (L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax,
            L.BatchNormalization, L.LayerNormalization, L.GroupNormalization,
            L.UnitNormalization, L.Dropout, L.GaussianNoise, L.GaussianDropout,
            L.AlphaDropout, L.ActivityRegularization, L.Identity, L.Add, L.Subtract,
            L.Multiply, L.Average, L.Maximum, L.Minimum, L.Rescaling, L.Masking)
