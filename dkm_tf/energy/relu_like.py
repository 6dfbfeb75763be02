"""Non-layer Keras ops the TFLite converter (TF 2.21) writes as a ReLU.

`keras.activations.relu(y, ...)` on a `KerasTensor` (in a `Lambda` or on a Functional
model's tensor) is an op of its own (`keras.src.activations.activations.ReLU`, not a layer),
converted as the `ReLU` layer of the same `negative_slope`, `max_value` and `threshold` is
(`keras_lowered.relu_ops`); `keras.ops.maximum(y, 0)` (or `(0, y)`, a constant of all +0.0
that does not broadcast `y`) is a RELU (of -0.0, or any other constant, a MAXIMUM). Each
RELU is fused into the op before it as a ReLU layer is (`relu_fusion`), also into a copy of
a rank-2 `Dense` read by others (`dense_copies`). Before 2026-12-07 the first was an
"unsupported operation ReLU", charged nothing, and the second a two-input MAXIMUM: beside a
sigmoid on `Dense(8)(tanh(Input(16)))`, Keras / file hierarchy 0.5361 and 0.6083; on
a `Conv2D(4, 3)` read also by a sigmoid 0.7721; `ops.maximum(y, 0)` alone after the Dense
1.1556.
"""


def activation_relu(op, keras):
    """Whether `op` is the op `keras.activations.relu` adds to a graph (not a layer)."""
    return not isinstance(op, keras.layers.Layer) and type(op).__name__ == "ReLU" and all(
        hasattr(op, a) for a in ("negative_slope", "max_value", "threshold"))


def zero_second(op, keras):
    """Whether `zero_maximum` op `op` takes its tensor first in each of its calls,
    `ops.maximum(y, 0)`: the converter drops a RELU of such a RELU (a ReLU after it, or it
    after a ReLU), not of `ops.maximum(0, y)` (both RELUs kept: `ReLU()(ops.maximum(0.0, t))`
    read 0.5000 of its file when taken as merged)."""
    nodes = getattr(op, "_inbound_nodes", None) or []
    return zero_maximum(op, keras) and all(
        list(n.arguments.args)[0] is n.input_tensors[0] for n in nodes)


def zero_maximum(op, keras):
    """Whether non-layer op `op` is a `keras.ops.maximum` of one `KerasTensor` and a
    constant of all +0.0 that does not broadcast it, in each of its calls: a RELU."""
    import numpy as np

    if isinstance(op, keras.layers.Layer) or type(op).__name__ != "Maximum":
        return False
    nodes = getattr(op, "_inbound_nodes", None) or []
    for node in nodes:
        args = list(node.arguments.args)
        if len(args) != 2 or len(node.input_tensors) != 1 or len(node.outputs) != 1:
            return False
        x = node.input_tensors[0]
        const = args[1] if args[0] is x else args[0]
        try:
            value = np.asarray(const, dtype="float64")
        except (TypeError, ValueError):
            return False
        shape = tuple(x.shape)
        if value.ndim > len(shape) or any(
                d != 1 and (s is None or d != s) for d, s in zip(value.shape[::-1], shape[::-1])):
            return False
        if value.size == 0 or np.any(value != 0) or np.any(np.signbit(value)):
            return False
    return bool(nodes)


def relu_like(op, keras):
    """Whether non-layer `op` is converted as a ReLU (`activation_relu`, `zero_maximum`)."""
    return activation_relu(op, keras) or zero_maximum(op, keras)
