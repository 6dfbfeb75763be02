"""GPTQ assignment without extra copies of the kernel (bench/results/scale19.md).

``share_weights(refine="gptq")`` took 41x the kernel's bytes on a 4096 x 4096 Dense:
``gptq_assign`` kept two float64 copies of the kernel (``np.array`` and ``w[perm]``), two of
the Hessian, and int64 indices three times (idx, out, order[out]). Now: one float64 copy in
the act order, int32 indices written in the kernel's order, the Hessian freed after its
inverse. The reference below is the old code: the indices are the same.
"""

import tracemalloc

import numpy as np
import pytest

from dkm_tf.graph import gptq


def _old_gptq(kernel, h, codebook, damp=gptq.DAMP, act_order=True, block=gptq.BLOCK):
    w = np.array(kernel, np.float64)
    h = np.array(h, np.float64)
    book = np.asarray(codebook, np.float64)
    if book.ndim == 2:
        cols = np.arange(w.shape[1])

        def nearest(row):
            return np.argmin(np.abs(row[:, None] - book), axis=1)

        def value(row_idx):
            return book[cols, row_idx]
    else:
        order = np.argsort(book)
        cb = book[order]

        def nearest(row):
            return np.searchsorted((cb[:-1] + cb[1:]) / 2.0, row, side="left")

        def value(row_idx):
            return cb[row_idx]
    d = w.shape[0]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(d)
    w, h = w[perm], h[np.ix_(perm, perm)]
    h[np.diag_indices(d)] += damp * float(np.mean(np.diag(h)))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    idx = np.empty(w.shape, np.int64)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        err = np.zeros((b1 - b0, w.shape[1]))
        for i in range(b0, b1):
            idx[i] = nearest(w[i])
            e = (w[i] - value(idx[i])) / u[i, i]
            w[i + 1:b1] -= np.outer(u[i, i + 1:b1], e)
            err[i - b0] = e
        w[b1:] -= u[b0:b1, b1:].T @ err
    out = np.empty_like(idx)
    out[perm] = idx
    return out if book.ndim == 2 else order[out]


@pytest.mark.parametrize("d_in,d_out,per_column,act_order,block,dtype", [
    (64, 24, False, True, 128, np.float64), (150, 20, True, True, 7, np.float32),
    (90, 33, False, False, 16, np.float32), (129, 9, True, False, 128, np.float64),
    (200, 40, False, True, 64, np.float32)])
def test_same_indices_as_the_old_code(d_in, d_out, per_column, act_order, block, dtype):
    rng = np.random.default_rng(d_in)
    w = (rng.standard_normal((d_in, d_out)) * 0.05).astype(dtype)
    x = rng.standard_normal((300, d_in))
    x[:, ::17] = 0.0  # dead inputs
    h = gptq.hessian(x)
    book = rng.standard_normal((d_out, 6) if per_column else 6) * 0.05  # unsorted
    before = w.copy()
    got = gptq.gptq_assign(w, h, book, act_order=act_order, block=block)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(w, before)  # the caller's kernel is not modified
    np.testing.assert_array_equal(got, _old_gptq(w, h, book, act_order=act_order, block=block))


def test_gptq_memory():
    rng = np.random.default_rng(0)
    d = 512
    kernel = rng.standard_normal((d, d)) * 0.05  # float64, as refine passes it
    h = gptq.hessian(rng.standard_normal((600, d)))
    book = np.sort(rng.standard_normal(16)) * 0.05
    before = kernel.copy()
    tracemalloc.start()
    try:
        idx = gptq.gptq_assign(kernel, h, book)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ratio = peak / kernel.nbytes  # float64 bytes; the Hessian is as big here (d_in = d_out)
    # one float64 kernel copy + the permuted Hessian / its inverse / Cholesky factor (two at a
    # time) + int32 indices: 3.5x; the old code took 6.1x
    assert ratio < 4.5, f"{ratio:.2f}x the float64 kernel's bytes (was 6.1x)"
    np.testing.assert_array_equal(kernel, before)
    np.testing.assert_array_equal(idx, _old_gptq(kernel, h, book))
