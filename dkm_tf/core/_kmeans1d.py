"""The scalar (1-D) k-means engine behind :func:`dkm_tf.core.kmeans.scalar_kmeans`.

Points are sorted distinct values with weights (counts, or histogram bins), held with prefix
sums so that the weight, sum and squared error of any interval cost O(1). In 1-D every
k-means cluster is an interval, so a Lloyd step is a ``searchsorted`` of the K-1 midpoints
plus K interval sums: ``O(K log n)``.
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 65_536
DP_GROUPS = 512  # groups of the DP seed
DP_WINDOW = 64  # points (or bins) each boundary may move per windowed-DP round
# on a histogram the bins bound the precision anyway: a narrower window, more rounds
DP_WINDOW_HIST = 32
_BLOCK = 1 << 18  # values per block of the passes over the data in cluster_histogram
# fewer occupied bins than this many per cluster (a few far outliers squeeze the other values
# into a few bins): cluster the exact values instead, up to this many values (memory)
MIN_BINS_PER_CLUSTER = 16
EXACT_FALLBACK_MAX = 1 << 22

__all__ = ["HIST_BINS", "Weighted1D", "cluster_histogram", "finish", "solve"]


class Weighted1D:
    """Sorted distinct values with weights, and prefix sums for O(1) interval statistics.

    The sums are float64 (for float64 values and float64 / int64 weights, as every caller
    passes, the same bits as ``np.cumsum`` of the products; float32 inputs are summed in
    float64)."""

    def __init__(self, values, weights):
        self.v = values
        self.w = weights
        # 0, then the running sums of w, w v and (w v) v, built in place (no temporaries of
        # every value: the weighted k-means of a 16 M-weight tensor keeps these alone)
        self.cw, self.cs, self.cq = (np.zeros(np.size(values) + 1) for _ in range(3))
        np.cumsum(weights, out=self.cw[1:])
        cs, cq = self.cs[1:], self.cq[1:]
        np.multiply(weights, values, out=cs)
        np.multiply(cs, values, out=cq)
        np.cumsum(cs, out=cs)
        np.cumsum(cq, out=cq)

    def stats(self, lo, hi):
        """Weight, sum and SSE of the points in [lo, hi) (index arrays)."""
        w = self.cw[hi] - self.cw[lo]
        s = self.cs[hi] - self.cs[lo]
        q = self.cq[hi] - self.cq[lo]
        empty = w <= 0
        err = q - s * s / np.where(empty, 1.0, w)
        err[empty] = 0.0
        return w, s, np.maximum(err, 0.0, out=err)

    def pair_sse(self, lo, hi):
        """SSE of the points in [lo_i, hi_j) for every pair (matrix); ``inf`` where empty."""
        w, _, err = self.stats(lo[:, None], hi[None, :])
        err[w <= 0] = np.inf
        return err

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
        if new.size != c.size or np.max(np.abs(new - c)) <= tol:
            return new  # fewer centroids: fewer distinct points than clusters, all placed
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


def _dp_seed(data, k, n_groups=None):
    """Globally optimal k-means of ``n_groups`` groups of the sorted points.

    The optimal 1-D partition is contiguous, so dynamic programming over group boundaries,
    ``D_k[b] = min_a D_{k-1}[a] + SSE(groups a..b-1)``, gives the best partition whose cuts fall
    on group edges in ``O(K n_groups^2)``. Half the edges are equal-weight quantiles (dense
    where the points are) and half equally spaced in value, so that small clusters in the
    tails of heavy-tailed weights are representable too.
    """
    n = data.v.size
    g = min(n_groups or DP_GROUPS, n)
    quant = np.searchsorted(data.cw[1:], np.linspace(0, data.cw[-1], g // 2 + 1)[1:-1],
                            side="left") + 1
    even = np.searchsorted(data.v, np.linspace(data.v[0], data.v[-1], g // 2 + 1)[1:-1],
                           side="left")
    edges = np.unique(np.concatenate([quant, even]))
    edges = np.concatenate([[0], edges[(edges > 0) & (edges < n)], [n]])
    m = edges.size - 1
    if m <= k:
        return None
    cost = data.pair_sse(edges[:-1], edges[1:])  # cost[i, j]: points of groups i..j
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
    return _means(data, edges[np.array(cuts[::-1], dtype=np.int64)])


def _means(data, cuts):
    """Centroids of the partition of the sorted points at ``cuts`` (start of clusters 1..)."""
    bounds = np.concatenate([[0], cuts, [data.v.size]])
    w, s, _ = data.stats(bounds[:-1], bounds[1:])
    return s / np.maximum(w, 1e-300)


def _dp_refine(data, c, window=None, max_rounds=50):
    """Move all cluster boundaries jointly to their best positions within ``±window`` points.

    Dynamic programming over the K-1 boundaries, each restricted to a window around its
    current position (``O(K window^2)`` per round), repeated until the SSE stops falling:
    exact within the windows, so it escapes the local optima where Lloyd stalls; the seed
    from :func:`_dp_seed` puts every boundary within reach of the global optimum's.
    """
    n, k = data.v.size, c.size
    if k < 2:
        return c
    window = window or DP_WINDOW
    best = data.total_sse(c)
    for _ in range(max_rounds):
        edges = data.bounds(c)[1][:-1]
        cands = [np.arange(max(1, e - window), min(n - 1, e + window) + 1) for e in edges]
        d = data.stats(np.zeros(cands[0].size, np.int64), cands[0])[2]
        back = []
        for prev, cur in zip(cands[:-1], cands[1:]):
            tot = d[:, None] + data.pair_sse(prev, cur)  # clusters stay non-empty
            arg = np.argmin(tot, axis=0)
            d = tot[arg, np.arange(cur.size)]
            back.append(arg)
        tot = d + data.stats(cands[-1], np.full(cands[-1].size, n))[2]
        j = int(np.argmin(tot))
        if not tot[j] < best * (1 - 1e-12):
            break
        best = float(tot[j])
        cuts = [int(cands[-1][j])]
        for arg, cand in zip(reversed(back), reversed(cands[:-1])):
            j = int(arg[j])
            cuts.append(int(cand[j]))
        c = _means(data, np.array(cuts[::-1], dtype=np.int64))
    return c


def solve(data, k, init, rng, max_iter, refine, n_groups=None, window=None):
    """Lloyd from ``init``, or with ``refine`` Lloyd from a DP seed and windowed-DP polishing.

    With ``refine`` the DP seed replaces ``init`` (which is used only when there are too few
    points for the seed): the seed is near the global optimum, so the result no longer
    depends on the init's luck.
    """
    k_eff = min(k, data.v.size)
    tol = 1e-12 * max(float(np.abs(data.v).max()), 1e-30)
    seeded = _dp_seed(data, k_eff, n_groups) if refine and k_eff > 1 else None
    start = np.sort(seeded) if seeded is not None else _init_1d(data, k_eff, init, rng)
    c = _lloyd_1d(data, start, max_iter, tol)
    c = _dp_refine(data, c, window) if refine and k_eff > 1 else c
    return _split_merged(data, c, k_eff)


def _split_merged(data, c, k):
    """Give back centroids that values merged only because their SSEs cancel in the prefix
    sums (tiny or denormal spreads next to large values): drop centroids that hold no value
    and split the widest segment, until k segments hold values (or all values are placed)."""
    for _ in range(k + 1):
        lo, hi = data.bounds(c)
        full = hi > lo
        if full.sum() >= k:
            break
        c, lo, hi = c[full], lo[full], hi[full]
        spread = data.v[hi - 1] - data.v[lo]
        j = int(np.argmax(spread))
        if spread[j] <= 0:
            break
        seg = data.v[lo[j]:hi[j]]  # its two ends become centroids; finish() sets the means
        c = np.unique(np.append(np.delete(c, j), (seg[0], seg[-1])))
    return c


def _blocks(x, start=0):
    """``(offset, values)`` over ``x`` in C order, in 1-D blocks of at most about ``_BLOCK``.

    A block is a view of ``x`` when ``x`` is contiguous (or 1-D) and a copy of at most
    ``_BLOCK`` values otherwise, so a transposed view (a kernel in unit order) is read in
    that order without a full copy.
    """
    if x.ndim <= 1 or x.flags.c_contiguous:
        flat = x.reshape(-1)
        for s in range(0, flat.size, _BLOCK):
            yield start + s, flat[s:s + _BLOCK]
        return
    rest = x.size // x.shape[0] if x.shape[0] else 0
    if rest <= _BLOCK:
        step = _BLOCK // max(rest, 1)
        for s in range(0, x.shape[0], step):
            yield start + s * rest, x[s:s + step].reshape(-1)
        return
    for i in range(x.shape[0]):
        yield from _blocks(x[i], start + i * rest)


def cluster_histogram(x, k, init, rng, max_iter, refine, bounds=None):
    """Scalar k-means of many values: Lloyd on a 65,536-bin histogram, then one exact step.

    Only the values in bins that straddle a decision boundary are re-assigned one by one; the
    other bins are assigned whole, so the exact step costs a few passes over the data.
    ``bounds`` is ``(min, max)`` of ``x`` when the caller already has it. ``x`` may have any
    shape and layout (a transposed view is fine): the indices follow its C order. Both passes
    run in blocks of ``_BLOCK`` values, so besides the int32 indices (the result) memory is
    O(block + bins): no float64 or int64 copy of the values. When fewer than
    ``MIN_BINS_PER_CLUSTER * k`` bins are occupied (far outliers), up to
    ``EXACT_FALLBACK_MAX`` values are clustered exactly (a sorted float32 copy) instead.
    """
    x = np.asarray(x)
    lo_v, hi_v = (x.min(), x.max()) if bounds is None else bounds
    # the values are binned as float32: bounds of the float32 values (rounding is monotone)
    lo_v, hi_v = float(np.float32(lo_v)), float(np.float32(hi_v))
    if hi_v == lo_v:
        return np.array([lo_v], np.float32), np.zeros(x.size, np.int32)
    nb = HIST_BINS
    # float64 arithmetic: a float32 scale overflows for tiny ranges (< 2e-34) and x - lo for
    # ranges above float32's max; the float64 products stay below nb: no clip needed
    scale = (nb - 0.5) / (hi_v - lo_v)
    idx = np.empty(x.size, np.int32)  # the bin of every value first, its index at the end
    cnt = np.zeros(nb, np.int64)
    sm = np.zeros(nb)
    for s, blk in _blocks(x):
        xb = blk.astype(np.float32, copy=False)
        b = idx[s:s + xb.size]  # cast inside the multiply
        np.multiply(np.subtract(xb, lo_v, dtype=np.float64), scale, out=b, casting="unsafe")
        cnt += np.bincount(b, minlength=nb)
        sm += np.bincount(b, weights=xb, minlength=nb)
    keep = cnt > 0
    cnt = cnt.astype(np.float64)
    if keep.sum() < MIN_BINS_PER_CLUSTER * k and x.size <= EXACT_FALLBACK_MAX:
        # most values share a few bins (far outliers): k-means of the exact values instead
        vals, n_v = np.unique(x.astype(np.float32), return_counts=True)
        vals = vals.astype(np.float64)
        c = vals if vals.size <= k else solve(Weighted1D(vals, n_v.astype(np.float64)), k,
                                               init, rng, max_iter, refine)
        mids = (c[:-1] + c[1:]) / 2.0
        counts, sums = np.zeros(c.size), np.zeros(c.size)
        lut = np.full(nb, -1, np.int32)  # every value is assigned exactly below
    else:
        data = Weighted1D(sm[keep] / cnt[keep], cnt[keep])
        # the bins bound the precision anyway: a coarser seed (the windowed DP still polishes)
        c = solve(data, k, init, rng, max_iter, refine, n_groups=DP_GROUPS // 2,
                  window=DP_WINDOW_HIST)
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
        lut[border] = -1  # one gather gives the indices and marks the values to re-assign
    for s, blk in _blocks(x):
        b = idx[s:s + blk.size]
        ib = lut[b]
        sel = np.flatnonzero(ib < 0)
        if sel.size:
            xs = blk[sel].astype(np.float32).astype(np.float64)
            idx_s = np.searchsorted(mids, xs, side="left").astype(np.int32)
            ib[sel] = idx_s
            counts += np.bincount(idx_s, minlength=c.size)
            sums += np.bincount(idx_s, weights=xs, minlength=c.size)
        b[...] = ib
    return finish(c, counts, sums, idx)


def finish(c, counts, sums, idx):
    """Centroids as exact member means; drop clusters left empty (histogram merges)."""
    c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    used = np.flatnonzero(counts)
    if used.size < c.size:  # only possible when histogram bins merged distinct values
        remap = np.full(c.size, -1, np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        c = c[used]
        for s in range(0, idx.size, _BLOCK):  # in place, block by block: no second copy
            idx[s:s + _BLOCK] = remap[idx[s:s + _BLOCK]]
    return c.astype(np.float32), idx
