"""Scaled, transformed kernel palettes (Son et al., ECCV 2018) in the palettized export.

A kernel palette with per-kernel scales s and transform ids t decodes unit n to
``s[n] T_{t[n]}(codebook[idx[n]])``. The export stores the T transformed copies of every
centroid as one codebook of K T entries (stored index ``k + K t``: log2 K + log2 T bits, the
paper's count) and multiplies the decoded unit-norm kernels by the scales with one MUL.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.rewrite import schema

__all__ = ["int8_grid", "scaled_codebook", "times_scales"]


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
    invoke``: the scales as stored by clustering, when that holds them exactly, and a
    DEQUANTIZE: ``scale_bits=8``, int8 ``q`` with the layer's step as the tensor's
    quantization scale (:func:`int8_grid`); 16, float16 (the paper's storage); otherwise
    float32.
    """
    s = schema()
    sizes = palette.layout.kernel_shape
    bshape = [1] * len(group + unit) + [sizes[a] for a in order] if mode == "once" else \
        [1] * len(group) + [sizes[a] for a in order] + [1] * len(unit)
    arr = ordered(palette.scales).reshape(bshape).astype(np.float32)
    grid = int8_grid(arr) if mode != "once" and palette.scale_bits == 8 else None
    with np.errstate(over="ignore"):  # scales beyond 65,504: inf, then float32 below
        half = arr.astype(np.float16)
    if grid is not None:
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint = [grid[1]], [0]
        stored = em.fm.add_tensor(em.name("scales"), bshape, "int8",
                                  data=grid[0].tobytes(), quantization=q)
        st = em.op("DEQUANTIZE", [em.stored("scales", stored)], [em.tensor("scales", bshape)],
                   version=2)
        info["scale_bytes"] = int(arr.size)
    elif mode != "once" and palette.scale_bits <= 16 \
            and np.array_equal(half.astype(np.float32), arr):
        st = em.op("DEQUANTIZE", [em.const("scales", half)], [em.tensor("scales", bshape)],
                   version=3)
        info["scale_bytes"] = int(arr.size * 2)
    else:  # decoded once, 32-bit scales, or scales no smaller type holds exactly
        st = em.const("scales", arr)
        info["scale_bytes"] = int(arr.size * 4)
    res = em.tensor("scaled", pshape)
    return em.op("MUL", [out, st], [res], s.MulOptionsT())


def int8_grid(scales):
    """``(q int8, step float32)`` with ``float32(q * step) == scales`` exactly, or None.

    ``scale_bits=8`` scales are ``q * step`` with ``|q| <= 127`` and ``step = max |s| / 127``
    (:func:`dkm_tf.core.kernel_codebook.quantize_scales`); the step is not kept, so it is
    recovered from the largest scale (to a few float32 ulps) and the result checked: a
    DEQUANTIZE of the int8 ``q`` gives the scales back bit for bit, or the caller stores them
    another way. (float16 would not: an 8-bit grid needs ~2^-11 relative steps it lacks.)
    Fine-tuning keeps the step of the first quantization while the scales move, so the largest
    may sit at ``m < 127`` steps (122 and 125 measured): ``step = max |s| / m`` is tried for
    m = 127 down to 1, the finest exact grid kept (was float32 storage, 4x the bytes the
    size report counted).
    """
    s = np.asarray(scales, np.float32)
    top = float(np.max(np.abs(s))) if s.size else 0.0
    if not top or not np.isfinite(top):
        return None
    wide = s.astype(np.float64)
    for m in range(127, 0, -1):
        base = np.float32(top / m)
        for k in range(-4, 5):
            step = np.float32(base + k * np.spacing(base))
            q = np.round(wide / float(step))
            if np.max(np.abs(q)) <= 127 and np.array_equal(
                    (q.astype(np.float32) * step).astype(np.float32), s):
                return q.astype(np.int8), float(step)
    return None
