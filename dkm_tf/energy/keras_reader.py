"""Reads `LayerShape` records from a built Keras 3 model (Keras is imported lazily).

Sequential and Functional models are read layer by layer from their recorded input and
output shapes (per image: the batch axis is ignored). Nested models are read recursively, in
the context of their call (`bn_folding.source`); calls no output uses are left (`keras_live`).
A layer wrapped by a `keras.layers.Wrapper` (e.g. a clustering wrapper or TimeDistributed) is
classified by its inner layer, with the wrapper's input and output shapes (a TimeDistributed
layer then cut into steps, a TimeDistributed model, a Lambda of Keras ops: `keras_wrapped`).
Subclassed models have no recorded per-layer shapes; with `input_shape` they are traced
(`graph_reader`; a clustering wrapper read as its layer: `traced_wrappers`), else a
`ValueError` asks for one; one nested in a Functional model is traced at its call's shape.

Fused activations (`Conv2D(activation="relu")`), biases, batch norms and constant scalings
folded into the linear conv or dense layer before them (`bn_folding`, `keras_consts`) are not
charged (`ops.matmul` / `einsum` / `mean`: `keras_products`), nor is a ReLU layer the
converter fuses into the op before it (`relu_fusion`); other activations (of a layer
or an `Activation` layer) and `LayerNormalization` are charged as the priced element-wise ops
a `.tflite` runs them as (`activations`), as are merges of n inputs (n - 1 ops), ReLU layers,
batch norms and `Rescaling` (`keras_lowered`); a `PReLU` is one "affine" record
(`shapes.prelu_shape`); a conv after a zero pad the converter merges into it reads the pad's
input (`pad_merging`). Conv1D/2DTranspose layers are the matrix product of `conv_transpose`
(in_h·in_w·in_c·kh·kw·out_c MACs); an Embedding is a table lookup (`skipped`, no MACs).
Recurrent (SimpleRNN, LSTM, GRU, RNN, Bidirectional) and attention (MultiHeadAttention,
EinsumDense) layers by `sequence_reader`; Attention, Softmax and 3-D pooling by `keras_more`;
a `keras.layers.Pipeline`'s layers as if called in turn (`keras_pipeline`, `pipeline_folds`).
A layer called more than once is read once per call (`keras_calls`), at its shapes, the later
calls' records named `name#2`, ... (no layer's name: `record_names`), `layer` the layer's name
(for compression info). A nested model is read at its own graph's shapes (called at others:
`skipped`), its records tagged with its call (`LayerShape.within`, `EnergyReport.layer`).
"""

import math

from dkm_tf.energy.activations import activation_name, activation_records, layer_norm_records
from dkm_tf.energy.attention_mask import mask_records
from dkm_tf.energy.bn_folding import removed
from dkm_tf.energy.dense_copies import dense_copy, fused_records, unread  # Dense + ReLU
from dkm_tf.energy.following_folds import drop_folded
from dkm_tf.energy.keras_calls import call_names, calls, graph_ops
from dkm_tf.energy.keras_consts import fold_of  # a batch norm, a constant op
from dkm_tf.energy.keras_cse import apart, left_out  # calls pruned or computed once
from dkm_tf.energy.keras_factorised import factorised_records
from dkm_tf.energy.keras_live import live_tensors, walked_outputs
from dkm_tf.energy.keras_lowered import file_batch, lowered_records, recurrent, relu_ops
from dkm_tf.energy.keras_more import classify_more, embedding_reason, nested_subclassed
from dkm_tf.energy.keras_ops import classify_op
from dkm_tf.energy.keras_wrapped import (
    has_inputs,
    lambda_model,
    lambda_records,
    layer_alias,
    step_records,
    unwrapped,
    wrapped_graph,
)
from dkm_tf.energy.open_shapes import filled  # an EinsumDense(output_shape=(None, n))
from dkm_tf.energy.pad_merging import unpadded
from dkm_tf.energy.pipeline_folds import walk_pipeline
from dkm_tf.energy.record_names import fresh, reserve, tag_within
from dkm_tf.energy.relu_fusion import relu_fused_into

_NO_COMPUTE = ("InputLayer", "Flatten", "Reshape", "Dropout", "SpatialDropout1D",
               "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
               "AlphaDropout", "Permute", "Concatenate", "ZeroPadding1D", "ZeroPadding2D",
               "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "Identity",
               "ActivityRegularization", "RepeatVector", "UpSampling1D", "UpSampling2D",
               "UpSampling3D")


class InputShapeError(ValueError):
    """`input_shape` is missing where the layer shapes need it, or differs from the input
    size the model fixes (then ``fixed`` is that size): ``why`` says which, without the
    advice, so that the ``dkm-tf energy`` command can name its --input_shape flag instead."""

    def __init__(self, message, why, fixed=None):
        super().__init__(message)
        self.why, self.fixed = why, fixed


def read_keras_model(model, *, input_shape=None):
    """Reads per-layer shapes of a built Keras model.

    Args:
        model: A `keras.Model`.
        input_shape: Input shape without the batch axis. Required for subclassed models and
            models with dynamic (None) spatial dimensions; builds an unbuilt Sequential; must
            be the model's own where it fixes its one input's size.

    Returns:
        `(shapes, skipped)`: a tuple of `LayerShape` and a tuple of `(name, reason)`.

    Raises:
        TypeError: If `model` is not a keras.Model.
        InputShapeError: A ValueError: shapes cannot be determined and `input_shape` is
            missing, or it differs from the input size the model fixes.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value for argument `model_or_path`. Expected a keras.Model, a model "
            f"file path or a list of LayerShape. Received: {type(model).__name__}"
        )
    graph_model = isinstance(model, keras.Sequential) or has_inputs(model)
    if isinstance(model, keras.Sequential) and not has_inputs(model):
        if input_shape is None:
            why = f"Sequential model {model.name!r} is not built, so its layer shapes are unknown"
            raise InputShapeError(f"{why}. Pass input_shape=(...) (without the batch axis) or "
                                  "build the model.", why)
        model.build((None,) + tuple(input_shape))
    if not graph_model or (input_shape is not None and _has_dynamic_input(model)):
        if input_shape is None:
            why = (f"model {model.name!r} ({type(model).__name__}) is subclassed: it does not "
                   "record its layers' input and output shapes")
            raise InputShapeError(
                f"Cannot read layer shapes of model {model.name!r} ({type(model).__name__}): "
                "subclassed models do not record their layers' input and output shapes. Pass "
                "input_shape=(...) (without the batch axis) to trace the model with "
                "TensorFlow.", why)
        from dkm_tf.energy.traced_wrappers import read_traced

        return read_traced(model, input_shape)
    if _has_dynamic_input(model):
        dims = f"has dynamic input dimensions {[tuple(t.shape) for t in model.inputs]}"
        raise InputShapeError(f"Model {model.name!r} {dims}. Pass input_shape=(...) (without "
                              "the batch axis) to fix them.", f"model {model.name!r} {dims}")
    _check_fixed_size(model, input_shape)
    shapes, skipped = [], []
    with filled(model, keras, skipped), file_batch(recurrent(model, keras)):
        _walk(model, keras, shapes, skipped)
    return tuple(shapes), tuple(skipped)


def _check_fixed_size(model, input_shape):
    """`input_shape` given for a model that fixes its (one) input size must be that size:
    the layer shapes read are the model's, whatever `input_shape` says."""
    if input_shape is None or len(model.inputs) != 1:
        return
    fixed = tuple(model.inputs[0].shape)[1:]
    if (tuple(input_shape) if isinstance(input_shape, (list, tuple)) else input_shape) != fixed:
        why = f"model {model.name!r} fixes its input size at {fixed}"
        raise InputShapeError(
            f"Invalid value for argument `input_shape`. Expected None or {fixed}: {why}. "
            f"Received: input_shape={input_shape!r}", why, fixed)


def _has_dynamic_input(model):
    try:
        return any(d is None for t in model.inputs for d in tuple(t.shape)[1:])
    except (AttributeError, ValueError):
        return False


def _walk(model, keras, shapes, skipped, used=None, outer=None, outs=None):
    """Appends the records of every call of every op in `model`'s graph (`keras_calls`): a
    shared layer once per call, the second and later named `name#2`, ... (`used` counts the
    walks of each name), with the same `layer` field so that compression info matches; not a
    call whose result reaches no output (`keras_live`: the converter prunes it), nor one that
    computes what an earlier call does (`keras_cse`: the converter computes it once). `outer`:
    where `model` is nested, its inputs, its call's inputs, the counts and `outer` of the
    graph calling it (`bn_folding.source`); `outs`: the indices of its outputs used there."""
    own, used = used is None, reserve(model) if used is None else used  # names: `fresh`
    op_calls = [(layer, _calls(model, layer)) for layer in graph_ops(model)]
    live, everything = live_tensors(model, keras, outs), live_tensors(model, keras, prune=False)
    gone, counts = left_out(model, op_calls, (live, everything), used, keras, outer)
    for layer, layer_calls in op_calls:
        for call in (layer_calls if isinstance(layer_calls, list) else [layer_calls]):
            name = fresh(used, layer.name, own)  # `name#2`, ... but no layer's name
            if not isinstance(call, Exception) and id(call) in gone:
                skipped.append((name, gone[id(call)]))
                continue
            _walk_call(layer, name, call, (counts, outer, live), keras, shapes, skipped, used)


def _calls(model, layer):
    """`keras_calls.calls`, or the exception saying the layer has no recorded call."""
    try:
        return calls(model, layer)
    except (AttributeError, ValueError) as e:
        return e


def _walk_call(layer, name, call, graph, keras, shapes, skipped, used, fused=None):
    """Appends the records of one call `(inputs, outputs)` of `layer`, named `name`; `graph`:
    `(counts, outer, live)` of the graph it is in (`_walk`); `fused`: the layer a Pipeline's
    ReLU `layer` has its first RELU fused into (`relu_fused_after`)."""
    counts, outer, live = graph
    if (sub := lambda_model(layer, call, keras)) is not None:  # `keras_wrapped`: its graph
        return lambda_records(sub, layer, name, shapes, skipped, lambda s, k: _walk_call(
            sub, name, call, graph, keras, s, k, {}))
    if isinstance(layer, keras.Model):
        if not has_inputs(layer):  # traced at its call's input shape
            records, why = nested_subclassed(layer, name, call, used)
            shapes.extend(records)
            skipped.extend(why)
            return
        if not isinstance(call, Exception):
            own, got = _shapes_of(layer.inputs), _shapes_of(call[0])
            if [s[1:] for s in own] != [s[1:] for s in got]:
                skipped.append((name, f"nested model called with input shapes {got}: read at "
                                f"the shapes of its own graph, {own}"))
        inside = None if isinstance(call, Exception) else (
            keras.tree.flatten(layer.inputs), list(call[0]), counts, outer,
            (keras.tree.flatten(layer.outputs), list(call[1])))  # `following_folds`
        tag_within(shapes, name, lambda: _walk(layer, keras, shapes, skipped, used, inside,
                   None if isinstance(call, Exception) else walked_outputs(call, live)))
        return  # all outputs if not of the graph; its records tagged (`report.layer(name)`)
    if wrapped_graph(layer, name, call, used, keras, apart(lambda m, u: _walk(  # TimeDistributed
            m, keras, shapes, skipped, u)), skipped, shapes):  # of a model: step by step
        return
    if isinstance(layer, keras.layers.Pipeline) and not isinstance(call, Exception):
        walk_pipeline(layer, name, call, graph, keras, shapes, skipped, used,
                      lambda *a: _walk_call(*a[:3], graph, keras, shapes, skipped, used, a[3]))
        return
    inner = unwrapped(layer, keras)  # TimeDistributed(TimeDistributed(x)): x
    if type(inner).__name__ in _NO_COMPUTE:
        skipped.append((name, "no compute"))
        return
    if isinstance(call, Exception):
        skipped.append((name, f"no recorded input/output shape ({call})"))
        return
    if not isinstance(inner, keras.layers.Layer) and removed(inner, keras):
        skipped.append((name, "an identity (x * 1, x + 0) the converter removes, not charged"))
        return
    into = fold_of(inner, call, counts, keras, outer)
    why = None if into is None else f"folded into {into} (as a .tflite folds it)"
    if (why := why or unread(inner, call, counts, keras, used)) is not None:
        skipped.append((name, why))
        return
    fused = relu_fused_into(inner, call, counts, keras, outer) if fused is None else fused
    if fused is None and (copy := dense_copy(inner, call, counts, keras, used,
                                                 outer)) is not None:
        if copy[2]:  # the first ReLU of its kind there: its FULLY_CONNECTED
            _walk_call(copy[0], name, copy[1], copy[3] + graph[2:], keras, shapes, skipped,
                       used)
        fused = f"a copy of {copy[0].name}"
    if fused is not None and len(relu_ops(inner, keras)) == 1:
        skipped.append((name, f"fused into {fused} (as a .tflite fuses it)"))
        return
    try:
        in_shapes, why = unpadded(inner, call, keras, outer) or (_shapes_of(call[0]), None)
        skipped.extend([(name, why)] if why else [])  # a ZeroPadding2D merged into it
        out_shape = tuple(_shapes_of(call[1])[0])
    except (AttributeError, ValueError, IndexError) as e:
        skipped.append((name, f"no recorded input/output shape ({e})"))
        return
    alias = layer_alias(layer, inner, keras)  # the wrapped layer's name, for compression info
    try:
        if isinstance(inner, keras.layers.Layer):
            records, reason = _classify(inner, name, alias, in_shapes, out_shape, keras,
                                        len(_shapes_of(call[1])))
        else:
            records, reason = classify_op(inner, in_shapes, out_shape, call)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Could not read layer {layer.name!r} ({type(inner).__name__}) with input "
            f"shapes {in_shapes} and output shape {out_shape}: {e}"
        ) from e
    records, why = drop_folded(inner, call, counts, records, keras, outer)  # into a conv
    skipped.extend([(name, why)] if why else [])
    if fused is not None:  # a capped ReLU: its first RELU fused, its MINIMUM and RELU run
        records = fused_records(inner, records, keras)  # (of a sloped ReLU the second)
        skipped.append((name, f"its first RELU fused into {fused} (as a .tflite fuses it)"))
    if records:  # an Attention call's scores mask (causal / mask=): its ADD
        records = records + mask_records(inner, alias, call, keras, used, outer)
    if name != layer.name:
        records = call_names(records, name, (layer.name, alias))
    act = _own_activation(inner, keras)
    if records and act not in (None, "linear"):
        extra, why = activation_records(f"{name}/{act}", act, math.prod(out_shape[1:]),
                                         layer=alias, op=type(inner).__name__)
        records = records + extra  # cut into steps with its layer's records
        skipped.extend([(name, why)] if why else [])
    shapes.extend(step_records(layer, name, call, records, used, keras))  # per step
    if reason:
        skipped.append((name, reason))


def _shapes_of(tensors):
    if not isinstance(tensors, (list, tuple)):
        tensors = [tensors]
    return [tuple(t.shape) for t in tensors]


def _classify(layer, name, alias, in_shapes, out_shape, keras, n_outputs=1):
    """Returns `(records, skip_reason)` for one layer."""
    from dkm_tf.energy import shapes as sh

    L = keras.layers
    cls = type(layer).__name__
    in_shape = tuple(in_shapes[0])
    if any(d is None for d in in_shape[1:] + out_shape[1:]):
        return [], f"unknown dimension in shapes {in_shape} -> {out_shape}"
    common = {"layer": alias, "op": cls}
    if cls == "FactorisedConv2D":
        return factorised_records(layer, name, in_shape, out_shape, common), None
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D,
                          L.SeparableConv1D, L.SeparableConv2D)):
        rank = 1 if isinstance(layer, (L.Conv1D, L.DepthwiseConv1D, L.SeparableConv1D)) else 2
        first = getattr(layer, "data_format", "channels_last") == "channels_first"
        (ihw, ic, rep), (ohw, oc, _) = (_spatial(in_shape, rank, first),
                                        _spatial(out_shape, rank, first))
        kernel, strides = _hw(layer.kernel_size, rank), _hw(layer.strides, rank)
        if isinstance(layer, (L.Conv1D, L.Conv2D)):
            return [sh.conv_shape(name, in_hw=ihw, in_c=ic, out_hw=ohw, out_c=oc, kernel=kernel,
                                  strides=strides, groups=layer.groups, repeat=rep,
                                  **common)], None
        mid = ic * layer.depth_multiplier
        dw_name = name if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)) \
            else f"{name}/depthwise"
        dw = sh.conv_shape(dw_name, in_hw=ihw, in_c=ic, out_hw=ohw, out_c=mid, kernel=kernel,
                           strides=strides, groups=ic, repeat=rep, **common)
        if dw_name == name:
            return [dw], None
        pw = sh.conv_shape(f"{name}/pointwise", in_hw=ohw, in_c=mid, out_hw=ohw, out_c=oc,
                           kernel=1, repeat=rep, **common)
        return [dw, pw], None
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose)):
        from dkm_tf.energy.conv_transpose import conv_transpose_shape

        rank = 1 if isinstance(layer, L.Conv1DTranspose) else 2
        first = getattr(layer, "data_format", "channels_last") == "channels_first"
        ihw, ic, rep = _spatial(in_shape, rank, first)
        oc = _spatial(out_shape, rank, first)[1]
        return [conv_transpose_shape(name, in_hw=ihw, in_c=ic, out_c=oc,
                                     kernel=_hw(layer.kernel_size, rank), repeat=rep,
                                     **common)], None
    if isinstance(layer, L.Embedding):
        return [], embedding_reason(layer, in_shape, out_shape)
    from dkm_tf.energy.sequence_reader import classify_sequence_layer

    sequence = classify_sequence_layer(layer, alias, in_shapes, out_shape, keras, n_outputs)
    if sequence is not None:
        return sequence
    if isinstance(layer, L.Dense):
        return [sh.dense_shape(name, in_features=in_shape[-1], units=out_shape[-1],
                               positions=math.prod(in_shape[1:-1]), **common)], None
    pools = {L.MaxPooling1D: ("max", 1), L.MaxPooling2D: ("max", 2),
             L.AveragePooling1D: ("avg", 1), L.AveragePooling2D: ("avg", 2),
             L.GlobalMaxPooling1D: ("max", -1), L.GlobalMaxPooling2D: ("max", -2),
             L.GlobalAveragePooling1D: ("avg", -1), L.GlobalAveragePooling2D: ("avg", -2)}
    for klass, (op, rank) in pools.items():
        if isinstance(layer, klass):
            first = getattr(layer, "data_format", "channels_last") == "channels_first"
            ihw, ic, rep = _spatial(in_shape, abs(rank), first)
            if rank < 0:
                ohw, window, strides = (1, 1), ihw, ihw
            else:
                ohw = _spatial(out_shape, rank, first)[0]
                window, strides = _hw(layer.pool_size, rank), _hw(layer.strides, rank)
            return [sh.pool_shape(name, in_hw=ihw, channels=ic, out_hw=ohw, window=window,
                                  strides=strides, pool_op=op, repeat=rep, **common)], None
    elements = math.prod(out_shape[1:])
    lowered = lowered_records(layer, name, in_shapes, elements, common, keras)
    if lowered is not None:  # merges, ReLUs, batch norms, Rescaling: their converted ops
        return lowered
    if isinstance(layer, L.PReLU):
        return [sh.prelu_shape(name, elements=elements, n_params=math.prod(layer.alpha.shape),
                               **common)], None
    if isinstance(layer, L.Activation):
        act = activation_name(layer.activation)
        return activation_records(name, act, elements, **common) if act != "linear" \
            else ([], "no compute")
    if isinstance(layer, L.LayerNormalization) or cls == "RMSNormalization":
        return layer_norm_records(layer, name, in_shape, common=common), None
    more = classify_more(layer, name, in_shapes, out_shape, keras, common)
    if more is not None:
        return more
    return [], (f"unsupported layer type {cls}; supported: Conv1D/2D (grouped), Conv1D/2D"
                "Transpose, Depthwise/SeparableConv1D/2D, Dense, EinsumDense, (Additive)"
                "Attention, MultiHeadAttention, GroupQueryAttention, SimpleRNN/LSTM/GRU/RNN/"
                "Bidirectional, pooling 1-D to 3-D, merge, Dot, activations, Softmax, PReLU, "
                "Pipeline, Batch/Layer/RMS/Group/UnitNormalization")


def _own_activation(layer, keras):
    """The name of a conv / dense layer's own `activation` (`None` for other layers)."""
    L = keras.layers
    kinds = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
             L.SeparableConv2D, L.Conv1DTranspose, L.Conv2DTranspose, L.Dense, L.EinsumDense)
    if not isinstance(layer, kinds) and type(layer).__name__ != "FactorisedConv2D":
        return None
    return activation_name(getattr(layer, "activation", None))


def _spatial(shape, rank, channels_first):
    """Splits `(batch, *lead, *spatial, C)` into `((h, w), C, prod(lead))`."""
    dims = list(shape[1:])
    if channels_first:
        lead, c, spatial = dims[:-rank - 1], dims[-rank - 1], dims[-rank:]
    else:
        lead, spatial, c = dims[:-rank - 1], dims[-rank - 1:-1], dims[-1]
    hw = (1, spatial[0]) if rank == 1 else (spatial[0], spatial[1])
    return hw, int(c), int(math.prod(lead))


def _hw(value, rank):
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank
    return (1, value[0]) if rank == 1 else (value[0], value[1])
