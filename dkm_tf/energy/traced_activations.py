"""Activation functions in a traced graph (`graph_reader`), charged from the activations table.

In the traced graph an activation is a handful of TensorFlow ops whose form depends on the
function and the Keras version: gelu `x * -0.707` -> Erfc -> `* 0.5` -> `x * ...`; hard_sigmoid
`relu6(x + 3) / 6`; hard_swish `x * hard_sigmoid(x)`; selu one `Selu` op; swish
`x * sigmoid(x)`. Read op by op, with constant operands charged (`traced_consts`), gelu cost
three MULs and hard_swish an ADD and two MULs where the `.tflite` runs one GELU / HARD_SWISH op
(not priced), and selu nothing where the file charges an ADD and two MULs. The Keras and
`.tflite` readers charge an activation as the priced ops of the converter's lowering
(`activations`); so does the traced reader now: the element-wise and lookup ops created by a
call of a layer with a non-fused activation (a conv / dense layer's own `activation=`, an
`Activation` layer) are replaced by that table's records, named as the Keras reader names
them (`<layer>/<act>`, an `Activation` layer `<layer>`), charged once per call. The ops of a
call are those the graph gains while the layer's `call` runs (`recording` wraps it during the
trace): name scopes cannot tell them, TensorFlow renames a layer's scope to a free name
(`activation` -> `activation_1`, `activation_1` -> `activation_1_2`). Likewise every op of
a `LayerNormalization` / `RMSNormalization` call is replaced by
`activations.layer_norm_records` at the call's input shape (Keras' traced ops, read one by
one, charged an ADD of a zero beta the converter drops; before this change a traced
LayerNormalization gave 2 records against 5). A recurrent layer's call (LSTM, GRU, SimpleRNN,
ConvLSTM, a Bidirectional with its two sides) is replaced by `sequence_reader.traced_records`,
its T steps as the Keras reader charges them (its traced graph holds the cell's ops once,
before the `while` loop whose body is not read: an LSTM(7) over 8 steps read 385 MACs, not
2,933, named `lstm_cell`). A call whose output (or input) has an open size beyond the batch
(one that depends on the data: the trace's input size is fixed) is listed ("unknown
dimension"), as a priced op on such a size is (`graph_reader`); before 2026-12-07 the size
was read as 1 (a swish on `x[:, :n]` of a 5x8 input, n from a `tf.where`: 8 elements
charged, not 40).
"""

import contextlib
import math

from dkm_tf.energy.activations import activation_name, activation_records
from dkm_tf.energy.sequence_reader import (
    is_traced_sequence_layer,
    traced_records,
    traced_sequence_layers,
)

_FUSED = ("linear", "relu", "relu6", "leaky_relu")
OPEN = "open"  # a recorded call's output size where it is open beyond the batch
# ops an activation function is made of (the product and its BiasAdd are not)
ACTIVATION_OPS = ("AddV2", "Add", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "Neg", "Erf",
                  "Erfc", "Sigmoid", "Tanh", "Softplus", "Softsign", "Selu", "Elu", "Exp",
                  "Relu6", "Relu", "Split", "Softmax", "LogSoftmax", "IdentityN", "Select",
                  "SelectV2", "Greater", "GreaterEqual", "Less", "LessEqual", "Log", "Sqrt",
                  "Rsqrt", "Square", "Abs", "Sign")


def _dims(tensor):
    """The static shape of `tensor`, an open size kept as None (the trace's batch is 1)."""
    shape = tensor.shape
    if shape.rank is None:
        return ()
    return tuple(None if d is None else int(d) for d in shape.as_list())


def size_of(tensor):
    """Per-image elements of `tensor` (1 for a scalar or an unknown rank), None where a size
    beyond the batch is open (before 2026-12-07 read as 1: module docstring)."""
    dims = _dims(tensor)[1:]
    return None if None in dims else math.prod(dims)


def _identity_normalization(layer):
    """Whether `Normalization` layer `layer` has mean 0 and variance 1 (not adapted)."""
    import keras
    import numpy as np

    mean, var = getattr(layer, "mean", None), getattr(layer, "variance", None)
    return mean is not None and var is not None and not getattr(layer, "invert", False) and \
        not np.any(keras.ops.convert_to_numpy(mean)) and \
        bool(np.all(keras.ops.convert_to_numpy(var) == 1))


def _kind(layer, keras):
    """The activation name of `layer` if its ops are to be replaced, the layer itself for a
    Layer/RMSNormalization or an identity `Normalization`, else None."""
    L = keras.layers
    if isinstance(layer, L.LayerNormalization) or type(layer).__name__ == \
            "RMSNormalization" or (isinstance(layer, L.Normalization) and
                                   _identity_normalization(layer)):
        return layer
    kinds = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
             L.SeparableConv2D, L.Conv1DTranspose, L.Conv2DTranspose, L.Dense, L.EinsumDense,
             L.Activation)
    if isinstance(layer, kinds):
        act = activation_name(getattr(layer, "activation", None))
        return None if act in _FUSED else act
    return None


@contextlib.contextmanager
def recording(model, keras):
    """While tracing `model`: `calls` (yielded) receives `(layer, kind, graph, first, end)`
    for each call of a layer whose ops are replaced (`_kind`): the graph's ops `first` to
    `end` are the ones the call created. The layers' `call` is restored on exit."""
    import tensorflow as tf

    calls, saved = [], []
    try:
        layers = list(model._flatten_layers(include_self=False))  # noqa: SLF001
        sequence = traced_sequence_layers(layers, keras)  # charged per call, T steps
        for layer in layers:
            kind = layer if id(layer) in sequence else _kind(layer, keras)
            if getattr(layer, "quantization_mode", None):
                kind = ("quantized", kind)  # `keras_quantized`: its quantizer's ops listed
            elif kind is None:
                continue
            # a quantized layer runs `quantized_call` instead of `call` (keras Layer.__call__)
            attr = "quantized_call" if isinstance(kind, tuple) else "call"
            own = vars(layer).get(attr)
            object.__setattr__(layer, attr, _recorded(layer, kind, getattr(layer, attr), calls,
                                                      tf))
            saved.append((layer, attr, own))
        yield calls
    finally:
        for layer, attr, own in saved:
            if own is None:
                object.__delattr__(layer, attr)
            else:
                object.__setattr__(layer, attr, own)


def _recorded(layer, kind, call, calls, tf):
    def run(*args, **kwargs):
        graph = tf.compat.v1.get_default_graph()
        first = len(graph.get_operations())
        out = call(*args, **kwargs)
        dims = _dims(out) if hasattr(out, "shape") and hasattr(out.shape, "rank") else ()
        size = size_of(out) if len(dims) > 1 else None  # the output's size
        calls.append((layer, kind, graph, first, len(graph.get_operations()),
                      OPEN if len(dims) > 1 and size is None else size))
        return out

    return run


def activation_calls(calls, graph, live):
    """`({op name: call index}, entries, {op name: quantized layer})` of the recorded `calls`
    made in `graph` (an inner call's ops are its own): entries `[layer name, kind, elements,
    input shape, an Activation layer]`, elements the per-image size of the call's output (else
    the largest an op of the call outputs), the input its first activation operand from
    outside the call."""
    ops = graph.get_operations()
    quantized = {op.name: c[0].name for c in calls if c[2] is graph and isinstance(c[1], tuple)
                 for op in ops[c[3]:c[4]]}
    mine = [c if not isinstance(c[1], tuple) else (c[0], c[1][1], *c[2:]) for c in calls
            if c[2] is graph]
    mine = [c for c in mine if c[1] is not None]
    owner, entries = {}, []
    for layer, kind, *_, size in mine:  # an activation applies to the call's output
        entries.append([layer.name, kind, 1 if size is None else None if size == OPEN else size,
                        None, type(layer).__name__ == "Activation"])
    for i, (_, _, _, first, end, _) in sorted(enumerate(mine), key=lambda c: c[1][4] - c[1][3],
                                           reverse=True):
        for op in ops[first:end]:
            owner[op.name] = i  # the innermost call owns an op
    for op in ops:
        i = owner.get(op.name)
        if i is None:
            continue
        entry = entries[i]
        if mine[i][5] is None and op.outputs and op.outputs[0].dtype.is_floating and \
                op.name in live:  # no output size recorded: the widest op of the call
            size = size_of(op.outputs[0])
            entry[2] = None if None in (size, entry[2]) else max(entry[2], size or 1)
        outside = [t for t in op.inputs if owner.get(t.op.name) != i and t.op.name in live
                   and t.dtype.is_floating]
        if entry[3] is None and outside:
            entry[3] = _dims(outside[0])  # the call's input
    return owner, entries, quantized


def call_of(op, owner, entries):
    """The index of the recorded call op `op` is replaced by (for an activation: one of its
    kinds; for a normalization: any computing op), else None."""
    i = owner.get(op.name)
    if i is None or op.type in ("Const", "Placeholder", "ReadVariableOp", "NoOp"):
        return None
    return i if not isinstance(entries[i][1], str) or op.type in ACTIVATION_OPS else None


def records(entry, unique):
    """`(records, skip_reason)` of one recorded call (`entry` from `activation_calls`), named
    as the Keras reader names them (`unique` makes a repeated name unique)."""
    layer, act, elements, in_shape, activation_layer = entry
    if elements is None or None in (in_shape or ())[1:]:  # a size that depends on the data
        return [], (f"unknown dimension in the output of {layer!r} (input shape "
                    f"{in_shape}): not charged")
    if not isinstance(act, str) and type(act).__name__ == "Normalization":
        return [], "Normalization with mean 0 and variance 1: an identity the converter " \
            "removes, not charged"
    if not isinstance(act, str):
        import keras

        if is_traced_sequence_layer(act, keras):  # a recurrent layer's T steps
            return traced_records(act, in_shape, keras, unique)
    if not isinstance(act, str):  # a LayerNormalization / RMSNormalization layer
        from dkm_tf.energy.activations import layer_norm_records

        if not in_shape or any(d is None for d in in_shape):
            return [], f"input shape of normalization {layer} not found: not charged"
        return layer_norm_records(act, unique(layer), in_shape,
                                  common={"layer": layer, "op": type(act).__name__}), None
    name = unique(layer if activation_layer else f"{layer}/{act}")
    return activation_records(name, act, elements, layer=layer, op=f"traced:{act}")
