"""The scalar (1-D) k-means engine behind :func:`dkm_tf.kmeans.scalar_kmeans`.

Points are sorted distinct values with weights (counts, or histogram bins), held with prefix
sums so that the weight, sum and squared error of any interval cost O(1). In 1-D every
k-means cluster is an interval, so a Lloyd step is a ``searchsorted`` of the K-1 midpoints
plus K interval sums: ``O(K log n)``.
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 65_536

__all__ = ["HIST_BINS", "Weighted1D", "cluster_histogram", "finish", "solve"]


class Weighted1D:
    """Sorted distinct values with weights, and prefix sums for O(1) interval statistics."""

    def __init__(self, values, weights):
        self.v = values
        self.w = weights
        self.cw = np.concatenate([[0.0], np.cumsum(weights)])
        self.cs = np.concatenate([[0.0], np.cumsum(weights * values)])
        self.cq = np.concatenate([[0.0], np.cumsum(weights * values * values)])

    def stats(self, lo, hi):
        """Weight, sum and SSE of the points in [lo, hi) (index arrays)."""
        w = self.cw[hi] - self.cw[lo]
        s = self.cs[hi] - self.cs[lo]
        q = self.cq[hi] - self.cq[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(w > 0, q - s * s / np.where(w > 0, w, 1.0), 0.0)
        return w, s, np.maximum(err, 0.0)

    def bounds(self, c):
        mids = (c[:-1] + c[1:]) / 2.0
        edges = np.searchsorted(self.v, mids, side="right")
        return np.concatenate([[0], edges]), np.concatenate([edges, [self.v.size]])

    def total_sse(self, c):
        lo, hi = self.bounds(c)
        return float(self.stats(lo, hi)[2].sum())


def _init_1d(data, k, init, rng):
    v, w = data.v, data.w
    if init == "linear":
        return np.linspace(v[0], v[-1], k)
    if init == "density":
        q = (np.arange(k) + 0.5) / k * data.cw[-1]
        return v[np.minimum(np.searchsorted(data.cw[1:], q), v.size - 1)]
    if init == "random":
        return np.sort(rng.choice(v, size=k, replace=False, p=w / w.sum()))
    # kmeans++: D^2 sampling on the weighted points
    centers = [v[rng.choice(v.size, p=w / w.sum())]]
    d2 = (v - centers[0]) ** 2
    for _ in range(1, k):
        p = w * d2
        total = p.sum()
        if total <= 0:
            break
        nxt = v[rng.choice(v.size, p=p / total)]
        centers.append(nxt)
        d2 = np.minimum(d2, (v - nxt) ** 2)
    return np.sort(np.asarray(centers))


def _lloyd_1d(data, c, max_iter, tol, rel_tol=1e-10):
    """Lloyd steps until the centroids stop moving or the SSE gains less than ``rel_tol``."""
    prev = np.inf
    for _ in range(max_iter):
        lo, hi = data.bounds(c)
        w, s, err = data.stats(lo, hi)
        err = float(err.sum())
        if prev - err <= rel_tol * err:
            return c
        prev = err
        new = np.where(w > 0, s / np.where(w > 0, w, 1.0), c)
        new = _fix_empty(data, np.sort(new), w)
        if np.max(np.abs(new - c)) <= tol:
            return new
        c = new
    return c


def _fix_empty(data, c, w):
    """Move centroids of empty (or duplicated) clusters into the worst cluster."""
    k = c.size
    for _ in range(k):
        dup = np.concatenate([[False], np.diff(c) <= 0])
        empty = (w <= 0) | dup
        if not empty.any():
            return c
        lo, hi = data.bounds(c)
        _, _, err = data.stats(lo, hi)
        worst = int(np.argmax(np.where(empty, -1.0, err)))
        if err[worst] <= 0:
            return np.unique(c)  # fewer distinct points than clusters: keep what exists
        seg = data.v[lo[worst]:hi[worst]]
        j = int(np.argmax(np.abs(seg - c[worst])))
        c = c.copy()
        c[int(np.argmax(empty))] = seg[j]
        c = np.sort(c)
        lo, hi = data.bounds(c)
        w = data.stats(lo, hi)[0]
    return c


def _best_splits(data, lo, hi):
    """For each cluster: SSE gain of its best 2-split and the two halves' means."""
    k = lo.size
    gain, m1, m2 = np.zeros(k), np.zeros(k), np.zeros(k)
    for i in range(k):
        a, b = int(lo[i]), int(hi[i])
        if b - a < 2:
            continue
        cut = np.arange(a + 1, b)
        w1, s1, e1 = data.stats(np.full(cut.size, a), cut)
        w2, s2, e2 = data.stats(cut, np.full(cut.size, b))
        e_all = data.stats(np.array([a]), np.array([b]))[2][0]
        j = int(np.argmin(e1 + e2))
        gain[i] = e_all - (e1[j] + e2[j])
        m1[i], m2[i] = s1[j] / w1[j], s2[j] / w2[j]
    return gain, m1, m2


def _split_merge_1d(data, c, max_iter, tol, rounds=100):
    """Lower the SSE with remove-one/split-one moves followed by Lloyd (1-D only).

    A move removes centroid j (its points join the neighbours) and splits cluster i at its
    best cut; it is kept when the SSE after Lloyd is lower. This escapes the local optima in
    which Lloyd leaves two centroids in one mode of the data and one across two modes.
    """
    best = data.total_sse(c)
    for _ in range(rounds):
        k = c.size
        if k < 2:
            break
        lo, hi = data.bounds(c)
        gain, m1, m2 = _best_splits(data, lo, hi)
        merge_cost = np.array([data.total_sse(np.delete(c, j)) for j in range(k)]) - best
        improved = False
        for i in np.argsort(gain)[::-1][:4]:
            if gain[i] <= 0:
                break
            for j in np.argsort(merge_cost)[:4]:
                if j == i:
                    continue
                trial = c.copy()
                trial[i], trial[j] = m1[i], m2[i]
                trial = _lloyd_1d(data, np.sort(trial), min(max_iter, 100), tol)
                err = data.total_sse(trial)
                if err < best * (1 - 1e-12):
                    c, best, improved = trial, err, True
                    break
            if improved:
                break
        if not improved:
            break
    return c


def _dp_seed(data, k, n_groups=1024):
    """Globally optimal k-means of ``n_groups`` equal-weight groups of the sorted points.

    The optimal 1-D partition is contiguous, so dynamic programming over group boundaries,
    ``D_k[b] = min_a D_{k-1}[a] + SSE(groups a..b-1)``, gives the best partition whose cuts fall
    on group edges in ``O(K n_groups^2)``. Lloyd started from its means lands in the global
    optimum's basin (cuts are off by at most one group, about 0.1 % of the points).
    """
    n = data.v.size
    g = min(n_groups, n)
    edges = np.unique(np.searchsorted(data.cw[1:], np.linspace(0, data.cw[-1], g + 1)[1:-1],
                                      side="left") + 1)
    edges = np.concatenate([[0], edges[(edges > 0) & (edges < n)], [n]])
    m = edges.size - 1
    if m <= k:
        return None
    a, b = np.meshgrid(edges[:-1], edges[1:], indexing="ij")  # groups a..b-1 as points
    cost = data.stats(a.ravel(), b.ravel())[2].reshape(m, m)
    cost[np.tril_indices(m, -1)] = np.inf  # cost[i, j]: points of groups i..j
    d = cost[0].copy()  # one cluster covering groups 0..j
    back = []
    for _ in range(1, k):
        tot = d[:-1, None] + cost[1:, :]  # last cluster = groups i+1..j
        arg = np.argmin(tot, axis=0)
        d = np.concatenate([[np.inf], tot[arg, np.arange(m)][1:]])
        back.append(arg)
    cuts, j = [], m - 1
    for arg in reversed(back):
        i = int(arg[j])
        cuts.append(i + 1)
        j = i
    bounds = np.concatenate([[0], edges[np.array(cuts[::-1], dtype=np.int64)], [n]])
    w, s, _ = data.stats(bounds[:-1], bounds[1:])
    return s / np.maximum(w, 1e-300)


def solve(data, k, init, rng, max_iter, refine, coarse=False):
    """Lloyd from ``init``; with ``refine``, also from a DP seed, then split/merge moves.

    ``coarse`` (histogram data) uses 256 DP groups and no split/merge: the bins already bound
    the precision, and this keeps a 2.4 M-value layer near 0.05 s.
    """
    k_eff = min(k, data.v.size)
    tol = 1e-12 * max(float(np.abs(data.v).max()), 1e-30)
    c = _lloyd_1d(data, _init_1d(data, k_eff, init, rng), max_iter, tol)
    if refine and k_eff > 1:
        seeded = _dp_seed(data, k_eff, n_groups=256 if coarse else 1024)
        if seeded is not None:
            c2 = _lloyd_1d(data, np.sort(seeded), max_iter, tol)
            if data.total_sse(c2) < data.total_sse(c):
                c = c2
        if not coarse:
            c = _split_merge_1d(data, c, max_iter, tol, rounds=8)
    return c


def cluster_histogram(flat, k, init, rng, max_iter, refine):
    """Scalar k-means of many values: Lloyd on a 65,536-bin histogram, then one exact step.

    Only the values in bins that straddle a decision boundary are re-assigned one by one; the
    other bins are assigned whole, so the exact step costs a few passes over the data.
    """
    xf = flat.astype(np.float32, copy=False)
    lo_v, hi_v = float(xf.min()), float(xf.max())
    if hi_v == lo_v:
        return np.array([lo_v], np.float32), np.zeros(flat.size, np.int32)
    nb = HIST_BINS
    scale = (nb - 1e-3) / (hi_v - lo_v)
    b = ((xf - np.float32(lo_v)) * np.float32(scale)).astype(np.int32)
    np.clip(b, 0, nb - 1, out=b)
    cnt = np.bincount(b, minlength=nb).astype(np.float64)
    sm = np.bincount(b, weights=xf, minlength=nb)
    keep = cnt > 0
    data = Weighted1D(sm[keep] / cnt[keep], cnt[keep])
    c = solve(data, k, init, rng, max_iter, refine, coarse=True)
    mids = (c[:-1] + c[1:]) / 2.0
    centers = lo_v + (np.arange(nb) + 0.5) / scale
    lut = np.searchsorted(mids, centers, side="left").astype(np.int32)
    edge = np.floor((mids - lo_v) * scale).astype(np.int64)
    border = np.zeros(nb, bool)
    for off in (-1, 0, 1):
        border[np.clip(edge + off, 0, nb - 1)] = True
    whole = keep & ~border
    counts = np.bincount(lut[whole], weights=cnt[whole], minlength=c.size)
    sums = np.bincount(lut[whole], weights=sm[whole], minlength=c.size)
    idx = lut[b]
    sel = np.flatnonzero(border[b])
    if sel.size:
        xs = xf[sel].astype(np.float64)
        idx_s = np.searchsorted(mids, xs, side="left").astype(np.int32)
        idx[sel] = idx_s
        counts += np.bincount(idx_s, minlength=c.size)
        sums += np.bincount(idx_s, weights=xs, minlength=c.size)
    return finish(c, counts, sums, idx)


def finish(c, counts, sums, idx):
    """Centroids as exact member means; drop clusters left empty (histogram merges)."""
    c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    used = np.flatnonzero(counts)
    if used.size < c.size:  # only possible when histogram bins merged distinct values
        remap = np.full(c.size, -1, np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        c, idx = c[used], remap[idx]
    return c.astype(np.float32), idx
