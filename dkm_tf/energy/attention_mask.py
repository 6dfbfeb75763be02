"""The masking of the scores of a Keras `Attention` / `AdditiveAttention` call.

Keras (`Attention._apply_scores`) masks the T_q·T_v scores as ``where(~mask, scores - 1e9,
scores)`` whenever the call has a scores mask (``use_causal_mask=True`` or a value mask,
``mask=[query_mask, value_mask]``; a query mask alone masks none): the subtraction is an ADD
of T_q·T_v elements with 2 inputs in the `.tflite` (the select is not priced). Before
2026-12-06 the Keras estimate left it out (AdditiveAttention with a causal mask, T = 4,
d = 8: paper 5,009.5 vs the `.tflite`'s 5,106.4). A mask carried by the inputs themselves
(`Embedding(mask_zero=True)`, `Masking`) is not seen in the call's arguments: not charged
(KNOWN_LIMITATIONS.md).

A `GlobalAveragePooling1D` call with a mask (its input's, e.g. of `Embedding(mask_zero=True)`)
averages the kept steps, ``sum(x * mask) / sum(mask)``: the `.tflite` has a SUM of the T-step
mask (charged as an average pooling of 1 channel) beside the SUM of the inputs (the pooling's
record); the select of the masked steps and the division are not charged there, nor is a plain
average's division. Before 2026-12-07 the Keras estimate left the mask's SUM out (12 tokens,
16 wide: paper 4,837.6 vs the file's 4,874.2, hierarchy 190,276 vs 192,993). The SUM is
charged once per mask tensor, as the file computes it once for all the poolings of one mask
(two GlobalAveragePooling1D calls on one Embedding's mask: 12,196.0 vs the file's 12,159.4
when charged twice). A pooling of a nested model's own input takes the mask of the tensor
the model was called on (`Embedding(mask_zero=True)` outside, the pooling inside: 921.5 vs
958.1 before), also after layers there that pass a mask on unchanged (`_passed_back`) and
after an Add-type merge all of whose inputs lead back to one tensor (`x + Dense(x)`) and
through a nested model whose graph passes the mask so (2,996.3 vs 3,014.5 before), and after
a layer there that computes a mask of its own from it (a `Concatenate`, a recurrent layer, an
attention layer: `carried_masks.carried_mask` given the nested model's inputs' masks; before
session 31 not seen: Embedding(20, 8, mask_zero=True) of 6 tokens -> a nested model of
`Concatenate([Dense(16)(j), j])` then the pooling, Keras / float file hierarchy 0.9849, paper
0.9969; `LSTM(8, return_sequences=True)` then Dense(8) 0.9971 / 0.9993).
"""

from dkm_tf.energy.carried_masks import _passed_back, carried_mask

_MASKS = ("<attention_mask: charged mask SUMs>",)  # key in the walk's `used` (not a name)


def call_kwargs(call):
    """The keyword arguments of the Functional call ``(inputs, outputs)`` (its node's), or {}:
    not a `keras.layers.Pipeline`'s, the call of its last layer writing its output (their
    masks: `carried_masks.masked_chain`; the pooling of `Pipeline([Dense(3),
    GlobalAveragePooling1D()])(t, mask=m)`, which Keras gives no mask, would be charged the
    mask's SUM: Keras / file hierarchy 1.0666)."""
    try:
        op, index, _ = call[1][0]._keras_history
        if type(op).__name__ == "Pipeline":
            return {}
        return dict(op._inbound_nodes[index].arguments.kwargs)
    except (AttributeError, IndexError, TypeError):
        return {}


def mask_records(layer, name, call, keras, used=None, outer=None):
    """``[record]`` of the masking ADD of an Attention-family call with a scores mask, or of
    the mask's SUM of a masked GlobalAveragePooling1D call, else []. ``used``: the walk's
    state (``keras_reader._walk``), where the masks already charged are kept: one SUM per
    mask tensor in one estimate. ``outer``: where the call is in a nested model, the
    reader's ``(its inputs, its call's inputs, ...)``: a pooling of the nested model's input
    itself takes the mask of the tensor the model was called on."""
    from dkm_tf.energy import shapes as sh

    if isinstance(layer, keras.layers.GlobalAveragePooling1D):
        mask = None if isinstance(call, Exception) else call_kwargs(call).get("mask")
        if mask is None and not isinstance(call, Exception):  # a Pipeline's layer: its
            mask = call[0][1] if isinstance(call[0], (list, tuple)) and len(  # second input
                call[0]) == 2 else None  # (`carried_masks.masked_chain`)
        if mask is None and not isinstance(call, Exception):
            mask = _outer_mask(call[0], outer)
        if mask is None and not isinstance(call, Exception):
            mask = _carried(call[0], keras)
        mask = _query_mask(call, mask, keras)
        records = _pooled_mask(layer, name, mask, sh)
        if records and used is not None:
            seen = used.setdefault(_MASKS, {})
            if id(mask) in seen:
                return []
            seen[id(mask)] = mask  # held: its id is not reused during the walk
        return records
    if not isinstance(layer, keras.layers.Attention) or isinstance(call, Exception):
        return []
    kwargs = call_kwargs(call)
    mask = kwargs.get("mask")  # [query mask, value mask]: only the value mask masks scores
    if isinstance(mask, (list, tuple)):
        mask = mask[1] if len(mask) > 1 else None
    if not kwargs.get("use_causal_mask") and mask is None:
        return []
    try:
        q, v = (tuple(call[0][i].shape) for i in (0, 1))
    except (AttributeError, IndexError):
        return []
    if len(q) != 3 or len(v) != 3 or q[1] is None or v[1] is None:
        return []
    return [sh.eltwise_shape(f"{name}/mask", elements=int(q[1]) * int(v[1]), eltwise_op="add",
                             n_inputs=2, layer=layer.name, op=type(layer).__name__)]


def _outer_mask(x, outer):
    """The mask carried by the tensor a nested model's input ``x`` was called on (through
    the models around it), or the one a layer there computes from it (`carried_mask` given
    the masks of the model's inputs), or None; None also where ``x`` is not a nested
    model's input."""
    import keras

    x = x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x
    x = getattr(x, "_dkm_outer_of", x)  # a Pipeline's layer reading the mask of its input
    while outer is not None:
        ins, got = outer[0], outer[1]
        x = _passed_back(x, ins)
        at = [i for i, t in enumerate(ins) if t is x]
        if not at and len(got) >= len(ins):  # a layer there computing a mask of its own
            further = outer[3] if len(outer) > 3 else None
            masks = [_carried(g, keras) for g in got[:len(ins)]]
            masks = [_outer_mask(g, further) if m is None else m for g, m in zip(got, masks)]
            return carried_mask(x, keras, (ins, masks)) if any(
                m is not None for m in masks) else None
        if not at or at[0] >= len(got):
            return None
        x = got[at[0]]
        mask = _carried(x, keras)
        if mask is not None:
            return mask
        outer = outer[3] if len(outer) > 3 else None
    return None


def _carried(x, keras):
    """The mask `x` (one tensor, or a list of one) carries when the model runs, also one
    Keras records none of: the output of a Pipeline or nested model, or a Dense after it
    (`carried_masks`; before 2026-12-07 not seen: `GlobalAveragePooling1D()(Pipeline([
    Dense(8)])(e))` on an Embedding(mask_zero) charged no mask SUM, 0.9697 / 0.9936)."""
    x = x[0] if isinstance(x, (list, tuple)) and len(x) == 1 else x
    return None if isinstance(x, (list, tuple)) else carried_mask(x, keras)


def _query_mask(call, mask, keras):
    """The mask of the query of the `Attention` whose output `call` pools, where `mask` is
    the mask on that output (`Attention.compute_mask` returns the query's, a new tensor of
    the same value: one SUM in the file), else `mask`. Before the fix `[GAP(Attention()([p,
    p])), GAP(p)]`, p a Dense(8) of an Embedding(mask_zero) of 6 tokens, was charged 2 SUMs
    where the file computes one: hierarchy 0.8494 (also with p a Pipeline's output)."""
    x = call[0][0] if isinstance(call[0], (list, tuple)) else call[0]
    op, index, _ = getattr(x, "_keras_history", (None, 0, 0))
    if mask is None or not isinstance(op, keras.layers.Attention) or type(
            op).compute_mask is not keras.layers.Attention.compute_mask:
        return mask
    try:
        q = keras.tree.flatten(op._inbound_nodes[index].arguments.args[0])[0]
    except (AttributeError, IndexError, TypeError):
        return mask
    if mask is not getattr(x, "_keras_mask", None) and mask is not carried_mask(x, keras):
        return mask
    query = getattr(q, "_keras_mask", None)
    query = carried_mask(q, keras) if query is None else query
    return mask if query is None or tuple(query.shape) != tuple(mask.shape) else query


def _pooled_mask(layer, name, mask, sh):
    """``[record]`` of the SUM over the T steps of a masked GlobalAveragePooling1D call's
    ``(batch, T)`` mask, as the `.tflite`'s (an average pooling of 1 channel), else []."""
    shape = tuple(getattr(mask, "shape", ()) or ())
    if len(shape) != 2 or shape[1] is None:
        return []
    steps = int(shape[1])
    return [sh.pool_shape(f"{name}/mask_sum", in_hw=(1, steps), channels=1, out_hw=(1, 1),
                          window=(1, steps), pool_op="avg", layer=layer.name,
                          op=type(layer).__name__)]
