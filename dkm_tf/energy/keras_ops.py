"""Records of the non-layer operations of a Keras 3 Functional model (`x + y`, `ops.mean`).

Element-wise arithmetic, ReLUs and `keras.ops.clip` (`keras_lowered.clip_ops`) are
element-wise records, a mean over the spatial axes of a 4-D tensor an average pooling; layout
ops are "no compute", an op of integers only (index or shape arithmetic) is not charged, as in
the `.tflite` reader; anything else unsupported.
"""

import math

_OP_ELTWISE = {"Add": "add", "Subtract": "add", "Multiply": "mul", "Maximum": "max",
               "Minimum": "max", "Relu": "relu", "Relu6": "relu", "LeakyRelu": "relu"}
_OP_NO_COMPUTE = ("Reshape", "Transpose", "Concatenate", "ExpandDims", "Squeeze", "Flatten",
                  "GetItem", "Cast", "Identity", "StopGradient")


def classify_op(op, in_shapes, out_shape, call=None):
    """Classifies a non-layer Keras operation of a Functional model (e.g. `x + y`); `call`:
    its `(inputs, outputs)` (a division by a constant: `keras_consts`)."""
    from dkm_tf.energy import shapes as sh
    from dkm_tf.energy.keras_consts import const_op_records
    from dkm_tf.energy.keras_lowered import clip_ops

    cls = type(op).__name__
    from dkm_tf.energy.keras_products import NO_COMPUTE, product_records

    if cls in NO_COMPUTE:
        return [], "no compute"
    if call is not None and cls not in _OP_NO_COMPUTE and _integer_only(call):
        return [], f"{cls} of integers (index or shape arithmetic), not charged"
    found = None if call is None else (const_op_records(op, call, in_shapes, out_shape) or
                                       product_records(op, call, in_shapes, out_shape))
    if found is not None:
        return found
    if cls in _OP_NO_COMPUTE:
        return [], "no compute"
    dims = [tuple(s) for s in in_shapes] + [tuple(out_shape)]
    if any(d is None for s in dims for d in s[1:]):
        return [], f"unknown dimension in shapes {dims}"
    elements = math.prod(out_shape[1:])
    if cls == "Clip":  # `keras_lowered.clip_ops`
        ops = clip_ops(op)
        return ([], f"unsupported operation Clip of bounds {op.x_min!r}, {op.x_max!r} (not "
                "numbers)") if ops is None else ([sh.eltwise_shape(
                    op.name if not i else f"{op.name}/{i + 1}", elements=elements, eltwise_op=e,
                    n_inputs=1 if e == "relu" else 2, op=cls) for i, e in enumerate(ops)], None)
    if cls in ("ReLU", "Maximum") and _relu_like(op):  # `relu_like`: as a ReLU layer
        ops = _relu_ops(op)
        return ([sh.eltwise_shape(op.name if not i else f"{op.name}/{i + 1}", elements=elements,
                                  eltwise_op=e, n_inputs=1 if e == "relu" else 2, op=cls)
                 for i, e in enumerate(ops)], None if ops else
                f"relu(threshold={float(op.threshold)}): a GREATER and a SELECT_V2 in a "
                ".tflite, not priced" if float(getattr(op, "threshold", 0)) != 0 else
                "negative_slope 1: an identity the converter removes, not charged")
    if cls in _OP_ELTWISE:
        n_in = 1 if _OP_ELTWISE[cls] == "relu" else max(len(in_shapes), 2)
        return [sh.eltwise_shape(op.name, elements=elements, eltwise_op=_OP_ELTWISE[cls],
                                 n_inputs=n_in, op=cls)], None
    in_shape = tuple(in_shapes[0])
    axis = getattr(op, "axis", None)
    if cls == "Mean" and len(in_shape) == 4 and axis is not None and \
            sorted(a % 4 for a in (axis if isinstance(axis, (list, tuple)) else [axis])) == [1, 2]:
        return [sh.pool_shape(op.name, in_hw=in_shape[1:3], channels=in_shape[3], out_hw=1,
                              window=in_shape[1:3], pool_op="avg", op=cls)], None
    return [], f"unsupported operation {cls}"


def _relu_like(op):
    import keras

    from dkm_tf.energy.relu_like import relu_like
    return relu_like(op, keras)


def _relu_ops(op):
    import keras

    from dkm_tf.energy.keras_lowered import relu_ops
    return relu_ops(op, keras)


def _integer_only(call):
    """Whether a call `(inputs, outputs)` computes integers / booleans from integers / booleans
    only: index or shape arithmetic, which the `.tflite` reader does not charge (an integer
    `ops.clip(i, -1, 5)` was charged as two "max" records before 2026-12-07, `ops.minimum` /
    `i * 2` as one: Keras / file hierarchy 2.36 / 1.68 / 1.68 with a Dense(3) after them)."""
    import keras

    ins, outs = (keras.tree.flatten(c) for c in call)
    tensors = [t for t in ins if isinstance(t, keras.KerasTensor)] + list(outs)
    return bool(outs) and all(isinstance(t, keras.KerasTensor) and (
        "int" in str(t.dtype) or str(t.dtype) == "bool") for t in tensors)
