"""Memory-bounded steps of soft (DKM) assignment for big tensors (:mod:`.soft`).

A DKM step needs the (M x K) attention of a weight's M units over its K centroids.
:mod:`.soft` computes it in chunks of at most ``soft.CHUNK`` elements, but plain autodiff keeps
every chunk until the backward pass, and the old :func:`~.soft.snap` kept them all as well
(float64): a 4096 x 4096 Dense kernel at K = 16 held 1 GiB (float32, training) or 2 GiB
(float64, strip) of attention, 16 / 32 GiB at K = 256. Here:

* :func:`last_step` is DKM's differentiated last step, ``A = attention(w, C*)``,
  ``C = A^T w / colsum(A)``, ``W_tilde = A C``, with a hand-written gradient that recomputes
  the attention chunk by chunk (two passes), so neither pass keeps more than one chunk:
  memory O(CHUNK + M d) instead of O(M K), for about twice the attention arithmetic. Used
  on TensorFlow when ``M K`` exceeds :data:`KEEP_ATTENTION` (smaller tensors keep the
  autodiff path, which is faster). More than :data:`UNROLL` chunks run in one loop (also in
  :func:`centroids`, the fixed-point steps): written out, a 2048 x 2048 kernel at K = 256
  made 256 copies of the step in the XLA graph and its first step did not finish in 10 min.
* :func:`fixed_point` is the iteration of :func:`~.soft.dkm_assign` (the same steps, in the
  same order) returning only the final centroids, one chunk of attention at a time.

The gradient (``g`` = dL/dW_tilde, ``h`` = dL/dC from the centroid output)::

    dC_k    = sum_i A_ik g_i + h_k
    dnum_k  = dC_k / den_k,    dden_k = -(dC_k . C_k) / den_k    (0 where den_k <= 1e-30)
    dA_ik   = g_i . C_k + dnum_k . w_i + dden_k
    dz_ik   = A_ik (dA_ik - sum_j A_ij dA_ij)                      (softmax)
    dw_i    = sum_k A_ik dnum_k - sum_k dz_ik d(dist_ik)/dw_i / tau

with ``d(dist)/dw = sign(w - c)`` for scalar units and ``(w - c) / dist`` for vectors (0 where
the squared distance is clipped), as TensorFlow differentiates :func:`~.soft._distance`.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["KEEP_ATTENTION", "UNROLL", "centroids", "fixed_point", "last_step", "recomputes"]

KEEP_ATTENTION = 1 << 24  # attention elements (G M K) up to which autodiff keeps them
UNROLL = 8  # chunks written out in the graph; more run in a loop


def recomputes(w, c):
    """True when the last step of ``w`` (G, M, d) against ``c`` (G, K, d) recomputes its
    attention in the backward pass instead of keeping it (TensorFlow, big tensors)."""
    return (keras.backend.backend() == "tensorflow"
            and w.shape[0] * w.shape[1] * c.shape[1] > KEEP_ATTENTION)


def _fold(m, parts, body, acc, dtype):
    """``acc = body(acc, start, size, fresh)`` over the chunks of ``m`` units: written out
    for up to :data:`UNROLL` chunks (or off TensorFlow), else one loop over equal chunks
    (compile time and graph size do not grow with ``M K``); the last one starts at
    ``m - size`` and ``fresh`` (1, size, 1) marks its units not in an earlier chunk (None:
    every unit of the chunk is fresh)."""
    if len(parts) <= UNROLL or keras.backend.backend() != "tensorflow":  # (the loop is
        for lo, hi in parts:  # tested on TensorFlow only)
            acc = body(acc, lo, hi - lo, None)
        return acc
    step = parts[0][1] - parts[0][0]

    def loop(i, acc):
        start = ops.minimum(i * step, m - step)
        fresh = ops.cast(start + ops.arange(step, dtype="int32") >= i * step, dtype)
        return body(acc, start, step, ops.reshape(fresh, (1, step, 1)))

    return ops.fori_loop(0, len(parts), loop, acc)


def _rows(x, start, size):
    return ops.slice(x, (0, start, 0), (x.shape[0], size, x.shape[2]))


def centroids(w, c, tau, parts, attention):
    """``(C_new, den)`` of one DKM step, one attention chunk alive at a time."""
    def body(acc, start, size, fresh):
        wc = _rows(w, start, size)
        a = attention(wc, c, tau)
        if fresh is not None:
            a = a * fresh
        return acc[0] + ops.einsum("gmk,gmd->gkd", a, wc), acc[1] + ops.sum(a, axis=1)

    g, k, d = c.shape
    num, den = _fold(w.shape[1], parts, body, (ops.zeros((g, k, d), w.dtype),
                                                ops.zeros((g, k), w.dtype)), w.dtype)
    keep = den[..., None] > 1e-30
    return ops.where(keep, num / ops.clip(den, 1e-30, 1e30)[..., None], c), den


def fixed_point(w, c, tau, parts, attention, max_iter, tol):
    """The centroids :func:`~.soft.dkm_assign` returns for units ``w`` from ``c``: up to
    ``max_iter - 1`` steps while they move by more than ``tol``, then one more."""
    steps, moving = 0, True
    while moving and steps < max_iter - 1:
        c_new = centroids(w, c, tau, parts, attention)[0]
        moving = bool(ops.convert_to_numpy(ops.max(ops.abs(c_new - c))) > tol)
        c, steps = c_new, steps + 1
    return centroids(w, c, tau, parts, attention)[0]


def _dist_grad_sum(dz, wc, c, tau):
    """``-sum_k dz_ik d(dist_ik)/dw_i / tau`` for a chunk ``wc`` (G, m, d)."""
    if wc.shape[-1] == 1:
        s = ops.sign(wc - ops.transpose(c, (0, 2, 1)))  # (G, m, K)
        return -ops.sum(dz * s, axis=-1, keepdims=True) / tau
    sq = (ops.sum(wc * wc, axis=-1)[:, :, None] - 2.0 * ops.einsum("gmd,gkd->gmk", wc, c)
          + ops.sum(c * c, axis=-1)[:, None, :])
    inside = ops.logical_and(sq >= 1e-24, sq <= 1e30)
    coef = ops.where(inside, dz / ops.sqrt(ops.clip(sq, 1e-24, 1e30)), ops.zeros_like(dz))
    return -(ops.sum(coef, axis=-1)[..., None] * wc - ops.einsum("gmk,gkd->gmd", coef, c)) / tau


def last_step(w, c, tau, parts, attention):
    """``(W_tilde, C_new)`` of DKM's last step, differentiable in ``w`` (TensorFlow; ``c`` and
    ``tau`` get no gradient), keeping no attention chunk for the backward pass."""
    import tensorflow as tf  # noqa: PLC0415

    @tf.custom_gradient
    def step(w, c, tau):
        ws = tf.stop_gradient(w)  # an eager tape records no op of the forward (none is kept)
        c_new, den = centroids(ws, c, tau, parts, attention)
        m = ws.shape[1]

        def forward(out, start, size, fresh):
            a = attention(_rows(ws, start, size), c, tau)
            return ops.slice_update(out, (0, start, 0), ops.einsum("gmk,gkd->gmd", a, c_new))

        w_tilde = _fold(m, parts, forward, ops.zeros_like(ws), ws.dtype)

        def grad(g_w, g_c=None):
            def centroid_grad(dc, start, size, fresh):
                a = attention(_rows(ws, start, size), c, tau)
                if fresh is not None:
                    a = a * fresh
                return dc + ops.einsum("gmk,gmd->gkd", a, _rows(g_w, start, size))

            dc = _fold(m, parts, centroid_grad,
                       ops.zeros_like(c_new) if g_c is None else g_c, ws.dtype)
            live = den > 1e-30
            inv = ops.where(live, 1.0 / ops.clip(den, 1e-30, 1e30), ops.zeros_like(den))
            dnum = dc * inv[..., None]
            dden = -ops.sum(dc * c_new, axis=-1) * inv

            def unit_grad(dw, start, size, fresh):
                wc, gc = _rows(ws, start, size), _rows(g_w, start, size)
                a = attention(wc, c, tau)
                da = (ops.einsum("gmd,gkd->gmk", gc, c_new)
                      + ops.einsum("gmd,gkd->gmk", wc, dnum) + dden[:, None, :])
                dz = a * (da - ops.sum(a * da, axis=-1, keepdims=True))
                return ops.slice_update(dw, (0, start, 0), ops.einsum("gmk,gkd->gmd", a, dnum)
                                        + _dist_grad_sum(dz, wc, c, tau))

            dw = _fold(m, parts, unit_grad, ops.zeros_like(ws), ws.dtype)
            return dw, ops.zeros_like(c), ops.zeros_like(tau)

        return (w_tilde, c_new), grad

    return step(w, c, tau)
