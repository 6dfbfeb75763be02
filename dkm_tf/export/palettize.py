"""Replace the float weights of a converted ``.tflite`` by codebooks + packed indices.

:func:`palettize_flatbuffer` finds, for every :class:`~dkm_tf.core.palette.Palette`, the constant
tensor the converter wrote for that weight (by value, in the layout the consuming op uses),
then swaps it for a decode chain (:mod:`dkm_tf.export.decode`). With ``decode="once"``,
CONV_2D (any stride, grouped too) and FULLY_CONNECTED consumers are also rewritten to
BATCH_MATMUL (:mod:`dkm_tf.export.lower`) so that XNNPACK keeps running them.

Layouts. A palette's indices enumerate units in :mod:`dkm_tf.core.units` order: group (channel)
axes, then the other axes, then the unit's values (trailing spatial axes). A decode chain
produces the axes in the order group + unit + rest (``once``) or group + rest + unit
(``per_invoke``), where "rest" may be permuted freely by permuting the indices at export time.
When the layout a consumer needs cannot be reached that way, a TRANSPOSE (run every invoke)
finishes the job and the tensor's record says so.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dkm_tf.core import units as units_lib
from dkm_tf.export import lower, pack
from dkm_tf.export.decode import Emitter
from dkm_tf.export.decode_dense import once_dense, pad_codebook
from dkm_tf.export.policy import check_keep_float, dense_pays, once_storage, plan_keep_float
from dkm_tf.export.scaled import scaled_codebook, times_scales

__all__ = ["BIAS_INPUT", "DECODE_MODES", "INDEX_PACKINGS", "KEPT_DTYPES", "WEIGHT_INPUT",
           "palettize_flatbuffer", "tflite_layouts"]

DECODE_MODES = ("once", "per_invoke")
DEPTHWISE_IM2COL_MAX_CHANNELS = 4  # im2col by one-hot DEPTHWISE_CONV_2D up to this C_in
# ops a 1-D clustered weight (palette kind "vector": a bias, a scale) may feed, any operand
VECTOR_OPS = ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "PRELU",
              "FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D",
              "CONV_3D_TRANSPOSE")
BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3,
              "CONV_3D": 2, "CONV_3D_TRANSPOSE": 3}
KEPT_DTYPES = ("float32", "float16")
INDEX_PACKINGS = ("dense", "tuples")
# operator -> position of its weight input
WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1,
                "TRANSPOSE_CONV": 1, "CONV_3D": 1, "CONV_3D_TRANSPOSE": 1, "GATHER": 0,
                "EMBEDDING_LOOKUP": 1, "BATCH_MATMUL": 1}


def tflite_layouts(layout):
    """Candidate (op names, axis order over the Keras kernel, TFLite shape) for a kernel."""
    s = layout.kernel_shape
    nd = len(s)
    if layout.kind == "vector":  # a bias or scale: any operand of these ops, maybe broadcast
        return [(VECTOR_OPS, (0,), (1,) * j + tuple(s)) for j in range(4)]
    if layout.kind == "dense":
        return [(("FULLY_CONNECTED",), (1, 0), (s[1], s[0])),
                (("BATCH_MATMUL",), (0, 1), s)]
    if layout.kind == "embedding":
        return [(("GATHER", "EMBEDDING_LOOKUP"), (0, 1), s)]
    if layout.kind.startswith(units_lib.EINSUM_PREFIX):  # EinsumDense: (out axes) x (in axes)
        _, channel, other = units_lib._axes(layout.kind, nd)  # noqa: SLF001
        n_out = int(np.prod([s[a] for a in channel]))
        return [(("FULLY_CONNECTED",), channel + other, (n_out, layout.size // n_out)),
                (("BATCH_MATMUL",), other + channel, (layout.size // n_out, n_out))]
    if layout.kind == "conv":
        if nd == 3:  # Conv1D: the converter expands to a 1 x k CONV_2D
            return [(("CONV_2D",), (2, 0, 1), (s[2], 1, s[0], s[1]))]
        return [(("CONV_2D", "CONV_3D"), (nd - 1, *range(nd - 1)),
                 (s[-1], *s[:-1]))] + ([(("CONV_3D",), tuple(range(nd)), s)] if nd == 5 else [])
    if layout.kind == "depthwise":
        if nd == 3:
            return [(("DEPTHWISE_CONV_2D",), (0, 1, 2), (1, 1, s[0], s[1] * s[2]))]
        return [(("DEPTHWISE_CONV_2D",), (0, 1, 2, 3), (1, s[0], s[1], s[2] * s[3]))]
    if nd == 3:  # conv_t 1D
        return [(("TRANSPOSE_CONV",), (1, 0, 2), (s[1], 1, s[0], s[2]))]
    if nd == 5:  # Conv3DTranspose: (d, h, w, out, in), the filter layout of CONV_3D_TRANSPOSE
        return [(("CONV_3D_TRANSPOSE",), tuple(range(5)), s)]
    return [(("TRANSPOSE_CONV",), (2, 0, 1, 3), (s[2], s[0], s[1], s[3]))]


def _digest(array):
    return hashlib.sha1(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def _axes(layout):
    """(group axes, unit axes, rest axes in units order) of a palette's kernel."""
    spatial, channel, _ = units_lib._axes(layout.kind, len(layout.kernel_shape))  # noqa: SLF001
    if layout.unit_dim == 1:
        unit = ()
    elif layout.unit == "row":
        unit = (spatial[-1],)
    else:
        unit = tuple(spatial)
    group = tuple(channel) if layout.granularity == "per_channel" else ()
    rest = tuple(a for a in layout.perm if a not in unit and a not in group)
    return group, unit, rest


def _reachable(palette, tperm, mode):
    """The rest-axes order that produces ``tperm`` without a transpose, or None."""
    group, unit, rest = _axes(palette.layout)
    if mode == "once":
        head, tail = group + unit, tperm[len(group) + len(unit):]
        ok = tuple(tperm[:len(head)]) == head and sorted(tail) == sorted(rest)
        return tuple(tail) if ok else None
    mid = tperm[len(group):len(tperm) - len(unit)]
    ok = (tuple(tperm[:len(group)]) == group and sorted(mid) == sorted(rest)
          and tuple(tperm[len(tperm) - len(unit):]) == unit)
    return tuple(mid) if ok else None


def _decode(em, palette, tperm, tshape, mode, max_table_bytes, dense=True):
    """Emit the decode chain of ``palette`` into layout ``kernel.transpose(tperm)``."""
    lay = palette.layout
    sizes = lay.kernel_shape
    group, unit, rest = _axes(lay)
    order = _reachable(palette, tperm, mode)
    transpose = order is None
    order = rest if transpose else order
    g_dim = lay.n_groups

    def ordered(a):  # (G, M) per-unit values -> the order the decode chain produces
        a = np.asarray(a).reshape([g_dim] + [sizes[x] for x in rest])
        return a.transpose([0] + [1 + rest.index(x) for x in order]).reshape(g_dim, -1)

    idx = ordered(palette.indices)
    k, d = palette.n_clusters, lay.unit_dim
    produced = group + unit + order if mode == "once" else group + order + unit
    pshape = [sizes[a] for a in produced]
    info = {"K": k, "transpose_per_invoke": transpose}
    codebook = palette.codebook
    scaled = palette.scales is not None or palette.transforms is not None
    if scaled:  # Son et al.: T transformed copies of each centroid, then x scale (below)
        codebook, idx = scaled_codebook(palette, idx, ordered)
        k = codebook.shape[1]
    # the chain's own layout: the target's, unless a transpose or the scales need `produced`
    chain_shape = pshape if transpose or scaled else list(tshape)
    if mode == "once":
        g, label, bits, index_bytes = once_storage(k, idx.shape[1], g_dim, d, max_table_bytes,
                                                   dense)
        if isinstance(g, pack.DenseScheme):
            codebook = pad_codebook(codebook, g)
            out = once_dense(em, codebook, idx, chain_shape, g)
        else:
            out = em.once(codebook, idx, chain_shape, g)
        info.update(storage=label, index_bits=bits, index_bytes=index_bytes)
    else:
        storage, stored_bits = pack.storage_for_bits(pack.bit_width(k))
        g = pack.tuple_width(k)
        if 16 / g < stored_bits:  # base-K tuples beat the TFLite sub-byte types
            storage, stored_bits = f"tuples:{g}", 16 / g
        out = em.per_invoke(codebook, idx, storage)
        out = em.reshape(out, chain_shape, static=True)
        if storage.startswith("tuples:"):
            info.update(storage=f"int16 ({g} indices/int16, split per invoke)",
                        index_bits=stored_bits,
                        index_bytes=int(np.ceil(idx.shape[1] / g)) * g_dim * 2)
        else:
            info.update(storage=storage, index_bits=stored_bits,
                        index_bytes=int(np.ceil(idx.size * stored_bits / 8)))
    if palette.scales is not None:
        out = times_scales(em, out, pshape, palette, group, unit, order, ordered, mode,
                          info)
    if transpose:
        out = em.transpose(out, pshape, [produced.index(a) for a in tperm])
    if chain_shape != list(tshape):
        out = em.reshape(out, list(tshape), static=True)
    flat = mode == "once" and isinstance(g, pack.DenseScheme) and d == 1  # stored 1-D
    book = ("codebook", mode, flat, _digest(codebook), codebook.shape)
    info["codebook_bytes"] = 0 if book in em.cache else int(codebook.size * 4)
    em.cache[book] = True  # a codebook shared by several weights is stored (counted) once
    return out, info


def _bmm_target(palette, kind, mode, prefer_adj, groups=1):
    """(tperm, adj_y, im2col order) for a BATCH_MATMUL operand holding the weight.

    The im2col is one DEPTHWISE_CONV_2D with a one-hot filter (rows channel-major) when the
    conv has few input channels (slices would copy a few floats at a time), else PAD + SLICE
    + CONCATENATION (rows ordered by kernel offset). A grouped conv (``groups`` > 1) needs
    the weight output-major (``adj_y``).
    """
    if kind == "FULLY_CONNECTED":  # (in, out) or (out, in); EinsumDense: axes in groups
        lay = palette.layout
        _, channel, other = units_lib._axes(lay.kind, len(lay.kernel_shape))  # noqa: SLF001
        cands = [(other + channel, False, None), (channel + other, True, None)]
    else:
        kh, kw = palette.layout.kernel_shape[:2]
        yx = [(dy, dx) for dy in range(kh) for dx in range(kw)]
        xy = [(dy, dx) for dx in range(kw) for dy in range(kh)]
        cm = "channel_major"
        cands = [((0, 1, 2, 3), False, yx), ((1, 0, 2, 3), False, xy),
                 ((3, 0, 1, 2), True, yx), ((3, 1, 0, 2), True, xy)]
        if palette.layout.kernel_shape[2] * groups <= DEPTHWISE_IM2COL_MAX_CHANNELS:
            cands = [((2, 0, 1, 3), False, cm), ((3, 2, 0, 1), True, cm)] + cands
        if groups > 1:
            cands = [c for c in cands if c[1]]
    if prefer_adj:
        cands = [c for c in cands if c[1]] + [c for c in cands if not c[1]]
    for c in cands:
        if _reachable(palette, c[0], mode) is not None:
            return c
    return cands[0]


def _match(fm, palettes):
    """Map palette -> (weight tensor, [(op position, op name)], tflite layout)."""
    wanted = {}
    for p in palettes:
        kernel = p.decode().astype(np.float32)
        for ops, tperm, tshape in tflite_layouts(p.layout):
            arr = kernel.transpose(tperm).reshape(tshape)
            wanted.setdefault((_digest(arr), tuple(tshape)), []).append((p, ops, tperm, tshape))
    consumers = fm.consumers()
    found, done = {}, set()
    for t in sorted(consumers):
        if fm.type_name(t) != "float32" or not fm.raw(t):
            continue
        uses = [(i, fm.op_name(fm.operators[i])) for i in consumers[t]]
        weight = any(WEIGHT_INPUT.get(name) is not None
                     and int(fm.operators[i].inputs[WEIGHT_INPUT[name]]) == t
                     for i, name in uses)
        key = (_digest(fm.const(t)), fm.shape(t))
        for p, ops, tperm, tshape in wanted.get(key, ()):
            vector = p.layout.kind == "vector"  # any operand; the others: the weight input
            if id(p) in done or not (weight or vector) \
                    or not any(name in ops for _, name in uses):
                continue
            found[id(p)] = (p, t, uses, tperm, tshape)
            done.add(id(p))
            break
    return found


def _keep_half(em, fm, t, uses, halved):
    """Store kept weight ``t`` (and the float32 constant bias of each op reading it, which
    TF 2.21's XNNPACK needs in the same type) as float16 + DEQUANTIZE: ``(bias values newly
    halved, None)`` (``halved``: tensors done so far, shared with other weights); or, all
    left float32, ``(0, largest |value|)`` where a value is beyond float16's range (was inf)."""
    bias = {}
    for i, name in uses:
        ins = fm.operators[i].inputs
        b = int(ins[BIAS_INPUT[name]]) if len(ins) > BIAS_INPUT.get(name, 1 << 30) else -1
        if b >= 0 and fm.type_name(b) == "float32" and fm.raw(b):
            bias[i] = b
    top = max(float(np.max(np.abs(fm.const(v)), initial=0.0)) for v in [t, *bias.values()])
    with np.errstate(over="ignore"):
        if np.isinf(np.float16(top)):
            return 0, top
    w, biases = em.half(t), 0
    for i, name in uses:
        op = fm.operators[i]
        ins = [int(v) for v in op.inputs]
        ins[ins.index(t)] = w
        if i in bias:
            b = bias[i]
            ins[BIAS_INPUT[name]] = em.half(b)
            biases += 0 if b in halved else int(np.prod(fm.shape(b)))
            halved.add(b)
        op.inputs = np.asarray(ins, np.int32)
    return biases, None


def palettize_flatbuffer(fm, palettes, decode="once", *, max_table_bytes=1 << 20,
                         matmul_lowering=True, keep_float="auto", kept_dtype="float32",
                         index_packing="dense", found=None):
    """Rewrite ``fm`` in place: every palette's weight becomes a decode chain.

    Args:
        fm: :class:`~dkm_tf.export.rewrite.FlatModel` of the converted (float) model.
        palettes: the :class:`~dkm_tf.core.palette.Palette` list.
        decode: ``"once"`` or ``"per_invoke"``.
        max_table_bytes: RAM cap for one decoded tuple table (``once``).
        matmul_lowering: with ``once``, turn CONV_2D (stride 1) and FULLY_CONNECTED into
            BATCH_MATMUL so XNNPACK runs them.
        keep_float: with ``once``, weights left as float32 constants: ``"auto"`` (small
            convolutions whose im2col costs more than it saves, depthwise kernels,
            weights palettization would not shrink; see :mod:`dkm_tf.export.policy`), a
            latency budget (a number), ``None`` (palettize everything) or layer / palette
            names.
        kept_dtype: ``"float32"`` or ``"float16"`` (kept weights, and the biases of the ops
            reading them, stored as float16 + DEQUANTIZE: half their bytes, same speed
            where XNNPACK runs; outputs as close to Keras as ``format="fp16"``'s); a weight
            whose values or bias exceed float16's 65,504 stays float32 (its route says so).
        index_packing: with ``once``, ``"dense"`` (spare int16 bits hold more indices:
            :mod:`dkm_tf.export.decode_dense`) or ``"tuples"`` (base-K tuples only: larger
            file, less RAM after load).
        found: the palettes' weight tensors in ``fm`` if already matched (``_match``).

    Returns:
        A list of per-tensor dicts (palette, tensor, op, route, storage, sizes; ``"_stored"``:
        the constants read, which :func:`~dkm_tf.export.record_bytes.count_once` removes).

    Raises:
        ValueError: a palette matches no weight tensor of the model.
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"Invalid value for argument `decode`. Expected one of "
                         f"{list(DECODE_MODES)}. Received: decode={decode!r}")
    found = _match(fm, palettes) if found is None else found
    missing = [p.name for p in palettes if id(p) not in found]
    if missing:
        raise ValueError(
            f"Palettes do not match the model: no weight tensor of the converted model holds "
            f"the decoded values of {missing}. The model's weights must equal "
            "palette.decode() (assign them, or pass the model the palettes came from), and "
            "the converter must not transform them (e.g. by folding batch normalization).")
    em = Emitter(fm, "dkm" if fm.index == 0 else f"dkm_sg{fm.index}")  # unique names
    # once-decode chains read only constants: they all go first, in emission order (they
    # share cached tensors); a lowered layer's ops replace the original op in place
    prefix = []
    replace = {}
    records = []
    keep_float = check_keep_float(keep_float, palettes) if decode == "once" else None
    dense = index_packing == "dense" and dense_pays([f[0] for f in found.values()],
                                                    max_table_bytes)
    kept = plan_keep_float(fm, found, keep_float, max_table_bytes, matmul_lowering,
                           dense=dense)
    halved = set()
    # vectors first: a bias decoded before its conv / dense layer is lowered ends up in the
    # lowered layer's ADD (the lowering reads the op's inputs when it runs)
    for p, t, uses, tperm, tshape in sorted(found.values(),
                                            key=lambda f: f[0].layout.kind != "vector"):
        names, mark = {name for _, name in uses}, em.mark(t)  # mark: record_bytes
        reason = kept.get(id(p))
        if reason is not None:
            bits, biases = 32, 0
            if kept_dtype == "float16":
                biases, top = _keep_half(em, fm, t, uses, halved)
                bits = 16 if top is None else 32
                reason += "" if top is None else (f"; float32, not float16: values up to "
                                                  f"{top:.4g} exceed float16's 65,504")
                prefix.extend(em.ops)
                del em.ops[:]
            records.append(em.tag(mark, {"palette": p.name, "tensor": fm.tensor_name(t),
                            "op": "/".join(sorted(names)), "K": p.n_clusters, "kept": True,
                            "storage": f"float{bits} (kept)", "index_bits": float(bits),
                            "index_bytes": 0, "codebook_bytes": bits // 8 * int(p.n_values),
                            "aux_bytes": 0, "fp16_bias_values": biases,
                            "route": f"float{bits} constant, {reason}",
                            "decode": decode, "n_weights": int(p.n_values),
                            "bits_per_weight": float(bits), "transpose_per_invoke": False}))
            continue
        route = None if p.layout.kind == "vector" else lower.route(fm, p, uses, decode,
                                                                   matmul_lowering)
        start, aux0 = len(em.ops), em.aux_bytes
        if route is not None:
            kind, want_t, groups = route
            bperm, adj_y, order = _bmm_target(p, kind, decode, want_t, groups)
            transposed = want_t and adj_y
            sizes = p.layout.kernel_shape
            n_out = 1 if kind != "FULLY_CONNECTED" else len(
                units_lib._axes(p.layout.kind, len(sizes))[1])  # noqa: SLF001
            split = n_out if adj_y else len(bperm) - n_out  # output axes last, or first
            bshape = (int(np.prod([sizes[a] for a in bperm[:split]])),
                      int(np.prod([sizes[a] for a in bperm[split:]])))
            w, info = _decode(em, p, bperm, bshape, decode, max_table_bytes, dense)
            prefix.extend(em.ops[start:])
            del em.ops[start:]
            for i, _ in uses:
                op = fm.operators[i]
                if kind == "CONV_2D":
                    lower.lower_conv(em, fm, op, w, adj_y, order, transposed)
                else:
                    lower.lower_fc(em, fm, op, w, adj_y, transposed)
                replace.setdefault(i, []).extend(em.ops[start:])
                replace[i].append(None)  # None marks "drop the original op"
                del em.ops[start:]
            route = ("BATCH_MATMUL" + (" (im2col)" if kind == "CONV_2D" else "")
                     + (f", {groups} groups batched" if groups > 1 else "")
                     + (", weight on the left" if transposed else ""))
        else:
            w, info = _decode(em, p, tperm, tshape, decode, max_table_bytes, dense)
            if decode == "once":
                prefix.extend(em.ops[start:])
            else:  # decoded right before use: the arena holds one decoded weight at a time
                replace.setdefault(min(i for i, _ in uses), []).extend(em.ops[start:])
            del em.ops[start:]
            for i, _ in uses:
                op = fm.operators[i]
                op.inputs = np.asarray([w if int(v) == t else int(v) for v in op.inputs],
                                       np.int32)
            route = "builtin " + "/".join(sorted(names)) + " (decoded weight)"
        info.update(palette=p.name, tensor=fm.tensor_name(t), op="/".join(sorted(names)),
                    aux_bytes=em.aux_bytes - aux0,
                    route=route, decode=decode, n_weights=int(p.n_values),
                    bits_per_weight=8 * (info["index_bytes"] + info["codebook_bytes"]
                                         + info.get("scale_bytes", 0)) / p.n_values)
        records.append(em.tag(mark, info))
    new_ops = list(em.early) + list(prefix)
    for i, op in enumerate(fm.operators):
        extra = replace.get(i, [])
        new_ops.extend(o for o in extra if o is not None)
        if None not in extra:
            new_ops.append(op)
    fm.graph.operators = new_ops
    fm.compact()
    return records
