"""Calls of a Keras graph that the converter computes once (common subexpression elimination).

The TensorFlow Lite converter (TF 2.21) writes one op where two ops compute the same thing:
the same operation on the same tensors with the same attributes and the same weights. So a
layer (or a nested model) called twice on one tensor is one op in the file, and so are two
layers of one config and equal weights on one tensor, or a layer called twice on two
`Dropout`s of one tensor (the inference identities the converter removes; also called with
`training=True`: the file is converted for inference and holds no random op). Before
2026-12-07 the Keras reader charged each call (a shared `Conv2D(4, 3, "same")` on `tanh(x)`
twice, then `Add`, 8x8x4: Keras / file hierarchy 1.5369, paper 1.9765; a nested
`Model(j, Conv2D(4, 1)(tanh(j)))` twice on one conv's output 1.2486 / 1.0976; a batch norm
first in it, which the file folds into the conv only once that conv has one reader, 2.6416 /
1.1882; `tests/test_cse26.py`).

`left_out` gives every tensor of a model's graph a structural key: a model input its index
(a nested model's input the key of its call's input), a call's output its operation's class,
config (less names, initializers, regularizers, constraints) and weights, the non-tensor
arguments of the call and its inputs' keys; an inference identity passes its input's key on;
a nested model's output is keyed through its graph, a `keras.layers.Pipeline`'s through the
calls of its layers (`pipeline_cse`: each merges with an equal call outside). A call all of
whose keys an earlier call has produced is left out (a nested model's call at the outputs
that are used), and the readers of its outputs count as readers of the earlier call's
(`bn_folding.consumers`: a conv read twice folds nothing); where the earlier call is in
another graph (the outer one, a sibling nested model), each of the two outputs counts the
readers of every twin, merged as the file merges them (`_note`: a batch norm after either
was folded into the conv the file does not have, Keras / file hierarchy 0.3668 before
2026-12-07, `tests/test_csefix26.py`; then one reader more was counted, also where the
twins' readers merge too: a batch norm after both not folded, 1.9269,
`tests/test_csedead28.py`). Never merged (a fresh key, kept as before): a layer of a class
neither Keras' nor dkm_tf's, a `Lambda`, a layer running foreign code (`TFSMLayer`, ...), a
`Pipeline` holding one of those (any may draw random numbers or update a variable; the
converter merges pure ones, so their over-count stays), a recurrent layer (the file's WHILE
loop), a `Random*` layer, a subclassed nested model; and calls on different tensors.
A `Dense` on a rank-2 tensor whose output only a ReLU / ReLU6 reads has the fused activation
in its key (`_fused`: the converter fuses it into FULLY_CONNECTED before it looks for
repeats; merged with a call read otherwise, Keras / file hierarchy 0.5842 before
2026-12-07, `tests/test_csefix26.py`), not counting a reader the converter prunes.
"""

from dkm_tf.energy.activations import activation_name
from dkm_tf.energy.bn_folding import removed
from dkm_tf.energy.carried_masks import keyed_with_mask, mask_key, note_masks
from dkm_tf.energy.cse_signatures import arguments as _arguments
from dkm_tf.energy.cse_signatures import digest as _digest
from dkm_tf.energy.cse_signatures import signature as _signature
from dkm_tf.energy.keras_calls import calls, graph_ops
from dkm_tf.energy.keras_live import dead, live_counts, live_tensors, walked_outputs
from dkm_tf.energy.keras_lowered import clip_ops
from dkm_tf.energy.pipeline_cse import (
    context,
    inner_args,
    inner_counts,
    merge,
    pipeline_keys,
    rows_of,
)
from dkm_tf.energy.relu_fusion import lambda_reader, leading_relu
from dkm_tf.energy.relu_like import relu_like

STATE = ("keras_cse",)  # the key of this module's state in the reader's `used` dict
_OPAQUE = ("TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper")  # foreign code: fresh
REASON = ("computes what {} computes: one op in a .tflite (the converter eliminates common "
          "subexpressions)")


def apart(walk):
    """`walk(model, used)` made to share no keys with the walks around it: each step of a
    `TimeDistributed` model (`keras_wrapped`) reads its own slice, walked with no outer
    context, so its model's inputs must not take the outer model's input keys (its convs were
    read as repeats of the first step's and left out: 3 steps charged as 1)."""
    def walked(model, used):  # the modules' states (tuple keys: this one's, attention_mask's)
        saved = {k: used.pop(k) for k in [k for k in used if isinstance(k, tuple)]}
        try:
            walk(model, used)
        finally:
            for k in [k for k in used if isinstance(k, tuple)]:
                used.pop(k)
            used.update(saved)
    return walked


def left_out(model, op_calls, live, used, keras, outer):
    """`(gone, counts)` for the walk of `model`'s graph (`keras_reader._walk`): `gone` maps
    the `id` of each call of `op_calls` to leave out to why (no output uses it, `keras_live`;
    or it repeats an earlier call); `counts` is `keras_live.live_counts` of the calls kept,
    the readers of a repeated call's outputs added to the earlier call's.

    Args:
        model: The Functional model whose graph is walked.
        op_calls: `[(op, calls or exception)]` of its graph, in graph order.
        live: `(live, everything)` of `keras_live.live_tensors`.
        used: The reader's name counts; holds this module's state across nested walks.
        keras: The keras module.
        outer: `None`, or where `model` is nested `(its inputs, its call's inputs, the
            counts of the graph calling it, ...)` (`keras_reader._walk`).
    """
    state = used.setdefault(STATE, {"claimed": {}, "envs": {}, "sigs": {}})
    env, exits = {}, {}
    if outer is None:
        env.update((id(t), ("input", k)) for k, t in enumerate(keras.tree.flatten(model.inputs)))
        readers, state["collect"] = state.setdefault("readers", {}), True  # `_note`
        for t in keras.tree.flatten(model.outputs):  # read by the caller: fuses nothing
            readers.setdefault(id(t), []).append((None, (), ()))
    else:
        parent = state["envs"].get(id(outer[2]), {})
        env.update((id(t), parent[id(c)]) for t, c in zip(outer[0], outer[1]) if id(c) in parent)
        up = [state.setdefault(n, {}).get(id(outer[2])) for n in ("lives", "exits_of")]
        exits = {id(o): (x, up[0], up[1] or {}) for o, x in zip(*outer[4])} \
            if len(outer) > 4 else {}  # `_readers`: out to the calling graph's
    saved = state.get("exits", {}), state.get("live")
    state["exits"], state["live"] = exits, live[0]
    gone, local, first, alias, outside, kept_keys, inner = {}, {}, {}, [], [], [], []
    for op, call, out_keys in _ordered(op_calls, env, keras, state):
        if dead(call, *live):
            gone[id(call)] = "no model output uses it (a .tflite prunes it)"
            continue
        if not call[0] or out_keys == [env.get(id(t)) for t in call[0]]:
            continue  # an InputLayer, an identity the converter removes: nothing computed
        def one(op, keys, nested):  # why the call of `op` giving `keys` is left out
            earlier = [local.get(k) or state["claimed"].get(k) for k, _ in keys]
            if keys and all(earlier):
                alias.extend((t, first[k]) for k, t in keys if k in first)
                outside.extend((k, t) for k, t in keys if k not in first)  # twin elsewhere
                return REASON.format(earlier[0])
            kept_keys.extend(keys if not nested else [])  # a nested call's: its walk's
            for k, t in keys:
                local.setdefault(k, op.name)
                first.setdefault(k, t)
                if not nested:
                    state["claimed"].setdefault(k, op.name)
            return None
        ctx = context(call, env) if isinstance(op, keras.layers.Pipeline) else None
        rows = rows_of(op, call, state, ctx) if isinstance(op, keras.layers.Pipeline) else None
        nested = isinstance(op, keras.Model)
        why = merge(rows, lambda c: [env.get(id(t)) for t in c[0]], one, keras, state, ctx) if \
            rows else one(op, [(k, t) for k, t in zip(out_keys, call[1])
                               if not nested or id(t) in live[0]], nested)
        inner.append((ctx, rows or []))
        if why is not None:
            gone[id(call)] = why
    state["exits"], state["live"] = saved
    if outer is None:
        for k, t in enumerate(keras.tree.flatten(model.outputs)):  # a model output: a reader
            state.setdefault("twin_readers", {}).setdefault(env.get(id(t)), set()).add(k)
            state.setdefault("twin_ops", {}).setdefault(env.get(id(t)), {})[k] = None
        state["collect"] = False
    kept = [(op, c if isinstance(c, Exception) else [x for x in c if id(x) not in gone])
            for op, c in op_calls]
    counts = live_counts(model, kept, keras, *live)
    inner_counts(inner, counts, state)  # a Pipeline's: its layers' outputs
    for t, t1 in alias:
        if t is not None and t1 is not None:
            counts[id(t)] = counts[id(t1)] = counts.get(id(t), 0) + counts.get(id(t1), 0)
    here = {id(t) for _, cs in op_calls if not isinstance(cs, Exception) for c in cs
            for t in c[1]} | {
        id(t) for _, rows in inner for _, c, _ in rows for t in c[1]}
    producers = state.get("producers", {})
    twin_readers = state.get("twin_readers", {})
    for k, t in outside + [(k, t) for k, t in kept_keys if producers.get(k, set()) - here]:
        n, here_n = len(twin_readers.get(k, ())), counts.get(id(t), 0)  # every twin's, merged
        late = id(t) not in state.get("top", ())  # keyed after the top-level pass (in a
        counts[id(t)] = (n + here_n if late else n) if n else here_n + 1  # Pipeline): unnoted
    for t in outer[4][1] if outer is not None and len(outer) > 4 else ():  # `source_at`
        outer[2][("nested", id(t))] = counts  # looks inside with these counts
    state["envs"][id(counts)] = counts[("cse_env",)] = env  # and for a `Lambda`'s walk
    counts[("cse_state",)] = state  # its keys: `dense_copies._fused_twin`
    state.setdefault("lives", {})[id(counts)] = live[0]
    state.setdefault("exits_of", {})[id(counts)] = exits
    return gone, counts


def _ordered(op_calls, env, keras, state):
    """`(op, call, output keys)` of every recorded call, each once the keys of its inputs are
    in `env`, where its outputs' keys are put (a shared layer's later call can read an op
    after it in graph order); an input no call produces gets a fresh key (never merged)."""
    pending = [(op, c) for op, cs in op_calls if not isinstance(cs, Exception) for c in cs]
    _register(pending, state)
    waiting, left = {}, []  # the calls waiting on each tensor; how many each waits on
    for n, (_, call) in enumerate(pending):
        missing = {id(t) for t in call[0] if id(t) not in env}
        left.append(len(missing))
        for i in missing:
            waiting.setdefault(i, []).append(n)
    ready, done, first = [n for n, m in enumerate(left) if not m], set(), 0
    while len(done) < len(pending):  # in rounds: the calls whose inputs all have keys
        while not ready:  # none: the first left, its unknown inputs fresh
            ready, first = ([first] if first not in done else []), first + 1
        later = []
        for n in sorted(ready):
            op, call = pending[n]
            new = {id(t) for t in call[0] if id(t) not in env}
            env.update((i, object()) for i in new)
            keys = _out_keys(op, call, env, keras, state)
            new.update(id(t) for t in call[1] if id(t) not in env)
            env.update((id(t), k) for t, k in zip(call[1], keys))
            _note(op, call, keys, env, keras, state)
            done.add(n)
            yield op, call, keys
            for i in new:
                for m in waiting.pop(i, []):
                    left[m] -= 1
                    if not left[m] and m not in done:
                        later.append(m)
        ready = later


def _out_keys(op, call, env, keras, state):
    """The keys of the outputs of `call` of `op`, its inputs' keys in `env` (module doc)."""
    ins, outs = list(call[0]), list(call[1])
    in_keys = [mask_key(t, env, state) or env.get(id(t)) or object() for t in ins]
    if not ins:  # an InputLayer: its input's key (a model input's, a nested call's input's)
        keys = [env.get(id(t)) or object() for t in outs]
    elif _fresh(op, keras):
        keys = [object() for _ in outs]
    elif len(ins) == len(outs) == 1 and removed(op, keras):
        keys = in_keys
    elif isinstance(op, keras.Model):
        inner = dict(zip(map(id, keras.tree.flatten(op.inputs)), in_keys))
        saved = state.get("exits", {}), state.get("live")
        state["exits"] = {id(o): (x, saved[1], saved[0])
                          for o, x in zip(keras.tree.flatten(op.outputs), outs)}
        if saved[1] is not None:  # its calls that reach a used output: `left_out`'s twins
            state["live"] = live_tensors(op, keras, walked_outputs(call, saved[1]))
        for _ in _ordered([(o, _calls(op, o)) for o in graph_ops(op)], inner, keras, state):
            pass
        state["exits"], state["live"] = saved
        keys = [inner.get(id(t)) or object() for t in keras.tree.flatten(op.outputs)]
    elif isinstance(op, keras.layers.Pipeline) and (keys := pipeline_keys(
            op, call, keras, state, lambda s, c: _inner(s, c, call, env, keras, state),
            lambda pending: _register(pending, state), context(call, env))):
        for t in outs:  # the Pipeline's call is yielded then (`_ordered`)
            env.pop(id(t), None)
    else:
        sig = _signature(op, state)
        args = _arguments(call, keras) if len(call) < 3 else call[2]  # `_inner`'s
        if sig is None or args is None:
            return [object() for _ in outs]
        if len(call) < 3:  # a mask its input carries when the model runs
            args, in_keys = keyed_with_mask(op, ins, args, in_keys, env, keras, state)
        fused = _fused(op, ins, outs, keras, state)
        table = state.setdefault("intern", {})  # a key is an int: nested tuples of a deep
        twins = table.setdefault((sig, args, tuple(in_keys), fused), [])  # graph would hash
        keys = next((k for other, k in twins  # in exponential time (residual branches); the
                     if other is op or _digest(other, state) == _digest(op, state)), None)
        if keys is None:  # weights hashed only where two layers of one config meet
            state["n"] = state.get("n", 0) + len(outs)
            keys = list(range(state["n"] - len(outs) + 1, state["n"] + 1))
            twins.append((op, keys))
            if fused is None:  # its fused twins: `dense_copies._fused_twin`
                state.setdefault("unfused", {})[keys[0]] = (sig, args, tuple(in_keys))
        producers = state.setdefault("producers", {})  # `left_out`: twins in other graphs
        for key, t in zip(keys, outs):
            if state.get("live") is None or id(t) in state["live"]:  # not pruned
                producers.setdefault(key, set()).add(id(t))
            state.setdefault("top", set()).update([id(t)] if state.get("collect") else [])
    note_masks(ins, outs, keys, state)
    return keys


def _inner(sub, sub_call, call, env, keras, state):
    """The output keys of layer `sub` called as `sub_call` in a Pipeline's call `call`
    (`pipeline_cse`): keyed, noted as a reader and a producer as a call of the graph (its
    tensors live where the Pipeline's outputs are)."""
    outs = list(call[1])
    env.update((id(t), object()) for t in sub_call[0] if id(t) not in env)
    keys = _out_keys(sub, (*sub_call, inner_args(sub, sub_call, call)), env, keras, state)
    env.update((id(t), k) for t, k in zip(sub_call[1], keys))
    _note(sub, (sub_call[0], outs), keys, env, keras, state)
    if _live(outs, state.get("live")) and not isinstance(sub, keras.Model):
        for k, t in zip(keys, sub_call[1]):
            state.setdefault("producers", {}).setdefault(k, set()).add(id(t))
    return keys


def _fused(op, ins, outs, keras, state):
    """The activation the converter fuses into a `Dense` on a rank-2 tensor before it looks
    for repeats ("relu" / "relu6" / a clip to [0, 6] or [-1, 1]: its output's only reader,
    past removed identities and into nested models (`_readers`)), else None: such a Dense
    read by a ReLU and again by an `Add` is two FULLY_CONNECTED ops in the file (merged:
    0.5842; `ops.clip(0, 6)`: 0.5932); a conv, a Dense on a rank-3 / 4 tensor, a batch norm,
    an `Add`, a pooling are computed once and keep a RELU op (merged first)."""
    if not (isinstance(op, keras.layers.Dense) and len(ins) == len(outs) == 1
            and len(getattr(ins[0], "shape", ())) == 2) or activation_name(
                getattr(op, "activation", None)) != "linear":  # its own: nothing fused
        return None  # (a ReLU after `Dense(8, "relu")` merged: 1.7251 before 2026-12-07)
    found = _readers(outs[0], state, keras)
    relu = found[0] if len(found) == 1 else None
    if isinstance(relu, keras.layers.Pipeline) and relu.layers:  # its first layer reads it
        relu = relu.layers[0]
    relu = lambda_reader(relu, keras)  # a Lambda: its op reading its input (twins: 1.8654)
    name = type(relu).__name__  # `keras.ops.relu` / `relu6`, a clip to [0, 6] / [-1, 1]
    if name in ("Relu", "Relu6") or name == "Clip" and not isinstance(
            relu, keras.layers.Layer) and clip_ops(relu) == ["relu"]:
        return f"clip{float(relu.x_min)}" if name == "Clip" else name.lower()
    if relu is None or not (isinstance(relu, keras.layers.Layer) or relu_like(
            relu, keras)) or not leading_relu(relu, keras):  # `keras.activations.relu`,
        return None  # `ops.maximum(y, 0)` (`relu_like`): as a ReLU layer
    cap = getattr(relu, "max_value", None)
    six = cap is not None and float(cap) == 6.0
    return "relu6" if six or activation_name(getattr(relu, "activation", None)) == "relu6" \
        else "relu"


def _readers(t, state, keras, live=None, exits=None):
    """The ops reading tensor `t` (None: a model output), through removed identities, into
    the nested models reading it and out of the nested models being keyed (`exits`, of
    `state` by default: `{id(output): (its call's output, live, exits there)}`); not a call
    `live` (`keras_live.live_tensors` of `t`'s graph, `state["live"]` by default) leaves out:
    the converter prunes it (counted, a Dense whose live reader is a ReLU was merged, Keras /
    file hierarchy 0.5842 before 2026-12-07, `tests/test_csedead28.py`)."""
    if exits is None:
        live, exits = state.get("live"), state.get("exits", {})
    found = []
    for op, ins, outs in state["readers"].get(id(t), []):
        if op is not None and not _live(outs, live):
            continue
        if op is not None and len(outs) == 1 and removed(op, keras):
            found.extend(_readers(outs[0], state, keras, live, exits))
        elif isinstance(op, keras.Model) and not _fresh(op, keras):  # the converter inlines
            inner = keras.tree.flatten(op.inputs)
            _register([(o, c) for o in graph_ops(op) for c in _calls(op, o)], state)
            sub = live_tensors(op, keras, None if live is None else walked_outputs(
                (ins, outs), live))
            out = {id(o): (x, live, exits) for o, x in zip(keras.tree.flatten(op.outputs), outs)}
            for k in [k for k, x in enumerate(ins) if x is t and k < len(inner)]:
                found.extend(_readers(inner[k], state, keras, sub, out))
        else:
            found.append(op)
    exit_ = exits.get(id(t))
    return found + (_readers(*exit_[:1], state, keras, *exit_[1:]) if exit_ else [])


def _live(outs, live):
    """Whether a call with outputs `outs` reaches a used output (`live`; None: unknown)."""
    return live is None or any(id(x) in live or ("kept", id(x)) in live for x in outs)


def _note(op, call, keys, env, keras, state):
    """Records, while the outer model is keyed, `(output keys, input position)` of a `_live`
    call of `op` as a reader of each input's key (not a nested model's: its calls are; not
    an identity): the converter merges twins' readers as it merges the twins, so a call
    merged into a twin in another graph has these readers (was one more, so a batch norm
    after both was not folded: Keras / file hierarchy 1.9269 before 2026-12-07)."""
    nested = isinstance(op, keras.Model) and not _fresh(op, keras)
    if not state.get("collect") or nested or not _live(
            call[1], state.get("live")) or keys == [env.get(id(t)) for t in call[0]]:
        return
    for n, t in enumerate(call[0]):
        state.setdefault("twin_readers", {}).setdefault(env.get(id(t)), set()).add(
            (tuple(keys), n))
        state.setdefault("twin_ops", {}).setdefault(env.get(id(t)), {})[(tuple(keys), n)] = op


def _register(pending, state):
    """Records who reads each tensor of the calls `pending` (`(op, call)`), once a call."""
    readers, seen = state.setdefault("readers", {}), state.setdefault("seen", set())
    for op, call in pending:
        if (id(op),) + tuple(map(id, call[1])) not in seen:
            seen.add((id(op),) + tuple(map(id, call[1])))
            for t in call[0]:
                readers.setdefault(id(t), []).append((op, list(call[0]), list(call[1])))


def _calls(model, op):
    try:
        return calls(model, op)
    except (AttributeError, ValueError):
        return []


def _fresh(op, keras):
    """Whether calls of `op` are never merged (module docstring)."""
    L = keras.layers
    while isinstance(op, (L.Wrapper, L.Bidirectional)):
        if not type(op).__module__.startswith(("keras.", "dkm_tf.")):
            return True
        op = getattr(op, "forward_layer", None) or getattr(op, "layer", None)
    if op is None or not type(op).__module__.startswith(("keras.", "dkm_tf.")):
        return True
    if isinstance(op, keras.Model):
        try:
            return not (op.inputs and op.outputs)
        except (AttributeError, ValueError):
            return True
    if isinstance(op, L.Pipeline):
        return any(_fresh(x, keras) for x in op.layers)
    return isinstance(op, (L.Lambda, L.RNN)) or type(op).__name__.startswith("Random") or \
        type(op).__name__ in _OPAQUE
