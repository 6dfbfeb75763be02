"""Which inference batch norms a `.tflite` folds away, so the Keras reader leaves them out.

The TensorFlow Lite converter (TF 2.21) folds a `BatchNormalization` over the channel axis into
the conv or dense layer that produces its input when that layer is linear (no activation) and
its output feeds the batch norm only: Conv1D/2D, Depthwise/SeparableConv1D/2D,
Conv1D/2DTranspose (channels_last over the last axis; channels_first over axis 1, where the
converted graph's transposes put the channels last), and a Dense on a 2-D input (a Dense on an
N-D tensor is not folded), also where that layer ends a nested model (`source`: the converter
inlines it) or a `keras.layers.Pipeline` (its last layer kept: `source_at`; before
2026-12-07 a batch norm after `Pipeline([Conv2D(4, 3)])` was charged, Keras / file hierarchy
1.7956). Not after a `TimeDistributed` layer (unrolled per step, then a PACK) nor a
`Bidirectional` one. The traced-graph reader treats batch norms as fused too; the Keras reader
charges the others as a `.tflite` runs them, a MUL and an ADD (`keras_lowered`).
`tests/test_energy_activations.py` converts each case and checks which are folded.
"""

from dkm_tf.energy.activations import activation_name
from dkm_tf.energy.keras_calls import calls, graph_ops, node_inputs


def consumers(model, op_calls, keras):
    """Counts, per tensor `id`, the calls in `model`'s graph reading it (outputs count once).

    `op_calls`: `[(op, calls)]` of every op of the graph, `calls` as `keras_calls.calls`
    returns them (every call of a shared layer), or an exception where the op has none.
    """
    counts = {}
    for _, op_call_list in op_calls:
        if isinstance(op_call_list, Exception):
            continue
        for t in (t for ins, _ in op_call_list for t in keras.tree.flatten(ins)):
            counts[id(t)] = counts.get(id(t), 0) + 1
    for t in keras.tree.flatten(getattr(model, "outputs", None) or []):
        counts[id(t)] = counts.get(id(t), 0) + 1
    return counts


# Layers an inference `.tflite` does not run (the converter removes them).
INFERENCE_IDENTITIES = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                        "GaussianNoise", "GaussianDropout", "AlphaDropout",
                        "ActivityRegularization", "Identity")


def removed(op, keras, norms=True):
    """Whether `op` is removed by the converter: an inference identity (a dropout, ...), or
    a batch norm / `Rescaling` / `Normalization` of scale 1 and offset 0 (`norms=False`: not
    an identity `BatchNormalization` / `Normalization`, whose MUL by 1 and ADD of 0 the
    converter removes only after keeping a RELU of a RELU across them), or a
    `ReLU(negative_slope=1)` (`keras_lowered`), or an `x * 1`, `x / 1`, `x + 0`, `x - 0`
    (`identity_const`), or a Functional model of one input and one output all
    of whose ops are removed (a `Model(j, Dropout(0.2)(j))` in a `keras.layers.Pipeline`)."""
    from dkm_tf.energy.keras_lowered import affine_ops, relu_ops

    L = keras.layers
    if type(op).__name__ in INFERENCE_IDENTITIES or identity_const(op, keras):
        return True
    if isinstance(op, keras.Model):
        try:
            one = len(keras.tree.flatten(op.inputs)) == len(keras.tree.flatten(op.outputs)) == 1
        except (AttributeError, ValueError, TypeError):  # subclassed: no graph
            return False
        return one and all(removed(o, keras, norms) for o in graph_ops(op)
                           if type(o).__name__ != "InputLayer")
    if isinstance(op, (L.BatchNormalization, L.Normalization)) and not norms:
        return False
    if isinstance(op, (L.BatchNormalization, L.Rescaling, L.Normalization)):
        return not affine_ops(op, keras)
    return isinstance(op, (L.ReLU, L.LeakyReLU)) and float(getattr(op, "threshold", 0)) == 0 \
        and not relu_ops(op, keras)


def identity_const(op, keras):
    """Whether non-layer op `op` is an identity the converter (TF 2.21) drops in each of its
    calls: `x * 1` / `1 * x`, `x / 1`, `x + 0` / `0 + x`, `x - 0` by a constant of all ones
    / zeros that does not broadcast `x` to a bigger shape. Before 2026-12-07 the Keras reader
    charged it, and a ReLU after `tanh(conv) * 1.0` was listed as fused into it (Keras /
    file hierarchy 1.18), a batch norm after `conv * 1.0` not folded (2.73)."""
    import numpy as np

    cls = type(op).__name__
    nodes = getattr(op, "_inbound_nodes", None) or []
    if isinstance(op, keras.layers.Layer) or cls not in (
            "Add", "Subtract", "Multiply", "TrueDivide", "Divide") or not nodes:
        return False
    for node in nodes:
        args = list(node.arguments.args)
        if len(args) != 2 or len(node.input_tensors) != 1 or len(node.outputs) != 1:
            return False
        x = node.input_tensors[0]
        at = 0 if args[1] is x else 1
        if at == 0 and cls in ("Subtract", "TrueDivide", "Divide"):
            return False  # 0 - x, 1 / x
        try:
            value = np.asarray(keras.ops.convert_to_numpy(args[at]))
        except (TypeError, ValueError, AttributeError):
            return False
        one = cls in ("Multiply", "TrueDivide", "Divide")
        if value.dtype == object or not np.all(value == (1 if one else 0)) or \
                tuple(node.outputs[0].shape) != tuple(x.shape):
            return False
    return True


def source(x, counts, keras, outer=None):
    """The op whose output tensor `x` is, where `x` is read by one call only (`counts`), else
    None. Where `x` is the output of a nested Functional model, the op inside producing it when
    nothing else there reads it (recursively): the converter inlines a nested model, so a batch
    norm or a ReLU after one ending in a conv is folded into that conv (before 2026-12-07 the
    Keras reader charged them: Keras / file hierarchy 1.29). Ops the converter removes
    (`removed`: a `Dropout`, an identity batch norm, ...; also a nested model holding only
    such ops) are stepped over when read by one call only (before 2026-12-07 a batch norm
    after Conv -> Dropout was charged, 2.73; a ReLU after an identity batch norm was listed as
    fused into it, while the file keeps its RELU, 0.63). `outer`: `(inputs, call inputs,
    counts, outer)` of the model graph `x` is in, where it is nested: an input of that model
    read by one call there is followed to the tensor its call passes (the reader threads it
    in, `keras_reader._walk`: before 2026-12-07 a batch norm first in a nested model, reading
    its input, after an outer conv was charged, Keras / file hierarchy 2.07)."""
    found = source_at(x, counts, keras, outer)
    return None if found is None else found[0]


def source_at(x, counts, keras, outer=None, norms=True, any_readers=False):
    """As :func:`source`, `(op, its call's input tensors, counts, outer)`: the context of
    the op's own graph, for looking further up from its input. `norms`: whether an identity
    batch norm / `Normalization` is stepped over as removed (`removed`). `any_readers`: as if
    each tensor had one reader, at every level (a RELU of a RELU is dropped whatever else
    reads the first: `relu_fusion._merged`)."""
    try:
        producer, node, index = x._keras_history
    except (AttributeError, ValueError, TypeError):
        return None
    if not any_readers and counts.get(id(x), 0) != 1:
        return None
    if isinstance(producer, keras.Model):
        try:
            inner = keras.tree.flatten(producer.outputs)[index]
            inside = (keras.tree.flatten(producer.inputs),
                      node_inputs(producer, producer._inbound_nodes[node]), counts, outer)
        except (AttributeError, ValueError, IndexError, TypeError):
            return None
        walked = counts.get(("nested", id(x)))  # `keras_cse`'s where walked: a merged call's
        ops = [] if walked or any_readers else [(op, _calls(producer, op)) for op in
                                                 graph_ops(producer)]
        return source_at(inner, walked or ({} if any_readers else consumers(
            producer, ops, keras)), keras, inside, norms, any_readers)
    if type(producer).__name__ == "InputLayer" and outer is not None:
        at = [i for i, t in enumerate(outer[0]) if t is x]  # an input of a nested model
        if len(at) != 1 or at[0] >= len(outer[1]):
            return None
        return source_at(outer[1][at[0]], outer[2], keras, outer[3], norms, any_readers)
    try:
        ins = producer._inbound_nodes[node].input_tensors
    except (AttributeError, IndexError, TypeError):
        return producer, [], counts, outer
    if removed(producer, keras, norms):
        return source_at(ins[0], counts, keras, outer, norms, any_readers) if len(
            ins) == 1 else (producer, ins, counts, outer)
    if isinstance(producer, keras.layers.Pipeline):
        return _pipeline_last(producer, producer._inbound_nodes[node], counts, keras, outer,
                              index, norms, any_readers)
    return producer, ins, counts, outer


def _pipeline_last(layer, node, counts, keras, outer, index=0, norms=True, any_readers=False):
    """`source_at` of the output of `keras.layers.Pipeline` `layer` at `node`: its last layer
    the converter keeps (its own input tensor, without history, as the call's; the converter
    traces the Pipeline's layers into the graph), the Pipeline's input's where it keeps none,
    the Pipeline itself where its chain cannot be followed (before 2026-12-07 always the
    Pipeline: a ReLU after `Pipeline([Conv2D(4, 3)])` was charged, Keras / file hierarchy
    1.5297, a batch norm or `Rescaling(0.5)` after it not folded, 1.7956). A nested model is
    looked into with the counts of its walk there (`keras_cse`: a twin merged with a call
    outside has its readers; review R7: a backbone called directly and in a Pipeline, a batch
    norm after the Pipeline folded, 0.7533); a call merged with a twin has the twins' readers
    in `counts` (`pipeline_cse`). Before 2026-12-07 a layer also called outside the Pipeline
    kept the Pipeline as the source: a batch norm after `Pipeline([c])(tanh(x))` beside
    `c(sigmoid(x))` was charged, Keras / file hierarchy 2.0499. Where the walk of the
    Pipeline folded its last layer (a batch norm, a per-channel `Rescaling`) into the conv
    before it, the source is that conv (`counts[("source", id(output))]`, `pipeline_folds`;
    before 2026-12-07 a batch norm after `Pipeline([Conv2D(4, 3, "same"),
    BatchNormalization()])` or `Pipeline([Conv2D(4, 3, "same"), Rescaling(0.5)])` on
    `tanh(x)`, 8x8x3, was charged: Keras / file hierarchy 3.0998, paper 1.0686)."""
    from dkm_tf.energy.keras_pipeline import pipeline_calls

    subs, _ = pipeline_calls(layer, (node.input_tensors, node.outputs))
    kept = [(sub, ins) for sub, (ins, _) in subs if not removed(sub, keras, norms)]
    if kept and isinstance(kept[-1][0], keras.Model):  # inlined: the op ending it
        sub, ins = kept[-1]
        try:
            inner = keras.tree.flatten(sub.outputs)
            inside = (keras.tree.flatten(sub.inputs), list(ins), counts, outer)
        except (AttributeError, ValueError, TypeError):  # subclassed: no graph
            return sub, list(ins), counts, outer
        outs = keras.tree.flatten(node.outputs)  # output `index` of the Pipeline: of `sub`
        walked = counts.get(("nested", id(outs[index])))
        known = bool(walked) or any_readers  # `any_readers`: as if walked, every count one
        ops = [] if known else [(op, _calls(sub, op)) for op in graph_ops(sub)]
        found = source_at(inner[index], walked or ({} if any_readers else consumers(
            sub, ops, keras)), keras, inside, norms, any_readers) if len(inner) == len(
                outs) and (known or not sub._inbound_nodes) else None
        if found is None or not known and len(getattr(found[0], "_inbound_nodes", ())) > 1:
            return sub, list(ins), counts, outer  # not walked: the converter may merge a twin
        return found
    if kept:
        end = counts.get(("source", id(node.outputs[0])))  # `pipeline_folds.walk_pipeline`
        return (end[0], list(end[1])) + (counts, outer) if end else (
            kept[-1][0], list(kept[-1][1]), counts, outer)
    ins = keras.tree.flatten(node.input_tensors)
    return source_at(ins[0], counts, keras, outer, norms, any_readers) if subs and len(
        ins) == 1 else (layer, ins, counts, outer)


def _calls(model, op):
    try:
        return calls(model, op)
    except (AttributeError, ValueError) as e:
        return e


def folded_into(norm, counts, keras, x=None, outer=None):
    """The name of the layer batch norm `norm` is folded into at the call reading `x` (by
    default its first call's input), or `None`. `outer`: as for :func:`source`, where the
    call is in a nested model."""
    try:
        x = norm.input if x is None else x
    except (AttributeError, ValueError):
        return None
    producer = source(x, counts, keras, outer)
    if producer is None or not folds_after(producer, norm, len(x.shape), keras):
        return None
    return producer.name


def folds_after(producer, norm, rank, keras):
    """Whether the converter folds batch norm `norm`, reading a rank-``rank`` output of layer
    `producer` (and nothing else reading that output), into `producer`. Also used for the
    layers of a `keras.layers.Pipeline` (`keras_pipeline`), whose inner tensors have no
    Keras history."""
    L = keras.layers
    if isinstance(producer, (L.TimeDistributed, L.Bidirectional)):
        return False  # unrolled per step, then a PACK, then a MUL and an ADD
    inner = producer.layer if isinstance(producer, L.Wrapper) else producer
    convs = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
             L.SeparableConv2D, L.Conv1DTranspose, L.Conv2DTranspose)
    channel = rank - 1
    if any(int(d) != 1 for d in getattr(inner, "dilation_rate", None) or ()) and not \
            isinstance(inner, (L.SeparableConv1D, L.SeparableConv2D)):
        return False  # SPACE_TO_BATCH_ND / CONV / BATCH_TO_SPACE_ND, then a MUL (review R7)
    if isinstance(inner, convs):
        if getattr(inner, "data_format", "channels_last") == "channels_first":
            channel = 1  # the converter folds it there too (tests/test_layout16.py)
    elif not (isinstance(inner, L.Dense) and rank == 2):
        return False
    axis = norm.axis if isinstance(norm.axis, int) else (
        norm.axis[0] if len(norm.axis) == 1 else None)
    return activation_name(getattr(inner, "activation", None)) == "linear" and \
        axis is not None and axis % rank == channel
