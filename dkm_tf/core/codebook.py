"""Codebook bookkeeping in numpy: nearest centroids, compaction, and the fixed zero entry.

A clustered weight is a codebook of shape (G, K, d) (G groups of K centroids of d values) and
one index per unit, shape (G, M) (see :mod:`dkm_tf.core.units`). The hard-weight-sharing
wrapper (:class:`dkm_tf.ClusterWeights`), post-training sharing (:func:`dkm_tf.share_weights`)
and :class:`~dkm_tf.core.palette.Palette` share the helpers below.

**Preserving sparsity** (``preserve_sparsity=True``). The exact zeros of a pruned weight are
kept: entry 0 of every codebook is a fixed all-zero centroid that is *not* one of the K
centroids (a codebook holds K + 1 entries, an index takes ceil(log2(K + 1)) bits), the units
that are exactly zero point to it, and k-means runs on the non-zero units only. The wrapper
never trains entry 0, so the zeros stay exactly zero through fine-tuning (tfmot's
``preserve_sparsity`` does the same for scalar clustering). A unit counts as zero when all its
d values are zero; a vector unit (row, kernel) that is only partly zero cannot keep its zeros
and is an error (use ``unit="scalar"``, or prune whole units).

This is not Deep k-Means' sparsity variant (``sparsity=p``, Wu et al., ICML 2018, §4.1.4),
which *creates* zeros: it sends the fraction p of smallest units to a zero centroid that is
one of the K.
"""

from __future__ import annotations

import math

import numpy as np

from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import units as units_lib

__all__ = ["check_zero_entry", "compact", "decode", "kmeans_keeping_zeros", "nearest",
           "nearest_keeping_zeros", "short_codebook_note", "zero_units"]

_SLAB = 1 << 16  # kernel values per slab of decode() (and of _bincount)


def nearest(units, codebook):
    """Index of the nearest centroid of each unit: units (M, d), codebook (K, d) -> (M,)."""
    if codebook.shape[1] == 1:
        c = codebook[:, 0].astype(np.float64)
        order = np.argsort(c, kind="stable")
        cs = c[order]
        mids = (cs[:-1] + cs[1:]) / 2.0
        return order[np.searchsorted(mids, units[:, 0].astype(np.float64), side="left")]
    out = np.empty(units.shape[0], np.int64)
    c = codebook.astype(np.float64)
    cc = (c * c).sum(1)
    for s in range(0, units.shape[0], 65536):
        u = units[s:s + 65536].astype(np.float64)
        out[s:s + 65536] = np.argmin(cc[None, :] - 2.0 * u @ c.T, axis=1)
    return out


def compact(codebook, indices, keep=0):
    """Drop codebook entries no unit uses (per group) except the first ``keep``; pad groups to
    the same K by repeating their last entry. Entries equal to an earlier one (centroids that
    collapsed onto each other, e.g. soft assignment at a large temperature) are merged into
    it first: K counts distinct values. Returns ``(codebook, indices)``."""
    indices = _merge_duplicates(codebook, indices)
    k_all = codebook.shape[1]
    kept = np.arange(k_all) < keep
    used = [np.flatnonzero((_bincount(row, k_all) > 0) | kept) for row in indices]
    k = max(u.size for u in used)
    if k == k_all:
        return codebook, indices
    books, idxs = [], []
    for g, u in enumerate(used):
        lut = np.zeros(k_all, indices.dtype)  # the indices keep their (small) dtype
        lut[u] = np.arange(u.size)
        books.append(np.concatenate([codebook[g, u], np.repeat(codebook[g, u[-1:]],
                                                               k - u.size, axis=0)]))
        idxs.append(lut[indices[g]])
    return np.stack(books), np.stack(idxs)


def _merge_duplicates(codebook, indices):
    """``indices`` with each entry that repeats an earlier one of its group replaced by the
    first (a copy only when there is one)."""
    out = indices
    for g in range(codebook.shape[0]):
        rows = codebook[g].reshape(codebook.shape[1], -1)
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        canon = first[inverse.reshape(-1)]
        if np.any(canon != np.arange(canon.size)):
            out = indices.copy() if out is indices else out
            out[g] = canon.astype(indices.dtype)[indices[g]]
    return out


def _bincount(row, k):
    """``np.bincount(row, minlength=k)`` in slabs: bincount makes an int64 copy of its input."""
    counts = np.zeros(k, np.int64)
    for s in range(0, row.size, _SLAB):
        counts += np.bincount(row[s:s + _SLAB], minlength=k)
    return counts


def zero_units(units, name=None):
    """Mask (G, M) of the units of a (G, M, d) array that are exactly zero.

    Raises:
        ValueError: a unit of d > 1 values is partly zero (its zeros cannot be kept).
    """
    units = np.asarray(units)
    is_zero = units == 0
    zero = is_zero.all(axis=-1)
    partial = int(np.count_nonzero(is_zero.any(axis=-1) & ~zero))
    if partial:
        raise ValueError(
            f"{name or 'weight'}: preserve_sparsity=True keeps zero units, but {partial} of "
            f"{zero.size} units ({units.shape[-1]} values each) are only partly zero, so their "
            "zeros cannot be kept. Use unit='scalar', or prune whole units (kernel rows / "
            "kernels).")
    return zero


def kmeans_keeping_zeros(units, n_clusters, *, init="kmeans++", seed=0, name=None,
                         kmeans_options=None):
    """k-means of the non-zero units into K centroids, behind a fixed zero entry 0.

    Args:
        units: (G, M, d) array (:func:`dkm_tf.core.units.to_units`).
        n_clusters: K, non-zero centroids per group (the zero entry comes on top).
        init, seed, name, kmeans_options: as :func:`dkm_tf.cluster_values` (group g uses
            ``seed + g``).

    Returns:
        ``(codebook, indices, used)``: float32 codebook (G, K + 1, d) whose entry 0 is zero
        (groups with fewer than K distinct non-zero units repeat their last centroid),
        int32 indices (G, M), 0 exactly at the zero units, and ``used``, the largest number
        of entries any group needs (zero entry included).
    """
    units = np.asarray(units)
    zero = zero_units(units, name)
    n_groups, m, d = units.shape
    books = np.zeros((n_groups, n_clusters + 1, d), np.float32)
    idx = np.zeros((n_groups, m), np.int32)
    used = 1
    for g in range(n_groups):
        nz = ~zero[g]
        if not nz.any():
            continue
        x = units[g][nz]
        cb, sub = kmeans_lib.cluster_values(x[:, 0] if d == 1 else x, n_clusters, init=init,
                                            seed=seed + g, name=name, **(kmeans_options or {}))
        cb = np.asarray(cb, np.float32).reshape(-1, d)
        books[g, 1:cb.shape[0] + 1] = cb
        books[g, cb.shape[0] + 1:] = cb[-1]
        idx[g, nz] = sub + 1
        used = max(used, cb.shape[0] + 1)
    return books, idx, used


def nearest_keeping_zeros(units, codebook, old):
    """Re-assign units (M, d) to the nearest of entries 1..K of ``codebook`` (K + 1, d); the
    units whose ``old`` index is 0 (the fixed zero) stay there."""
    old = np.asarray(old)
    out = np.zeros(old.shape, np.int64)
    nz = old != 0
    if nz.any():
        out[nz] = nearest(units[nz], codebook[1:]) + 1
    return out


def check_zero_entry(codebook, name):
    """Raise a ``ValueError`` unless entry 0 of every group of ``codebook`` (G, K, d) is zero."""
    codebook = np.asarray(codebook)
    if codebook.shape[1] < 1 or np.any(codebook[:, 0] != 0):
        raise ValueError(f"Palette {name}: preserve_sparsity=True needs entry 0 of every "
                         "codebook to be the fixed zero; it is not.")


def short_codebook_note(codebook, indices, units, n_clusters, skip=None):
    """The note of a palette whose codebook (G, K', d) has fewer entries than ``n_clusters``.

    "lossless" only when every unit decodes to itself (as float32): k-means also returns
    fewer centroids when clusters end empty (or a histogram merges values), and that is
    lossy. ``units`` is the (G, M, d) array or a function that makes it (called only when
    K' < ``n_clusters``); ``skip`` (G, M) marks units not compared (set to zero on purpose).
    """
    k = codebook.shape[1]
    if k >= n_clusters:
        return ""
    units = np.asarray(units() if callable(units) else units, np.float32)
    got = np.take_along_axis(np.asarray(codebook, np.float32),
                             np.asarray(indices, np.int64)[..., None], axis=1)
    same = np.all(got == units, axis=-1) | (False if skip is None else np.asarray(skip))
    if same.all():
        return (f"only {k} distinct units (<= n_clusters={n_clusters}): lossless, codebook "
                f"has {k} entries")
    return (f"k-means found only {k} of n_clusters={n_clusters} centroids: lossy "
            f"({int(np.count_nonzero(~same))} units differ from their centroid)")


def _slabs(shape, limit=_SLAB):
    """Index tuples that cut an array of ``shape`` into C-order slabs of about ``limit``."""
    a = 0
    while a < len(shape) - 1 and math.prod(shape[a + 1:]) > limit:
        a += 1
    step = max(1, limit // math.prod(shape[a + 1:]))
    for lead in np.ndindex(*shape[:a]):
        for s in range(0, shape[a], step):
            yield (*lead, slice(s, s + step))


def decode(codebook, indices, layout):
    """``codebook[indices]`` put back in the kernel's layout: a C-contiguous float32 array.

    ``codebook`` (G, K, d), ``indices`` (G, M) and ``layout`` as in
    :class:`~dkm_tf.core.palette.Palette`. The kernel is written slab by slab (C order, 65,536
    values each) from views of the indices in kernel order, so the result is the
    only large allocation: no (G, M, d) array to transpose, no int64 copy of the indices.
    """
    book = np.asarray(codebook, np.float32)
    g, k, d = book.shape
    m = layout.n_units

    def in_kernel_order(a):  # a (G, M, d)-broadcastable array as a view in kernel layout
        return units_lib.kernel_view(np.broadcast_to(a, (g, m, d)), layout)

    idx = in_kernel_order(np.asarray(indices)[:, :, None])
    offset = None  # (group * K) * d + j: where a unit's value j of group g starts
    if g > 1 or d > 1:
        offset = in_kernel_order(np.arange(g)[:, None, None] * (k * d) + np.arange(d))
    flat = book.reshape(-1)
    out = np.empty(layout.kernel_shape, np.float32)
    for sl in _slabs(layout.kernel_shape, _SLAB):
        pos = idx[sl] if offset is None else idx[sl].astype(np.int64) * d + offset[sl]
        out[sl] = flat[pos]
    return out
