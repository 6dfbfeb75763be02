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
16 wide: paper 4,837.6 vs the file's 4,874.2, hierarchy 190,276 vs 192,993).
"""


def call_kwargs(call):
    """The keyword arguments of the Functional call ``(inputs, outputs)`` (its node's), or {}."""
    try:
        op, index, _ = call[1][0]._keras_history
        return dict(op._inbound_nodes[index].arguments.kwargs)
    except (AttributeError, IndexError, TypeError):
        return {}


def mask_records(layer, name, call, keras):
    """``[record]`` of the masking ADD of an Attention-family call with a scores mask, or of
    the mask's SUM of a masked GlobalAveragePooling1D call, else []."""
    from dkm_tf.energy import shapes as sh

    if isinstance(layer, keras.layers.GlobalAveragePooling1D):
        return _pooled_mask(layer, name, call, sh)
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


def _pooled_mask(layer, name, call, sh):
    """``[record]`` of the SUM over the T steps of a masked GlobalAveragePooling1D call's
    ``(batch, T)`` mask, as the `.tflite`'s (an average pooling of 1 channel), else []."""
    if isinstance(call, Exception):
        return []
    mask = call_kwargs(call).get("mask")
    shape = tuple(getattr(mask, "shape", ()) or ())
    if len(shape) != 2 or shape[1] is None:
        return []
    steps = int(shape[1])
    return [sh.pool_shape(f"{name}/mask_sum", in_hw=(1, steps), channels=1, out_hw=(1, 1),
                          window=(1, steps), pool_op="avg", layer=layer.name,
                          op=type(layer).__name__)]
