"""Reads `LayerShape` records by tracing a Keras model with TensorFlow.

Used for subclassed models (and models with dynamic input shapes), whose layers do not record
input and output shapes. The model is traced once with `tf.function` on a batch-1 input of
`input_shape`; the graph's Conv2D, DepthwiseConv2dNative, Conv2DBackpropInput (a transposed
convolution, `conv_transpose`), MatMul / BatchMatMulV2 / V3 (an int8-quantized Dense's),
Einsum and products of two activations (`traced_products`), MaxPool / AvgPool, a Mean / Sum /
Max over all axes but the batch and the channels (a global pooling, as `tflite_ops` reads it)
and element-wise ops (`traced_consts`: with a constant operand charged as the `.tflite`
charges them, or folded into the linear conv / dense op before them as the converter folds
them) are read; activation functions and Layer/RMSNormalization as the activations table
charges them (`traced_activations`); lookups and transcendental functions (Sigmoid, Tanh,
Softmax, ...) and other reductions are listed in `skipped`, not priced.
Kernels are attributed to Keras layers through their variables (`variable.path`), so names
match `layer.name`; other ops are named by their TensorFlow name scope.

Biases (BiasAdd) and relu activations are treated as fused into the preceding layer, except
where a separate Keras layer computes them, as
`read_keras_model` charges them: a LeakyRelu op reading a tensor of another name scope (a
`LeakyReLU` or `Activation("leaky_relu")` layer) is one "relu" record, and the ops of a `PReLU`
layer call (Keras computes `relu(x) - alpha * relu(-x)`: Relu, Neg, Mul, AddV2 ops in the
layer's name scope, found by the op that reads its `alpha`) are one "affine" record named after
the layer (see `shapes.prelu_shape`); such a call with an open size beyond the batch is
listed ("unknown dimension"; read as 1 before 2026-12-07). Nested function calls (e.g.
grouped convolutions, which Keras emits as a separate `tf.function`) are reported in
`skipped`. A dilated conv, traced as SpaceToBatchND -> conv -> BatchToSpaceND over its blocks,
is read at the Keras conv's sizes (`_blocks`), its two ops "no compute"; other SpaceToBatchND /
BatchToSpaceND ops (a hand-written `tf.space_to_batch`) are listed as unsupported.
"""

import math
import re

from dkm_tf.energy.tflite_blocks import lowered_by_conv
from dkm_tf.energy.tflite_ops import global_pool_hw
from dkm_tf.energy.traced_activations import activation_calls, call_of, recording, size_of
from dkm_tf.energy.traced_activations import records as activation_records
from dkm_tf.energy.traced_consts import CONST_OPS, ConstOps, is_nchw
from dkm_tf.energy.traced_products import einsum_record, matmul_record

_SKIP_TYPES = {"Placeholder", "Const", "ReadVariableOp", "Identity", "NoOp", "Reshape",
               "Squeeze", "ExpandDims", "Shape", "StridedSlice", "Pack", "ConcatV2", "Cast",
               "Transpose", "BiasAdd", "Relu", "Relu6", "LeakyRelu", "GatherV2",
               "Prod", "Fill", "Pad", "Range", "ReverseV2",
               "Tile", "BroadcastTo"}  # copies (ops.repeat: GroupQueryAttention's K / V heads)
# listed, not charged (`activations`): lookups and transcendental functions
_NOT_PRICED = {"Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Rsqrt", "Sqrt", "Exp", "Log", "Elu",
               "Selu", "Softplus", "Neg"}
_MATMULS = ("MatMul", "BatchMatMulV2", "BatchMatMulV3")
_REDUCTIONS = {"Mean": "avg", "Sum": "avg", "Max": "max"}


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
        with recording(model, keras) as calls:  # see `traced_activations`
            concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
                spec)
    except Exception as e:
        raise ValueError(
            f"Could not trace model {model.name!r} on input_shape={dims}: {e}"
        ) from e
    var_names = {id(v.value.handle): v.path for v in model.weights if hasattr(v, "path")}
    captured = {id(inner): id(outer) for outer, inner in concrete.graph.captures}
    prelu = _prelu_calls(model, concrete.graph, captured, keras)
    shapes, skipped, used = [], [], {}
    consts = ConstOps(concrete.graph)

    def kernel_layer(tensor):
        while tensor.op.type in ("ReadVariableOp", "Identity", "Cast", "ExpandDims"):
            tensor = tensor.op.inputs[0]
        path = var_names.get(captured.get(id(tensor)))
        return path.split("/")[-2] if path and "/" in path else None

    def unique(name):
        used[name] = used.get(name, 0) + 1
        return name if used[name] == 1 else f"{name}#{used[name]}"

    owner, entries, consts.quantized = activation_calls(calls, concrete.graph, consts.live)
    charged, blocks, reshuffles = set(), set(), []
    for op in concrete.graph.get_operations():
        kind = op.type
        act = call_of(op, owner, entries)
        if act is not None:  # an activation function's op (`traced_activations`)
            if act not in charged:
                charged.add(act)
                records, why = activation_records(entries[act], unique)
                shapes.extend(records)
                skipped.extend([(records[0].name if records else entries[act][0], why)]
                               if why else [])
            continue
        call = next((s for s in prelu if op.name.startswith(s + "/")), None)
        if call is not None:
            if prelu[call] is not None:  # the first op of a PReLU call: its one record
                layer, elements, n_params = prelu[call]
                if elements is None:  # an open size (the data's), not read as 1
                    skipped.append((unique(layer), "unknown dimension in the output of PReLU "
                                    f"{layer!r}: not charged"))
                else:
                    shapes.append(sh.prelu_shape(unique(layer), layer=layer, elements=elements,
                                                 n_params=n_params))
                prelu[call] = None
            continue
        if kind in _SKIP_TYPES and not (
                kind == "LeakyRelu" and _scope(op.inputs[0].op.name) != _scope(op.name)):
            continue
        ins = [_dims(t) for t in op.inputs]
        outs = [_dims(t) for t in op.outputs]
        scope = _scope(op.name)
        if _open(op):  # an open size beyond the batch is not read as 1 (231 MACs, by hand 315)
            skipped.append((op.name, "unknown dimension in shapes "
                            f"{[tuple(t.shape.as_list()) for t in op.inputs]} -> "
                            f"{[tuple(t.shape.as_list()) for t in op.outputs]}"))
            continue
        if kind == "LeakyRelu":  # a layer of its own (fused into its producer's op otherwise)
            shapes.append(sh.eltwise_shape(unique(scope), op=kind, eltwise_op="relu",
                                           elements=math.prod(outs[0][1:]), n_inputs=1))
        elif kind in ("Conv2D", "DepthwiseConv2dNative"):
            x, w, y = _nhwc(op, ins[0]), ins[1], _nhwc(op, outs[0])
            x, y = _blocks(op, x, y, blocks)  # a dilated conv: the Keras conv's sizes
            layer = kernel_layer(op.inputs[1]) or scope
            strides = _spatial_attr(op, "strides")
            if kind == "Conv2D":
                groups = x[3] // w[2]
                out_c = w[3]
            else:
                groups, out_c = x[3], w[2] * w[3]
            shapes.append(sh.conv_shape(unique(layer), layer=layer, op=kind, in_hw=x[1:3],
                                        in_c=x[3], out_hw=y[1:3], out_c=out_c, kernel=w[:2],
                                        strides=strides, groups=groups))
        elif kind == "Conv2DBackpropInput":  # Conv1D/2DTranspose: see `conv_transpose`
            from dkm_tf.energy.conv_transpose import conv_transpose_shape

            w, x = ins[1], _nhwc(op, ins[2])  # filter [kh, kw, out_c, in_c / groups], input
            layer = kernel_layer(op.inputs[1]) or scope
            shapes.append(conv_transpose_shape(unique(layer), layer=layer, op=kind,
                                               in_hw=x[1:3], in_c=x[3], out_c=w[2],
                                               kernel=w[:2], groups=x[3] // w[3]))
        elif kind == "Einsum":  # see `traced_products`
            layer = next(filter(None, map(kernel_layer, op.inputs)), None)
            record, why = einsum_record(op, unique(layer or scope), layer or scope)
            shapes += [record] if record else []
            skipped += [(op.name, why)] if why else []
        elif kind in _MATMULS and kernel_layer(op.inputs[1]) is None:  # `traced_products`
            # a float8 / int4 quantized layer's kernel is computed: named after the layer
            shapes.append(matmul_record(op, unique(consts.quantized.get(op.name, scope)), ins,
                                        outs[0]))
        elif kind in _MATMULS and len(ins[1]) == 2:
            layer = kernel_layer(op.inputs[1])
            a, w = ins
            if kind == "MatMul" and op.get_attr("transpose_b"):
                w = (w[1], w[0])
            shapes.append(sh.dense_shape(unique(layer), layer=layer, op=kind, in_features=w[0],
                                         units=w[1], positions=math.prod(a[:-1])))
        elif kind in ("MaxPool", "AvgPool"):
            x, y = _nhwc(op, ins[0]), _nhwc(op, outs[0])
            shapes.append(sh.pool_shape(unique(scope), op=kind, in_hw=x[1:3], channels=x[3],
                                        out_hw=y[1:3], window=_spatial_attr(op, "ksize"),
                                        strides=_spatial_attr(op, "strides"),
                                        pool_op="max" if kind == "MaxPool" else "avg"))
        elif kind in _REDUCTIONS and op.outputs[0].dtype.is_integer:
            continue  # shape arithmetic
        elif kind in _REDUCTIONS and _global_pool(op, ins[0], outs[0]) is not None:
            hw, channels = _global_pool(op, ins[0], outs[0])
            shapes.append(sh.pool_shape(unique(scope), op=kind, in_hw=hw, channels=channels,
                                        out_hw=1, window=hw, pool_op=_REDUCTIONS[kind]))
        elif kind in _REDUCTIONS:
            skipped.append((op.name, f"{kind} over {ins[0]} -> {outs[0]}: not a global pooling "
                            "(a normalization's statistics), not priced"))
        elif kind in _NOT_PRICED:
            skipped.append((op.name, f"{kind}: a lookup / transcendental function (or a sign "
                            "flip), not priced"))
        elif kind in CONST_OPS:  # see `traced_consts`
            eltwise, elements, why = consts.classify(op, kernel_layer)
            if why:
                skipped.append((op.name, why))
            elif eltwise is None and len(ins) == 2 and math.prod(outs[0]) > 1 and \
                    all(t.op.name in consts.live for t in op.inputs):  # two activations
                eltwise, elements = CONST_OPS[kind], math.prod(outs[0][1:])
                if kind == "RealDiv":
                    eltwise = None
                    skipped.append((op.name, "RealDiv of two activations: not priced"))
            if eltwise is not None:
                shapes.append(sh.eltwise_shape(unique(scope), op=kind, eltwise_op=eltwise,
                                               elements=elements, n_inputs=2))
        elif kind in ("SpaceToBatchND", "BatchToSpaceND"):  # no compute if a conv's blocks
            reshuffles.append((op.name, kind))
        elif kind in ("StatefulPartitionedCall", "PartitionedCall"):
            skipped.append((scope, _NESTED_CALL))
        else:
            skipped.append((op.name, f"unsupported TensorFlow op {kind}"))
    skipped += [(name, "no compute" if name in blocks else f"unsupported TensorFlow op {kind}")
                for name, kind in reshuffles]  # else a hand-written one, or not read
    skipped += [consts.weight_entry()] if consts.weight_entry() else []
    return tuple(shapes), tuple(skipped)


def _nhwc(op, dims):
    """`dims` of a 4-D operand of `op` in NHWC order (measured before 2026-12-05: an NCHW
    Conv2D was read as H=C, W=H, C=W: a wrong count, or a crash on groups=0)."""
    return (dims[0], dims[2], dims[3], dims[1]) if is_nchw(op) and len(dims) == 4 else dims


def _blocks(op, x, y, used):
    """`(x, y)` of conv `op` (NHWC input and output dims) where TensorFlow runs a dilated
    conv as SpaceToBatchND -> (ExpandDims) -> conv -> (Squeeze) -> BatchToSpaceND, the conv
    over all the blocks on the batch axis (`tflite_blocks` for a file): the SpaceToBatchND's
    input and the BatchToSpaceND's output (1-D: `(1, 1, length, c)`), what the Keras conv
    reads and computes (before 2026-12-07 one block's: `Conv2D(4, 3, dilation_rate=2)` on
    9x9x3 972 MACs, 2,700 by hand); the two ops' names are added to set `used`. `(x, y)`
    unchanged otherwise: a `tf.space_to_batch` written by hand around a conv, or an inner
    conv that pads, is not TensorFlow's lowering (`tflite_blocks.lowered_by_conv`)."""
    t = op.inputs[0]
    while t.op.type in ("ExpandDims", "Identity"):
        t = t.op.inputs[0]
    u, outs = op.outputs[0], []
    while len(outs := [c for c in u.consumers()]) == 1 and outs[0].type in ("Squeeze",
                                                                            "Identity"):
        u = outs[0].outputs[0]
    if t.op.type != "SpaceToBatchND" or len(outs) != 1 or outs[0].type != "BatchToSpaceND" \
            or is_nchw(op) or list(_spatial_attr(op, "strides")) != [1, 1] \
            or op.get_attr("padding") != b"VALID" \
            or not lowered_by_conv(t.op.name, outs[0].name) \
            or not f"{op.name}/".startswith(t.op.name.rpartition("/")[0] + "/"):
        return x, y
    used.update((t.op.name, outs[0].name))
    xs, ys = _dims(t.op.inputs[0]), _dims(outs[0].outputs[0])
    if len(xs) == len(ys) == 3 and x[1] == y[1] == 1:
        return (xs[0], 1, *xs[1:]), (ys[0], 1, *ys[1:])
    return (xs, ys) if len(xs) == len(ys) == 4 else (x, y)


def _spatial_attr(op, name):
    """The (height, width) entries of a 4-element `strides` / `ksize` attribute."""
    values = list(op.get_attr(name))
    return values[2:4] if is_nchw(op) else values[1:3]


def _global_pool(op, x, out):
    """`((h, w), channels)` of a Mean / Sum / Max over every axis of a 3-D to 5-D input but
    the batch and the channels (the last axis, or axis 1: a channels_first global pooling,
    which before 2026-12-05 was read with the last spatial axis as its channels), else None."""
    import numpy as np
    import tensorflow as tf

    if len(x) not in (3, 4, 5) or len(op.inputs) < 2:
        return None
    axes = tf.get_static_value(op.inputs[1])
    if axes is None:  # unknown axes: the channels-last reading, as before
        axes = range(1, len(x) - 1)
    axes = sorted({int(a) % len(x) for a in np.ravel(axes)})
    if axes == list(range(1, len(x) - 1)) and math.prod(out) == x[0] * x[-1]:
        spatial, channels = x[1:-1], x[-1]
    elif axes == list(range(2, len(x))) and (tuple(out) == tuple(x[:2]) or len(x) > 3 and (
            tuple(out) == tuple(x[:2]) + (1,) * (len(x) - 2))):  # as `tflite_ops` reads it
        spatial, channels = x[2:], x[1]
    else:
        return None
    return global_pool_hw(spatial), channels


def _scope(name):
    return name.rsplit("/", 1)[0] if "/" in name else name


def _prelu_calls(model, graph, captured, keras):
    """`{name scope: (layer name, elements, alpha size)}` of each call of a `PReLU` layer of
    `model` in `graph`: the scope of the op reading the layer's `alpha` (up to the segment named
    after the layer, `p1` or `p1_<n>`); elements: the largest per-image output in that scope."""
    alphas = {id(layer.alpha.value.handle): layer
              for layer in model._flatten_layers(include_self=False)
              if isinstance(layer, keras.layers.PReLU)
              and getattr(layer, "alpha", None) is not None}
    calls = {}
    for op in graph.get_operations():
        if op.type != "ReadVariableOp" or captured.get(id(op.inputs[0])) not in alphas:
            continue
        layer = alphas[captured[id(op.inputs[0])]]
        parts = op.name.split("/")[:-1]
        ends = [i for i, p in enumerate(parts, 1)
                if re.fullmatch(re.escape(layer.name) + r"(_\d+)?", p)]
        scope = "/".join(parts[:ends[-1]] if ends else parts)
        if scope:  # else its ops cannot be told from others: charged op by op, as before
            calls[scope] = (layer.name, 1, math.prod(layer.alpha.shape))
    for op in graph.get_operations():
        for scope, (name, elements, n_params) in calls.items():
            if op.name.startswith(scope + "/") and op.outputs and elements is not None:
                size = size_of(op.outputs[0])  # None where open beyond the batch
                calls[scope] = (name, None if size is None else max(elements, size), n_params)
    return calls


def _open(op):
    """Whether `op` is one the reader prices (a conv, a product, a pooling, a float op with a
    constant) with an open dimension beyond the batch axis in an input or output."""
    priced = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput", "Einsum", "MaxPool",
              "AvgPool", "LeakyRelu") + _MATMULS + tuple(_REDUCTIONS) + tuple(CONST_OPS)
    if op.type not in priced or not op.outputs or op.outputs[0].dtype.is_integer:
        return False
    return any(t.shape.rank is not None and None in t.shape.as_list()[1:]
               for t in list(op.inputs) + list(op.outputs))


def _dims(tensor):
    shape = tensor.shape
    if shape.rank is None:
        return ()
    return tuple(1 if d is None else int(d) for d in shape.as_list())
