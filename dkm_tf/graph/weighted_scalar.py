"""Weighted scalar k-means of many values in bounded memory (:mod:`weighted_kmeans`).

The same computation as ``np.unique(x, return_inverse=True)`` + ``np.bincount(inverse,
weights)`` + :class:`dkm_tf.core._kmeans1d.Weighted1D` over the whole tensor, bit for bit,
without the float64 copies and int64 inverse of every value: the distinct values come from a
sorted float32 copy, each value's weight is added to its distinct value's in the same order as
``bincount`` (``np.add.at``, block by block), ``Weighted1D`` builds its prefix sums in place,
and the indices are found block by block (int32). The optimum is the exact weighted one of
before.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core import _kmeans1d

__all__ = ["weighted_scalar"]

_BLOCK = 1 << 18  # values per block


def _blocks(n):
    return ((s, min(s + _BLOCK, n)) for s in range(0, n, _BLOCK))


def _as64(x, s, e):
    return x[s:e].astype(np.float32).astype(np.float64)  # the codebook's values


def _distinct(x):
    """``np.unique(float64(float32(x)))`` of 1-D ``x``: sorted float32 copy, float64 result."""
    xs = np.array(x, np.float32)
    xs.sort()
    keep = np.empty(xs.size, bool)
    keep[:1] = True
    np.not_equal(xs[1:], xs[:-1], out=keep[1:])
    vals = xs[keep].astype(np.float64)
    del xs, keep
    zero = np.searchsorted(vals, 0.0)
    if zero < vals.size and vals[zero] == 0:  # the sort may drop the sign of -0.0: count
        n_neg = n_zero = 0
        for s, e in _blocks(x.size):
            z = x[s:e] == 0
            n_zero += int(np.count_nonzero(z))
            n_neg += int(np.count_nonzero(z & np.signbit(x[s:e])))
        if 0 < n_neg < n_zero:  # which one np.unique keeps depends on its float64 sort: ask
            return np.unique(np.asarray(x).astype(np.float32).astype(np.float64),
                             return_inverse=True)[0]
        vals[zero] = -0.0 if n_neg else 0.0
    return vals


def weighted_scalar(x, importance, k, floor, *, seed=0):
    """Weighted k-means of scalar units ``x`` (M, 1) with importances (M, 1) floored at
    ``floor``: ``(codebook (K', 1) float32, indices (M,) int32)``."""
    x = np.asarray(x)[:, 0]
    imp = np.asarray(importance, np.float64)[:, 0]
    vals = _distinct(x)
    if vals.size <= k:  # lossless: every value its own centroid
        return vals[:, None].astype(np.float32), _nearest(x, vals, midpoints=False)
    w = np.zeros(vals.size)
    for s, e in _blocks(x.size):  # bincount's order: w[inverse[i]] += imp[i], i = 0, 1, ...
        np.add.at(w, _search(vals, _as64(x, s, e)), np.maximum(imp[s:e], floor))
    data = _kmeans1d.Weighted1D(vals, w)  # its prefix sums built in place
    c = _kmeans1d.solve(data, k, "kmeans++", np.random.default_rng(seed), 3000, True)
    lo, hi = data.bounds(c)  # nearest-centroid intervals; centroids = weighted means
    ws, ss, _ = data.stats(lo, hi)
    c = np.where(ws > 0, ss / np.where(ws > 0, ws, 1.0), c)
    del data, vals, w
    return c[:, None].astype(np.float32), _nearest(x, c, midpoints=True)


def _nearest(x, c, *, midpoints):
    """int32 indices of ``x`` in sorted ``c`` (exact members) or by its midpoints."""
    edges = (c[:-1] + c[1:]) / 2.0 if midpoints else c
    idx = np.empty(x.size, np.int32)
    for s, e in _blocks(x.size):
        idx[s:e] = _search(edges, _as64(x, s, e))
    return idx


def _search(edges, keys):
    """``np.searchsorted(edges, keys, side="left")``, the keys in sorted order (a random
    probe of millions of edges misses the cache at every step)."""
    if edges.size <= 4096:
        return np.searchsorted(edges, keys, side="left")
    order = np.argsort(keys)
    out = np.empty(keys.size, np.int64)
    out[order] = np.searchsorted(edges, keys[order], side="left")
    return out
