"""Element-wise ops of a traced graph (`graph_reader`) with a constant or weight operand.

`x * 2.0`, `x + c`, `x / 3.0`, `ops.multiply(x, per_channel)`, a `Rescaling` or
`Normalization` layer and an inference batch norm (`x * inv + shift`) are, in the traced
graph, an element-wise op (Mul, AddV2, Sub, RealDiv, Maximum, Minimum) of an activation
tensor and a tensor computed from constants / variables only. The TensorFlow Lite converter
(TF 2.21) folds such an op into the linear conv or dense op before it when the constant is a
scalar or a per-channel vector and the product's output feeds that op only (as it folds a
batch norm, `bn_folding`; a SUB into a conv only, never into a FULLY_CONNECTED, as
`keras_consts`; a `Normalization`'s division by ones as `keras_lowered.affine_ops`);
otherwise it runs a MUL / ADD / SUB (a division by a constant is a MUL by its inverse),
which the `.tflite` reader charges. The traced reader does the same
(`classify`): folded ops are listed in `skipped` ("folded into <layer>"), the others charged
as "mul" / "add" / "max" records of two inputs, as the `.tflite` reader charges them. Ops
computing from constants / variables only (a batch norm's `rsqrt(var + eps) * gamma`) are
weight preprocessing a converter folds away: listed once, not charged. (Before, the traced
reader charged only ops of two same-shape activations: every broadcast op was dropped without
a word.) A weight of the output's trailing axes added to a conv's / matrix product's
output (an `EinsumDense` bias, heads x dims; Dense and Conv biases are BiasAdd ops) is that
product's bias, not charged, as in the `.tflite` reader; element-wise ops on integers (an
Embedding's index wrap-around) are listed as index arithmetic. `tests/test_energy15.py`
converts each case and compares.
"""

import math

from dkm_tf.energy.keras_lowered import _KEPT_DIVISION

_FOLDING_PRODUCTS = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul")
_PASS = ("BiasAdd", "Identity")
CONST_OPS = {"AddV2": "add", "Add": "add", "Sub": "add", "Mul": "mul", "RealDiv": "mul",
             "Maximum": "max", "Minimum": "max"}


def activation_ops(graph):
    """Names of the ops whose outputs depend on the graph's (non-resource) input placeholders."""
    import tensorflow as tf

    live = set()
    for op in graph.get_operations():
        if op.type == "Placeholder":
            if op.outputs and op.outputs[0].dtype not in (tf.resource, tf.variant):
                live.add(op.name)
        elif any(t.op.name in live for t in op.inputs):
            live.add(op.name)
    return live


class ConstOps:
    """Classifies the element-wise ops of one traced graph (module docstring)."""

    def __init__(self, graph):
        self.live = activation_ops(graph)
        self.quantized = {}  # op name -> the Keras-quantized layer whose call made it
        self.folded = {}  # op name -> the product it is folded into
        self.into_matmul = set()  # the names of those folded into a MatMul (a Dense)
        self.charged = set()  # the names of the ops charged
        self.weight_ops = 0

    def _consumers(self, tensor):
        return len(tensor.consumers())

    def _fold_target(self, tensor, kernel_layer, transposed=False):
        """`(layer, is_matmul)`: the layer the linear product producing `tensor` belongs to
        (through BiasAdd, Identity, Squeeze and folded constant ops, each read by one op only;
        with `transposed`, an NHWC -> NCHW Transpose too) and whether it is a MatMul (a
        FULLY_CONNECTED in the file), else None."""
        for _ in range(16):
            if self._consumers(tensor) != 1:
                return None
            op = tensor.op
            if op.name in self.folded:
                return self.folded[op.name], op.name in self.into_matmul
            if op.type in _FOLDING_PRODUCTS:
                if op.type == "MatMul" and len(op.inputs[0].shape) != 2:
                    return None
                w = op.inputs[2 if op.type == "Conv2DBackpropInput" else 1]
                return kernel_layer(w) or op.name.rsplit("/", 1)[0], op.type == "MatMul"
            if op.type not in _PASS and op.type != "Squeeze" and not (
                    transposed and _to_channels_first(op)):
                return None  # a Conv1D's Squeeze, a channels_first depthwise conv's Transpose
            tensor = op.inputs[0]
        return None

    def classify(self, op, kernel_layer):
        """`(eltwise_op, elements, None)` to charge, `(None, None, reason)` to list, or
        `(None, None, None)` for an op `graph_reader` reads itself (two activations) or a
        weight op (counted, listed once by `weight_entry`)."""
        kind = op.type
        live = [t.op.name in self.live for t in op.inputs]
        if not any(live):
            self.weight_ops += 1
            return None, None, None
        if op.outputs[0].dtype.is_integer or op.outputs[0].dtype.is_bool:
            return None, None, (f"{kind} of integers (index or shape arithmetic, e.g. an "
                                "Embedding's index wrap-around), not charged")
        layer = self.quantized.get(op.name)
        if layer is not None:
            return None, None, (f"{kind}: quantize / dequantize arithmetic of the quantized "
                                f"layer {layer} (charged as its product), not charged")
        if all(live) or len(op.inputs) != 2:
            return None, None, None
        x = op.inputs[live.index(True)]
        c = op.inputs[live.index(False)]
        out = _dims(op.outputs[0])
        if kind == "RealDiv" and live.index(True) == 1:
            return None, None, (f"RealDiv of a constant by activations over {out}: a "
                                "reciprocal, not priced")
        if _identity(kind, c):
            one = "0" if kind in ("AddV2", "Add", "Sub") else "1"
            return None, None, (f"{kind} by a constant {one}: an identity the converter "
                                "removes, not charged")
        if kind == "RealDiv" and _computed_ones(c) and not (
                x.op.type == "Sub" and x.op.name in self.charged and
                math.prod(_dims(c)) >= _KEPT_DIVISION):
            return None, None, (f"{kind} by a standard deviation of ones: an identity the "
                                "converter removes, not charged")
        c_dims = _dims(c)
        nchw = _nchw_vector(c_dims, x, self.folded)
        per_channel = (math.prod(c_dims[:-1]) == 1 if c_dims else True) or nchw
        product = _product_before(x)
        trailing = list(c_dims)
        while trailing and trailing[0] == 1:
            trailing.pop(0)
        # a conv's bias is per channel; a matmul's (EinsumDense) may span its trailing axes
        if kind in ("AddV2", "Add") and product and trailing and (
                len(trailing) == 1 or product not in _FOLDING_PRODUCTS[:3]) and \
                list(_dims(x)[-len(trailing):]) == trailing and math.prod(trailing) > 1:
            return None, None, (f"bias of the {product} before it (its accumulators' "
                                "initial value), not charged")
        # c - x and max / min are no affine map of x the converter folds (it runs them)
        if per_channel and kind not in ("Maximum", "Minimum") and not (
                kind == "Sub" and live.index(True) == 1):
            found = self._fold_target(x, kernel_layer, nchw or math.prod(c_dims) == 1)
            # a SUB folds into a conv, never into a FULLY_CONNECTED (the file keeps it: a
            # subclassed `Dense(8)(x) - 1.0` was listed folded, hierarchy 0.8654 before)
            if found is not None and not (kind == "Sub" and found[1]):
                into = found[0]
                self.folded[op.name] = into
                if found[1]:
                    self.into_matmul.add(op.name)
                return None, None, (f"{kind} by a constant / weight of shape {list(c_dims)}: "
                                    f"folded into {into} (as a .tflite folds it), not charged")
        self.charged.add(op.name)
        return CONST_OPS[kind], math.prod(out[1:]) if len(out) > 1 else 1, None

    def weight_entry(self):
        """The `skipped` entry of the weight-only ops, or None."""
        if not self.weight_ops:
            return None
        return ("weight preprocessing", f"{self.weight_ops} element-wise ops computing from "
                "constants / variables only (folded at conversion), not charged")


_PRODUCTS = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "MatMul",
             "BatchMatMulV2", "BatchMatMulV3", "Einsum")


def _product_before(tensor):
    """The type of the matrix product / conv whose output `tensor` is (through layout ops)."""
    for _ in range(8):
        if tensor.op.type in _PRODUCTS:
            return tensor.op.type
        if tensor.op.type not in ("Reshape", "Identity", "ExpandDims", "Squeeze"):
            return None
        tensor = tensor.op.inputs[0]
    return None


def _to_channels_first(op):
    """Whether `op` is a Transpose moving the last axis to axis 1 (NHWC -> NCHW: Keras runs a
    channels_first depthwise conv / pooling in NHWC between two Transposes)."""
    import numpy as np
    import tensorflow as tf

    if op.type != "Transpose":
        return False
    perm = tf.get_static_value(op.inputs[1])
    n = len(perm) if perm is not None else 0
    return n >= 3 and list(np.ravel(perm)) == [0, n - 1, *range(1, n - 1)]


def _nchw_vector(c_dims, x, folded):
    """Whether a constant of shape `c_dims` is a per-channel vector `(1, C, 1, ...)` of the
    output `x` of an NCHW product (a channels_first conv, through its BiasAdd and the ops
    `folded` into it already: a batch norm's MUL before its ADD): the converter
    folds it as it folds a channels_last one (measured before 2026-12-05: a channels_first
    batch norm was charged as a MUL and an ADD the `.tflite` does not run)."""
    x_dims = _dims(x)
    if len(c_dims) != len(x_dims) or len(x_dims) < 3 or c_dims[1] != x_dims[1] or \
            math.prod(c_dims) != c_dims[1]:
        return False
    op = x.op
    for _ in range(16):
        if op.name in folded:
            op = next(t for t in op.inputs if _dims(t) == x_dims).op
        elif op.type in _PASS and op.type != "BiasAdd":
            op = op.inputs[0].op
        else:
            break
    return is_nchw(op)


def is_nchw(op):
    """Whether traced op `op` computes in NCHW (a channels_first Keras conv: TensorFlow's
    Conv2D, BiasAdd and backprop ops carry it; pooling and depthwise convs are transposed to
    NHWC)."""
    try:
        return op.get_attr("data_format") in (b"NCHW", "NCHW")
    except ValueError:
        return False


def _identity(kind, c):
    """Whether constant operand `c` makes op `kind` an identity (x + 0, x * 1)."""
    import numpy as np
    import tensorflow as tf

    value = tf.get_static_value(c) if c.op.type == "Const" else None
    if value is None or kind in ("Maximum", "Minimum"):
        return False
    return bool(np.all(np.asarray(value) == (0 if kind in ("AddV2", "Add", "Sub") else 1)))


def _computed_ones(c):
    """Whether `c` is computed (Sqrt, Maximum, Cast, Identity) from constants to all ones: a
    `Normalization`'s `maximum(sqrt(variance), epsilon)` for variance 1, which the converter
    removes unless it follows the layer's SUB and has `_KEPT_DIVISION` elements or more
    (charged before 2026-12-07: a subclassed Dense(4) then such a layer, 1.1238)."""
    import numpy as np
    import tensorflow as tf

    def value(t, depth):
        op = t.op
        if op.type == "Const":
            return tf.get_static_value(t)
        if depth > 4 or op.type not in ("Sqrt", "Maximum", "Cast", "Identity"):
            return None
        args = [value(i, depth + 1) for i in op.inputs]
        if any(a is None for a in args):
            return None
        if op.type == "Sqrt":
            return np.sqrt(args[0])
        return np.maximum(*args) if op.type == "Maximum" else args[0]

    if c.op.type == "Const":
        return False  # `_identity`
    found = value(c, 0)
    return found is not None and bool(np.all(np.asarray(found, np.float32) == 1))


def _dims(tensor):
    shape = tensor.shape
    if shape.rank is None:
        return ()
    return tuple(1 if d is None else int(d) for d in shape.as_list())
