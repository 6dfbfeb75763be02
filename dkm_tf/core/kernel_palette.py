"""Scaled / transformed kernel palettes: the dihedral transforms, decoding, Palette fields.

The numpy side of :class:`dkm_tf.core.palette.Palette`'s ``scales``, ``transforms``,
``n_transforms`` and ``scale_bits`` (Son et al., ECCV 2018; see
:mod:`dkm_tf.core.kernel_codebook` for the clustering itself).
"""

from __future__ import annotations

import math

import numpy as np

from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.index_codec import pack_float32, pack_indices, unpack_float32, unpack_indices
from dkm_tf.core.validate import check_choice, invalid

__all__ = ["SCALE_BITS", "TRANSFORM_COUNTS", "apply_transform", "check_palette_extras",
           "decode_scaled", "extras_from_dict", "extras_to_dict", "inverse_transform",
           "scaled_index_bits"]

TRANSFORM_COUNTS = (1, 2, 4, 8)
SCALE_BITS = (8, 16, 32)


# ----------------------------------------------------------------------------- transforms
def apply_transform(x, t):
    """Dihedral transform ``t`` of kernels ``x`` (..., kh, kw) on their last two axes.

    0 identity, 1 hflip (``x[..., :, ::-1]``), 2 vflip (``x[..., ::-1, :]``), 3 rot180; 4..7:
    ``np.rot90(T_{t-4}(x), 1, axes=(-2, -1))``. ``transforms=T`` uses ids 0..T-1.
    """
    t = int(t)
    if not 0 <= t < 8:
        raise invalid("t", "a transform id in [0, 8)", t)
    x = np.asarray(x)
    y = x[..., :, ::-1] if t & 1 else x
    y = y[..., ::-1, :] if t & 2 else y
    return np.rot90(y, 1, axes=(-2, -1)) if t & 4 else y


def inverse_transform(x, t):
    """The inverse of :func:`apply_transform` ``t``: flips are self-inverse, rot90 -> rot270."""
    t = int(t)
    if not 0 <= t < 8:
        raise invalid("t", "a transform id in [0, 8)", t)
    y = np.rot90(np.asarray(x), -1, axes=(-2, -1)) if t & 4 else np.asarray(x)
    return apply_transform(y, t & 3)


def decode_scaled(codebook, indices, layout, scales=None, transforms=None):
    """The kernel of a scaled kernel palette: unit n is ``scales[n] T_{t[n]}(codebook[idx[n]])``.

    Args:
        codebook: (1, K, kh kw) (a Palette's codebook).
        indices: (1, M) centroid ids; scales, transforms: (1, M) or None.
        layout: the :class:`~dkm_tf.core.units.UnitLayout` (kernel unit, conv, per_tensor).
    """
    spatial = layout.kernel_shape[:2]
    cb = np.asarray(codebook, np.float32)[0].reshape(-1, *spatial)
    idx = np.asarray(indices).reshape(-1).astype(np.int64)
    t = None if transforms is None else np.asarray(transforms).reshape(-1).astype(np.int64)
    proto = cb[idx]
    if t is not None:
        for j in range(1, 8):
            m = t == j
            if m.any():
                proto[m] = apply_transform(proto[m], j)
    if scales is not None:
        proto = proto * np.asarray(scales, np.float32).reshape(-1)[:, None, None]
    return units_lib.kernel_view(proto.reshape(1, idx.size, -1), layout)


# ----------------------------------------------------------------------------- Palette hooks
def check_palette_extras(p):
    """Validate (and store compactly) a Palette's ``scales`` / ``transforms`` fields; then
    make all its arrays read-only."""
    shape = (p.layout.n_groups, p.layout.n_units)
    check_choice("n_transforms", p.n_transforms, TRANSFORM_COUNTS)
    if p.scales is None:
        if p.scale_bits != 0:
            raise invalid("scale_bits", "0 for a palette without scales", p.scale_bits)
    else:
        check_choice("scale_bits", p.scale_bits, SCALE_BITS)
        s = np.array(p.scales, np.float32)  # own copy (Palette makes it read-only)
        if s.shape != shape or not np.all(np.isfinite(s)):
            raise ValueError(f"Palette {p.name}: scales must be finite, of shape {shape}. "
                             f"Received shape {s.shape}.")
        object.__setattr__(p, "scales", s)
    if p.transforms is None:
        if p.n_transforms != 1:
            raise invalid("transforms", f"an array of ids for n_transforms={p.n_transforms}",
                          None)
        return _read_only(p)
    t = np.asarray(p.transforms)
    if t.shape != shape or t.dtype.kind not in "iu" or (t.size and (
            t.min() < 0 or t.max() >= p.n_transforms)):
        raise ValueError(f"Palette {p.name}: transforms must be integers in "
                         f"[0, {p.n_transforms}) of shape {shape}. Received {t.dtype} "
                         f"{t.shape}.")
    object.__setattr__(p, "transforms", t.astype(np.uint8))
    return _read_only(p)


def _read_only(p):
    """Makes a Palette's arrays (its own copies) read-only: an edit in place (``p.indices[:] =
    9``) would bypass its checks, and reach every holder of the palette."""
    for arg in ("codebook", "indices", "scales", "transforms"):
        if getattr(p, arg) is not None:
            getattr(p, arg).flags.writeable = False


def scaled_index_bits(p, coding, codings):
    """N (log2 K + log2 T + b_s) bits (``"packed"``: ceil(log2 K T); ``"entropy"``: the
    entropy of the stored index ``k + K t``), the §2.5 form, for a scaled/TIC palette."""
    check_choice("coding", coding, codings)
    k, n_t = p.n_clusters, p.n_transforms
    side = p.n_units * p.scale_bits
    if coding == "entropy":
        t = 0 if p.transforms is None else p.transforms.astype(np.int64)
        combined = p.indices.astype(np.int64) + k * t
        return float(sum(p.layout.n_units * kmeans_lib.assignment_entropy(r, k * n_t)
                         for r in combined)) + side
    kt = max(k * n_t, 1)
    per = math.ceil(math.log2(kt)) if coding == "packed" else math.log2(kt)
    return float(p.n_units * per) + side


def extras_to_dict(p):
    """The kernel fields of ``Palette.to_dict`` (none for a plain palette): transform ids
    bit-packed as indices, scales as their float32 bytes (see :mod:`dkm_tf.core.index_codec`)."""
    out = {}
    if p.scales is not None:
        out.update(scales=pack_float32(p.scales), scale_bits=p.scale_bits)
    if p.transforms is not None:
        out.update(transforms=pack_indices(p.transforms), n_transforms=p.n_transforms)
    return out


def extras_from_dict(d):
    """``Palette.from_dict`` arguments with the kernel fields as arrays (lists, written before,
    or the packed forms of :func:`extras_to_dict`)."""
    d = dict(d)
    if d.get("scales") is not None:
        d["scales"] = unpack_float32(d["scales"])
    if d.get("transforms") is not None:
        d["transforms"] = np.asarray(unpack_indices(d["transforms"]), np.int64)
    return d
