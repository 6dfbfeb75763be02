"""The mask a tensor carries when the model runs where Keras recorded none on it.

Keras records no mask on the output of a layer that does not support masking, so a
`keras.layers.Pipeline`'s output and a nested Functional or Sequential model's carry none
in the graph; but when the model runs, the tensor they return is their last inner layer's,
with the mask that layer set on it (`Pipeline.call` returns it; `Functional.call` sets the
mask it is given on its inputs and its graph's layers pass it on), and a layer after them
whose call takes a mask is given it (`Layer.__call__` reads its first input's). Before
2026-12-07 the reader took such a layer as unmasked: Embedding(20, 8, mask_zero=True) ->
`Pipeline([Dense(8)])` -> `GlobalAveragePooling1D`, 6 tokens, was charged no mask SUM
(Keras / float file hierarchy 0.9697, paper 0.9936; `Pipeline([Masking()])` on a 5x4 input
0.8000 / 0.8000), the same after a nested model of a Dense; now 1.0000.

A mask the Pipeline's or nested model's layers make themselves (a `Masking`, an Embedding)
is a fresh tensor, one per call on the same inputs (kept here so that the readers of one
output share it: one mask SUM for all of its poolings, as the file computes it once; two calls
on the same tensors share it too: before 2026-12-07 `Pipeline([Masking(), Dense(4)])` twice on
one 5x4 input, each read by a pooling, was charged two SUMs and two poolings, Keras / float
file hierarchy 1.3431, paper 1.1201; now 1.0000).

The chain of masks along a Pipeline's layers (`masked_chain`, from `keras_pipeline`) and the
walk back through the layers passing a mask on (`_passed_back`, from `attention_mask`) are
here too: they call each other (a nested model in a Pipeline, a Pipeline in a nested model).
"""

import weakref

_FRESH = weakref.WeakKeyDictionary()  # layer -> {(input ids, output index): mask}


def carried_mask(x, keras, inputs=None):
    """The mask tensor `x` carries when the model runs, else None: its `_keras_mask`; else,
    where `x` is an output of a Pipeline (`output_mask`) or of a nested
    Functional or Sequential model (the mask its graph's output carries), that one; else,
    where a layer passing its input's mask on unchanged (Dense, Dropout, ReLU, ...: it
    supports masking with Keras' own `compute_mask`) made `x` from one tensor, that one's;
    where a layer computing a mask of its own made it, that mask (`_computed`). `inputs`:
    `(a nested model's inputs, the masks of the tensors it was called on)`, read there."""
    for _ in range(10_000):  # a graph's depth: a chain of pass-on layers
        at = [k for k, t in enumerate(inputs[0]) if t is x] if inputs else []
        if at:  # a nested model's input: the mask of what it was called on (`inputs`)
            return inputs[1][at[0]]
        mask = getattr(x, "_keras_mask", None)
        if mask is not None:
            return mask
        op, index, at = getattr(x, "_keras_history", (None, 0, 0))
        try:
            node = op._inbound_nodes[index]
        except (AttributeError, IndexError, TypeError):
            return None
        if isinstance(op, (keras.layers.Pipeline, keras.Model)):
            return _out_mask(op, index, at, node, keras)
        if not getattr(op, "supports_masking", False):
            return None
        first = node.arguments.args[0] if node.arguments.args else None
        if getattr(type(op), "compute_mask", None) is not keras.layers.Layer.compute_mask:
            return _computed(op, at, node, first, keras, inputs)
        tensors = keras.tree.flatten(node.arguments.args)
        if len(tensors) != 1 and (first is None or isinstance(first, (list, tuple, dict))
                                  or node.arguments.kwargs.get("mask") is not None):
            return None
        x = tensors[0] if len(tensors) == 1 else first  # several (MultiHeadAttention's
    return None  # query, value): `Layer.compute_mask` passes the first one's on


def _computed(op, at, node, first, keras, inputs=None):
    """The mask on output `at` of the call `node` of `op`, which computes a mask of its own
    (a recurrent layer's, `Add`'s AND, `Concatenate`'s), from the masks its inputs carry when
    the model runs (`carried_mask`: Keras recorded none, e.g. after a Pipeline): its
    `compute_mask` on them, an input's mask where it returns it (an LSTM's with
    `return_sequences`), else a fresh tensor, one per call (an Add's AND of one mask with
    itself too: the file computes it and a SUM of it beside the mask's own);
    None where no input carries one or the layer computes none. Before session 31 None:
    `GlobalAveragePooling1D()(LSTM(4, return_sequences=True)(Pipeline([Dense(8)])(e)))` on an
    Embedding(20, 8, mask_zero=True) of 6 tokens was charged no mask SUM, Keras / float file
    hierarchy 0.9944, paper 0.9985 (an `Add` with a Dense of `e`: 0.9871 / 0.9969)."""
    def mask_of(t):
        mask = getattr(t, "_keras_mask", None)
        return carried_mask(t, keras, inputs) if mask is None else mask

    if first is None or node.arguments.kwargs.get("mask") is not None:
        return None
    given = keras.tree.map_structure(mask_of, first)
    flat = keras.tree.flatten(given)
    if all(m is None for m in flat):
        return None
    try:
        out = keras.tree.flatten(op.compute_mask(first, given))
    except Exception:  # noqa: BLE001 - any layer's own error: no mask known
        return None
    made = out[at] if at < len(out) else None
    if made is None or any(made is m for m in flat):
        return made
    key = (tuple(id(t) for t in node.input_tensors), at, tuple(map(id, flat)))  # a nested
    return _FRESH.setdefault(op, {}).setdefault(key, fresh(tuple(made.shape), keras))


def _out_mask(op, index, at, node, keras):
    call = (list(node.input_tensors), list(node.outputs))
    if isinstance(op, keras.layers.Pipeline):
        made = output_mask(op, call, keras)
    else:
        args = keras.tree.flatten(node.arguments.args)
        given = node.arguments.kwargs.get("mask")
        given = keras.tree.flatten(given) if given is not None else [None] * len(args)
        masks = [g if g is not None else carried_mask(t, keras) for t, g in zip(args, given)]
        made = model_mask(op, at, masks, keras, tuple(args[0].shape) if args else None)
    if made is None or not getattr(made, "_dkm_fresh", False):
        return made
    key = (tuple(id(t) for t in node.input_tensors), at)  # held by `op`'s nodes: the ids
    return _FRESH.setdefault(op, {}).setdefault(key, made)  # are not reused while it lives


def model_mask(model, at, masks, keras, shape=None):
    """The mask on output `at` of the nested Functional or Sequential `model` called with
    `masks` (one per input, or None) when it runs: a fresh tensor where its graph makes one
    (an Embedding(mask_zero=True), a `Masking` in it), the one of an input where its graph's
    layers pass that on (`_passed_back`: a Dense; not a Conv1D), else None; a subclassed
    model of one input, at its input `shape`, as its traced `call` returns it
    (`subclassed_masks`)."""
    try:
        own = keras.tree.flatten(model.inputs)
        out = keras.tree.flatten(model.outputs)[at]
    except (AttributeError, IndexError, TypeError, ValueError):
        if at or len(masks) != 1 or masks[0] is None:
            return None
        from dkm_tf.energy.subclassed_masks import traced_mask

        kind = traced_mask(model, shape, keras)
        return masks[0] if kind == "same" else fresh(kind[1], keras) if kind else None
    mine = getattr(out, "_keras_mask", None)
    if mine is not None:
        return fresh(tuple(mine.shape), keras)
    back = _passed_back(out, own)
    k = [i for i, t in enumerate(own) if t is back]
    return masks[k[0]] if k and k[0] < len(masks) else None


def fresh(shape, keras):
    """A new mask tensor of `shape`, one that a layer computes (never merged)."""
    mask = keras.KerasTensor(shape, dtype="bool")
    mask._dkm_fresh = True
    mask._dkm_key = object()  # `keras_cse`'s key of it: its readers' calls merge
    return mask


def keyed_with_mask(op, ins, args, in_keys, env, keras, state=None):
    """`(args, in_keys)` of the call of `op` on `ins` (`keras_cse`'s key): where its call takes
    a mask, Keras recorded none and its first input carries one when the model runs
    (`carried_mask`: a Pipeline's output), with the mask as Keras records a call given one
    (`("mask", "T")` and the mask's key): the pooling of `Pipeline([d])(e)` merges with the
    one of `d(e)` (before 2026-12-07 never, Embedding(mask_zero) 6 tokens, Dense(8): Keras /
    file hierarchy 1.2425, paper 1.0514)."""
    if not getattr(op, "_call_has_mask_arg", False) or len(args) < 2 or not ins or any(
            k == "mask" and v is not None for k, v in args[1]) or getattr(
            ins[0], "_keras_mask", None) is not None:
        return args, in_keys
    mask = carried_mask(ins[0], keras)
    if mask is None:
        return args, in_keys
    kwargs = tuple(sorted([(k, v) for k, v in args[1] if k != "mask"] + [("mask", "T")]))
    return (args[0], kwargs) + tuple(args[2:]), in_keys + [
        mask_key(mask, env, state or {}) or env.get(id(mask)) or getattr(
            mask, "_dkm_key", None) or object()]


def mask_key(mask, env, state):
    """`keras_cse`'s key of a `mask` tensor made by a layer (`note_masks`): `("mask", key of
    the output it was made on)`, so that the same layer called on the same tensor makes the
    same mask in a Pipeline and outside it (`_dkm_on`, set by `keras_pipeline`, where a
    Pipeline's layer made it; one Keras recorded on a layer's output outside), else None.
    Before session 31 a mask made in a Pipeline was a fresh tensor: `Pipeline([emb,
    GlobalAveragePooling1D()])(x)` beside `GlobalAveragePooling1D()(emb(x))`, emb an
    Embedding(20, 8, mask_zero=True) of 6 tokens, charged both poolings and both mask SUMs
    where the file computes one: Keras / float file hierarchy and paper 2.0000."""
    on = getattr(mask, "_dkm_on", None)
    if on is not None and env.get(id(on)) is not None:  # a Masking's only with its Pipeline's
        merged = _merged_outside(getattr(mask, "_dkm_by", None))
        return ("mask", env[id(on)]) if merged else ("mask", "pipeline", env[id(on)])
    made = state.get("mask_on", {}).get(id(mask))
    return None if made is None else made[1]


def _merged_outside(layer):
    """Whether the mask `layer` makes in a Pipeline is the file's twin of the one Keras records
    on its call outside: an Embedding's (`not_equal(x, 0)`; or a nested model's whose output
    an Embedding makes), not a `Masking`'s (the file computes both: `Pipeline([Masking(0.),
    GAP])(t)` beside `GAP(Masking(0.)(t))`, t 6x8, charged one pooling and SUM, Keras / float
    file hierarchy and paper 0.5000 before the fix; with a Dense after each Masking 0.7857)."""
    import keras

    if isinstance(layer, keras.Model) and _has_graph(layer):  # its output an Embedding's
        layer = getattr(keras.tree.flatten(layer.outputs)[0], "_keras_history", (None,))[0]
    return isinstance(layer, keras.layers.Embedding)


def note_masks(ins, outs, keys, state):
    """Notes the masks Keras recorded on the outputs `outs` (keyed `keys`) of a call on `ins`
    that are not an input's passed on: made there (`mask_key`)."""
    given = [getattr(t, "_keras_mask", None) for t in ins] + list(ins)  # passed, given
    for t, k in zip(outs, keys):
        mask = getattr(t, "_keras_mask", None)
        if mask is not None and not any(mask is g for g in given):
            state.setdefault("mask_on", {}).setdefault(id(mask), (mask, ("mask", k)))  # ids


def _listed(tensors):
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def pipeline_mask(call):
    """The mask tensor a Pipeline's call `(inputs, outputs)` was given (its second input: the
    `mask` keyword of its node, passed or the mask its input carries), else None."""
    ins = _listed(call[0])
    if len(ins) != 2:
        return None
    try:
        op, index, _ = _listed(call[1])[0]._keras_history
        arguments = op._inbound_nodes[index].arguments
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    args, kwargs = tuple(arguments.args), dict(arguments.kwargs)
    mask = kwargs.get("mask", args[2] if len(args) > 2 else None)
    return ins[1] if mask is ins[1] else None


def masked_chain(leaves, x, given, shape, keras):
    """The mask each layer of `leaves` (a Pipeline's, in order) is called with, else None: as
    `Pipeline.call` gives it (`given`, else the one its input `x` carries, also one Keras
    records none of, `carried_mask`, to the first layer whose call takes a mask; to a later
    one the mask its input carries, the one before's `compute_mask`: passed on unchanged by
    Dense, Dropout, ..., dropped by a pooling, a new one where a layer computes its own, a
    fresh tensor never merged; a nested model's, `model_mask`)."""
    return _chain(leaves, x, given, shape, keras)[0]


def output_mask(layer, call, keras):
    """The mask on the output of call `(inputs, outputs)` of the Pipeline `layer` when it
    runs (its last layer's, which `Pipeline.call` returns; Keras records none on it), else
    None: read by a layer after it that takes a mask (`carried_mask`)."""
    given = pipeline_mask(call)
    data = _listed(call[0])[:1]
    if not data or not hasattr(data[0], "shape"):
        return None
    return _chain(list(_leaves(layer, keras)), data[0], given, tuple(data[0].shape), keras)[1]


def passes_mask(layer, call, keras):
    """Whether the Pipeline `layer`'s call `(inputs, outputs)`, given no mask, returns the
    mask its first input carries unchanged (`Pipeline([Dense(8)])`; not one with a pooling
    or a `Masking`): `attention_mask._passed_back` follows a mask back through it."""
    if pipeline_mask(call) is not None or not _listed(call[0]):
        return False
    x = _listed(call[0])[0]
    start = keras.KerasTensor(tuple(x.shape)[:-1], dtype="bool")
    return _chain(list(_leaves(layer, keras)), x, None, tuple(x.shape), keras, start)[1] is start


def _chain(leaves, x, given, shape, keras, start=None):
    """`(masks, last, notes)`: `masked_chain`'s masks, the mask on the last layer's output,
    and the notes of `_next_mask` (a `compute_mask` that failed); `start`: the mask `x`
    carries, where not its own (`carried_mask`)."""
    carried = carried_mask(x, keras) if start is None else start
    passed, out, notes = given, [], []
    for sub in leaves:
        takes = getattr(sub, "_call_has_mask_arg", False)
        mask = (passed if passed is not None else carried) if takes else None
        out.append(mask)
        previous = mask if mask is not None else carried
        carried = passed = _next_mask(sub, previous, shape, keras, notes)
        if getattr(carried, "_dkm_fresh", False) and carried is not previous:
            carried._dkm_made_at = len(out) - 1  # on the output of this layer (`mask_key`)
            carried._dkm_by = sub
        try:
            shape = _output_shape(sub, shape, keras)
        except Exception:  # noqa: BLE001 - `pipeline_calls` says why
            break
    return out + [None] * (len(leaves) - len(out)), carried, notes


def _next_mask(sub, mask, shape, keras, notes):
    """The mask on the output of layer `sub` called on a tensor of `shape` with `mask`
    (`Layer._set_mask_metadata`): a nested Functional / Sequential model's its graph's
    output carries (`model_mask`: before 2026-12-07 None, its
    `supports_masking` is False, though its output carries the mask its Dense passes on:
    `Pipeline([Model(j, Dense(8)(j)), GlobalAveragePooling1D()])` on an Embedding(mask_zero)
    0.9697 / 0.9936); None where it does not support masking; `mask` where it passes it on
    (Keras' own `compute_mask`), else its `compute_mask` on symbolic tensors (a new mask: a
    fresh tensor of its shape; an error: None, and a line in `notes`)."""
    if isinstance(sub, keras.Model):
        return model_mask(sub, 0, [mask], keras, shape)
    if not getattr(sub, "supports_masking", False):
        return None
    if getattr(type(sub), "compute_mask", None) is keras.layers.Layer.compute_mask:
        return mask
    try:
        new = sub.compute_mask(keras.KerasTensor(shape), mask)
    except Exception as e:  # noqa: BLE001 - any layer's own error: no mask known, said
        notes.append(f"Pipeline layer {sub.name!r} ({type(sub).__name__}): its compute_mask "
                     f"failed on an input of shape {shape} ({type(e).__name__}: {e}); the "
                     "layers after it read as given no mask")
        return None
    if new is None or not hasattr(new, "shape"):
        return None
    return mask if new is mask else fresh(tuple(new.shape), keras)


def _leaves(layer, keras):
    """The layers of Pipeline ``layer``, a nested Pipeline's in its place (recursively): a
    batch norm first in a nested Pipeline then follows the layer before it, into which it is
    folded (before 2026-12-06 it was charged: Pipeline([Conv2D, Pipeline([BN, ReLU])]))."""
    for sub in layer.layers:
        yield from (_leaves(sub, keras) if isinstance(sub, keras.layers.Pipeline) else [sub])


def _output_shape(layer, shape, keras):
    """``layer``'s output shape for input ``shape``; a nested Pipeline (which has no
    `compute_output_shape`: before 2026-12-06 the outer Pipeline was skipped whole) along the
    chain of its layers."""
    if isinstance(layer, keras.layers.Pipeline):
        for sub in layer.layers:
            shape = _output_shape(sub, shape, keras)
        return tuple(shape)
    return tuple(layer.compute_output_shape(shape))


def _passed_back(x, ins):
    """The tensor of ``ins`` (a nested model's inputs) whose mask ``x`` carries, followed back
    through the layers that pass a mask on unchanged (``supports_masking``, Keras' own
    ``compute_mask``: Dense, Dropout, ReLU, ...) and read one tensor, and the merges
    (Add, ...) all of whose inputs lead back to one tensor, and the Pipelines passing it on
    (`passes_mask`: `Pipeline([Dense(8)])`; before 2026-12-07 not followed,
    a pooling after it in a nested model charged no mask SUM, 0.9697 / 0.9936), else
    ``x``. Keras gives a nested model's graph tensors no mask: a mask from outside reaches
    ``x`` at run time (Embedding outside, a Dense then the pooling inside: paper 11,201.0
    vs the file's 11,237.6 before 2026-12-07); so through a nested model whose graph passes it
    (`_through_model`)."""
    import keras
    from keras.src.layers.merging.base_merge import Merge

    while not any(t is x for t in ins):
        op, index, at = getattr(x, "_keras_history", (None, 0, 0))
        if isinstance(op, keras.Model) and _has_graph(op):  # through its graph, if it passes
            back = _through_model(op, index, at, x)
            if back is x:
                return x
            x = back
            continue
        if isinstance(op, keras.layers.Pipeline):  # one passing its input's mask on
            try:
                node = op._inbound_nodes[index]
                call = (list(node.input_tensors), list(node.outputs))
            except (AttributeError, IndexError):
                return x
            if not passes_mask(op, call, keras):
                return x
            x = call[0][0]
            continue
        merge = isinstance(op, Merge) and type(op).compute_mask is Merge.compute_mask
        if not merge and (not getattr(op, "supports_masking", False) or getattr(
                type(op), "compute_mask", None) is not keras.layers.Layer.compute_mask):
            return x
        try:
            tensors = keras.tree.flatten(op._inbound_nodes[index].input_tensors)
        except (AttributeError, IndexError):
            return x
        if merge:  # the AND of its inputs' masks: one mask where all read it (`x + f(x)`)
            tensors = list({id(t): t for t in (_passed_back(t, ins) for t in tensors)}.values())
        if len(tensors) != 1:
            return x
        x = tensors[0]
    return x


def _has_graph(model):
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _through_model(model, index, at, x):
    """The tensor its call ``index`` of the nested Functional or Sequential ``model`` read
    whose mask its output ``at`` (``x``) carries, else ``x``. A mask on the model's input
    reaches its graph's layers at run time (`Functional.call` sets it on its inputs) and so
    its output where they pass it on: followed back through the graph (`_passed_back`)
    (Embedding outside, [a model of a Dense] then the pooling in a nested model: paper
    2,996.3 vs the file's 3,014.5 before 2026-12-07); a graph dropping it (a Conv1D) ends
    there."""
    import keras

    try:
        own = keras.tree.flatten(model.inputs)
        start = _passed_back(keras.tree.flatten(model.outputs)[at], own)
        got = keras.tree.flatten(model._inbound_nodes[index].input_tensors)
    except (AttributeError, IndexError, TypeError):
        return x
    k = [i for i, t in enumerate(own) if t is start]
    return got[k[0]] if k and len(got) == len(own) else x
