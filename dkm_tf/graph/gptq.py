"""GPTQ assignment of weights to a fixed codebook (``share_weights(refine="gptq")``).

k-means assigns each weight to its nearest centroid, one weight at a time, blind to the
others. GPTQ (Frantar et al., ICLR 2023, Alg. 1; with a vector codebook, GPTVQ, van Baalen et
al. 2024, §3) assigns the rows of a kernel ``W`` (d_in x d_out) one after another and moves the
rows not yet assigned to cancel the output error already made, using the Hessian of the
layer-wise loss ``||X W - X Q||^2``, ``H = X^T X`` over calibration inputs ``X`` (n x d_in;
for a convolution, its im2col patches):

    q_i = nearest(w_i),   e_i = (w_i - q_i) / U_ii,   W_{j>i} <- W_{j>i} - U_{i,j>i}^T e_i

with ``U`` the upper Cholesky factor of ``(H + lam I)^-1`` (``lam`` = 1 % of the mean diagonal,
GPTQ's damping) and the rows taken in order of decreasing ``H_ii`` ("act order"). Blocks of
128 rows apply the update lazily (GPTQ §4, step 2). Pure numpy.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DAMP", "gptq_assign", "hessian"]

DAMP = 0.01
BLOCK = 128


def hessian(x):
    """``X^T X`` (float64) of inputs ``x`` with the input dimension last."""
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    return x.T @ x


def _nearest(w, codebook):
    # codebook sorted ascending: nearest centroid by the midpoints
    return np.searchsorted((codebook[:-1] + codebook[1:]) / 2.0, w, side="left")


def gptq_assign(kernel, h, codebook, *, damp=DAMP, act_order=True, block=BLOCK):
    """Indices (d_in, d_out) int32 into ``codebook`` of ``kernel`` (d_in, d_out), by GPTQ.

    Args:
        kernel: the float weights, rows = input dimensions.
        h: ``X^T X`` (d_in, d_in) of the layer's calibration inputs.
        codebook: the K scalar centroids (fixed), (K,) or one row per output column
            (d_out, K).
        damp: ridge added to H, a fraction of its mean diagonal.
        act_order: assign rows in order of decreasing ``H_ii``.
        block: rows per lazy-update block.
    """
    kernel, h = np.asarray(kernel), np.asarray(h, np.float64)
    book = np.asarray(codebook, np.float64)
    if book.ndim == 2:  # per column: nearest by distance (K is small)
        cols = np.arange(kernel.shape[1])

        def nearest(row):
            return np.argmin(np.abs(row[:, None] - book), axis=1)

        def value(row_idx):
            return book[cols, row_idx]
    else:
        order = np.argsort(book)
        cb = book[order]

        def nearest(row):
            return _nearest(row, cb)

        def value(row_idx):
            return cb[row_idx]
    d = kernel.shape[0]
    dead = np.diag(h) == 0  # inputs that are always 0: any value, nearest centroid
    diag = np.where(dead, 1.0, np.diag(h))
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(d)
    # one float64 copy of each, in the act order (no float64 copy before the permutation);
    # the caller's h is freed here if this call holds its only reference
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(d)] = diag[perm]
    h[np.diag_indices(d)] += damp * float(np.mean(np.diag(h)))
    h = np.linalg.inv(h)  # LAPACK holds 2 more copies meanwhile: w is made after
    u = np.linalg.cholesky(h).T  # upper: (H^-1) = U^T U
    del h
    w = kernel[perm].astype(np.float64, copy=False)
    out = np.empty(w.shape, np.int32)  # row i of the act order is row perm[i] of the kernel
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        err = np.zeros((b1 - b0, w.shape[1]))
        for i in range(b0, b1):
            q = out[perm[i]] = nearest(w[i])
            e = (w[i] - value(q)) / u[i, i]
            w[i + 1:b1] -= np.outer(u[i, i + 1:b1], e)
            err[i - b0] = e
        w[b1:] -= u[b0:b1, b1:].T @ err
    if book.ndim == 1:  # back to the caller's codebook order, in place
        order = order.astype(np.int32)
        for r0 in range(0, d, block):
            out[r0:r0 + block] = order[out[r0:r0 + block]]
    return out


def _same_pad(size, k, stride, rate):
    eff = (k - 1) * rate + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, (total // 2, total - total // 2)


def im2col(x, kernel_hw, strides=(1, 1), dilation=(1, 1), padding="valid"):
    """Patches (N * H_out * W_out, kh * kw * C) of NHWC ``x`` for a 2-D convolution, rows of
    the kernel reshaped to (kh * kw * C, C_out) ('same' padding as TensorFlow)."""
    x = np.asarray(x, np.float64)
    (kh, kw), (sh, sw), (rh, rw) = kernel_hw, strides, dilation
    n, h, w, c = x.shape
    if padding == "same":
        ho, ph = _same_pad(h, kh, sh, rh)
        wo, pw = _same_pad(w, kw, sw, rw)
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    else:
        ho, wo = (h - (kh - 1) * rh - 1) // sh + 1, (w - (kw - 1) * rw - 1) // sw + 1
    cols = [x[:, i * rh:i * rh + (ho - 1) * sh + 1:sh, j * rw:j * rw + (wo - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return np.stack(cols, 3).reshape(n * ho * wo, kh * kw * c)
