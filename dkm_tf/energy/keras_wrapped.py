"""Graphs inside a layer call the Keras reader walks as nested models (Keras is passed in).

A `TimeDistributed` of a Functional or Sequential model: the converter unrolls it into one
copy of the model's ops per step (as it does a TimeDistributed conv), each inlined like a
nested model's and reading its own step; before 2026-12-07 the reader listed it as an
"unsupported layer type Functional" and charged nothing (a TimeDistributed Conv1D, then one of
a model of a batch norm and a Conv1D, 3 steps: Keras / file hierarchy 0.2272, paper 0.6726).
Its model is walked once per step (`keras_reader._walk`), at the shapes of its own graph, its
records named as those of a nested model called that many times (`c`, `c#2`, ...), with no
outer context: the first op of a step reads the UNPACK of the steps, into which nothing folds.
A `TimeDistributed` of a `Lambda` of Keras ops is walked so too, its function's graph built at
the step's shape and dtype, one per call of the TimeDistributed (`_step_lambda`; a function
taking `mask` or `training` is listed, as a plain Lambda's); a `TimeDistributed` of a
`TimeDistributed` as one over the steps of both (`unwrapped`, `td_depth`: `step_records` cuts
its inner layer's records into T1·T2 steps, a model is walked T1·T2 times). Before 2026-12-07
both were listed as "unsupported" and charged nothing
(`TimeDistributed(TimeDistributed(Dense(4)))` over 3 x 2 x 8: the file 192 MACs in 6
FULLY_CONNECTED; a clip and a scaling over 3 steps of 8: 9 ops).

A `Lambda` whose function is made of Keras ops (`z[0] + z[1] * 2.0` on KerasTensors): its
function is called on symbolic inputs of its call's shapes and the graph it builds is read as
a nested model in the context of the call (a constant scaling folds into the conv before it,
as the file folds it); its records are named `lambda`, `lambda/2`, ... with `layer` the
Lambda's name. Before 2026-12-07 every Lambda was listed as an "unsupported layer type" and
charged nothing (such a Lambda reading both outputs of a nested model: Keras / file hierarchy
0.7520, paper 0.9887); `keras_live` takes only the inputs its graph reads as live (a Lambda
picking one output of a nested model: the others are pruned, as in the file; they were
charged, 1.5000). A function that does not build a Keras graph (TensorFlow ops, a mask or
`training` argument, tensors passed by keyword) is listed as before.
"""

import dataclasses
import math

from dkm_tf.energy.record_names import fresh

# a Lambda's call (its node) -> `(function, arguments, lambda_model)`, kept on the node: it
# lives and dies with the Lambda (a module-level WeakKeyDictionary kept it, the layers its
# function calls, their weights and so the whole model, for good: the graph reaches its key
# through those layers); a TimeDistributed Lambda's step graph on the TimeDistributed's node
# (the call fixes its step's shape and dtype; on the Lambda, a dict keyed by the step shape
# gave a float call the graph of an int one, and Keras' saver wrote the graphs' weights)
_GRAPH = "_dkm_tf_lambda_graph"


def wrapped_graph(layer, name, call, used, keras, walk, skipped, shapes):
    """Reads a call of `layer` (named `name`) holding a graph, returns whether it did.

    Args:
        layer: The called operation.
        name: Its record name (`name#2` for a second call).
        call: `(inputs, outputs)` of the call, or the exception saying it has none.
        used: The walks of each layer name so far (`keras_reader._walk`).
        keras: The keras module.
        walk: `walk(model, used)` appends the records of a nested `model`'s graph.
        skipped: The `(name, reason)` list to add to.
        shapes: The records list `walk` appends to (each step's tagged with it, `tagged`).

    Returns:
        True where `layer` is a `TimeDistributed` of a model with a graph, read here.
    """
    inner, depth = unwrapped(layer, keras), td_depth(layer, keras)
    if not depth or isinstance(call, Exception):
        return False
    got = tuple(call[0][0].shape)
    if isinstance(inner, keras.layers.Lambda):  # its graph at the step's shape, if it has one
        inner = _step_lambda(layer, inner, call, depth, keras)
    if not isinstance(inner, keras.Model) or not has_inputs(inner):
        return False
    own = tuple(keras.tree.flatten(inner.inputs)[0].shape)
    if len(got) < 1 + depth or any(not isinstance(d, int) for d in got[1:1 + depth]):
        skipped.append((name, f"TimeDistributed model called with an unknown number of steps "
                        f"(input shape {got}): not charged"))
        return True
    if own[1:] != got[1 + depth:]:
        skipped.append((name, f"TimeDistributed model called with step shape "
                        f"{got[1 + depth:]}: read at the shapes of its own graph, {own[1:]}"))
    n = math.prod(got[1:1 + depth])
    for k in range(1, n + 1):  # each step's records tagged with it (`tagged`)
        start = len(shapes)
        walk(inner, used)
        shapes[start:] = tagged(shapes[start:], name, k, n)
    return True


def td_depth(layer, keras):
    """How many `TimeDistributed` wrap one another from `layer` down (0: `layer` is none)."""
    depth, layer = 0, _through_clustering(layer, keras)
    while isinstance(layer, keras.layers.TimeDistributed):
        layer, depth = layer.layer, depth + 1
    return depth


def unwrapped(layer, keras):
    """The layer a `keras.layers.Wrapper` `layer` wraps (through nested `TimeDistributed`
    layers: `TimeDistributed(TimeDistributed(Dense))`'s Dense), else `layer` itself."""
    if not isinstance(layer, keras.layers.Wrapper):
        return layer
    layer = _through_clustering(layer, keras)
    inner = layer.layer
    while isinstance(layer, keras.layers.TimeDistributed) and isinstance(
            inner, keras.layers.TimeDistributed):
        layer, inner = inner, inner.layer
    return inner


def layer_alias(layer, inner, keras):
    """The name compression info gives the layer `inner` that the call of `layer` runs: its
    own (a Dense's in a wrapper), or a clustering wrapper's `TimeDistributed`'s (its palettes
    are named after the TimeDistributed, `td_fc/layer.kernel`, as the stripped model's)."""
    if inner is layer:
        return layer.name
    held = _through_clustering(layer, keras)
    return held.name if held is not layer else inner.name


def _through_clustering(layer, keras):
    """The `TimeDistributed` a wrapper that is not one (`ClusterWeights`) holds, else `layer`:
    a clustered TimeDistributed conv is read as the plain one, per step (before 2026-12-07 it
    was listed, "unsupported layer type TimeDistributed", and charged nothing)."""
    inner = getattr(layer, "layer", None)
    if isinstance(layer, keras.layers.Wrapper) and not isinstance(
            layer, keras.layers.TimeDistributed) and isinstance(
            inner, keras.layers.TimeDistributed):
        return inner
    return layer


def _step_lambda(layer, inner, call, depth, keras):
    """The graph of `inner`, the `Lambda` of the `TimeDistributed` `layer` (`depth` of them),
    on one step of its `call` (a `keras.Model` kept on the call's node), or None where its
    function builds none (`_build`) or takes a mask or `training` (listed, as a plain one)."""
    step = tuple(call[0][0].shape)[1 + depth:]
    if not all(isinstance(d, int) for d in step) or _takes_mask(inner):
        return None
    return _cached(_node(layer, call), inner, lambda: _graph(inner, keras.Input(
        batch_shape=(None, *step), dtype=call[0][0].dtype), keras))


def _takes_mask(layer):
    """Whether the `Lambda` `layer`'s function takes a `mask` or `training` argument."""
    return bool(getattr(layer, "_fn_expects_mask_arg", False) or getattr(
        layer, "_fn_expects_training_arg", False))


def _node(layer, call):
    """The node of `layer` whose outputs are those of `call` (`(inputs, outputs)`), or None."""
    return next((n for n in layer._inbound_nodes if [id(t) for t in n.outputs] == [
        id(t) for t in call[1]]), None)


def _cached(node, lam, build):
    """`build()` (the `Lambda` `lam`'s function graph for the call `node`), kept on `node`
    while `lam`'s function and arguments stay the same (a function swapped, an entry of its
    `arguments` dict set or removed in place: built again; before 2026-12-07 the graph of
    `arguments={"s": 2.0}` was still read after `lam.arguments["s"] = 1.0`); an argument
    changed in place itself (a numpy array's values) is not seen. None where `node` is
    None."""
    if node is None:
        return None
    kept = getattr(node, _GRAPH, None)
    args = dict(lam.arguments or {})  # a shallow copy: its values are compared by identity
    if kept is None or kept[0] is not lam.function or kept[1].keys() != args.keys() or any(
            kept[1][k] is not v for k, v in args.items()):
        kept = (lam.function, args, build())
        setattr(node, _GRAPH, kept)
    return kept[2]


def has_inputs(model):
    """Whether `model` has a graph with inputs (a Functional or built Sequential model)."""
    try:
        return bool(model.inputs)
    except (AttributeError, ValueError):
        return False


def lambda_model(layer, call, keras):
    """The graph a `Lambda` `layer`'s function builds on symbolic inputs of its `call`'s
    shapes, as a `keras.Model`, or None where it builds none (module docstring); the
    outputs of `call` (`(inputs, outputs)`) find the call among the layer's calls."""
    if not isinstance(layer, keras.layers.Lambda) or isinstance(call, Exception) or _takes_mask(
            layer):
        return None
    node = _node(layer, call)  # one model per call: its tensors are the same at each look
    return _cached(node, layer, lambda: _build(layer, node, keras))


def _build(layer, node, keras):
    try:
        args, kwargs = node.arguments.args, node.arguments.kwargs
        if len(args) != 1 or any(keras.KerasTensor is type(t) for t in keras.tree.flatten(
                kwargs)):
            return None
        ins = keras.tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype), args[0])
    except Exception:  # noqa: BLE001 - listed as before
        return None
    return _graph(layer, ins, keras)


def _graph(layer, ins, keras):
    """`layer.function` called on the symbolic inputs `ins` as a `keras.Model`, or None."""
    try:
        out = layer.function(ins, **(layer.arguments or {}))
        if not all(isinstance(t, keras.KerasTensor) for t in keras.tree.flatten(out)):
            return None
        return keras.Model(keras.tree.flatten(ins), out, name=layer.name)
    except Exception:  # noqa: BLE001 - any user function: listed as before
        return None


def lambda_records(model, layer, name, shapes, skipped, walk):
    """Appends the records `walk(records, skipped)` reads from `model`, a Lambda's graph
    (`lambda_model`), named after the Lambda's call `name`: `name`, `name/2`, ..., their
    `layer` the Lambda's (a layer of the model's the function calls keeps its own, so that
    compression info matches it); the graph's input layers are left out of `skipped`."""
    import keras

    records, why = [], []
    walk(records, why)
    why = [(n, w) for n, w in why if n not in {t._keras_history[0].name for t in model.inputs}]
    own = {op.name for op in model.operations if not isinstance(op, keras.layers.Layer)}
    shapes.extend(dataclasses.replace(r, name=name if not i else f"{name}/{i + 1}", layer=(
        layer.name if r.layer in own else r.layer)) for i, r in enumerate(records))
    skipped.extend((f"{name}/{n}", w) for n, w in why)
    if not records and not why:
        skipped.append((name, "no compute"))


def step_records(layer, name, call, records, used, keras):
    """The records of one call `call` (`(inputs, outputs)`, named `name`) of `layer`: where it
    is a `TimeDistributed` over a known number of steps T > 1, `records` (of all steps) cut
    into T per-step copies (module docstring), the count of `layer`'s name in `used` (the
    reader's name counts) raised by T - 1, each step's named after its call (`td/cell.kernel`,
    `td#2/cell.kernel`, ...: before 2026-12-07 the first step's kept the inner layer's name,
    `r/cell.kernel`); else `records` as they are (also where a record does not split evenly
    by T)."""
    depth = td_depth(layer, keras)  # nested TimeDistributed layers: steps of all of them
    axes = tuple(call[0][0].shape)[1:1 + depth]
    if not records or not depth or not all(isinstance(d, int) for d in axes):
        return records
    steps = (math.prod(axes),)
    one = [_one_step(r, steps[0]) for r in records]
    inner = unwrapped(layer, keras).name
    bases = [next((b for b in (name, inner) if r.name == b or r.name.startswith(
        b + "/")), None) for r in records]  # an EinsumDense's `c/kernel`: `td/kernel`, ...
    if any(r is None or b is None for r, b in zip(one, bases)):
        return records
    one = [dataclasses.replace(r, name=name + r.name[len(b):]) for r, b in zip(one, bases)]
    bases = [name] * len(one)  # every step named after the call (`td`, `td#2`, ...)
    out = tagged(one, name, 1, steps[0])
    for k in range(2, steps[0] + 1):
        step = fresh(used, layer.name)  # `td#2`, ... but no layer's name (`record_names`)
        out += tagged([dataclasses.replace(r, name=step + r.name[len(b):]) for r, b in zip(
            one, bases)], name, k, steps[0])
    return out


def tagged(records, call, k, steps):
    """`records` of step `k` of `steps` of the `TimeDistributed` call named `call`, that tag
    put first in their `steps` (`LayerShape.steps`; what `EnergyReport.layer(call)` sums)."""
    return [dataclasses.replace(r, steps=((call, k, steps),) + r.steps) for r in records]


def _one_step(record, steps):
    """`record` of all `steps` cut to one step's: its `repeat` (a conv's, a pool's leading
    axes) or, for a row of positions (a dense layer's, an element-wise op's), its width."""
    if record.repeat % steps == 0:
        return dataclasses.replace(record, repeat=record.repeat // steps)
    if record.in_h == record.out_h == 1 and not record.in_w % steps and not record.out_w % steps:
        return dataclasses.replace(record, in_w=record.in_w // steps,
                                   out_w=record.out_w // steps)
    return None
