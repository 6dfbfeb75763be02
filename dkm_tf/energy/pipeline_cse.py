"""The calls inside a `keras.layers.Pipeline` in the common subexpression merge (`keras_cse`).

The converter traces a Pipeline's layers into the graph, so it computes a layer of the
Pipeline once with an equal call outside it (or in another Pipeline) on the same tensor, and
the merged op has the readers of both. Before 2026-12-07 `keras_cse` keyed a Pipeline as one
op: `Pipeline([c])(t)` beside `c(t)` was two convs, and a batch norm after either was folded
where the file keeps it (`Conv2D(4, 3, "same")` on `tanh(x)`, 8x8x3, Keras / file hierarchy
0.6452; a conv shared by two Pipelines, one ending in a `Dropout`, the same); a conv twin in
a nested model held by a Pipeline counted only its own graph's readers (a ReLU after the
outer twin fused, 0.8159; a batch norm folded, 0.5669). Now each layer of the chain
(`walked_calls`) is keyed as a call of the graph holding the Pipeline: its
non-tensor arguments those of `layer(x)` (the Pipeline's `training` / `mask` keywords left
out: the file is converted for inference), a nested model's calls through its graph. A layer
call repeating an earlier one is left out of the walk (`inner_gone`, `pipeline_folds`) and
its readers count as the earlier call's, so a batch norm / ReLU after either is not folded
/ fused (`pipeline_folds.walk_pipeline` reads the counts of a layer's output there). A
`Dense(8)` on `tanh(Input(16))` in `Pipeline([d, ReLU()])` beside `ReLU()(d(t))`, or a ReLU
beside `Pipeline([ReLU()])` on one Dense, was charged twice (2.0000); now once, as the file.
"""

from dkm_tf.energy.bn_folding import removed
from dkm_tf.energy.keras_pipeline import pipeline_calls

ARGS = (("T",), ())  # `cse_signatures.arguments` of a call `layer(x)` (its tensors as "T")


def pipeline_keys(op, call, keras, state, key, register, ctx=None):
    """The output keys of call `call` of Pipeline `op`, each of its layers keyed by `key(sub,
    sub_call)` (`keras_cse`), else None where its chain cannot be read; notes `(sub,
    sub_call, keys)` of each for `merge`. First `register`s the calls reading a tensor
    inside it (a Dense's key has the ReLU after it: `keras_cse._fused`), live where the
    Pipeline's outputs are (`state["live"]`). `ctx`: the key of the Pipeline's input in
    this call (`context`): a nested model's calls share its graph's tensors."""
    outs = keras_outputs(call)
    if not outs:
        return None
    at = (id(op), id(outs[0]))
    subs = state.setdefault("pipes", {})
    if at not in subs:  # the same tensors in every pass (their `id`s key the counts)
        subs[at] = walked_calls(op, call, keras)
    if not subs[at]:
        return None
    inside = [(s, c) for s, c in subs[at] if not hasattr(c[0][0], "_keras_history")]  # (a
    # mask read inside is the graph's)
    register(inside)  # not the first: its reader of the Pipeline's input is the Pipeline
    live = state.get("live")
    if live is not None and any(id(t) in live for t in outs):
        live.update(id(t) for _, c in inside for t in c[1])
    rows = [(sub, sub_call, key(sub, sub_call)) for sub, sub_call in subs[at]]
    state.setdefault("inner", {})[(ctx,) + at] = rows
    return rows[-1][2]


def inner_args(sub, sub_call, call):
    """`cse_signatures.arguments` of a layer `sub` called as `sub_call` in a Pipeline's call
    `call`: `sub(x)`, with its compute dtype as the output's, and `("mask", None)` where its
    call takes a mask (Keras records it in an outer call's arguments: before 2026-12-07 the
    same batch norm in a Pipeline and outside never merged, `Pipeline([c, b])(t)` beside
    `b(c(t))` 5.1996 hierarchy); `("mask", "T")` where it is called with a mask, its second
    input (`carried_masks.masked_chain`: as Keras records a call of the layer given one;
    before 2026-12-07 a Pipeline given a mask was not read, its pooling never merged)."""
    dtype = getattr(sub, "compute_dtype", None) or sub_call[1][0].dtype
    if not getattr(sub, "_call_has_mask_arg", False):
        return ARGS + (str(dtype),)
    return (ARGS[0], (("mask", "T" if len(sub_call[0]) > 1 else None),), str(dtype))


def keras_inputs(call):
    """The input tensors of a call `(inputs, outputs, ...)`, as a list."""
    return list(call[0]) if isinstance(call[0], (list, tuple)) else [call[0]]


def keras_outputs(call):
    """The output tensors of a call `(inputs, outputs, ...)`, as a list."""
    return list(call[1]) if isinstance(call[1], (list, tuple)) else [call[1]]


def context(call, env):
    """The key (`env`, `keras_cse`'s) of the input of a Pipeline's call `call`: what tells
    two calls of one nested model holding it apart (its graph's tensors are shared; before
    2026-12-07 the second call's keys were read for the first: a conv on `sigmoid(x)` was
    left out as a twin of one on `tanh(x)`)."""
    x = keras_inputs(call)
    return env.get(id(x[0])) if x else None


def rows_of(op, call, state, ctx=None):
    """The `(sub, sub_call, keys)` noted for Pipeline call `call` of `op` in context `ctx`
    (`context`), else None."""
    outs = keras_outputs(call)
    return state.get("inner", {}).get((ctx, id(op), id(outs[0]))) if outs else None


def inner_gone(used, sub, sub_call, ctx=None):
    """Why the call `sub_call` of a Pipeline's layer `sub` is left out (it repeats an earlier
    call), else None; `used`: the reader's state (`keras_cse.STATE`); `ctx`: `context`."""
    state = used.get(("keras_cse",), {})
    return state.get("inner_gone", {}).get((ctx, id(sub), id(sub_call[1][0])))


def merge(rows, in_keys, one, keras, state, ctx=None):
    """Runs `one(op, keys, nested)` (`keras_cse.left_out`'s merge of one call: its reason if
    it repeats an earlier call, else None) on each layer call of a Pipeline (`rows`, its
    call's `context` `ctx`), the layers the converter removes skipped; notes the reason of
    each left out. Returns the reason where every call is left out, else None."""
    gone, reasons = state.setdefault("inner_gone", {}), []
    for sub, sub_call, keys in rows:
        if keys == in_keys(sub_call):
            continue  # an identity the converter removes
        nested = isinstance(sub, keras.Model)
        why = one(sub, list(zip(keys, sub_call[1])), nested)
        gone.pop((ctx, id(sub), id(sub_call[1][0])), None)
        if why is not None:
            gone[(ctx, id(sub), id(sub_call[1][0]))] = why
        reasons.append(why)
    return reasons[-1] if reasons and all(reasons) else None


def inner_counts(inner, counts, state):
    """Puts in `counts` (`keras_cse.left_out`'s) the readers of each tensor inside the
    Pipelines' calls `inner` (`(context, pipeline_keys' rows)`): the next layer, none where
    it is left out (its twin's readers are counted)."""
    gone = state.get("inner_gone", {})
    for ctx, rows in inner:
        for n, (_, sub_call, _) in enumerate(rows):
            for t in sub_call[1]:
                if not hasattr(t, "_keras_history"):  # not the Pipeline's output
                    nxt = rows[n + 1] if n + 1 < len(rows) else None
                    counts[id(t)] = int(nxt is not None and (
                        ctx, id(nxt[0]), id(nxt[1][1][0])) not in gone)


def walked_calls(layer, call, keras):
    """`pipeline_calls(layer, call)[0]` as the reader walks them (`pipeline_folds`): the
    last layer the converter keeps writes the Pipeline's output tensor, and the removed
    layers after it read and write it (`keras_cse` keys the calls along the chain: a call
    there merges with its twin outside)."""
    subs, _ = pipeline_calls(layer, call)
    kept = [i for i, (s, _) in enumerate(subs) if not removed(s, keras)]
    outs = keras_outputs(call)
    return [(s, (c[0] if i <= kept[-1] else outs, outs)) if kept and i >= kept[-1] else (s, c)
            for i, (s, c) in enumerate(subs)]
