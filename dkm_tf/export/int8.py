"""int8 exports of clustered weights: find each palette's int8 tensor, keep its clusters.

The converter quantizes a weight per output channel (``q = round(w / s_c)``, ``s_c =
max|w_c| / 127``), so a tensor clustered to K shared values holds up to K distinct int8
values *per channel* but up to 255 over the tensor (each channel scales the same K values
differently). :func:`preserve_clusters` re-quantizes the weight of every per-tensor palette
with one scale for all channels, ``s = max|codebook| / 127``, so the whole tensor keeps at
most K distinct int8 values (cluster-preserving int8), and rescales the int32 bias of a
full-integer layer to match (``b' = round(b * s_c / s)``, bias scale ``s_in * s``).
Per-channel palettes keep the converter's per-channel scales (K values per channel already).

Example: codebook ``[-0.5, 0.1, 0.25]`` in two channels with ranges 0.5 and 0.25: per-channel
scales give ``[-127, 25, 64]`` and ``[51, 127]`` (5 distinct int8 values); one scale 0.5/127
gives ``[-127, 25, 64]`` in both (3 = K).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.rewrite import FlatModel

__all__ = ["find_int8", "int8_survival", "preserve_clusters", "shared_note", "subgraph_views"]

_BIAS_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")


def find_int8(fm, palette):
    """``(tensor, quantized axis, float reference in TFLite layout)`` of a palette, or None."""
    from dkm_tf.export.palettize import tflite_layouts  # noqa: PLC0415

    kernel = palette.decode().astype(np.float32)
    int8 = [t for t in range(len(fm.tensors)) if fm.type_name(t) == "int8" and fm.raw(t)]
    for _ops, tperm, tshape in tflite_layouts(palette.layout):
        ref = kernel.transpose(tperm).reshape(tshape)
        for t in int8:
            q = fm.tensors[t].quantization
            if fm.shape(t) != tuple(tshape) or q is None or q.scale is None:
                continue
            axis = int(q.quantizedDimension or 0)
            scale = np.asarray(q.scale, np.float64)
            shp = [1] * ref.ndim
            shp[axis] = -1 if scale.size > 1 else 1
            # full int8 stores a GATHER's table (an Embedding) asymmetric: zero point != 0
            zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [], np.float64)
            zero = zero.reshape(shp) if zero.size == scale.size else 0.0
            deq = (fm.const(t).astype(np.float64) - zero) * scale.reshape(shp)
            if np.max(np.abs(deq - ref)) <= 0.51 * float(scale.max()):
                return t, axis, ref
    return None


def subgraph_views(content):
    """``(model, views)``: its subgraphs as FlatModel views (a WHILE body holds RNN weights)."""
    fm = FlatModel.from_bytes(content)
    return fm, [fm] + [fm.subgraph(g) for g in range(1, len(fm.model.subgraphs))]


def _find_any(views, palette):
    """``(subgraph, view, find_int8 result)`` of the first subgraph holding the palette."""
    for g, view in enumerate(views):
        hit = find_int8(view, palette)
        if hit is not None:
            return g, view, hit
    return 0, views[0], None


def int8_survival(content, palettes):
    """Per palette: distinct int8 values over the tensor and per channel vs clustered values.

    Every subgraph is searched; a weight found in a loop body gets ``"subgraph": index``.
    """
    _, views = subgraph_views(content)
    rows = []
    for p in palettes:
        where, fm, hit = _find_any(views, p)
        if hit is None:
            rows.append({"palette": p.name, "storage": "float32 (not quantized by converter)",
                         "K": p.n_clusters, "bits_per_weight": 32.0})
            continue
        t, axis, ref = hit
        q = np.moveaxis(fm.const(t), axis, 0).reshape(fm.shape(t)[axis], -1)
        f = np.moveaxis(ref, axis, 0).reshape(q.shape)
        per_q = [np.unique(r).size for r in q]
        per_f = [np.unique(r).size for r in f]
        scales = np.asarray(fm.tensors[t].quantization.scale)
        rows.append({"palette": p.name, "tensor": fm.tensor_name(t), "storage": "int8",
                     "K": p.n_clusters, "bits_per_weight": 8.0,
                     "int8_scales": "one" if np.unique(scales).size == 1 else "per channel",
                     "int8_distinct_total": int(np.unique(q).size),
                     "float_distinct_total": int(np.unique(f).size),
                     "int8_distinct_per_channel": int(max(per_q)),
                     "float_distinct_per_channel": int(max(per_f)),
                     "merged_channels": int(sum(a < b for a, b in zip(per_q, per_f))),
                     "clusters_survive": bool(all(a == b for a, b in zip(per_q, per_f)))})
        if where:
            rows[-1]["subgraph"] = where
    return rows


def preserve_clusters(content, palettes):
    """One int8 scale per per-tensor palette's weight (see the module docstring).

    Args:
        content: int8 ``.tflite`` bytes (dynamic-range or full-integer).
        palettes: the :class:`~dkm_tf.core.palette.Palette` list.

    Returns:
        ``(bytes, names)``: the rewritten model and the palettes whose weight was re-quantized.
    """
    model, views = subgraph_views(content)
    consumers = {id(view): view.consumers() for view in views}
    done = []
    for p in palettes:
        if p.layout.granularity != "per_tensor":
            continue
        _, fm, hit = _find_any(views, p)
        if hit is None:
            continue
        t, _axis, ref = hit
        quant = fm.tensors[t].quantization
        old = np.asarray(quant.scale, np.float64)
        if np.unique(old).size == 1:
            continue  # already one scale
        s = float(np.max(np.abs(p.codebook))) / 127.0 or 1.0
        q = np.clip(np.round(ref / s), -127, 127).astype(np.int8)
        fm.model.buffers[fm.tensors[t].buffer].data = np.frombuffer(q.tobytes(), np.uint8).copy()
        quant.scale = [s] * old.size
        quant.zeroPoint = [0] * old.size
        for i in consumers[id(fm)].get(t, ()):
            op = fm.operators[i]
            if fm.op_name(op) not in _BIAS_OPS or len(op.inputs) < 3 or int(op.inputs[1]) != t:
                continue
            b = int(op.inputs[2])
            if b < 0 or fm.type_name(b) != "int32" or not fm.raw(b):
                continue
            bq = fm.tensors[b].quantization
            s_in = np.asarray(bq.scale, np.float64) / old
            bias = np.round(fm.const(b).astype(np.float64) * old / s).astype(np.int32)
            fm.model.buffers[fm.tensors[b].buffer].data = np.frombuffer(bias.tobytes(),
                                                                       np.uint8).copy()
            bq.scale = list(s_in * s)
        done.append(p.name)
    return (model.to_bytes() if done else bytes(content)), done


def shared_note(shared, palettes):
    """The note of ``int8_scales="shared"``.

    Args:
        shared: names :func:`preserve_clusters` re-quantized with one scale.
        palettes: the palettes the file was made from (after any BatchNormalization fold).

    A per-tensor palette that a folded BatchNormalization made per channel (scale ``s_c``
    per output channel; its note says "(was per_tensor)", whether the exporter or
    ``strip_clustering`` folded it) cannot keep <= K int8 values over its tensor: named, with
    the fix (measured: fer at K = 16 without ``fold_bn``, up to 68 distinct int8 values per
    tensor).
    """
    folded = [p.name for p in palettes if p.layout.granularity == "per_channel"
              and "(was per_tensor)" in (p.note or "")]
    parts = []
    if shared:
        parts.append(f"int8: one weight scale for all channels of {len(shared)} per-tensor "
                     "palette(s), so each keeps <= K distinct int8 values")
    if folded:
        shown = ", ".join(folded[:5]) + (f", ... ({len(folded)})" if len(folded) > 5 else "")
        parts.append(f"int8_scales='shared' cannot keep <= K distinct int8 values over the "
                     f"tensor of palette(s) clustered per tensor that a folded "
                     f"BatchNormalization made per channel: {shown}; they keep one scale per "
                     "output channel, <= K int8 values per channel (fold before clustering "
                     "for <= K per tensor: share_weights folds by default, "
                     "dkm_tf.fold_batch_norm before cluster_weights)")
    if not parts:
        parts.append("int8_scales='shared' changed nothing: no per-tensor palette's int8 "
                     "weight has several scales (per-channel palettes keep the converter's "
                     "scales, <= K int8 values per channel)")
    return "; ".join(parts)
