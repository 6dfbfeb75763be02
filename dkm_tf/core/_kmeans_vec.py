"""Lloyd iterations of the vector k-means engine, in numpy (no faiss needed).

Exact Lloyd (the textbook algorithm, up to float rounding and ties), made fast by:

* **One GEMM per block.** With ``x~ = [x, 1]`` and ``C~ = [-2 C^T; ||c_k||^2]`` (a
  ``(d+1, K)`` float32 matrix), ``x~ @ C~ = ||x - c_k||^2 - ||x||^2``, whose ``argmin`` over k
  is the nearest centroid: a ``rows x K`` block comes out of one float32 BLAS call with no
  extra pass to add ``||c||^2``, sized to about 256 KiB so that the ``argmin`` reads it from
  L2 (never ``N x K`` in memory, no float64 copy of the distances, no ``||x||^2`` term).
* **Threads.** Large passes are split into row ranges, one per thread (``THREADS``).
* **No pass over the data for the SSE.** Per-cluster sums ``S_k`` and counts ``n_k`` come from
  one weighted ``np.bincount`` per dimension, and the SSE of the assignment to ``c`` is
  ``sum ||x||^2 - 2 sum_k c_k . S_k + sum_k n_k ||c_k||^2`` (O(K d)).
* **Early stop** at a fixed point (no unit changed cluster), besides the relative-SSE rule.

The data are centred first (k-means is translation invariant), which keeps the float32
distances and the SSE identity accurate for data far from the origin.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

_BLOCK_BYTES = 1 << 18  # float32 distance block: ~256 KiB (stays in L2)
THREADS = max(1, min(2, os.cpu_count() or 1))  # threads of one assignment pass
_THREAD_MIN_WORK = 1 << 22  # N*K above which the assignment pass is split across threads
_ADD_AT_DIM = 64  # above this dimension, per-cluster sums use np.add.at instead of bincount


def rows_per_block(k, chunk):
    """Rows of one distance block: about 256 KiB of float32, at most ``chunk``."""
    return int(max(1, min(chunk, max(16, _BLOCK_BYTES // (4 * k)))))


def _augment(c):
    """``[-2 C^T; ||c_k||^2]`` as float32 (d+1, K): ``[x, 1] @ it = ||x - c_k||^2 - ||x||^2``."""
    out = np.empty((c.shape[1] + 1, c.shape[0]), np.float32)
    out[:-1] = -2.0 * c.T
    out[-1] = np.einsum("kd,kd->k", c, c)
    return out


def _exact_dist(x, c, a):
    """Exact float64 distance of each unit to its centroid ``c[a]``."""
    diff = x - c[a]
    return np.sqrt(np.einsum("nd,nd->n", diff, diff))


def _nearest_rows(xa, ca, block, out, start, stop):
    buf = np.empty((min(block, stop - start), ca.shape[1]), np.float32)
    for s in range(start, stop, block):
        e = min(s + block, stop)
        out[s:e] = np.matmul(xa[s:e], ca, out=buf[:e - s]).argmin(axis=1)


def nearest(xa, c, block):
    """Index of the nearest centroid of each row of ``xa = [x, 1]`` (float32 distances).

    Large problems are split into contiguous row ranges, one per thread (numpy releases the
    GIL in ``matmul`` and ``argmin``); every row is computed the same way whatever the split.
    """
    n, k = xa.shape[0], c.shape[0]
    ca = _augment(c)
    out = np.empty(n, np.int64)
    parts = THREADS if n * k >= _THREAD_MIN_WORK and n >= 2 * block else 1
    if parts == 1:
        _nearest_rows(xa, ca, block, out, 0, n)
        return out
    edges = np.linspace(0, n, parts + 1).astype(int)
    with concurrent.futures.ThreadPoolExecutor(parts) as pool:
        for f in [pool.submit(_nearest_rows, xa, ca, block, out, lo, hi)
                  for lo, hi in zip(edges[:-1], edges[1:])]:
            f.result()
    return out


def _sums(x, a, k):
    """Per-cluster sums of the units: one weighted ``bincount`` per dimension."""
    if x.shape[1] > _ADD_AT_DIM:
        out = np.zeros((k, x.shape[1]))
        np.add.at(out, a, x)
        return out
    return np.stack([np.bincount(a, weights=x[:, dim], minlength=k)
                     for dim in range(x.shape[1])], axis=1)


def lloyd(x, c, *, max_iter, tol, chunk):
    """Lloyd's algorithm from centroids ``c``, with the stopping rule of the old engine.

    Each iteration assigns every unit to its nearest centroid, computes the SSE ``E_t`` of that
    assignment, and moves every centroid to the mean of its units (an empty cluster is
    re-seeded at the worst-fit units). It stops after ``max_iter`` iterations, when
    ``E_{t-1} - E_t <= tol * E_{t-1}`` (no empty cluster), or when no unit changed cluster
    (a fixed point: more iterations would change nothing). The returned assignment is to the
    returned centroids.

    Args:
        x: (N, d) float64 units; **centred in place** (the caller passes its own copy).
        c: (K, d) initial centroids.
        max_iter: maximum number of centroid updates.
        tol: relative SSE decrease below which to stop.
        chunk: at most this many rows per distance block.

    Returns:
        ``(centroids, indices)``: float64 (K, d) and int64 (N,).
    """
    mu = x.mean(axis=0)
    x -= mu
    c = np.array(c, dtype=np.float64) - mu
    n, d = x.shape
    k = c.shape[0]
    xa = np.empty((n, d + 1), np.float32)
    xa[:, :d] = x
    xa[:, d] = 1.0
    total_xx = float(np.einsum("nd,nd->", x, x))
    block = rows_per_block(k, chunk)
    a = nearest(xa, c, block)
    prev = np.inf
    for _ in range(max_iter):
        counts = np.bincount(a, minlength=k)
        sums = _sums(x, a, k)
        err = total_xx - 2.0 * float(np.sum(c * sums)) + float(
            np.sum(counts * np.einsum("kd,kd->k", c, c)))
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # re-seed empty clusters at the worst-fit units
            far = np.argsort(_exact_dist(x, c, a))[::-1][:empty.size]
            new[empty] = x[far]
        done = bool(np.isfinite(prev) and prev - err <= tol * prev and not empty.size)
        c, old = new, a
        a = nearest(xa, c, block)
        if done or (not empty.size and np.array_equal(a, old)):
            break
        prev = err
    return c + mu, a
