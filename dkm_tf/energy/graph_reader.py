"""Reads `LayerShape` records by tracing a Keras model with TensorFlow.

Used for subclassed models (and models with dynamic input shapes), whose layers do not record
input and output shapes. The model is traced once with `tf.function` on a batch-1 input of
`input_shape`; the graph's Conv2D, DepthwiseConv2dNative, MatMul / BatchMatMulV2,
MaxPool / AvgPool, spatial Mean and element-wise ops between two activation tensors are read.
Kernels are attributed to Keras layers through their variables (`variable.path`), so names
match `layer.name`; other ops are named by their TensorFlow name scope.

Per-channel affine ops (biases, inference-mode batch norm) and activation functions are treated
as fused into the preceding layer. Nested function calls (e.g. grouped convolutions, which
Keras emits as a separate `tf.function`) are reported in `skipped`.
"""

import math

_SKIP_TYPES = {"Placeholder", "Const", "ReadVariableOp", "Identity", "NoOp", "Reshape",
               "Squeeze", "ExpandDims", "Shape", "StridedSlice", "Pack", "ConcatV2", "Cast",
               "Transpose", "BiasAdd", "Relu", "Relu6", "LeakyRelu", "Rsqrt", "GatherV2",
               "Prod", "Fill", "Pad", "Sigmoid", "Tanh", "Softmax", "Range", "Sum"}
_ELTWISE = {"AddV2": "add", "Add": "add", "Sub": "add", "Mul": "mul", "Maximum": "max",
            "Minimum": "max"}


_NESTED_CALL = ("nested function call not inspected (e.g. a grouped convolution); read a "
                "Functional model instead")


def read_traced_model(model, input_shape):
    """Traces `model` on a batch-1 input and reads per-op shapes.

    Args:
        model: A `keras.Model` (any kind).
        input_shape: Input shape without the batch axis.

    Returns:
        `(shapes, skipped)` as in `read_keras_model`.

    Raises:
        ValueError: If `input_shape` is invalid or tracing fails.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Reading the shapes of model {model.name!r} by tracing it (a subclassed model, or "
            "input_shape=... for dynamic inputs) needs the TensorFlow backend of Keras; this "
            "process runs "
            f"Keras on {keras.backend.backend()!r}. Estimate a Sequential or functional model "
            "(shapes read from its layers on any backend), or save it and estimate it from a "
            "process started with KERAS_BACKEND=tensorflow.")
    import tensorflow as tf

    from dkm_tf.energy import shapes as sh

    try:
        dims = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected a tuple of positive integers "
            f"without the batch axis. Received: input_shape={input_shape!r}"
        ) from e
    if not dims or any(d < 1 for d in dims):
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected a tuple of positive integers "
            f"without the batch axis. Received: input_shape={input_shape!r}"
        )
    spec = tf.TensorSpec((1,) + dims, tf.float32)
    try:
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    except Exception as e:
        raise ValueError(
            f"Could not trace model {model.name!r} on input_shape={dims}: {e}"
        ) from e
    var_names = {id(v.value.handle): v.path for v in model.weights if hasattr(v, "path")}
    captured = {id(inner): id(outer) for outer, inner in concrete.graph.captures}
    shapes, skipped, used = [], [], {}

    def kernel_layer(tensor):
        while tensor.op.type in ("ReadVariableOp", "Identity", "Cast"):
            tensor = tensor.op.inputs[0]
        path = var_names.get(captured.get(id(tensor)))
        return path.split("/")[-2] if path and "/" in path else None

    def unique(name):
        used[name] = used.get(name, 0) + 1
        return name if used[name] == 1 else f"{name}#{used[name]}"

    for op in concrete.graph.get_operations():
        kind = op.type
        if kind in _SKIP_TYPES:
            continue
        ins = [_dims(t) for t in op.inputs]
        outs = [_dims(t) for t in op.outputs]
        scope = op.name.rsplit("/", 1)[0] if "/" in op.name else op.name
        if kind in ("Conv2D", "DepthwiseConv2dNative"):
            x, w, y = ins[0], ins[1], outs[0]
            layer = kernel_layer(op.inputs[1]) or scope
            strides = list(op.get_attr("strides"))[1:3]
            if kind == "Conv2D":
                groups = x[3] // w[2]
                out_c = w[3]
            else:
                groups, out_c = x[3], w[2] * w[3]
            shapes.append(sh.conv_shape(unique(layer), layer=layer, op=kind, in_hw=x[1:3],
                                        in_c=x[3], out_hw=y[1:3], out_c=out_c, kernel=w[:2],
                                        strides=strides, groups=groups))
        elif kind in ("MatMul", "BatchMatMulV2") and len(ins[1]) == 2:
            layer = kernel_layer(op.inputs[1])
            if layer is None:
                skipped.append((op.name, "matmul without a variable kernel"))
                continue
            a, w = ins
            if kind == "MatMul" and op.get_attr("transpose_b"):
                w = (w[1], w[0])
            shapes.append(sh.dense_shape(unique(layer), layer=layer, op=kind, in_features=w[0],
                                         units=w[1], positions=math.prod(a[:-1])))
        elif kind in ("MaxPool", "AvgPool"):
            x, y = ins[0], outs[0]
            shapes.append(sh.pool_shape(unique(scope), op=kind, in_hw=x[1:3], channels=x[3],
                                        out_hw=y[1:3], window=list(op.get_attr("ksize"))[1:3],
                                        strides=list(op.get_attr("strides"))[1:3],
                                        pool_op="max" if kind == "MaxPool" else "avg"))
        elif kind == "Mean" and len(ins[0]) == 4 and math.prod(outs[0]) == ins[0][0] * ins[0][3]:
            x = ins[0]
            shapes.append(sh.pool_shape(unique(scope), op=kind, in_hw=x[1:3], channels=x[3],
                                        out_hw=1, window=x[1:3], pool_op="avg"))
        elif kind in _ELTWISE:
            if len(ins) == 2 and ins[0] == ins[1] == outs[0] and math.prod(outs[0]) > 1:
                shapes.append(sh.eltwise_shape(unique(scope), op=kind, eltwise_op=_ELTWISE[kind],
                                               elements=math.prod(outs[0][1:]), n_inputs=2))
        elif kind in ("StatefulPartitionedCall", "PartitionedCall"):
            skipped.append((scope, _NESTED_CALL))
        else:
            skipped.append((op.name, f"unsupported TensorFlow op {kind}"))
    return tuple(shapes), tuple(skipped)


def _dims(tensor):
    shape = tensor.shape
    if shape.rank is None:
        return ()
    return tuple(1 if d is None else int(d) for d in shape.as_list())
