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
is a fresh tensor, one per call (kept here so that the readers of one output share it: one
mask SUM for all of its poolings, as the file computes it once).
"""

import weakref

_FRESH = weakref.WeakKeyDictionary()  # layer -> {(node index, output index): mask}


def carried_mask(x, keras):
    """The mask tensor `x` carries when the model runs, else None: its `_keras_mask`; else,
    where `x` is an output of a Pipeline (`keras_pipeline.output_mask`) or of a nested
    Functional or Sequential model (the mask its graph's output carries), that one; else,
    where a layer passing its input's mask on unchanged (Dense, Dropout, ReLU, ...: it
    supports masking with Keras' own `compute_mask`) made `x` from one tensor, that one's."""
    for _ in range(10_000):  # a graph's depth: a chain of pass-on layers
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
        if not getattr(op, "supports_masking", False) or getattr(
                type(op), "compute_mask", None) is not keras.layers.Layer.compute_mask:
            return None
        tensors = keras.tree.flatten(node.arguments.args)
        if len(tensors) != 1:
            return None
        x = tensors[0]
    return None


def _out_mask(op, index, at, node, keras):
    from dkm_tf.energy.keras_pipeline import output_mask

    call = (list(node.input_tensors), list(node.outputs))
    if isinstance(op, keras.layers.Pipeline):
        made = output_mask(op, call, keras)
    else:
        args = keras.tree.flatten(node.arguments.args)
        given = node.arguments.kwargs.get("mask")
        given = keras.tree.flatten(given) if given is not None else [None] * len(args)
        masks = [g if g is not None else carried_mask(t, keras) for t, g in zip(args, given)]
        made = model_mask(op, at, masks, keras)
    if made is None or not getattr(made, "_dkm_fresh", False):
        return made
    memo = _FRESH.setdefault(op, {})
    return memo.setdefault((index, at), made)  # one per call: its readers share it


def model_mask(model, at, masks, keras):
    """The mask on output `at` of the nested Functional or Sequential `model` called with
    `masks` (one per input, or None) when it runs: a fresh tensor where its graph makes one
    (an Embedding(mask_zero=True), a `Masking` in it), the one of an input where its graph's
    layers pass that on (`attention_mask._passed_back`: a Dense; not a Conv1D), else None
    (also for a subclassed model: no graph to follow)."""
    from dkm_tf.energy.attention_mask import _passed_back

    try:
        own = keras.tree.flatten(model.inputs)
        out = keras.tree.flatten(model.outputs)[at]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
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
    return mask


def keyed_with_mask(op, ins, args, in_keys, env, keras):
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
    return (args[0], kwargs) + tuple(args[2:]), in_keys + [env.get(id(mask)) or object()]
