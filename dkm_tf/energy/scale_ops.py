"""The one-tensor constant ops the converter folds into a conv or Dense reading them.

`scale_ops` (a `Rescaling`, a constant MUL / DIV / ADD / SUB) and `affine_takes` (whether a
conv / Dense takes one of them) are the rules of `following_folds`, kept here so that
`pad_merging` (`scalar_ops`) and `pipeline_folds` use them without an import circle.
"""

import numpy as np

_OPS = {"Multiply": "mul", "TrueDivide": "mul", "Divide": "mul", "Add": "add",
        "Subtract": "add"}


def scale_ops(op, call, keras):
    """`[(eltwise_op, constant)]` of a `Rescaling` (its MUL, then its ADD, each left out
    where it is an identity) or a constant Multiply / TrueDivide / Add / Subtract op on one
    tensor (`x * c`, `x / c`, `x + c`, `x - c`, `c * x`, `c + x`), else None."""
    from dkm_tf.energy.keras_consts import _constant
    from dkm_tf.energy.keras_lowered import _numpy, affine_ops

    if isinstance(op, keras.layers.Rescaling):
        values = {"mul": _numpy(op.scale), "add": _numpy(op.offset)}
        return [(o, values[o]) for o in affine_ops(op, keras)]
    name = type(op).__name__
    if isinstance(op, keras.layers.Layer) or name not in _OPS or isinstance(call, Exception):
        return None
    found = _constant(op, call)
    if found is None or (found[1] == 0 and name in ("Subtract", "TrueDivide", "Divide")):
        return None
    try:
        return [(_OPS[name], np.asarray(keras.ops.convert_to_numpy(found[0]), np.float32))]
    except (TypeError, ValueError, AttributeError):
        return None


def scalar_ops(op, call, keras):
    """Whether `op` at `call` is a `Rescaling` or a constant MUL / DIV / ADD / SUB by
    one-element constants only: each of its ops folds into a valid, undilated channels_last
    conv reading it, whatever else reads it (the op then stays for those), so that the conv
    reads what the op reads (`pad_merging`: a pad before it is merged)."""
    try:
        ops = scale_ops(op, call, keras)
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(ops) and all(getattr(v, "size", 0) == 1 for _, v in ops)


def affine_takes(inner, kind, value, shape):
    """Whether conv / Dense layer `inner`, reading a tensor of shape `shape`, takes a MUL /
    ADD (`kind`) by `value` into its weights or bias (module docstring); None for another
    layer."""
    name = type(inner).__name__
    if name not in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
        return None
    if getattr(inner, "quantization_mode", None) in ("int8", "float8"):
        return False  # Keras-quantized: to_tflite refuses it, no file to fold into (int4 folds)
    if name == "Dense":
        return len(shape) == 2 and (value.size == 1 or (
            kind == "mul" and value.ndim == 1 and value.size == shape[-1]))
    return value.size == 1 and getattr(inner, "data_format", "") == "channels_last" and \
        all(int(d) == 1 for d in inner.dilation_rate) and (
            kind == "mul" or str(inner.padding).lower() == "valid")
