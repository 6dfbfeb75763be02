"""Energy records of `keras.layers.GroupQueryAttention` (grouped-query attention).

With H query heads, H_kv key/value heads, head size d, T_q query and T_k key positions and
F_q, F_k, F_v input features (per input sample):

* the projections, EinsumDense records (`sequence_reader`): query T_q·F_q·H·d MACs, key
  T_k·F_k·H_kv·d, value T_k·F_v·H_kv·d, output T_q·H·d·F_out; with `use_gate` a gate
  projection T_q·F_q·H·d and its product with the attention output (T_q·H·d elements);
* the keys and values are repeated to H heads (a copy, no compute), so ``<layer>/scores``
  (QKᵀ) and ``<layer>/context`` (softmax(·)·V) are grouped dense records with G = H,
  T_q·H·T_k·d MACs each (as `MultiHeadAttention`'s), and ``<layer>/scale`` the 1/√d product
  (`attention_scale`).

Before 2026-12-06 the layer was listed as unsupported and its MACs left out (96 of a tiny
model's 2,144 counted; the model's `.tflite` counts all 2,144).
"""


def gqa_records(layer, alias, in_shapes, einsum_records):
    """``(records, skip_reason)`` of a built GroupQueryAttention called with ``in_shapes``
    (query, value[, key]); ``einsum_records`` is `sequence_reader._einsum_records`."""
    from dkm_tf.energy import shapes as sh

    source = type(layer).__name__
    q_in = tuple(in_shapes[0])
    v_in = tuple(in_shapes[1]) if len(in_shapes) > 1 else q_in
    k_in = tuple(in_shapes[2]) if len(in_shapes) > 2 else v_in
    if len(q_in) != 3 or len(k_in) != 3 or len(v_in) != 3:
        return [], f"{source} inputs {q_in}, {v_in} are not (batch, steps, features)"
    heads, d = int(layer.num_query_heads), int(layer.head_dim)
    t_q, t_k = int(q_in[1]), int(k_in[1])
    parts = [("query", q_in), ("key", k_in), ("value", v_in),
             ("output", (None, t_q, heads, d))]
    if getattr(layer, "use_gate", False):
        parts.insert(0, ("gate", q_in))
    records = []
    for part, shape in parts:
        sub = getattr(layer, f"_{part}_dense", None)
        if sub is None:
            return [], f"{source}: no built `_{part}_dense` projection"
        recs, reason = einsum_records(sub, alias, f"{part}_dense.kernel", shape, op=source)
        if reason:
            return [], f"{part}_dense: {reason}"
        records += recs
    common = {"layer": alias, "op": source}
    records.append(sh.dense_shape(f"{alias}/scores", in_features=heads * d, units=heads * t_k,
                                  positions=t_q, groups=heads, **common))
    records.append(sh.dense_shape(f"{alias}/context", in_features=heads * t_k,
                                  units=heads * d, positions=t_q, groups=heads, **common))
    records += attention_scale(layer, alias, (t_q, heads, t_k, d), 4, source,
                               bool(getattr(layer, "_return_attention_scores", False)))
    if getattr(layer, "use_gate", False):
        records.append(sh.eltwise_shape(f"{alias}/gate_mul", elements=t_q * heads * d,
                                        eltwise_op="mul", n_inputs=2, **common))
    return records, None


def attention_scale(layer, alias, dims, q_rank, source, scores_out):
    """The ``<alias>/scale`` record (1/√d) of a `MultiHeadAttention` / `GroupQueryAttention`
    as Keras 3.15 computes it on TensorFlow: with no dropout, no returned attention scores
    and a 4-D projected query (one attention axis) the layer calls `ops.dot_product_attention`,
    which scales the scores, T_q·H·T_k elements (``dims``), a MUL by a constant (2 inputs,
    as the `.tflite` reader and the Keras reader's other constant products count it).
    Otherwise Keras multiplies the projected queries (T_q·H·d): with a 4-D projected query
    (dropout, returned scores) the converter folds that constant into the query projection's
    FULLY_CONNECTED weights: not charged, as the `.tflite` has no op (as a BatchNormalization
    folded into its convolution); with more attention axes (a 5-D query, an einsum the
    converter runs as BATCH_MATMUL + ADD) the MUL stays, T_q·H·d elements. Before 2026-12-06 T_q·H·d
    elements with 1 input were charged in every case (GQA, T_q=3, T_k=7, H=4, d=2: 24 vs the
    `.tflite`'s 84)."""
    from dkm_tf.energy import shapes as sh

    t_q, heads, t_k, d = dims
    if q_rank == 4 and (float(getattr(layer, "dropout", 0.0) or 0.0) > 0 or scores_out):
        return []
    n = t_q * heads * (t_k if q_rank == 4 else d)
    return [sh.eltwise_shape(f"{alias}/scale", elements=n, eltwise_op="mul", n_inputs=2,
                             layer=alias, op=source)]
