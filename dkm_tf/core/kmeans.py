"""k-means for weight sharing, in numpy (no TensorFlow); the public entry point is
:func:`cluster_values`.

Two engines:

* **Scalar** (units of one value): Lloyd's algorithm on the *sorted* values with prefix sums.
  In 1-D every cluster is an interval, so one Lloyd step costs ``O(K log n)`` (a
  ``searchsorted`` of the K-1 midpoints and K interval sums) instead of ``O(nK)``. More
  than 65,536 values are first reduced to a fine histogram (65,536 bins holding counts and
  sums), Lloyd runs on the weighted bin means, and one exact step on the raw values finishes.
  With ``refine`` (default), Lloyd also starts from a dynamic-programming solution on 512
  groups (half equal-weight, half equally spaced; globally optimal up to group granularity),
  the better result is kept, and a windowed DP moves all boundaries jointly to their best
  positions within 64 points, until the SSE stops falling; tests check the SSE against the
  exact 1-D optimum.
* **Vector** (units of dimension d: kernel rows, whole 2-D kernels): k-means++ seeding and a
  blocked Lloyd (:mod:`dkm_tf.core._kmeans_vec`: one float32 GEMM per cache-sized block of
  ``[x, 1] @ [-2 C^T; ||c||^2]``, argmin in cache, SSE from per-cluster sums, never
  ``N x K``); within 2x of faiss at 1 M x 9, K=256 (bench/kmeans.py). faiss (optional extra)
  is used when it is installed and the problem is large.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from dkm_tf.core import _kmeans_vec
from dkm_tf.core import validate as validate_lib
from dkm_tf.core._kmeans1d import Weighted1D, cluster_histogram, finish, solve
from dkm_tf.core.validate import check_choice, check_n_clusters

__all__ = [
    "INITS",
    "KMEANS_THREADS",
    "assignment_entropy",
    "cluster_values",
    "count_unique",
    "scalar_kmeans",
    "sse",
    "vector_kmeans",
]

_LOG = logging.getLogger("dkm_tf")

INITS = ("kmeans++", "linear", "density", "random")
KMEANS_THREADS = 4  # k-means of different layers runs in this many threads (numpy frees the GIL)
_HIST_THRESHOLD = 65_536  # values above which scalar k-means runs on a histogram
_FAISS_MIN_WORK = 20_000_000  # N*K above which vector k-means prefers faiss when installed
_F32_MAX = float(np.finfo(np.float32).max)


# --------------------------------------------------------------------------- validation
def _check_init(init):
    return check_choice("init", init, INITS)


def _check_finite(x, name):
    """Refuse NaN / Inf, and values beyond float32's range (codebooks are float32: a
    float64 weight of 1e39 would become an infinite centroid)."""
    where = f" in {name}" if name else ""
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(
            f"Cannot cluster weights{where}: {bad} of {np.size(x)} values are NaN or Inf. "
            "Fix the model (e.g. lower the learning rate) before clustering."
        )
    top = max(float(np.max(x, initial=0.0)), -float(np.min(x, initial=0.0)))  # no |x| copy
    if top > _F32_MAX:
        raise ValueError(f"Cannot cluster weights{where}: values up to {top:.4g} exceed "
                         f"float32's range (+-{_F32_MAX:.4g}), and codebooks are float32. "
                         "Rescale the weights before clustering.")


# --------------------------------------------------------------------------- helpers
def sse(x, codebook, indices):
    """Sum of squared distances between units and their assigned centroids."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(codebook, dtype=np.float64)
    return float(np.sum((x - c[np.asarray(indices)]) ** 2))


def assignment_entropy(indices, n_clusters=None):
    """Empirical entropy of an index histogram, in bits per index: ``H = -sum_k p_k log2 p_k``,
    the ideal entropy-coded index cost of Deep k-Means' ratio (``huffman_length``; methods.md §1.7).

    Args:
        indices: integers >= 0, any shape; ``p_k`` is the fraction of them equal to k.
        n_clusters: K or None; if given it must exceed the largest index (empty clusters add 0).
    """
    idx = np.asarray(indices).ravel()
    if idx.dtype.kind not in "iu" or (idx.size and idx.min() < 0):
        low = idx.min() if idx.size and idx.dtype.kind in "biuf" else None  # no min of text
        raise ValueError("Invalid value for argument `indices`. Expected an array of integers "
                         f">= 0. Received: dtype {idx.dtype}, smallest value {low}")
    if n_clusters is not None and check_n_clusters(n_clusters) <= (
            idx.max() if idx.size else -1):
        raise validate_lib.invalid("n_clusters", f"None or more than the largest index, "
                                   f"{idx.max()}", n_clusters)
    if idx.size == 0:
        return 0.0
    counts = np.bincount(idx)  # K adds only empty clusters, which add nothing to H
    p = counts[counts > 0] / idx.size
    return float(max(0.0, -np.sum(p * np.log2(p))))


def sortable(x):
    """``x`` as an array, float16 as float32: numpy 2.4's float16 sort (AVX-512) can leave
    equal values apart, so ``np.unique`` found 8 distinct values among 4 (measured, 16 values)."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


def count_unique(x, axis=None):
    """Number of distinct values of ``x``, or of each slice ``x[..., i, ...]`` along ``axis``.

    Args:
        x: array of any shape (``count_unique(kernel, axis=-1)``: per output channel).
        axis: None (one count over all of ``x``) or an integer in ``[-x.ndim, x.ndim)``.
    """
    x = sortable(x)
    if axis is None:
        return int(np.unique(x).size)
    axis = validate_lib.check_axis("axis", axis, x.ndim)
    moved = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    return np.array([np.unique(row).size for row in moved])


# --------------------------------------------------------------------------- scalar engine
def scalar_kmeans(x, n_clusters, *, init="kmeans++", seed=0, max_iter=3000, refine=True,
                  name=None):
    """Near-optimal 1-D k-means.

    Args:
        x: array of values (any shape and layout; flattened in C order).
        n_clusters: K >= 1. When ``x`` has at most K distinct values the result is lossless:
            the codebook is the distinct values (fewer than K entries) and a note is logged.
        init: one of ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        seed: seed of the random generator (kmeans++ and random inits).
        max_iter: Lloyd iterations per round.
        refine: also run Lloyd from a dynamic-programming seed and polish with a windowed
            dynamic program over the cluster boundaries (escapes Lloyd's local optima;
            near-optimal SSE). ``False`` gives plain Lloyd from ``init``.
        name: name used in error messages (e.g. the layer).

    Returns:
        ``(codebook, indices)``: sorted float32 centroids (K,) and int32 indices of x.ravel().
    """
    k = check_n_clusters(n_clusters)
    _check_init(init)
    x = np.asarray(x)
    if x.size == 0:
        raise validate_lib.invalid("x", f"at least one value{' (' + name + ')' if name else ''}", x)
    rng = np.random.default_rng(seed)
    if x.size > _HIST_THRESHOLD:  # read block by block in C order: a view is never copied
        bounds = (x.min(), x.max())  # NaN / Inf exactly when some value is
        if not np.all(np.isfinite(bounds)) or max(map(abs, map(float, bounds))) > _F32_MAX:
            _check_finite(x, name)
        return _say_if_capped(x, k, cluster_histogram(x, k, init, rng, max_iter, refine,
                                                      bounds=bounds), name)
    flat = x.reshape(-1)
    _check_finite(flat, name)
    xd = flat.astype(np.float32).astype(np.float64)  # the codebook's values: no duplicates
    vals, cnt = np.unique(xd, return_counts=True)
    if vals.size <= k:
        if vals.size < k:
            _LOG.info("%s: %d distinct values <= n_clusters=%d; clustering is lossless.",
                      name or "values", vals.size, k)
        return vals.astype(np.float32), np.searchsorted(vals, xd).astype(np.int32)
    data = Weighted1D(vals, cnt.astype(np.float64))
    c = solve(data, k, init, rng, max_iter, refine)
    # exact finishing step on the raw values
    mids = (c[:-1] + c[1:]) / 2.0
    idx = np.searchsorted(mids, xd, side="left").astype(np.int32)
    counts = np.bincount(idx, minlength=c.size)
    sums = np.bincount(idx, weights=xd, minlength=c.size)
    return finish(c, counts, sums, idx)


# --------------------------------------------------------------------------- vector engine
def _nearest(x, c, chunk):
    """Index of and squared distance to the nearest centroid, in blocks of ``chunk`` rows:
    ``||x||^2 - 2 x.c + ||c||^2`` in float32, so memory is ``O(chunk * K)``."""
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
    if np.unique(h[:4 * k + 16]).size > k or np.unique(h).size > k:  # cheap test first
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
        chunk: at most this many rows per distance block (blocks are sized to ~256 KiB of
            float32 for the cache); memory is ``O(min(chunk, 65536 / K) * K)`` per thread.
        use_faiss: True / False / None (auto: when faiss is installed and N*K is large).
        name: name used in error messages.

    Returns:
        ``(codebook, indices)``: float32 (K', d) centroids and int32 (N,) indices.
    """
    k = check_n_clusters(n_clusters)
    _check_init(init)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise validate_lib.invalid("x", "a non-empty (N, d) array of units", x)
    _check_finite(x, name)
    xd = x.astype(np.float32).astype(np.float64)  # the codebook's values
    rng = np.random.default_rng(seed)
    distinct = _distinct_units(xd, k)
    if distinct is not None:
        uniq, inverse = distinct
        if uniq.shape[0] < k:
            _LOG.info("%s: %d distinct units <= n_clusters=%d; clustering is lossless.",
                      name or "units", uniq.shape[0], k)
        return uniq.astype(np.float32), inverse.reshape(-1).astype(np.int32)
    n = xd.shape[0]
    # k-means is translation and scale invariant: centre, then scale by a power of two (exact),
    # so that float32 distances neither overflow (units ~1e20) nor underflow (~1e-20)
    mu = xd.mean(axis=0)
    xd -= mu
    unit = 2.0 ** -math.floor(math.log2(float(np.max(np.abs(xd)))))  # > 0: > K distinct units
    xd *= unit
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
        c, idx = _kmeans_vec.lloyd(xd, c, max_iter=max_iter, tol=tol, chunk=chunk)
    c = np.asarray(c, np.float64) / unit + mu
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


def _has_faiss():
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _say_if_capped(x, k, result, name):
    """Warn when the histogram engine (> 65,536 values) gave fewer than K centroids, lossy."""
    codebook, indices = result
    if len(codebook) < k and not np.array_equal(np.asarray(codebook)[indices],
                                                 np.asarray(x, np.float32).reshape(-1)):
        import warnings  # noqa: PLC0415

        warnings.warn(f"cluster_values{' (' + name + ')' if name else ''}: found only "
                      f"{len(codebook)} of n_clusters={k} centroids (lossy): the {x.size:,} "
                      f"values are clustered on a histogram of {_HIST_THRESHOLD:,} bins, and "
                      "too few of its bins are occupied for more centroids.",
                      UserWarning, stacklevel=4)
    return result


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
        ValueError: K < 1 (or K > 65,536 for more than 65,536 scalar values), unknown
            init, NaN/Inf values, a negative seed, or an array of the wrong rank.
        TypeError: ``n_clusters`` or ``seed`` is not an integer, ``x`` holds no real
            numbers (strings, None, complex), or an unknown k-means option.

    Example:
        >>> import numpy as np
        >>> codebook, idx = cluster_values(np.array([0.0, 0.1, 1.0, 1.1]), 2)
        >>> [round(float(c), 2) for c in codebook], idx.tolist()
        ([0.05, 1.05], [0, 0, 1, 1])
    """
    k = check_n_clusters(n_clusters)
    _check_init(init)
    validate_lib.check_seed(seed)
    x = validate_lib.check_real_array("x", x)
    scalar = x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)
    validate_lib.check_kmeans_options(kwargs, engine="scalar" if scalar else "vector")
    if x.ndim == 2 and x.shape[1] == 0:
        raise ValueError("Invalid value for argument `x`. Expected units of dimension d >= 1. "
                         f"Received: an array of shape {x.shape}")
    if scalar and k > _HIST_THRESHOLD and x.shape[0] > _HIST_THRESHOLD:
        raise validate_lib.invalid(
            "n_clusters", f"at most {_HIST_THRESHOLD:,} for more than {_HIST_THRESHOLD:,} values "
            f"(they are clustered on a histogram of {_HIST_THRESHOLD:,} bins)", n_clusters)
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
