"""Energy records of recurrent and attention layers, read from built Keras layers.

Covers SimpleRNN, LSTM, GRU, ``keras.layers.RNN`` over those cells (a list of cells included),
Bidirectional, ConvLSTM1D / ConvLSTM2D (`_conv_lstm_records`), EinsumDense and
MultiHeadAttention (GroupQueryAttention: `gqa_records`). Counts are per input sample. A record's
name is ``<layer>/<weight path>`` with the weight paths of :mod:`dkm_tf.graph.clusterable`
(``lstm/cell.kernel``, ``mha/query_dense.kernel``), so palettes find their kernel by name.

Recurrent layers, with T time steps, F input features, u units and g gates (1 SimpleRNN,
3 GRU, 4 LSTM); each cell of a stack reads the previous cell's u features:

* input kernel: a dense record at T positions, T·F·g·u MACs, F·g·u weights;
* recurrent kernel: a dense record at T positions, T·u·g·u MACs, u·g·u weights;
* gate arithmetic, element-wise records over T steps: LSTM 3·u products (f·c, i·g, o·tanh c)
  and 5·u sums (x·W + h·U over 4·u, the cell update over u); GRU 3·u products (r·(h·U_h),
  z·h, (1 − z)·h̃) and 5·u sums; SimpleRNN u sums. Biases and the sigmoid / tanh
  non-linearities are not charged (as for every layer here).

Inside a `TimeDistributed` (input ``(batch, T', T, F)``, the converter unrolls the T' runs)
each record covers the T' runs, cut into T' per-step copies by `keras_wrapped.step_records`;
before 2026-12-07 such a layer was listed ("not (batch, steps, features)") and charged
nothing (an LSTM(4) over 3 x 5 x 4: the file 1,920 MACs), and a TimeDistributed ConvLSTM1D
took T' for its steps (768 of the file's 2,304 MACs).

EinsumDense ``x, W -> y``: the kernel's letters that are contracted give the dot length D,
its letters in the output the output channels C (G of them also index the input: per-group
weights, e.g. one matrix per head), so it is a grouped dense record with
``prod(y) / C`` positions: ``prod(y) · D`` MACs and D · C weights (the kernel's size).

MultiHeadAttention with h heads, key size d_k, value size d_v, T_q query and T_k key
positions: its four projections are EinsumDense records, plus

* ``<layer>/scores`` (QKᵀ): a grouped dense record, G = h, T_q positions, T_q·h·T_k·d_k MACs;
* ``<layer>/context`` (softmax(·)·V): G = h, T_q positions, T_q·h·d_v·T_k MACs;
* ``<layer>/scale``: the 1/√d_k product, T_q·h·T_k elements of the scores where Keras calls
  `ops.dot_product_attention`, else the queries' T_q·h·d_k (none with one attention axis:
  the converter folds it into the query projection), see `gqa_records.attention_scale`.

The second operand of the two attention products (K and V) is an activation, but it is
counted in the records' weight terms (h·T_k·d_k and h·T_k·d_v values): it is fetched the same
way. The softmax is not charged. With ``attention_axes``, the non-attended index axes act as
a batch (they multiply the positions).
"""

import math

_GATES = {"LSTMCell": 4, "GRUCell": 3, "SimpleRNNCell": 1}
# (products, sums) per unit and step, see the module docstring
_GATE_OPS = {"LSTMCell": (3, 5), "GRUCell": (3, 5), "SimpleRNNCell": (0, 1)}


def classify_sequence_layer(layer, alias, in_shapes, out_shape, keras, n_outputs=1):
    """``(records, skip_reason)`` for a recurrent / attention layer, or None for other layers.

    Args:
        layer: the (inner) Keras layer.
        alias: the name records carry as ``layer`` (the inner layer's name).
        in_shapes: the layer's input shapes (batch axis first).
        out_shape: its (first) output shape.
        keras: the keras module.
        n_outputs: the call's number of outputs (2: attention scores returned).
    """
    L = keras.layers
    if isinstance(layer, L.Bidirectional):
        records = []
        for side in ("forward_layer", "backward_layer"):
            recs, reason = _rnn_records(getattr(layer, side), alias, in_shapes[0], f"{side}.")
            if reason:
                return [], reason
            records += recs
        mode = {"sum": "add", "ave": "add", "mul": "mul"}.get(layer.merge_mode)
        if mode:
            records.append(_eltwise(f"{alias}/merge", alias, math.prod(out_shape[1:]), mode,
                                    2, "Bidirectional"))
        return records, None
    if isinstance(layer, L.RNN) and type(layer.cell).__name__ == "ConvLSTMCell":
        return _conv_lstm_records(layer, alias, in_shapes[0], out_shape)
    if isinstance(layer, L.RNN):
        return _rnn_records(layer, alias, in_shapes[0], "")
    if isinstance(layer, L.MultiHeadAttention):
        return _mha_records(layer, alias, n_outputs, in_shapes)
    if type(layer).__name__ in ("GroupQueryAttention", "GroupedQueryAttention"):
        from dkm_tf.energy.gqa_records import gqa_records

        return gqa_records(layer, alias, in_shapes, _einsum_records)
    if isinstance(layer, L.EinsumDense):
        return _einsum_records(layer, alias, "kernel", in_shapes[0])
    return None


def is_traced_sequence_layer(layer, keras):
    """Whether a traced call of ``layer`` is charged by :func:`traced_records` (recurrent
    layers: their traced ops are one step's, see there)."""
    return isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))


def traced_sequence_layers(layers, keras):
    """Ids of the layers of ``layers`` whose traced calls :func:`traced_records` charges:
    the recurrent ones, except the two directions of a ``Bidirectional`` (charged with it)."""
    inner = {id(side) for x in layers if isinstance(x, keras.layers.Bidirectional)
             for side in (x.forward_layer, x.backward_layer)}
    return {id(x) for x in layers if is_traced_sequence_layer(x, keras) and id(x) not in inner}


def traced_records(layer, in_shape, keras, unique=None):
    """``(records, skip_reason)`` of one traced call of a recurrent layer (``graph_reader``).

    Traced with TensorFlow, Keras runs the cell once before its ``while`` loop (to learn the
    output's structure), and the loop body is a function the graph reader does not open:
    the ops read from the graph are one step's, and their records were named after the
    cell (``lstm_cell``), which no palette names. Here the call is charged as the Keras
    reader charges the layer: T steps read from the call's input shape ``in_shape``
    (batch axis first), records named ``<layer>/<weight path>``; ``unique`` (a callable)
    makes a repeated record name unique (a layer called twice).
    """
    import dataclasses

    shape = tuple(in_shape or ())
    if len(shape) < 3:
        return [], (f"input shape {shape} of recurrent layer {layer.name!r} not found in the "
                    "trace: not charged")
    shape = (None, *shape[1:])
    out_shape = layer.compute_output_shape(shape)
    if out_shape and isinstance(out_shape[0], (tuple, list)):  # return_state: the output
        out_shape = out_shape[0]
    records, reason = classify_sequence_layer(layer, layer.name, [shape], tuple(out_shape),
                                              keras)
    if unique is not None:
        records = [dataclasses.replace(r, name=unique(r.name)) for r in records]
    return records, reason


def _eltwise(name, layer, elements, op, n_inputs, source):
    from dkm_tf.energy import shapes as sh

    return sh.eltwise_shape(name, elements=int(elements), eltwise_op=op, n_inputs=n_inputs,
                            layer=layer, op=source)


def _rnn_records(rnn, alias, in_shape, prefix):
    """Records of one RNN layer (one direction) over input ``(batch, T, F)``."""
    from dkm_tf.energy import shapes as sh

    if len(in_shape) < 3 or any(d is None for d in in_shape[1:]):
        return [], f"recurrent input shape {tuple(in_shape)} is not (batch, steps, features)"
    # axes between the batch and the steps: a TimeDistributed's (one run per index, each
    # charged as the layer, then cut per step by `keras_wrapped.step_records`)
    lead = math.prod(int(d) for d in in_shape[1:-2])
    steps, features = int(in_shape[-2]), int(in_shape[-1])
    cell = rnn.cell
    cells = list(cell.cells) if type(cell).__name__ == "StackedRNNCells" else [cell]
    records, op = [], type(rnn).__name__
    for i, c in enumerate(cells):
        kind = type(c).__name__
        if kind not in _GATES:
            return [], (f"unsupported RNN cell {kind}; supported: LSTMCell, GRUCell, "
                        "SimpleRNNCell (also in StackedRNNCells)")
        path = f"{prefix}cell." + (f"cells.{i}." if cell is not c else "")
        u, g = int(c.units), _GATES[kind]
        records.append(sh.dense_shape(f"{alias}/{path}kernel", in_features=features,
                                      units=g * u, positions=lead * steps, layer=alias, op=op))
        records.append(sh.dense_shape(f"{alias}/{path}recurrent_kernel", in_features=u,
                                      units=g * u, positions=lead * steps, layer=alias, op=op))
        products, sums = _GATE_OPS[kind]
        if products:
            records.append(_eltwise(f"{alias}/{path}gates_mul", alias,
                                    lead * steps * products * u, "mul", 2, op))
        records.append(_eltwise(f"{alias}/{path}gates_add", alias, lead * steps * sums * u,
                                "add", 2, op))
        features = u
    return records, None


def _conv_lstm_records(rnn, alias, in_shape, out_shape):
    """Records of a ConvLSTM1D / ConvLSTM2D over input ``(batch, T, *spatial, C)``: per step
    the input conv (C -> 4f, the layer's strides and padding) and the recurrent conv (f -> 4f,
    'same', stride 1) at the output's H'·W' positions, and the LSTM's gate arithmetic over
    f·H'·W' values (3 products, 5 sums), as for an LSTM of f·H'·W' units."""
    from dkm_tf.energy import shapes as sh

    cell, op = rnn.cell, type(rnn).__name__
    if cell.rank not in (1, 2) or any(d is None for d in tuple(in_shape)[1:]):
        return [], f"{op} over input {tuple(in_shape)}: only ConvLSTM1D / ConvLSTM2D modelled"
    first = cell.data_format == "channels_first"
    lead = math.prod(int(d) for d in in_shape[1:-cell.rank - 2])  # a TimeDistributed's axes
    dims = [int(d) for d in in_shape[-cell.rank - 1:]]
    steps, c = lead * int(in_shape[-cell.rank - 2]), dims[0] if first else dims[-1]
    spatial = [int(d) for d in (out_shape[-cell.rank:] if first else out_shape[-cell.rank - 1:-1])]
    hw = (1, spatial[0]) if cell.rank == 1 else tuple(spatial)
    kernel = (1, cell.kernel_size[0]) if cell.rank == 1 else tuple(cell.kernel_size)
    in_hw = (1, dims[1 if first else 0]) if cell.rank == 1 else \
        tuple(dims[1:3] if first else dims[0:2])
    f = int(cell.filters)
    common = {"layer": alias, "op": op, "repeat": steps, "kernel": kernel, "out_hw": hw}
    elements = steps * f * hw[0] * hw[1]
    return [sh.conv_shape(f"{alias}/cell.kernel", in_hw=in_hw, in_c=c, out_c=4 * f, **common),
            sh.conv_shape(f"{alias}/cell.recurrent_kernel", in_hw=hw, in_c=f, out_c=4 * f,
                          **common),
            _eltwise(f"{alias}/cell.gates_mul", alias, 3 * elements, "mul", 2, op),
            _eltwise(f"{alias}/cell.gates_add", alias, 5 * elements, "add", 2, op)], None


def _einsum_parts(layer, in_rank):
    """(input, kernel, output) letters of an EinsumDense equation, ``...`` spelled out."""
    spec = layer.equation.replace(" ", "")
    inputs, _, output = spec.partition("->")
    parts = inputs.split(",")
    if len(parts) != 2 or "." in parts[1]:
        return None
    x_spec = parts[0]
    if "..." in x_spec:
        extra = "".join(chr(0x3B1 + i) for i in range(in_rank - len(x_spec) + 3))  # α, β, ...
        x_spec, output = x_spec.replace("...", extra), output.replace("...", extra)
    return x_spec, parts[1], output


def _einsum_out_shape(x_spec, w_spec, y_spec, in_shape, w_shape):
    """The output shape, each letter sized by the input or the kernel (batch stays None)."""
    size = dict(zip(w_spec, w_shape))
    size.update((ch, d) for ch, d in zip(x_spec, in_shape) if d is not None)
    return tuple(size.get(ch) for ch in y_spec)


def _einsum_records(layer, alias, path, in_shape, name=None, op="EinsumDense"):
    """One grouped dense record for an EinsumDense kernel (see the module docstring)."""
    from dkm_tf.energy import shapes as sh

    parts = _einsum_parts(layer, len(in_shape))
    if parts is None:
        return [], f"EinsumDense equation {layer.equation!r} not supported"
    x_spec, w_spec, y_spec = parts
    if any(d is None for d in tuple(in_shape)[1:]):
        return [], f"unknown dimension in input shape {tuple(in_shape)}"
    lead = max(len(in_shape) - len(x_spec), 0)  # a TimeDistributed's steps: more positions
    steps, in_shape = math.prod(in_shape[1:1 + lead]), (in_shape[0], *in_shape[1 + lead:])
    w_shape = tuple(int(d) for d in layer.kernel.shape)
    out_shape = _einsum_out_shape(x_spec, w_spec, y_spec, tuple(in_shape), w_shape)
    if any(ch not in x_spec and ch not in y_spec for ch in w_spec):
        return [], f"EinsumDense equation {layer.equation!r}: a kernel axis is summed alone"
    dot = math.prod(w_shape[i] for i, ch in enumerate(w_spec) if ch not in y_spec)
    out_c = math.prod(w_shape[i] for i, ch in enumerate(w_spec) if ch in y_spec)
    groups = math.prod(w_shape[i] for i, ch in enumerate(w_spec) if ch in y_spec and ch in x_spec)
    positions = steps * math.prod(int(d) for d in out_shape[1:]) // out_c
    return [sh.dense_shape(name or f"{alias}/{path}", in_features=dot * groups, units=out_c,
                           positions=positions, groups=groups, layer=alias, op=op)], None


def _build_shape(sub):
    config = sub.get_build_config() or {}
    return tuple(config.get("input_shape") or ())


def _mha_records(layer, alias, n_outputs, in_shapes=()):
    from dkm_tf.energy import shapes as sh
    from dkm_tf.energy.open_shapes import call_shape

    records = []
    projected = {}
    for part in ("query_dense", "key_dense", "value_dense", "output_dense"):
        sub = getattr(layer, part)
        # the attention output (batch, query positions..., heads, d_v) feeds output_dense
        shape = call_shape(_build_shape(sub), in_shapes) if part != "output_dense" else (
            projected["query_dense"][:-1] + projected["value_dense"][-1:])
        recs, reason = _einsum_records(sub, alias, f"{part}.kernel", shape,
                                       op="MultiHeadAttention")
        if reason:
            return [], f"{part}: {reason}"
        records += recs
        x_spec, w_spec, y_spec = _einsum_parts(sub, len(shape))
        projected[part] = _einsum_out_shape(x_spec, w_spec, y_spec, shape,
                                            tuple(sub.kernel.shape))
    q, k, v = projected["query_dense"], projected["key_dense"], projected["value_dense"]
    heads, d_k, d_v = int(q[-2]), int(q[-1]), int(v[-1])
    att = tuple(a - 1 for a in (layer.attention_axes or range(1, len(q) - 2)))
    q_idx, k_idx = q[1:-2], k[1:-2]
    batch_like = math.prod(q_idx[i] for i in range(len(q_idx)) if i not in att)
    t_q = batch_like * math.prod(q_idx[i] for i in att)
    t_k = math.prod(k_idx[i] for i in att)
    source = "MultiHeadAttention"
    records.append(sh.dense_shape(f"{alias}/scores", in_features=heads * d_k,
                                  units=heads * t_k, positions=t_q, groups=heads, layer=alias,
                                  op=source))
    records.append(sh.dense_shape(f"{alias}/context", in_features=heads * t_k,
                                  units=heads * d_v, positions=t_q, groups=heads, layer=alias,
                                  op=source))
    from dkm_tf.energy.gqa_records import attention_scale

    return records + attention_scale(layer, alias, (t_q, heads, t_k, d_k), len(q), source,
                                     n_outputs > 1), None
