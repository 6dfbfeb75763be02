"""Prefix sums of sorted 1-D groups (the O(1) interval SSE of :mod:`.kmeans_batched`).

For G groups of M sorted values ``v`` (G, M), prefix sums ``S`` of the values and ``Q`` of
their squares give the SSE of positions ``[i, j)`` as ``Q_j - Q_i - (S_j - S_i)^2 / (j - i)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Groups", "bounds", "gather_rows"]


class Groups:
    """Sorted, centred values ``v`` (G, M) with prefix sums ``cs``, ``cq`` (G, M + 1)."""

    def __init__(self, v):
        self.v, self.m = v, v.shape[1]
        zero = np.zeros((v.shape[0], 1))
        self.cs = np.concatenate([zero, np.cumsum(v, axis=1)], axis=1)
        self.cq = np.concatenate([zero, np.cumsum(v * v, axis=1)], axis=1)

    def take(self, sel):
        out = Groups.__new__(Groups)
        out.v, out.m, out.cs, out.cq = self.v[sel], self.m, self.cs[sel], self.cq[sel]
        return out

    def sse(self, lo, hi):
        """SSE of positions [lo, hi) (index arrays (G, ...), broadcast); inf where empty."""
        n = hi - lo
        s = gather_rows(self.cs, hi) - gather_rows(self.cs, lo)
        q = gather_rows(self.cq, hi) - gather_rows(self.cq, lo)
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.maximum(q - s * s / n, 0.0)
        return np.where(n > 0, err, np.inf)

    def total_sse(self, cuts):
        lo, hi = bounds(cuts, self.m)
        return self.sse(lo, hi).sum(axis=1)

    def means(self, cuts):
        """Centroids of the partitions at ``cuts``; an empty cluster [lo, lo) gets ``v[lo]``,
        which lies between its neighbours' means (the centroids stay sorted)."""
        lo, hi = bounds(cuts, self.m)
        n = hi - lo
        s = gather_rows(self.cs, hi) - gather_rows(self.cs, lo)
        first = gather_rows(self.v, np.minimum(lo, self.m - 1))
        return np.where(n > 0, s / np.maximum(n, 1), first)


def gather_rows(a, idx):
    """``a[g, idx[g, ...]]`` for a (G, L) array and a (G, ...) index array."""
    return np.take_along_axis(a, idx.reshape(a.shape[0], -1), axis=1).reshape(idx.shape)


def bounds(cuts, m):
    g = cuts.shape[0]
    lo = np.concatenate([np.zeros((g, 1), cuts.dtype), cuts], axis=1)
    hi = np.concatenate([cuts, np.full((g, 1), m, cuts.dtype)], axis=1)
    return lo, hi
