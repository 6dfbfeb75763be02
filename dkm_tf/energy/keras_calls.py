"""The calls of each operation in one Keras 3 model's own graph (Keras is passed in).

`layer.input` / `layer.output` are the tensors of a layer's *first* call only, and a layer's
`_inbound_nodes` lists its calls in every model it was called in. A Functional model (and
the Functional graph a built Sequential model keeps as `_functional`) records the keys of the
nodes of its own graph in `_nodes` (`keras/src/ops/function.py`: ``f"{id(op)}_ib-{i}"`` for
the op's i-th inbound node): a shared layer, or a nested model called twice (a Siamese
tower), has one such node per call in that graph, each with its own input and output tensors.
"""

import dataclasses


def graph_ops(model):
    """The operations (layers) of `model`, in graph order."""
    return model.operations if hasattr(model, "operations") else model.layers


def _node_keys(model):
    graph = getattr(model, "_functional", None) or model
    keys = getattr(graph, "_nodes", None)
    return keys if isinstance(keys, (set, frozenset, dict)) else None


def calls(model, op):
    """`[(inputs, outputs)]`, flat lists of tensors, one per call of `op` in `model`'s graph.

    Calls made in other models (a layer reused elsewhere, a nested model's own graph) are
    left out. Without recorded graph nodes: the first call (`op.input`, `op.output`), which
    raises `AttributeError` / `ValueError` when the op has none.
    """
    keys, nodes = _node_keys(model), getattr(op, "_inbound_nodes", None) or []
    try:
        from keras.src.ops.function import make_node_key
    except ImportError:  # the key format of Keras 3.x
        def make_node_key(o, i):
            return f"{id(o)}_ib-{i}"
    found = [] if keys is None else [
        (node_inputs(op, n), list(n.outputs)) for i, n in enumerate(nodes)
        if make_node_key(op, i) in keys]
    if found:
        return found
    flat = [op.input, op.output]
    return [tuple(list(t) if isinstance(t, (list, tuple)) else [t] for t in flat)]


def node_inputs(op, node):
    """The input tensors of `node`, a call of `op`, in the order of `op.inputs` where `op` is
    a model of a list of inputs called with a dict keyed by their names (as Functional maps
    it: `node.input_tensors` holds the dict's values in the order of its sorted keys; before
    2026-12-07 the reader paired them with the wrong inputs, a used conv left out, Keras /
    file hierarchy 0.52), else `node.input_tensors`."""
    ins, struct = list(node.input_tensors), getattr(op, "_inputs_struct", None)
    args = getattr(getattr(node, "arguments", None), "args", ())
    if struct is None or isinstance(struct, dict) or len(args) != 1 or \
            not isinstance(args[0], dict):
        return ins
    try:
        struct = struct if isinstance(struct, (list, tuple)) else [struct]
        return [args[0][t.name] for t in struct]
    except (KeyError, AttributeError, TypeError):
        return ins


def call_names(records, name, bases):
    """Records of a second or later call: a name starting with a base (the layer's name, the
    inner layer's) gets the call's `name` for it; the `layer` field stays the layer's."""
    out = []
    for r in records:
        base = next((b for b in bases if r.name == b or r.name.startswith(b + "/")), None)
        out.append(r if base is None else dataclasses.replace(r, name=name + r.name[len(base):]))
    return out
