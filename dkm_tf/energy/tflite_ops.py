""".tflite ops that are read by what they compute, not by their name alone.

* Reductions (MEAN, REDUCE_MAX, SUM) over every axis between the batch and the channels (the
  last axis; or every axis after axis 1 with a `(batch, channels)` output: `channels_first`)
  are global pooling of a 1-D, 2-D or 3-D feature map: an average
  (MEAN, SUM) or max pooling record, as the Keras reader charges `GlobalAveragePooling1D/2D/3D`
  and `GlobalMaxPooling1D/2D/3D`. A 3-D map (D, H, W) is recorded as a `(D·H) × W` map, the
  Keras reader's layout. Other reductions (over the channels: a `LayerNormalization`'s mean
  and variance) are the statistics the Keras reader does not price either: listed, with the
  reason, not charged.
* A bias ADD: an ADD of a constant (or decoded) vector of the last axis's size to the output of
  a conv or matrix product (through layout ops, or through an ADD of two such outputs: an
  LSTM's `x·W + h·U`) is the bias of that product. Every reader treats a bias as the initial
  value of the product's accumulators, not charged (a FULLY_CONNECTED or CONV_2D stores it as
  an operand; the converter keeps an LSTM's as a separate ADD per step): listed, not charged.
* Ops computing integers only (int32 / int64 / bool outputs from integer or boolean inputs: an
  Embedding's index wrap-around `LESS`, `ADD`, `SELECT`, shape arithmetic `REDUCE_PROD`) are
  index arithmetic, not activations: listed, not charged.
* Lookups and transcendental functions (LOGISTIC, TANH, SOFTMAX, EXP, ...) are not priced by
  the energy models (`activations`): listed as such, as the Keras reader lists sigmoid, tanh and
  softmax activations. SQUARED_DIFFERENCE and SQUARE (a variance) are listed as a
  normalization's statistics, which the Keras reader's LayerNormalization does not price, and
  comparisons and selects (selu's branch) as not priced, as the Keras reader's selu.
* A GATHER from a stored table (an Embedding's lookup) is listed with its layer and the
  table's storage (int8, float16, a palette), not charged, as the Keras reader lists an
  Embedding (`no_compute_reason`); other layout ops are "no compute".
"""

import math

# listed, not charged: {op: reason} (module docstring)
LISTED = dict.fromkeys(
    ("LOGISTIC", "TANH", "SOFTMAX", "LOG_SOFTMAX", "EXP", "LOG", "GELU", "ELU", "HARD_SWISH",
     "RSQRT", "SQRT", "NEG"), "a lookup / transcendental function (or a sign flip), not priced")
LISTED.update(dict.fromkeys(("SQUARED_DIFFERENCE", "SQUARE"),
                            "a variance (normalization statistics), not priced"))
LISTED.update(dict.fromkeys(
    ("GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL", "SELECT",
     "SELECT_V2", "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT"),
    "a comparison / select (an activation's branch, e.g. selu's), not priced"))
REDUCTIONS = {"MEAN": "avg", "SUM": "avg", "REDUCE_MAX": "max"}
_MACS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")
_LAYOUT = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE")  # TRANSPOSE: W-left BATCH_MATMUL
_INTEGER = (2, 4, 6)  # INT32, INT64, BOOL


def integer_only(view, k):
    """Whether op `k` computes integers / booleans from integers / booleans only."""
    op = view.ops[k]
    outs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
    return bool(outs) and all(view.dtype(t) in _INTEGER for t in outs) and all(
        view.dtype(t) in _INTEGER for t in view.inputs(k))


def _axes(view, t, rank):
    """The constant axes of a reduction (normalised to >= 0), or None."""
    import numpy as np

    dtype = {2: np.int32, 4: np.int64}.get(view.dtype(t))
    raw = view.raw(t)
    if dtype is None or not raw:
        return None
    return sorted({int(a) % rank for a in np.frombuffer(raw, dtype)})


def reduce_shape(view, k, x, trips, name_of):
    """`(record, reason)` of reduction op `k` over input of (per-file) shape `x`: a pooling
    record named `name_of()` for a global pooling (module docstring), else `(None, reason)`."""
    from dkm_tf.energy import shapes as sh

    opname = view.names[k]
    rank = len(x)
    axes = _axes(view, view.inputs(k)[1], rank) if len(view.inputs(k)) > 1 else None
    if rank >= 3 and axes == list(range(1, rank - 1)):
        spatial, channels = [max(int(d), 1) for d in x[1:-1]], x[-1]
    elif rank >= 3 and axes == list(range(2, rank)) and _channels_first_out(view, k, x):
        spatial, channels = [max(int(d), 1) for d in x[2:]], x[1]
    else:
        return None, (f"{opname} over axes {axes} of a {list(x)} tensor: not a global "
                      "pooling (a normalization's statistics), not priced")
    hw = global_pool_hw(spatial)
    name = name_of()
    return sh.pool_shape(name, layer=name.split("#")[0], op=opname, in_hw=hw, channels=channels,
                         out_hw=1, window=hw, pool_op=REDUCTIONS[opname], repeat=trips), None


def global_pool_hw(spatial):
    """The `(h, w)` a pooling record reads for a global pooling over `spatial` (1 to 3 axes):
    `(1, w)`, `(h, w)`, `(d * h, w)`; shared by the traced reader (`graph_reader`)."""
    if len(spatial) == 1:
        return (1, spatial[0])
    if len(spatial) == 2:
        return tuple(spatial)
    return (math.prod(spatial[:-1]), spatial[-1])


def _channels_first_out(view, k, x):
    """Whether reduction `k` over axes 2.. of `x` is a channels_first global pooling: its
    output is `(batch, channels)` (`(batch, channels, 1, ...)` for a 2-D or 3-D map; a 3-D
    tensor's keepdims mean over its last axis is a LayerNormalization's statistics). Measured
    before 2026-12-05: a channels_first `GlobalAveragePooling2D` (a MEAN over axes [2, 3])
    was listed as normalization statistics, not charged."""
    out = [int(d) for d in view.shape(int(view.ops[k].OutputsAsNumpy()[0]))]
    if len(out) == 2:
        return out[1] == x[1]
    return len(x) > 3 and len(out) == len(x) and out[1] == x[1] and \
        all(d == 1 for d in out[2:])


def _through(view, t):
    while t in view.producer and view.names[view.producer[t]] in _LAYOUT:
        t = view.inputs(view.producer[t])[0]
    return t


def _product(view, t, depth=0):
    """The name of the conv / matrix product whose output tensor `t` is (through layout ops,
    or an ADD of two products' outputs), else None."""
    t = _through(view, t)
    k = view.producer.get(t)
    if k is None:
        return None
    if view.names[k] in _MACS:
        return view.names[k]
    if view.names[k] == "ADD" and depth < 4:
        found = [_product(view, u, depth + 1) for u in view.inputs(k)]
        if len(found) == 2 and None not in found:
            return found[0]
    return None


def bias_of(view, k, weights):
    """The op name of the product whose bias ADD op `k` adds (module docstring), else None;
    `weights`: tensors decoded from constants in this subgraph."""
    if view.names[k] != "ADD":
        return None
    ins = view.inputs(k)
    if len(ins) != 2:
        return None
    out = view.shape(int(view.ops[k].OutputsAsNumpy()[0]))
    for b, a in (ins, ins[::-1]):
        shape = [d for d in view.shape(b) if d != 1]
        if (view.const(b) or b in weights) and out and len(shape) <= 1 and \
                math.prod(shape) == out[-1]:
            found = _product(view, a)
            if found is not None:
                return found
    return None


_DTYPES = {0: "float32", 1: "float16", 3: "uint8", 9: "int8", 7: "int16", 17: "int4"}


def no_compute_reason(view, k, weights, outer, scope):
    """Why layout / lookup op `k` is not charged: "no compute", or for a GATHER from a stored
    table (a constant, or a weight decoded from one: an Embedding's) a table lookup naming
    its layer and how the file stores the table, as the Keras reader lists an Embedding (the
    file said "no compute" only: an int8 or palettized table went unmentioned)."""
    ins = view.inputs(k)
    if view.names[k] != "GATHER" or not ins:
        return "no compute"
    table = ins[0]
    if not (view.const(table) or table in weights or table in (outer or {})):
        return "no compute"
    from dkm_tf.energy import tflite_palettes as tp

    found = tp.stored_palette(view, table, outer)
    if found is not None:
        how = f"a palette (K={found.n_clusters}, d={found.unit_dim}" + (
            f", G={found.n_codebooks})" if found.n_codebooks > 1 else ")")
    else:
        src, _ = view.source(table, ("DEQUANTIZE", *_LAYOUT))
        how = _DTYPES.get(view.dtype(src), f"type {view.dtype(src)}") if view.const(src) \
            else "decoded from constants"
    out = int(view.ops[k].OutputsAsNumpy()[0])
    layer = next((n for n in (scope(view.name(out)), scope(view.name(table))) if n), None)
    shape = "x".join(str(d) for d in view.shape(table))
    return (f"table lookup{f' of layer {layer}' if layer else ''} (an Embedding or other "
            "stored table): no MACs; "
            f"its {shape} table, stored as {how}, is not charged")
