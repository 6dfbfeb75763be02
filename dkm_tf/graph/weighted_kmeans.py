"""Weighted k-means for sensitivity-weighted weight sharing (:mod:`dkm_tf.graph.sensitivity`).

Minimises the importance-weighted squared error ``sum_i F_i (w_i - c_{a(i)})^2`` (SqueezeLLM,
Kim et al., 2023, §4.1, eq. 4). Scalar units use the 1-D engine's weighted form
(:class:`dkm_tf.core._kmeans1d.Weighted1D`: sorted distinct values with weights; DP seed +
windowed-DP refinement, near-optimal for the weighted SSE); each distinct value's weight is the
sum of the importances of the weights holding it. Vector units (rows, kernels) are weighted
**per coordinate**: unit u is assigned to ``argmin_k sum_j F_uj (x_uj - c_kj)^2`` and
``c_kj = sum_u F_uj x_uj / sum_u F_uj`` over its members (weighted Lloyd from the plain k-means
solution), the same diagonal objective as the scalar case.

Importances are floored at ``1e-6 x`` their tensor's mean so that every weight still counts a
little; a tensor whose importances are all zero is clustered unweighted, and its palette's note
says so. Numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.graph.weighted_scalar import _BLOCK, weighted_scalar

__all__ = ["FLOOR", "weighted_codebook", "weighted_kmeans", "weighted_palette"]

FLOOR = 1e-6


# ---------------------------------------------------------------------- weighted k-means
def _floor_value(importance, name=None):
    """``FLOOR x`` the importances' mean, or None when they are all zero (raises on bad ones:
    counted block by block, no full boolean copies)."""
    imp = np.asarray(importance, np.float64)
    flat = imp.reshape(-1)
    bad = sum(int(b.size - np.count_nonzero(np.isfinite(b) & (b >= 0)))
              for b in (flat[s:s + _BLOCK] for s in range(0, flat.size, _BLOCK)))
    if bad:
        raise ValueError(f"Importances{' of ' + name if name else ''} must be finite and >= 0: "
                         f"{bad} of {imp.size} are NaN, Inf or negative.")
    with np.errstate(over="ignore"):
        mean = float(imp.mean()) if imp.size else 0.0
    if mean == np.inf:  # finite importances near 1e308 whose sum overflows (review R3: NaN
        scale = 2.0 ** -math.frexp(float(np.max(flat)))[1]  # centroids): exact power of two
        mean = sum(float(np.sum(b * scale)) for b in (flat[s:s + _BLOCK]
                                                      for s in range(0, flat.size, _BLOCK)))
        mean = mean / flat.size / scale
    return None if mean <= 0 else FLOOR * mean


def weighted_kmeans(x, importance, n_clusters, *, seed=0, max_iter=100, name=None):
    """k-means of units ``x`` (M, d) minimising ``sum_u sum_j F_uj (x_uj - c_{a(u)j})^2``.

    Returns ``(codebook (K', d) float32, indices (M,) int32)``, K' <= K (fewer distinct units
    than K is lossless). Importances that are all zero give plain k-means.
    """
    kmeans_lib._check_finite(x, name)  # noqa: SLF001 (NaN / Inf, beyond float32)
    if np.shape(importance) != np.shape(x):  # 20f2b67's block loops read the first M only
        raise ValueError("Invalid value for argument `importance`. Expected an array of the "
                         f"shape of `x`, {np.shape(x)}. Received: shape "
                         f"{np.shape(importance)}.")
    floor = _floor_value(importance, name)
    if floor is not None:  # scale-free in F: a power of two (exact) brings max(F) to [0.5, 1),
        importance = np.asarray(importance, np.float64)  # so sums of F x, F x^2 stay finite
        scale = 2.0 ** -max(math.frexp(float(np.max(importance)))[1], -1000)
        importance, floor = importance * scale, floor * scale
    if floor is not None and np.shape(x)[1] == 1:
        return weighted_scalar(x, importance, int(n_clusters), floor, seed=seed)
    x = np.asarray(x).astype(np.float32).astype(np.float64)  # the codebook's values
    if floor is None:
        return kmeans_lib.cluster_values(x, n_clusters, seed=seed, name=name)
    imp = np.maximum(np.asarray(importance, np.float64), floor)
    k = int(n_clusters)
    c, idx = kmeans_lib.cluster_values(x, k, seed=seed)
    c = c.astype(np.float64)
    if c.shape[0] < k and np.unique(x, axis=0).shape[0] <= k:
        return c.astype(np.float32), idx
    for _ in range(max_iter):
        num = np.zeros_like(c)
        den = np.zeros_like(c)
        np.add.at(num, idx, imp * x)
        np.add.at(den, idx, imp)
        c = np.where(den > 0, num / np.where(den > 0, den, 1.0), c)
        new = _weighted_nearest(x, imp, c)
        if np.array_equal(new, idx):
            break
        idx = new
    return c.astype(np.float32), idx.astype(np.int32)


def _weighted_nearest(x, imp, c, chunk=16384):
    out = np.empty(x.shape[0], np.int64)
    for s in range(0, x.shape[0], chunk):
        xs, fs = x[s:s + chunk], imp[s:s + chunk]
        cost = (fs * xs * xs).sum(1)[:, None] - 2.0 * (fs * xs) @ c.T + fs @ (c * c).T
        out[s:s + chunk] = np.argmin(cost, axis=1)
    return out


def weighted_codebook(kernel, importance, layout, n_clusters, *, seed=0, name=None):
    """Weighted k-means of every group of a kernel: codebook (G, K, d), indices (G, M).

    A group with fewer than K centroids repeats its last one (no unit uses the copies), the
    format of :func:`dkm_tf.training.wrapper.kmeans_codebook`.
    """
    units = units_lib.to_units(np.asarray(kernel), layout)
    imps = units_lib.to_units(np.asarray(importance, np.float64), layout)
    books, idxs = [], []
    for g in range(layout.n_groups):
        cb, idx = weighted_kmeans(units[g], imps[g], n_clusters, seed=seed + g, name=name)
        books.append(np.concatenate([cb, np.repeat(cb[-1:], n_clusters - cb.shape[0], 0)]))
        idxs.append(idx)
    return np.stack(books).astype(np.float32), np.stack(idxs).astype(np.int32)


def weighted_palette(kernel, importance, *, kind, n_clusters, unit="scalar",
                     granularity="per_tensor", seed=0, layer_name="", weight_name="kernel"):
    """:func:`dkm_tf.cluster_tensor` with Fisher-weighted k-means: a :class:`Palette`."""
    kernel = np.asarray(kernel)
    layout = units_lib.layout_for(kernel.shape, kind, unit, granularity)
    name = f"{layer_name}/{weight_name}" if layer_name else weight_name
    kmeans_lib._check_finite(kernel, name)  # noqa: SLF001 (before the importances' check)
    unweighted = _floor_value(importance, name) is None
    cb, idx = weighted_codebook(kernel, importance, layout, int(n_clusters), seed=seed,
                                name=name)
    used = max(int(np.unique(cb[g], axis=0).shape[0]) for g in range(cb.shape[0]))
    if used < cb.shape[1]:
        cb = cb[:, :max(used, int(idx.max()) + 1)]
    note = ("fisher weighting: all gradients were zero, clustered unweighted" if unweighted
            else "fisher-weighted k-means")
    return palette_lib.Palette(layer_name, weight_name, cb, idx, layout,
                               requested_clusters=int(n_clusters), note=note)
