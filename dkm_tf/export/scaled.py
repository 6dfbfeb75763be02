"""Scaled, transformed kernel palettes (Son et al., ECCV 2018) in the palettized export.

A kernel palette with per-kernel scales s and transform ids t decodes unit n to
``s[n] T_{t[n]}(codebook[idx[n]])``. The export stores the T transformed copies of every
centroid as one codebook of K T entries (stored index ``k + K t``: log2 K + log2 T bits, the
paper's count) and multiplies the decoded unit-norm kernels by the scales with one MUL.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.rewrite import schema

__all__ = ["scaled_codebook", "times_scales"]


def scaled_codebook(palette, idx, ordered):
    """(1, K T, d) codebook of every transformed centroid, and the stored indices k + K t."""
    from dkm_tf.core.kernel_palette import apply_transform  # noqa: PLC0415

    cb = np.asarray(palette.codebook, np.float32)
    if palette.transforms is None:
        return cb, idx
    k, n_t = cb.shape[1], palette.n_transforms
    spatial = palette.layout.kernel_shape[:2]
    c = cb[0].reshape(k, *spatial)
    book = np.concatenate([apply_transform(c, t).reshape(k, -1) for t in range(n_t)])
    t = ordered(palette.transforms).astype(np.int64)
    return book[None].astype(np.float32), idx.astype(np.int64) + k * t


def times_scales(em, out, pshape, palette, group, unit, order, ordered, mode, info):
    """MUL the decoded unit-norm kernels (laid out as ``group + unit + order`` with ``once``,
    ``group + order + unit`` per invoke) by their scales.

    ``once``: float32 scales, so the MUL folds at load like the rest of the chain. ``per
    invoke``: float16 scales (16 bits each, the paper's storage) and a DEQUANTIZE.
    """
    s = schema()
    sizes = palette.layout.kernel_shape
    bshape = [1] * len(group + unit) + [sizes[a] for a in order] if mode == "once" else \
        [1] * len(group) + [sizes[a] for a in order] + [1] * len(unit)
    arr = ordered(palette.scales).reshape(bshape)
    if mode == "once" or palette.scale_bits > 16:
        st = em.const("scales", arr.astype(np.float32))
        info["scale_bytes"] = int(arr.size * 4)
    else:
        half = em.const("scales", arr.astype(np.float16))
        st = em.tensor("scales", bshape)
        em.op("DEQUANTIZE", [half], [st])
        info["scale_bytes"] = int(arr.size * 2)
    res = em.tensor("scaled", pshape)
    return em.op("MUL", [out, st], [res], s.MulOptionsT())
