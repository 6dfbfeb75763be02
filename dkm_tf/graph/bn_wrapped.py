"""BatchNormalization folding through ``TimeDistributed`` wrappers (:mod:`.batchnorm`).

A ``TimeDistributed(layer)`` calls ``layer.call`` on each step of its input, the time axis
merged into the batch, so ``TimeDistributed(Conv2D)`` followed by
``TimeDistributed(BatchNormalization)`` computes, step by step, the conv and the batch norm of
a plain pair: the fold is the plain fold of the wrapped layers (the same kernel at every step).
The wrappers only shift the axes: a batch norm of axis ``a`` wrapped ``d`` times normalizes
axis ``a + d`` of the outer tensor, and the channel axis of a conv wrapped ``d`` times is the
outer tensor's last (``channels_last``) or ``d + 1`` (``channels_first``). So a
``TimeDistributed(BatchNormalization)`` after a plain Dense on ``(batch, T, F)``, or a plain
BatchNormalization after a ``TimeDistributed(Conv2D)``, folds where those axes meet, and a
batch norm on any other axis (axis 0 of the wrapped layer is the merged batch and time) stays.
"""

from __future__ import annotations

import keras

from dkm_tf.graph.bn_kernel import folded_copy

__all__ = ["axis_problem", "folded_layer", "kind", "time_distributed", "wrapper_problem"]

_TD = keras.layers.TimeDistributed


def time_distributed(layer):
    """``(inner, wrappers)``: the layer inside ``layer``'s ``TimeDistributed`` wrappers and the
    wrappers, outermost first (``(layer, [])`` for any other layer)."""
    wrappers = []
    while isinstance(layer, _TD):
        wrappers.append(layer)
        layer = layer.layer
    return layer, wrappers


def kind(layer):
    """``"TimeDistributed(Conv2D)"`` for a wrapped conv, the class name for any other."""
    inner, wrappers = time_distributed(layer)
    depth = len(wrappers)
    return "TimeDistributed(" * depth + type(inner).__name__ + ")" * depth


def wrapper_problem(wrappers):
    """The reason a ``TimeDistributed`` subclass among ``wrappers`` cannot fold (it overrides
    ``call``: what it does per step is its own), else None."""
    for w in wrappers:
        if type(w).call is not _TD.call:
            return (f"{w.name!r} ({type(w).__name__}) overrides call(); folding could change "
                    "what it computes")
    return None


def axis_problem(prev, inner, depth, op, bn):
    """None when batch norm ``bn`` (wrapped by the graph layer ``op``) normalizes the channel
    axis of the conv / dense ``inner`` (wrapped ``depth`` times by ``prev``), else the reason.
    Also refuses Keras' channels_first bias fast path (see the reason)."""
    shape = tuple(op.get_build_config()["input_shape"])  # the outer tensor
    rank, first = len(shape), getattr(inner, "data_format", "channels_last") == "channels_first"
    bn_depth = len(time_distributed(op)[1])
    channel = depth + 1 if first else rank - 1
    axis = bn.axis % (rank - bn_depth)
    if bn_depth and axis == 0:
        return (f"it normalizes axis 0 of the layer {op.name!r} wraps, the batch and time "
                "axes that TimeDistributed merges, not a channel axis")
    axis += bn_depth
    if axis != channel:
        where = f" (axis {bn.axis} of the layer it wraps)" if bn_depth else ""
        return (f"it normalizes axis {axis}{where}, not the channel axis {channel} of "
                f"{prev.name!r}")
    out = (shape[0], *shape[depth + 1:])  # what the wrapped conv itself outputs
    if first and out[1] != 1 and out[-1] in (None, out[1]):  # Keras 3.15, TF backend:
        return (f"{prev.name!r} is channels_first with {out[1]} channels and an output "
                f"last dim of {out[-1] or 'None (any)'}: Keras' bias fast path (ops.add -> "
                "bias_add) adds its bias along the last axis when that dim equals the channel "
                "count, so a folded bias would change the outputs")
    return None


def folded_layer(layer, bn, scales, path=None):
    """A copy of conv / dense ``layer`` (or of its ``TimeDistributed`` wrappers around one)
    with ``bn`` folded in; the kernel multiplier goes in ``scales`` under
    ``"{path}/layer.kernel"`` for a wrapped layer (its clusterable weight path)."""
    inner, wrappers = time_distributed(layer)
    new = folded_copy(inner, bn, scales, path or layer.name, "layer." * len(wrappers))
    for w in reversed(wrappers):  # innermost first: each wraps the copy below it
        config = w.get_config()
        config.pop("layer")
        outer = type(w)(new, **config)
        outer.build_from_config(w.get_build_config())  # its layer is built: not rebuilt
        new = outer
    return new
