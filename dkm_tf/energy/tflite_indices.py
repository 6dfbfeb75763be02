"""The stored indices of a palettized weight in a `.tflite`, read back to measure their entropy.

`tflite_palettes.stored_palette` finds K, d and G of a weight decoded from a codebook + indices;
`index_entropy` reads the indices themselves from the same decode chain, so that
`index_cost="entropy"` (Deep k-Means footnote 3: the ideal entropy-coded index cost) can be
charged for a file without its `Palette` objects:

* `once` (base-K tuples): the packed int16 words are split into digits by the enumeration
  table the graph builds (`GATHER(codebook, enum)`), evaluated here in numpy;
* `once` (dense words) and `per_invoke`: the integer positions fed to the codebook GATHER are
  evaluated in numpy from the stored constants (GATHER, CAST, DEQUANTIZE of INT2 / INT4
  fields, FLOOR_DIV, FLOOR_MOD, ADD of the per-channel offsets g·K, MUL, RESHAPE, TILE, RANGE,
  CONCATENATION, STRIDED_SLICE); a position p is index p mod K of codebook p div K;
* `tflm`: the packed b-bit fields of `TFLM_DECODE` (big-endian bit order, as
  `tflite_micro.compression` writes them), one table per slice along the header's axis.

The entropy is that of `Palette.entropy_bits()`: the histogram of each codebook's indices,
H = -Σ p_k log2 p_k bits per index, averaged over the G codebooks. Only the evaluated ops
above are followed; any other chain gives None (the caller says so), never a guess.
"""

import math

import numpy as np

from dkm_tf.core.kmeans import assignment_entropy
from dkm_tf.core.tflm_lut import read_lut_header

# TensorType -> numpy dtype (INT4 = 17 and INT2 = 19 are sub-byte fields, unpacked apart)
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
           7: np.int16, 9: np.int8, 10: np.float64, 12: np.uint64, 15: np.uint32,
           16: np.uint16}
_SUB_BYTE = {17: 4, 19: 2}
_LAYOUT = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE")


def entropy_bits(groups, n_clusters):
    """Mean over `groups` (integer arrays of indices in [0, K)) of each one's histogram
    entropy, in bits per index (`core.kmeans.assignment_entropy`, averaged like
    `Palette.entropy_bits`)."""
    out = [assignment_entropy(np.asarray(idx, np.int64).ravel(), n_clusters) for idx in groups]
    return float(np.mean(out)) if out else None


def index_entropy(view, t, palette):
    """Bits per index (entropy) of the stored indices of weight operand `t`, or None.

    Args:
        view: The `tflite_palettes.GraphView` of the subgraph holding `t`.
        t: Tensor index of the weight operand (as given to `stored_palette`).
        palette: Its `tflite_palettes.StoredPalette`.
    """
    try:
        groups = _indices(view, int(t), palette)
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None  # a chain this reader does not evaluate: the caller says so
    if groups is None or any(g.size == 0 for g in groups):
        return None
    k = palette.n_clusters
    if any(int(g.min()) < 0 or int(g.max()) >= k for g in groups):
        return None
    return entropy_bits(groups, k)


def _indices(view, t0, p):
    """The stored indices of weight operand `t0`, one integer array per codebook."""
    n_weights = math.prod(view.shape(t0))
    t, _ = view.source(t0, _LAYOUT)
    k = view.producer[t]
    n_units = n_weights // p.unit_dim
    if p.mode == "tflm":
        return _tflm(view, k, t, p)
    params, pos = view.inputs(k)[:2]
    inner = view.producer.get(params)
    if p.mode == "once" and inner is not None and view.names[inner] == "GATHER":
        enum = _value(view, view.inputs(inner)[1])                  # [K^g, g] digits
        digits = enum[_value(view, pos).astype(np.int64)]           # [(A,) P, g]
        rows = digits.reshape(p.n_codebooks, -1)
        return list(rows[:, :n_units // p.n_codebooks])             # drop the padding
    positions = _value(view, pos).astype(np.int64).ravel()
    if positions.size != n_units:
        return None
    books = positions // p.n_clusters
    return [positions[books == g] % p.n_clusters for g in range(p.n_codebooks)]


def _tflm(view, k, t, p):
    ins = [int(i) for i in view.ops[k].InputsAsNumpy()]
    j = [int(o) for o in view.ops[k].OutputsAsNumpy()].index(int(t))
    head = read_lut_header(view.raw(ins[2 * j + 1]))
    shape = view.shape(t)
    n = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(view.raw(ins[2 * j]), np.uint8))[:n * head.bits]
    if bits.size != n * head.bits:
        return None
    idx = (bits.reshape(n, head.bits).astype(np.int64)
           << np.arange(head.bits - 1, -1, -1)).sum(axis=1).reshape(shape)
    if head.axis is None:
        return [idx]
    return list(np.moveaxis(idx, head.axis, 0).reshape(shape[head.axis], -1))


def _const(view, t):
    tensor = view.graph.Tensors(int(t))
    raw, shape, kind = view.raw(t), view.shape(t), tensor.Type()
    if kind in _SUB_BYTE:  # fields low bits first, sign-extended
        b = _SUB_BYTE[kind]
        per = 8 // b
        data = np.frombuffer(raw, np.uint8).astype(np.int64)
        q = ((data[:, None] >> (b * np.arange(per))) & ((1 << b) - 1)).ravel()
        q = np.where(q >= 1 << (b - 1), q - (1 << b), q)
        return q[:math.prod(shape)].reshape(shape)
    return np.frombuffer(raw, _DTYPES[kind]).reshape(shape)


def _value(view, t):
    """The value of tensor `t` computed from constants (cached on `view`)."""
    cache = view.__dict__.setdefault("_index_values", {})
    t = int(t)
    if t not in cache:
        cache[t] = _const(view, t) if view.const(t) else _compute(view, t)
    return cache[t]


def _compute(view, t):
    from tensorflow.lite.python import schema_py_generated as schema

    k = view.producer[t]
    name, op = view.names[k], view.ops[k]
    ins = [_value(view, i) for i in view.inputs(k)]
    out_shape = view.shape(t)
    dtype = _DTYPES[view.graph.Tensors(t).Type()]
    if name == "GATHER":
        opts = _options(op, schema.GatherOptions)
        axis, batch = (opts.Axis(), opts.BatchDims()) if opts else (0, 0)
        params, idx = ins[0], ins[1].astype(np.int64)
        if batch == 0:
            out = np.take(params, idx, axis=axis)
        elif batch == 1:
            out = np.stack([np.take(a, i, axis=axis - 1) for a, i in zip(params, idx)])
        else:
            raise ValueError("GATHER with batch_dims > 1")
    elif name in ("RESHAPE", "SQUEEZE", "EXPAND_DIMS"):
        out = ins[0].reshape(out_shape)
    elif name == "TILE":
        out = np.tile(ins[0], ins[1].astype(np.int64))
    elif name == "CONCATENATION":
        opts = _options(op, schema.ConcatenationOptions)
        out = np.concatenate(ins, axis=opts.Axis() if opts else 0)
    elif name == "STRIDED_SLICE":
        begin, end, step = (v.astype(np.int64) for v in ins[1:4])
        out = ins[0][tuple(slice(b, e, s) for b, e, s in zip(begin, end, step))]
    elif name == "RANGE":
        out = np.arange(*(v.item() for v in ins))
    elif name == "DEQUANTIZE":
        q = view.graph.Tensors(view.inputs(k)[0]).Quantization()
        scale = float(q.ScaleAsNumpy()[0]) if q is not None and q.ScaleLength() else 1.0
        zero = int(q.ZeroPointAsNumpy()[0]) if q is not None and q.ZeroPointLength() else 0
        out = (ins[0].astype(np.float64) - zero) * scale
    elif name == "CAST":
        out = ins[0]
    elif name in ("ADD", "MUL", "FLOOR_DIV", "FLOOR_MOD"):
        a, b = (v.astype(np.int64) for v in ins[:2])
        out = {"ADD": np.add, "MUL": np.multiply, "FLOOR_DIV": np.floor_divide,
               "FLOOR_MOD": np.mod}[name](a, b)
    else:
        raise ValueError(f"{name} is not evaluated")
    out = np.asarray(out)
    if out.size != math.prod(out_shape):
        raise ValueError(f"{name}: {out.shape} does not fill the stored shape {out_shape}")
    if np.issubdtype(dtype, np.integer) and out.dtype.kind == "f":
        out = np.rint(out)  # CAST of a DEQUANTIZE'd index: exact integers
    return out.reshape(out_shape).astype(dtype)


def _options(op, cls):
    table = op.BuiltinOptions()
    if table is None:
        return None
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    return obj
