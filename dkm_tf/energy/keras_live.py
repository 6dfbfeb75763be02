"""Which calls of a Keras model's graph reach an output, as the converter keeps them.

The TensorFlow Lite converter (TF 2.21) inlines nested models and prunes every op whose
result no model output uses: a conv feeding only an input of a nested model that the nested
model never reads, or only an output of a nested model that the outer model never reads.
Keras' own graph keeps such an op (the nested model's call reads it), and before 2026-12-07
the Keras reader charged it (such a conv beside one used conv: Keras / file hierarchy 1.62,
paper 1.90; `tests/test_energynest26.py`). `live_tensors` follows a model's graph back from
the outputs that are used, through each nested model's call at the outputs of it that are
used; the reader leaves out a call none of whose outputs is live (`keras_reader._walk`).

Kept whatever reads them (`_kept`), with what feeds them: a recurrent layer that is not
unrolled (`unroll=False`, also in a `Bidirectional`): the file keeps its WHILE loop (before
2026-12-07 such an LSTM on an unused nested output was left out, Keras / file hierarchy
0.08); and a layer of a class neither Keras' nor dkm_tf's (a custom layer may update a
variable, which the file keeps: 0.96), charged or listed as before. A nested model holding
such a call is kept at the inputs that feed it.
"""

from dkm_tf.energy.keras_calls import node_inputs
from dkm_tf.energy.keras_wrapped import lambda_model


def dead(call, live, everything):
    """Whether `call` (`(inputs, outputs)`) is of the graph (an output in `everything`, the
    tensors `live_tensors(..., prune=False)` finds), reaches none of its used outputs and is
    not kept (`_kept`)."""
    return any(id(t) in everything for t in call[1]) and not live_outputs(call, live) and \
        not any(("kept", id(t)) in live for t in call[1])


def walked_outputs(call, live):
    """The outputs of a nested model's `call` to walk it at: those `live_outputs`, none
    (`set()`) where it is kept only for a call in it (`_kept`), all (None) where the call is
    not of the graph (read from the layer's first call elsewhere)."""
    outs = live_outputs(call, live)
    return outs if outs or any(("kept", id(t)) in live for t in call[1]) else None


def _kept(op, keras):
    """Whether a call of `op` stays whatever reads its result (module docstring)."""
    L, known = keras.layers, ("keras.", "dkm_tf.")
    while isinstance(op, (L.Wrapper, L.Bidirectional)) and \
            type(op).__module__.startswith(known):
        op = getattr(op, "forward_layer", None) or getattr(op, "layer", None)  # Bidirectional,
        if op is None:  # TimeDistributed, a clustering wrapper: as its layer
            return False
    if isinstance(op, L.RNN):
        return not op.unroll
    return not type(op).__module__.startswith(known)


def _nodes(model, keras):
    """`(op, node)` of every call of `model`'s own graph that reaches one of its outputs."""
    stack, seen, found = list(keras.tree.flatten(model.outputs)), set(), []
    while stack:
        try:
            producer, node_index, _ = stack.pop()._keras_history
            node = producer._inbound_nodes[node_index]
        except (AttributeError, ValueError, IndexError, TypeError):
            continue
        if id(node) not in seen:
            seen.add(id(node))
            found.append((producer, node))
            stack.extend(keras.tree.flatten(node.input_tensors))
    return found


def live_tensors(model, keras, used=None, prune=True):
    """The `id`s of the tensors of `model`'s own graph that reach one of its outputs numbered
    in `used` (all of them by default), through the calls of nested models at the outputs
    of theirs that are live (`prune=False`: through every input of every call)."""
    outs = keras.tree.flatten(model.outputs)
    stack = [outs[i] for i in (range(len(outs)) if used is None else sorted(used))]
    live = {id(t) for t in stack}
    for producer, node in _nodes(model, keras) if prune else ():
        ins = node_inputs(producer, node)
        if isinstance(producer, keras.Model) and _has_graph(producer):
            inner = live_tensors(producer, keras, set())
            if not any(isinstance(k, tuple) for k in inner):
                continue
            ins = [ins[k] for k in _inputs_in(producer, keras, inner) if k < len(ins)]
        elif not _kept(producer, keras):
            continue
        live |= {("kept", id(t)) for t in keras.tree.flatten(node.outputs)}
        stack.extend(t for t in ins if id(t) not in live)
        live |= {id(t) for t in ins}
    while stack:
        try:
            producer, node_index, _ = stack.pop()._keras_history
            node = producer._inbound_nodes[node_index]
            ins = node_inputs(producer, node)
        except (AttributeError, ValueError, IndexError, TypeError):
            continue
        sub = _graph_of(producer, node.outputs, keras) if prune else None
        if sub is not None:
            outs_used = {k for k, t in enumerate(node.outputs) if id(t) in live}
            ins = [ins[k] for k in live_inputs(sub, keras, outs_used) if k < len(ins)]
        for t in ins:
            if id(t) not in live:
                live.add(id(t))
                stack.append(t)
    return live


def live_inputs(model, keras, used):
    """The indices of `model`'s inputs that reach one of its outputs numbered in `used`."""
    return _inputs_in(model, keras, live_tensors(model, keras, used))


def _inputs_in(model, keras, live):
    return [k for k, t in enumerate(keras.tree.flatten(model.inputs)) if id(t) in live]


def live_outputs(call, live):
    """The indices of the outputs of `call` (`(inputs, outputs)`) that are in `live`."""
    return {k for k, t in enumerate(call[1]) if id(t) in live}


def _graph_of(op, outputs, keras):
    """`op` where it is a model with a graph, the graph of a Lambda of Keras ops called with
    `outputs` (`keras_wrapped.lambda_model`), else None."""
    if isinstance(op, keras.Model):
        return op if _has_graph(op) else None
    return lambda_model(op, ((), list(outputs)), keras)


def _has_graph(model):
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def live_counts(model, op_calls, keras, live, everything):
    """As `bn_folding.consumers`, leaving out the calls that are `dead` and, of a nested
    model's call, the inputs it does not read (`live_inputs`): a conv's output also passed
    to an input the nested model never reads is read once in the file; `("live", id)` keys
    the tensors of `live` (`following_folds._all_take` counts the readers of those only)."""
    counts = {}
    for op, op_call_list in op_calls:
        for call in [] if isinstance(op_call_list, Exception) else op_call_list:
            if dead(call, live, everything):
                continue
            outs_used, ins = walked_outputs(call, live), keras.tree.flatten(call[0])
            sub = _graph_of(op, call[1], keras)
            if outs_used is not None and sub is not None:
                ins = [ins[k] for k in live_inputs(sub, keras, outs_used) if k < len(ins)]
            for t in ins:
                counts[id(t)] = counts.get(id(t), 0) + 1
    for t in keras.tree.flatten(getattr(model, "outputs", None) or []):
        counts[id(t)] = counts.get(id(t), 0) + 1
    counts.update((("live", k), 1) for k in live if isinstance(k, int))
    return counts
