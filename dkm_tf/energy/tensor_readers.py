"""Which ops read a tensor of a Keras graph, across nested models' boundaries.

`readers` (the nodes reading a tensor), `inside` (the tensor a nested Functional model's graph
reads as an input), `outside` (the call outputs a nested model's output tensor is, in the graph
calling it) and `conv_after` (the conv merging a pad, through what the converter removes) are
the walks of `following_folds`, kept here so that `pipeline_folds` uses them without an
import circle.
"""

from dkm_tf.energy.bn_folding import _calls, consumers, removed
from dkm_tf.energy.keras_calls import graph_ops
from dkm_tf.energy.keras_pipeline import pipeline_calls


def readers(t, keras):
    """The nodes reading KerasTensor `t` (any graph), or None where unknown."""
    try:
        producer = t._keras_history[0]
    except (AttributeError, TypeError, IndexError):
        return None
    return [n for n in getattr(producer, "_outbound_nodes", ()) if any(
        x is t for x in keras.tree.flatten(n.input_tensors))]


def inside(model, keras, at=0):
    """`(input tensor, counts)` of Functional `model`: the tensor its graph reads as input
    number `at`, and the readers of each tensor there (`bn_folding.consumers`), else None."""
    try:
        ins = keras.tree.flatten(model.inputs)
    except (AttributeError, ValueError, TypeError):  # subclassed: no graph
        return None
    if at >= len(ins):
        return None
    return ins[at], consumers(model, [(o, _calls(model, o)) for o in graph_ops(model)], keras)


def outside(t, outer):
    """`[(tensor, counts, outer)]` of the call's outputs that `t`, an output of the nested
    model `outer` describes (`keras_reader._walk`), is in the graph calling it: one per place
    of `t` among the model's outputs (before 2026-12-07 a tensor returned twice was not
    followed: a `Rescaling` returned twice, each read by a conv outside, was charged, 1.5304;
    `following_folds._all_take` leaves out a place nothing reads, which the converter
    prunes: 2.0609 where the second was unused), `[]` where `t` is not an output, None where
    a place has no call output."""
    if outer is None or len(outer) < 5:
        return []
    at = [i for i, y in enumerate(outer[4][0]) if y is t]
    if any(i >= len(outer[4][1]) for i in at):
        return None
    return [(outer[4][1][i], outer[2], outer[3]) for i in at]


def conv_after(t, counts, keras, depth=0, outer=None):
    """The one op reading tensor `t` (a pad's output) where it is a 2-D conv (`pad_merging`
    merges the pad into it), through ops the converter removes (`bn_folding.removed`), a
    nested model's boundary (the readers of its input inside; of its output outside,
    `outside`) and a `keras.layers.Pipeline`'s layers (its first one kept; a nested model
    there, the readers of its input inside), else None
    (before 2026-12-07 a scale before a pad was charged where a `Dropout` or a Pipeline was
    between the pad and the conv: Keras / file hierarchy 1.7879)."""
    nodes, outs = readers(t, keras), outside(t, outer)
    if nodes is None or outs is None or depth > 32:
        return None
    if ("live", id(t)) in counts:  # as `following_folds._all_take`
        nodes = [n for n in nodes if any(
            ("live", id(o)) in counts for o in keras.tree.flatten(n.outputs))]
    if counts.get(id(t), 0) != len(nodes) + len(outs):
        return None
    outs = [o for o in outs if o[1].get(id(o[0]), 0)]  # a place nothing reads: pruned
    if len(nodes) + len(outs) != 1:
        return None
    if outs:
        return conv_after(outs[0][0], outs[0][1], keras, depth + 1, outs[0][2])
    node = nodes[0]
    op, x = node.operation, keras.tree.flatten(node.input_tensors)
    if isinstance(op, keras.Model):
        found = inside(op, keras, [i for i, y in enumerate(x) if y is t][0])
        return None if found is None else conv_after(
            found[0], found[1], keras, depth + 1, (None, None, counts, outer, (
                keras.tree.flatten(op.outputs), keras.tree.flatten(node.outputs))))
    if len(x) != 1 or len(node.outputs) != 1:
        return None
    if type(op).__name__ in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
        return op
    if isinstance(op, keras.layers.Pipeline):
        subs, _ = pipeline_calls(op, (node.input_tensors, node.outputs))
        kept = [s for s, _ in subs if not removed(s, keras)]
        if kept and isinstance(kept[0], keras.Model):  # inlined: the readers inside
            found = inside(kept[0], keras)
            return None if found is None else conv_after(found[0], found[1], keras,
                                                         depth + 1)
        if kept or not subs:
            return kept[0] if kept and type(kept[0]).__name__ in (
                "Conv2D", "DepthwiseConv2D", "SeparableConv2D") else None
    elif not removed(op, keras):
        return None
    return conv_after(node.outputs[0], counts, keras, depth + 1, outer)
