"""Pads merged and scales folded across the layers of a `keras.layers.Pipeline`.

The converter sees a Pipeline's layers as ops of the graph (it traces the Pipeline's call),
so it merges a `ZeroPadding2D` into the conv after it (`pad_merging`) and folds a one-element
`Rescaling` into the conv / Dense after it (`following_folds`) as it does outside one: within
the Pipeline, across its boundary (an op before the Pipeline into its first layer, its last
layer into a conv after it), and over the layers it removes (`bn_folding.removed`). The
layers of a Pipeline are called on tensors without Keras history (`keras_pipeline`), which
the Functional rules cannot follow; before 2026-12-07 none of this was seen:
`Pipeline([ZeroPadding2D(1), Conv2D(4, 3)])` on 8x8x3 was charged on the padded input
(Keras / file hierarchy 1.1473), `Rescaling(1 / 255)` before `Pipeline([Dropout, Conv2D])`
charged as a MUL (2.0609). Measured on converted files (`tests/test_pipeline26.py`).
A nested Functional model in a Pipeline that is a chain of ops is looked into as if its ops
were the Pipeline's (`_model_chain`: the converter inlines it; 2.0609 before 2026-12-07);
another takes a scale where every reader of its input does (`_all_convs_take`).
A `Rescaling` in a Pipeline of which the converter folds only the ADD (a per-channel scale
with an offset before a valid conv) is charged its MUL.
"""

from dkm_tf.energy.bn_folding import folds_after, removed
from dkm_tf.energy.keras_pipeline import pipeline_calls, same_shape_reshape
from dkm_tf.energy.pad_merging import _same
from dkm_tf.energy.pipeline_cse import context, inner_gone, rows_of, walked_calls
from dkm_tf.energy.record_names import fresh
from dkm_tf.energy.scale_ops import affine_takes, scalar_ops
from dkm_tf.energy.scale_ops import scale_ops as _ops
from dkm_tf.energy.tensor_readers import conv_after, inside, readers


def _next(subs, j, keras):
    """The index of the first layer of `subs` from `j` on that the converter keeps."""
    while j < len(subs) and removed(subs[j][0], keras):
        j += 1
    return j


def _shape(tensors):
    return tuple((tensors[0] if isinstance(tensors, (list, tuple)) else tensors).shape)


def _chain_takes(subs, j, kind, value, end, keras, tail=None):
    """Whether the layers `subs[j:]` (`keras_pipeline.pipeline_calls`) take a MUL / ADD
    (`kind`) by `value` before them into a conv / Dense (`following_folds._takes`); `end()`:
    whether the Pipeline's readers take it, where every layer left is removed; `tail(pad,
    shape, kind, value)`: whether they merge a pad ending the Pipeline and take it."""
    j = _next(subs, j, keras)
    if j == len(subs):
        return end()
    sub, (ins, _) = subs[j]
    shape = _shape(ins)
    affine = affine_takes(sub, kind, value, shape)
    if affine is not None:
        return affine
    name = type(sub).__name__
    if name == "ZeroPadding2D" and kind == "mul" and value.size == 1:  # a conv right after
        k = _next(subs, j + 1, keras)  # merges it: the scale commutes with zeros
        if k == len(subs):
            return tail is not None and tail(sub, shape, kind, value)
        return _same(_amounts(sub), shape, subs[k][0]) and bool(
            affine_takes(subs[k][0], kind, value, shape))
    if isinstance(sub, keras.Model):  # inlined: its ops in their place
        inner = _model_chain(sub, keras)
        if inner is None:
            found = inside(sub, keras)
            return found is not None and _all_convs_take(*found, kind, value, keras)
        return _chain_takes(subs[:j] + inner + subs[j + 1:], j, kind, value, end, keras, tail)
    ops = _ops(sub, None, keras) if name == "Rescaling" else None
    return bool(ops) and all(_chain_takes(subs, j + 1, o, v, end, keras, tail)
                             for o, v in ops) and _chain_takes(subs, j + 1, kind, value, end,
                                                               keras, tail)


def _model_chain(model, keras):
    """`[(op, (inputs, outputs))]` of Functional `model`'s ops where each reads the one
    before it only (the first its one input; the last writes its one output), a Pipeline's
    or a nested chain's layers in their place, else None (the converter inlines a nested
    model: a scale before `Pipeline([Rescaling(0.5), <Model(Conv2D(4, 3))>])`'s model folds
    into its conv, charged before 2026-12-07, Keras / file hierarchy 2.0609)."""
    try:
        out = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError, TypeError):  # subclassed: no graph
        return None
    found = inside(model, keras) if len(out) == 1 and len(keras.tree.flatten(
        model.inputs)) == 1 else None
    if found is None:
        return None
    (t, counts), chain = found, []
    while t is not out[0] and len(chain) < 4096:
        nodes = readers(t, keras)
        if not nodes or len(nodes) != 1 or counts.get(id(t), 0) != 1:
            return None
        node = nodes[0]
        op, ins = node.operation, keras.tree.flatten(node.input_tensors)
        if len(ins) != 1 or len(node.outputs) != 1:
            return None
        more = pipeline_calls(op, (ins, list(node.outputs)))[0] if isinstance(
            op, keras.layers.Pipeline) else _model_chain(op, keras) if isinstance(
            op, keras.Model) else [(op, (ins, list(node.outputs)))]
        if not more:
            return None
        chain, t = chain + more, node.outputs[0]
    return chain if t is out[0] else None


def _all_convs_take(t, counts, kind, value, keras, depth=0):
    """Whether every op reading tensor `t` of a nested model's graph (`counts`: none an
    output), through ops the converter removes, is a conv / Dense taking a MUL / ADD by
    `value` (where the model is no chain: before 2026-12-07 `Pipeline([Rescaling(0.5),
    <Model: Add()([Conv2D(4, 3)(j), Conv2D(4, 3)(j)])>])` charged the MUL, Keras / file
    hierarchy 1.3796)."""
    nodes = readers(t, keras)
    if not nodes or counts.get(id(t), 0) != len(nodes) or depth > 32:
        return False
    for node in nodes:
        ins = keras.tree.flatten(node.input_tensors)
        if len(ins) != 1 or len(node.outputs) != 1:
            return False
        affine = affine_takes(node.operation, kind, value, tuple(ins[0].shape))
        if not (affine or (affine is None and removed(node.operation, keras) and not isinstance(
                node.operation, keras.Model) and _all_convs_take(
                node.outputs[0], counts, kind, value, keras, depth + 1))):
            return False
    return True


def _amounts(pad):
    if getattr(pad, "data_format", "") != "channels_last":
        return None
    return tuple(tuple(int(v) for v in p) for p in pad.padding)


def pipeline_takes(op, node, kind, value, end, keras, counts, outer=None):
    """Whether Pipeline `op` at `node` takes a MUL / ADD by `value` on its input into its
    layers (module docstring); `end()`: whether the readers of its output take it;
    `counts`: the readers of each tensor of the graph `node` is in (`_tail`: a pad ending
    the Pipeline merged into the conv after it, before 2026-12-07 a scale before
    `Pipeline([ZeroPadding2D(1)])` -> `Conv2D(4, 3)` was charged, 1.7879)."""
    call = (node.input_tensors, node.outputs)
    subs, _ = pipeline_calls(op, call)
    return bool(subs) and _chain_takes(subs, 0, kind, value, end, keras,
                                       _tail(call, counts, keras, outer))


def _back(subs, i, conv, keras):
    """`(pad, its input shape)` of a `ZeroPadding2D` of `subs` before layer `i`, over removed
    layers and one-element scales (`scale_ops.scalar_ops`), that conv `conv` merges;
    `(None, None)` where only such layers are before it; None otherwise."""
    for sub, (ins, _) in reversed(subs[:i]):
        if removed(sub, keras) or (type(sub).__name__ == "Rescaling" and scalar_ops(
                sub, None, keras)):
            continue
        shape = _shape(ins)
        if type(sub).__name__ == "ZeroPadding2D" and _same(_amounts(sub), shape, conv):
            return sub, shape
        return None
    return None, None


def walk_pipeline(layer, name, call, graph, keras, shapes, skipped, used, walk):
    """Reads one call `(inputs, outputs)` of Pipeline `layer` named `name`: each layer by
    `walk(sub, sub_name, sub_call, fused)` (`keras_reader._walk_call`), a batch norm folded
    (`keras_pipeline`), a ReLU fused, a one-element `Rescaling` the layers after it take
    left out, a conv reading a pad it merges given the pad's input (module docstring). The
    first layer the converter keeps reads the Pipeline's input tensor, the last one writes
    its output tensor (the Functional rules then follow the graph outside). `graph`:
    `(counts, outer, live)` of the graph the call is in; `shapes` / `skipped`: the records
    and `(name, reason)`s appended to (a `Rescaling`'s records trimmed to its MUL where its
    ADD is folded); `used`: the walks of each layer name (`keras_reader._walk`)."""
    from dkm_tf.energy.dense_copies import sloped_copy
    from dkm_tf.energy.keras_lowered import relu_ops
    from dkm_tf.energy.relu_fusion import NoMerge, leading_relu, relu_fused_after, relu_fused_into

    counts, outer, _ = graph
    subs, why = pipeline_calls(layer, call)  # its layers, at the shapes of their chain
    state = used.get(("keras_cse",), {})
    ctx = context(call, state.get("envs", {}).get(id(counts), {}))  # this call's
    rows = rows_of(layer, call, state, ctx)  # as `keras_cse` keyed them
    subs = [(s, c) for s, c, _ in rows] if rows and len(rows) == len(subs) else \
        walked_calls(layer, call, keras)  # the last kept writes the Pipeline's output
    kept, ends = [i for i, (s, _) in enumerate(subs) if not removed(s, keras)], {}
    for i, (sub, sub_call) in enumerate(subs):
        sub_name = fresh(used, sub.name)  # `name#2`, ... but no layer's name
        if (twin := inner_gone(used, sub, sub_call, ctx)) is not None:
            skipped.append((sub_name, twin))
            continue
        at = next((j for j in range(i - 1, -1, -1) if not removed(subs[j][0], keras) and not
                   same_shape_reshape(*subs[j])), None)  # over a Dropout, a same-shape
        prev = None if at is None else subs[at][0]  # reshape, ... the converter removes
        # (`bn_folding`): a ReLU after `Reshape((8,))` beside a sigmoid on a Dense is its
        # copy (0.5842 before 2026-12-07)
        if prev is None:  # only removed layers before: it reads the Pipeline's input
            sub_call = (subs[0][1][0][:1] + list(sub_call[0][1:]), sub_call[1])  # its mask
        elif counts.get(id(subs[at][1][1][0]), 1) != 1:  # merged with a twin (`pipeline_cse`)
            prev = None  # its output read elsewhere: nothing folded / fused into it
        into = pipeline_fold(sub, prev, sub_call, keras) or scale_fold(sub, prev, sub_call,
                                                                       keras)
        if into is not None:
            skipped.append((sub_name, f"folded into {into} (as a .tflite folds it)"))
            ends[i] = ends.get(at, (subs[at][0], subs[at][1][0]))  # `bn_folding.source_at`
            if i == kept[-1]:
                counts[("source", id(subs[i][1][1][0]))] = ends[i]
            continue
        ends[i] = (sub, sub_call[0])
        kept_at = next((j for j in range(i - 1, -1, -1) if not removed(
            subs[j][0], keras, norms=False) and not same_shape_reshape(*subs[j])), None)
        into = relu_fused_after(sub, prev, keras, None if kept_at is None else subs[kept_at][0])
        if prev is None and kept_at is not None and leading_relu(sub, keras):
            # an identity batch norm first: the RELU is not merged into a RELU outside
            # (`Pipeline([BatchNormalization(epsilon=0.0), ReLU()])` after a relu conv:
            # Keras / file hierarchy 0.7167 before 2026-12-07), only fused into an op or
            sub_call = NoMerge(sub_call)  # a copy of a Dense (`dense_copies`: 0.7343)
            into = relu_fused_into(sub, sub_call, counts, keras, outer)
        src = None if prev is None else ends.get(at, (prev, subs[at][1][0]))  # the Dense a
        if into is None and src is not None and (copy := sloped_copy(  # batch norm folded
                sub, src[0], (src[1], subs[at][1][1]), keras)) is not None:  # into (0.6649)
            walk(src[0], sub_name, copy, None)  # its RELU's FULLY_CONNECTED (`dense_copies`)
            into = f"a copy of {src[0].name}"
        if into is not None and len(relu_ops(sub, keras)) == 1:
            skipped.append((sub_name, f"fused into {into} (as a .tflite fuses it)"))
            continue
        folded = _folded(subs, i, keras, _tail(call, counts, keras, outer)) if kept and \
            i != kept[-1] else []
        taker = first_taker(subs, i + 1, keras) or f"the conv after {name}"
        if folded and folded[0] is None:  # all of its ops
            skipped.append((sub_name, f"folded into {taker} (as a .tflite folds it)"))
            continue
        found = _back(subs, i, sub, keras) if type(sub).__name__ in (
            "Conv2D", "DepthwiseConv2D", "SeparableConv2D") else None
        if found is not None and found[0] is not None:
            skipped.append((sub_name, f"reads the input of {found[0].name}, its padding "
                            'merged into the conv (as a .tflite runs it, padding="same")'))
            sub_call = ([keras.KerasTensor(found[1])], sub_call[1])
        elif found is not None:  # a pad before the Pipeline (`pad_merging.unpadded`)
            sub_call = (subs[0][1][0][:1], sub_call[1])
        start = len(shapes)
        walk(sub, sub_name, sub_call, into)
        if folded and len(shapes) - start == len(folded) + 1:  # a MUL kept, its ADD folded
            del shapes[start + 1:]
            skipped.append((sub_name, f"its ADD folded into {taker} (as a .tflite folds it)"))
    skipped.extend([(name, why)] if why else [])


def _folded(subs, i, keras, tail):
    """`[None]` where every op of layer `subs[i]`, a `Rescaling`, is taken by the layers after
    it in the Pipeline (`end` is False: a later layer is kept), or by a conv after the
    Pipeline merging a pad ending it (`tail`, `_tail`); `["add"]` where its ADD is taken
    and its MUL is not (`following_folds.kept_ops`: the ADD folds first; before 2026-12-07
    `Pipeline([Rescaling([0.5, 0.2, 0.1], 0.1), Conv2D(4, 3)])` charged both, Keras / file
    hierarchy 1.5141); else `[]`."""
    ops = _ops(subs[i][0], None, keras) if type(subs[i][0]).__name__ == "Rescaling" else None
    taken = [_chain_takes(subs, i + 1, o, v, lambda: False, keras, tail) for o, v in ops or ()]
    if taken and all(taken):
        return [None]
    return ["add"] if len(taken) == 2 and taken[1] and ops[1][0] == "add" else []


def _tail(call, counts, keras, outer=None):
    """`_chain_takes`' `tail` for Pipeline call `call` (`(inputs, outputs)`) in a graph of
    `counts` (`bn_folding.consumers`; `outer`: as `bn_folding.source`, where it is nested):
    whether the one conv reading its output (`tensor_readers.conv_after`: through removed
    layers, Pipelines, nested models' boundaries) merges the pad ending it
    (`pad_merging.pipeline_padded`) and takes the scale (before 2026-12-07
    `Pipeline([Rescaling(0.5), ZeroPadding2D(1)])` -> `Conv2D(4, 3)` charged the MUL,
    Keras / file hierarchy 1.7879; with a `Dropout` or a Pipeline between, or the
    Pipeline's output returned by a nested model, also 1.7879)."""
    out = keras.tree.flatten(call[1])

    def taken(pad, shape, kind, value):
        conv = conv_after(out[0], counts, keras, 0, outer) if len(out) == 1 else None
        return conv is not None and _same(_amounts(pad), shape, conv) and bool(
            affine_takes(conv, kind, value, shape))
    return taken


def pipeline_fold(sub, prev, sub_call, keras):
    """The name of the Pipeline layer ``prev`` that the batch norm ``sub`` (the next layer,
    called as ``sub_call``) is folded into, else None."""
    if prev is None or not isinstance(sub, keras.layers.BatchNormalization):
        return None
    return prev.name if folds_after(prev, sub, len(sub_call[0][0].shape), keras) else None


def first_taker(subs, i, keras):
    """The name of the first conv / Dense of `subs[i:]` over layers the converter removes,
    `Rescaling`s and pads (the layer a scale before them folds into), else None."""
    for k, (sub, _) in enumerate(subs[i:], i):
        if type(sub).__name__ in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
            return sub.name
        if isinstance(sub, keras.Model) and not removed(sub, keras):  # its ops in place
            inner = _model_chain(sub, keras)
            return None if inner is None else first_taker(inner + subs[k + 1:], 0, keras)
        if not (removed(sub, keras) or type(sub).__name__ in ("Rescaling", "ZeroPadding2D")):
            return None
    return None


def pipeline_taker(op, node, keras):
    """`first_taker` of Pipeline `op`'s layers at `node` (`following_folds` names it)."""
    subs, _ = pipeline_calls(op, (node.input_tensors, node.outputs))
    return first_taker(subs, 0, keras)


def scale_fold(sub, prev, sub_call, keras):
    """The name of the layer `prev` before `Rescaling` `sub` in a Pipeline into which the
    converter folds it as it folds a batch norm (`keras_consts.fold_of`: a per-channel scale
    and offset after a linear conv / Dense; before 2026-12-07 charged in a Pipeline,
    `Pipeline([Conv2D(4, 3), Rescaling(0.5)])` Keras / file hierarchy 1.7956), else None."""
    from dkm_tf.energy.keras_consts import _LastAxis, _per_channel

    if prev is None or not isinstance(sub, keras.layers.Rescaling) or not (
            _per_channel(sub.scale) and _per_channel(sub.offset)):
        return None
    return prev.name if folds_after(prev, _LastAxis, len(_shape(sub_call[0])), keras) else None
