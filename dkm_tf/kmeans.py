"""k-means for weight sharing, in numpy (no TensorFlow).

Two engines:

* **Scalar** (units of one value): Lloyd's algorithm on the *sorted* values with prefix sums.
  In 1-D every cluster is an interval, so one Lloyd step costs ``O(K log n)`` (a
  ``searchsorted`` of the K-1 midpoints and K interval sums) instead of ``O(nK)``. More
  than 65,536 values are first reduced to a fine histogram (65,536 bins holding counts and
  sums), Lloyd runs on the weighted bin means, and one exact step on the raw values finishes.
  With ``refine`` (default), Lloyd also starts from a dynamic-programming solution on 1,024
  equal-weight groups (globally optimal up to group granularity), the better result is kept,
  and split/merge moves polish it; tests check the SSE against the exact 1-D optimum.
* **Vector** (units of dimension d: kernel rows, whole 2-D kernels): k-means++ seeding and a
  chunked Lloyd whose distance matrix is at most ``chunk x K`` (never ``N x K x d``); faiss is
  used when it is installed and the problem is large.

The public entry point is :func:`cluster_values`.
"""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = [
    "INITS",
    "assignment_entropy",
    "cluster_values",
    "count_unique",
    "scalar_kmeans",
    "sse",
    "vector_kmeans",
]

_LOG = logging.getLogger("dkm_tf")

INITS = ("kmeans++", "linear", "density", "random")
_HIST_THRESHOLD = 65_536  # values above which scalar k-means runs on a histogram
_HIST_BINS = 65_536
_FAISS_MIN_WORK = 20_000_000  # N*K above which vector k-means prefers faiss when installed


# --------------------------------------------------------------------------- validation
def _check_n_clusters(n_clusters):
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise TypeError(
            "Invalid type for argument `n_clusters`. Expected an integer >= 1. "
            f"Received: n_clusters={n_clusters!r} of type {type(n_clusters).__name__}"
        )
    if n_clusters < 1:
        raise ValueError(
            "Invalid value for argument `n_clusters`. Expected an integer >= 1. "
            f"Received: n_clusters={n_clusters}"
        )
    return int(n_clusters)


def _check_init(init):
    if init not in INITS:
        raise ValueError(
            f"Invalid value for argument `init`. Expected one of {list(INITS)}. "
            f"Received: init={init!r}"
        )
    return init


def _check_finite(x, name):
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        where = f" in {name}" if name else ""
        raise ValueError(
            f"Cannot cluster weights{where}: {bad} of {np.size(x)} values are NaN or Inf. "
            "Fix the model (e.g. lower the learning rate) before clustering."
        )


# --------------------------------------------------------------------------- helpers
def sse(x, codebook, indices):
    """Sum of squared distances between units and their assigned centroids."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(codebook, dtype=np.float64)
    return float(np.sum((x - c[np.asarray(indices)]) ** 2))


def assignment_entropy(indices, n_clusters=None):
    """Empirical entropy of an index histogram, in bits per index.

    ``H = -sum_k p_k log2 p_k`` with ``p_k`` the fraction of units assigned to cluster k. This
    is the ideal entropy-coded index cost that the Deep k-Means code uses for its compression
    ratio (``huffman_length`` in ``WideResNet_Deploy.py``; methods.md §1.7).
    """
    idx = np.asarray(indices).ravel()
    if idx.size == 0:
        return 0.0
    counts = np.bincount(idx, minlength=n_clusters or 0)
    p = counts[counts > 0] / idx.size
    return float(max(0.0, -np.sum(p * np.log2(p))))


def count_unique(x, axis=None):
    """Number of distinct values of ``x``, or of each slice ``x[..., i, ...]`` along ``axis``.

    ``count_unique(kernel, axis=-1)`` counts per output channel of a Conv/Dense kernel.
    """
    x = np.asarray(x)
    if axis is None:
        return int(np.unique(x).size)
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    return np.array([np.unique(row).size for row in moved])


# --------------------------------------------------------------------------- scalar engine
class _Weighted1D:
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


def scalar_kmeans(x, n_clusters, *, init="kmeans++", seed=0, max_iter=3000, refine=True,
                  name=None):
    """Near-optimal 1-D k-means.

    Args:
        x: array of values (any shape; flattened).
        n_clusters: K >= 1. When ``x`` has at most K distinct values the result is lossless:
            the codebook is the distinct values (fewer than K entries) and a note is logged.
        init: one of ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        seed: seed of the random generator (kmeans++ and random inits).
        max_iter: Lloyd iterations per round.
        refine: also run Lloyd from a dynamic-programming seed and polish with split/merge
            moves (escapes Lloyd's local optima; near-optimal SSE). ``False`` gives plain
            Lloyd from ``init``.
        name: name used in error messages (e.g. the layer).

    Returns:
        ``(codebook, indices)``: sorted float32 centroids (K,) and int32 indices of x.ravel().
    """
    k = _check_n_clusters(n_clusters)
    _check_init(init)
    x = np.asarray(x)
    flat = x.reshape(-1)
    if flat.size == 0:
        raise ValueError(f"Cannot cluster an empty array{' in ' + name if name else ''}.")
    _check_finite(flat, name)
    xd = flat.astype(np.float64)
    rng = np.random.default_rng(seed)
    if flat.size > _HIST_THRESHOLD:
        return _scalar_kmeans_hist(flat, k, init, rng, max_iter, refine)
    vals, cnt = np.unique(xd, return_counts=True)
    if vals.size <= k:
        if vals.size < k:
            _LOG.info("%s: %d distinct values <= n_clusters=%d; clustering is lossless.",
                      name or "values", vals.size, k)
        return vals.astype(np.float32), np.searchsorted(vals, xd).astype(np.int32)
    data = _Weighted1D(vals, cnt.astype(np.float64))
    c = _solve_1d(data, k, init, rng, max_iter, refine)
    # exact finishing step on the raw values
    mids = (c[:-1] + c[1:]) / 2.0
    idx = np.searchsorted(mids, xd, side="left").astype(np.int32)
    counts = np.bincount(idx, minlength=c.size)
    sums = np.bincount(idx, weights=xd, minlength=c.size)
    return _finish(c, counts, sums, idx)


def _solve_1d(data, k, init, rng, max_iter, refine, coarse=False):
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


def _scalar_kmeans_hist(flat, k, init, rng, max_iter, refine):
    """Scalar k-means of many values: Lloyd on a 65,536-bin histogram, then one exact step.

    Only the values in bins that straddle a decision boundary are re-assigned one by one; the
    other bins are assigned whole, so the exact step costs a few passes over the data.
    """
    xf = flat.astype(np.float32, copy=False)
    lo_v, hi_v = float(xf.min()), float(xf.max())
    if hi_v == lo_v:
        return np.array([lo_v], np.float32), np.zeros(flat.size, np.int32)
    nb = _HIST_BINS
    scale = (nb - 1e-3) / (hi_v - lo_v)
    b = ((xf - np.float32(lo_v)) * np.float32(scale)).astype(np.int32)
    np.clip(b, 0, nb - 1, out=b)
    cnt = np.bincount(b, minlength=nb).astype(np.float64)
    sm = np.bincount(b, weights=xf, minlength=nb)
    keep = cnt > 0
    data = _Weighted1D(sm[keep] / cnt[keep], cnt[keep])
    c = _solve_1d(data, k, init, rng, max_iter, refine, coarse=True)
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
    return _finish(c, counts, sums, idx)


def _finish(c, counts, sums, idx):
    """Centroids as exact member means; drop clusters left empty (histogram merges)."""
    c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
    used = np.flatnonzero(counts)
    if used.size < c.size:  # only possible when histogram bins merged distinct values
        remap = np.full(c.size, -1, np.int32)
        remap[used] = np.arange(used.size, dtype=np.int32)
        c, idx = c[used], remap[idx]
    return c.astype(np.float32), idx


# --------------------------------------------------------------------------- vector engine
def _nearest(x, c, chunk):
    """Index of and squared distance to the nearest centroid, in blocks of ``chunk`` rows.

    Uses ``||x||^2 - 2 x.c + ||c||^2`` in float32, so memory is ``O(chunk * K)``.
    """
    x32 = x.astype(np.float32, copy=False)
    c32 = c.astype(np.float32)
    cc = np.einsum("kd,kd->k", c32, c32)
    idx = np.empty(x.shape[0], np.int64)
    dist = np.empty(x.shape[0], np.float64)
    for s in range(0, x.shape[0], chunk):
        xs = x32[s:s + chunk]
        d = xs @ (-2.0 * c32.T)
        d += cc
        j = np.argmin(d, axis=1)
        idx[s:s + chunk] = j
        dist[s:s + chunk] = np.maximum(np.take_along_axis(d, j[:, None], 1)[:, 0]
                                       + np.einsum("nd,nd->n", xs, xs), 0)
    return idx, dist


def _kmeanspp(x, k, rng):
    """Greedy k-means++ seeding (2 + log K candidates per step, as sklearn)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = [x[rng.integers(n)]]
    d2 = np.sum((x - centers[0]) ** 2, axis=1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            break
        cand = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total), n - 1)
        nd = np.minimum(d2[None, :], np.sum((x[None, :, :] - x[cand][:, None, :]) ** 2, axis=2))
        best = int(np.argmin(nd.sum(axis=1)))
        centers.append(x[cand[best]])
        d2 = nd[best]
    return np.asarray(centers)


def _distinct_units(x, k):
    """The distinct rows of x when there are at most k of them, else None (hash first)."""
    h = x @ np.random.default_rng(12345).standard_normal(x.shape[1])
    if np.unique(h).size > k:
        return None
    return np.unique(x, axis=0, return_inverse=True)


def _faiss_kmeans(x, k, init_c, max_iter, seed):
    import faiss  # noqa: PLC0415 (optional dependency)

    x32 = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=max_iter, seed=seed, verbose=False,
                      max_points_per_centroid=10**9)
    km.train(x32, init_centroids=np.ascontiguousarray(init_c, dtype=np.float32))
    _, idx = km.index.search(x32, 1)
    return km.centroids.astype(np.float64), idx[:, 0].astype(np.int64)


def vector_kmeans(x, n_clusters, *, init="kmeans++", seed=0, max_iter=50, tol=1e-6,
                  chunk=65_536, use_faiss=None, name=None):
    """k-means of N units of dimension d.

    Args:
        x: (N, d) array of units.
        n_clusters: K >= 1 (fewer distinct units than K is lossless, with a logged note).
        init: ``"kmeans++"`` (greedy, on a subsample of at most ``20 K`` units when N is
            large), ``"random"`` (K distinct units), ``"linear"`` (K points evenly spaced on
            the first principal axis) or ``"density"`` (units at the quantiles of that axis).
        seed: random seed.
        max_iter: maximum Lloyd iterations.
        tol: stop when the relative decrease of the SSE falls below this.
        chunk: rows per distance block; memory is ``O(chunk * K)``.
        use_faiss: True / False / None (auto: when faiss is installed and N*K is large).
        name: name used in error messages.

    Returns:
        ``(codebook, indices)``: float32 (K', d) centroids and int32 (N,) indices.
    """
    k = _check_n_clusters(n_clusters)
    _check_init(init)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"Expected a non-empty (N, d) array of units. Received shape {x.shape}")
    _check_finite(x, name)
    xd = x.astype(np.float64)
    rng = np.random.default_rng(seed)
    distinct = _distinct_units(xd, k)
    if distinct is not None:
        uniq, inverse = distinct
        if uniq.shape[0] < k:
            _LOG.info("%s: %d distinct units <= n_clusters=%d; clustering is lossless.",
                      name or "units", uniq.shape[0], k)
        return uniq.astype(np.float32), inverse.reshape(-1).astype(np.int32)
    n = xd.shape[0]
    if init == "kmeans++":
        sub = xd if n <= 20 * k else xd[rng.choice(n, 20 * k, replace=False)]
        c = _kmeanspp(sub, k, rng)
    elif init == "random":
        c = _random_distinct(xd, k, rng)
    else:
        mean = xd.mean(axis=0)
        axis = np.linalg.svd(xd[:4096] - mean, full_matrices=False)[2][0]
        proj = (xd - mean) @ axis
        if init == "linear":
            t = np.linspace(proj.min(), proj.max(), k)
        else:
            t = np.quantile(proj, (np.arange(k) + 0.5) / k)
        c = mean + t[:, None] * axis[None, :]
    if use_faiss is None:
        use_faiss = n * k >= _FAISS_MIN_WORK and _has_faiss()
    if use_faiss:
        c, idx = _faiss_kmeans(xd, k, c, max_iter, seed)
    else:
        prev = np.inf
        for _ in range(max_iter):
            idx, dist = _nearest(xd, c, chunk)
            err = dist.sum()
            counts = np.bincount(idx, minlength=k)
            sums = np.zeros_like(c)
            np.add.at(sums, idx, xd) if xd.shape[1] > 64 else _bincount_sums(sums, idx, xd)
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
            empty = np.flatnonzero(counts == 0)
            if empty.size:  # re-seed empty clusters at the worst-fit units
                far = np.argsort(dist)[::-1][:empty.size]
                new[empty] = xd[far]
            c = new
            if np.isfinite(prev) and prev - err <= tol * prev and not empty.size:
                break
            prev = err
        idx, _ = _nearest(xd, c, chunk)
    counts = np.bincount(idx, minlength=c.shape[0])
    used = np.flatnonzero(counts)
    remap = np.full(c.shape[0], -1, np.int64)
    remap[used] = np.arange(used.size)
    return c[used].astype(np.float32), remap[idx].astype(np.int32)


def _random_distinct(x, k, rng):
    """K distinct units drawn at random (x has more than K distinct units)."""
    order = rng.permutation(x.shape[0])
    _, first = np.unique(x[order], axis=0, return_index=True) if x.shape[0] <= 50 * k else (
        None, None)
    if first is not None:
        return x[order[np.sort(first)[:k]]]
    picked = np.unique(x[order[: 4 * k]], axis=0)
    return picked[rng.permutation(picked.shape[0])[:k]] if picked.shape[0] >= k else x[order[:k]]


def _bincount_sums(out, idx, x):
    for j in range(x.shape[1]):
        out[:, j] = np.bincount(idx, weights=x[:, j], minlength=out.shape[0])


def _has_faiss():
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- entry point
def cluster_values(x, n_clusters, *, init="kmeans++", seed=0, name=None, **kwargs):
    """Cluster values or units with k-means.

    A 1-D array (or an (N, 1) array) is clustered with the scalar engine, an (N, d) array with
    the vector engine. The objective is the k-means squared error
    ``sum_n ||x_n - c_{a(n)}||^2`` (Deep k-Means eq. 1, un-relaxed).

    Args:
        x: 1-D array of values or (N, d) array of units.
        n_clusters: number of clusters K >= 1.
        init: one of ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        seed: random seed; results are deterministic for a given seed.
        name: what is clustered (a layer name), used in error messages.
        **kwargs: passed to :func:`scalar_kmeans` or :func:`vector_kmeans`.

    Returns:
        ``(codebook, indices)``: codebook (K,) for 1-D input or (K, d); int32 indices (N,).
        K may be smaller than ``n_clusters`` when there are fewer distinct values (lossless).

    Raises:
        ValueError: K < 1, unknown init, NaN/Inf values, or an array of the wrong rank.
        TypeError: ``n_clusters`` is not an integer.

    Example:
        >>> import numpy as np
        >>> codebook, idx = cluster_values(np.array([0.0, 0.1, 1.0, 1.1]), 2)
        >>> [round(float(c), 2) for c in codebook], idx.tolist()
        ([0.05, 1.05], [0, 0, 1, 1])
    """
    _check_n_clusters(n_clusters)
    _check_init(init)
    x = np.asarray(x)
    if x.ndim == 1:
        return scalar_kmeans(x, n_clusters, init=init, seed=seed, name=name, **kwargs)
    if x.ndim == 2 and x.shape[1] == 1:
        c, idx = scalar_kmeans(x[:, 0], n_clusters, init=init, seed=seed, name=name, **kwargs)
        return c[:, None], idx
    if x.ndim == 2:
        return vector_kmeans(x, n_clusters, init=init, seed=seed, name=name, **kwargs)
    raise ValueError(
        "Invalid value for argument `x`. Expected a 1-D array of values or an (N, d) array "
        f"of units. Received: an array of shape {x.shape}"
    )
