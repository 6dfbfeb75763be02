"""Element-wise records of activation functions and LayerNormalization, as a `.tflite` runs them.

The energy models price adds, multiplies, max / compare and affine ops (`paper.eltwise_fa`);
a lookup or transcendental function (sigmoid, tanh, exp, log, gelu, hard-swish, softmax) has
no full-adder model and is not charged by any reader. What is charged for an activation is
therefore the priced element-wise ops the TensorFlow Lite converter (TF 2.21) lowers it to, so
that the Keras reader charges a model as the `.tflite` reader charges its file:

- swish / silu: ``x * sigmoid(x)``: one "mul" of two activation tensors (the LOGISTIC is not
  priced); hard_sigmoid: one "mul"; glu: one "mul" (of the two halves, over half the inputs);
  softplus, softsign: one "add"; mish: one "add" and one "mul";
  selu: one "add" and two "mul".
- relu / relu6 / leaky_relu of a conv or dense layer are fused (not charged); as a layer of
  their own, see `keras_reader`.
- sigmoid, tanh, gelu, hard_swish / hard_silu, elu, exponential, softmax, log_softmax, linear:
  nothing priced.

A `LayerNormalization` over E outputs and P normalized groups (E / P values each) is lowered to
(mean and variance, MEAN / SQUARED_DIFFERENCE / RSQRT, are reductions and lookups, not priced):
``add`` of the epsilon (P), ``mul`` of x by ``inv = rsqrt(var + eps) · γ`` (E), ``mul`` of
the negated mean by ``inv`` (E with a scale, P without), ``mul`` of ``inv`` by γ (E, with a
scale), the ``add`` of the two products (E) and the ``add`` of β (E, with a centre whose β is
not all zero: the converter folds a zero β away). With ``rms_scaling``: the epsilon ``add``
(P) and two ``mul`` (E), as a `RMSNormalization`. Over the spatial axes of a 4-D tensor the
mean and variance (the mean square) are average poolings, charged as such.
`tests/test_energy_activations.py` converts each case and checks the records match.
"""

import math

import numpy as np

# priced element-wise ops per activation: (eltwise_op, ...) each over the output elements
_ACTIVATION_OPS = {
    "swish": ("mul",), "silu": ("mul",), "hard_sigmoid": ("mul",), "glu": ("mul",),
    "softplus": ("add",), "softsign": ("add",), "mish": ("add", "mul"),
    "selu": ("add", "mul", "mul"),
}
_NOT_PRICED = ("sigmoid", "tanh", "gelu", "hard_swish", "hard_silu", "elu", "exponential",
               "softmax", "log_softmax", "linear")
_FUSED = ("relu", "relu6", "leaky_relu")


def op_name(name, i):
    """The name of op `i` (from 0) of the layer call `name`: `name`, `name/2`, `name/3`, ...
    (as `keras_lowered`'s; a second call's `act#2`, `act#2/2`, ...). Before 2026-12-07 an
    Activation's were `act#1`, `act#2`, ... and a LayerNormalization's `ln`, `ln#2`, ...: names
    of a second call (`act#2`, whose ops were `act#2#1`, ...; a shared LayerNormalization had
    two records `ln#2`), and `EnergyReport.layer("ln")` was the first op alone."""
    return name if i == 0 else f"{name}/{i + 1}"


def activation_name(activation):
    """The Keras name of an activation function (`"linear"` for `None`)."""
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", str(activation))


def activation_records(name, act, elements, *, layer, op):
    """Returns `(records, skip_reason)` of activation `act` of `elements` inputs.

    A glu halves its input (its outputs are the first half gated by the second); Keras records
    its output shape as its input's.

    `skip_reason` is `None` when the activation is charged in full (or has nothing to charge),
    a sentence saying what is not priced otherwise.
    """
    from dkm_tf.energy import shapes as sh

    if act in _ACTIVATION_OPS:
        ops = _ACTIVATION_OPS[act]
        elements = elements // 2 if act == "glu" else elements
        return [sh.eltwise_shape(op_name(name, i), layer=layer,
                                 op=f"{op}:{act}", elements=elements, eltwise_op=e, n_inputs=2)
                for i, e in enumerate(ops)], None
    if act in _FUSED or act == "linear":
        return [], None
    if act in _NOT_PRICED:
        return [], f"activation {act!r}: a lookup / transcendental function, not priced"
    return [], f"activation {act!r}: not modelled, not charged"


def layer_norm_records(layer, name, in_shape, *, common):
    """The records of a `LayerNormalization` or `RMSNormalization` (see the module docstring)."""
    import keras

    from dkm_tf.energy import shapes as sh

    dims = tuple(in_shape[1:])
    elements = math.prod(dims)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(in_shape)
    groups = elements // math.prod(in_shape[a % rank] for a in axes)
    rms = type(layer).__name__ == "RMSNormalization" or getattr(layer, "rms_scaling", False)
    if rms:
        parts = [("add", groups), ("mul", elements), ("mul", elements)]
    else:
        parts = [("add", groups), ("mul", elements),
                 ("mul", elements if layer.scale else groups), ("add", elements)]
        if layer.scale:
            parts.append(("mul", elements))
        if layer.center and np.any(keras.ops.convert_to_numpy(layer.beta) != 0):
            parts.append(("add", elements))
    records = [sh.eltwise_shape(op_name(name, i), elements=n, eltwise_op=e,
                                n_inputs=2, **common) for i, (e, n) in enumerate(parts)]
    if rank == 4 and sorted(a % 4 for a in axes) == [1, 2]:
        # a mean over the spatial axes is an average pooling (as the .tflite reader reads it):
        # the mean and the variance, or the mean square
        records += [sh.pool_shape(op_name(name, len(parts) + i), in_hw=in_shape[1:3],
                                  channels=in_shape[3], out_hw=1, window=in_shape[1:3],
                                  pool_op="avg", **common) for i in range(1 if rms else 2)]
    return records
