"""Fisher-weighted scalar k-means in bounded memory (bench/results/scale19.md).

``share_weights(weighting="fisher")`` took 25x the kernel's bytes on a 4096 x 4096 Dense:
``np.unique(float64 copy, return_inverse=True)`` kept float64 and int64 copies of every value,
the importances were copied twice more. Now (``dkm_tf.graph.weighted_scalar``) the same
result, bit for bit, from a sorted float32 copy, the weights added in ``bincount``'s order
block by block and int32 indices. The reference below is the old code.
"""

import tracemalloc

import numpy as np
import pytest

from dkm_tf.core import _kmeans1d
from dkm_tf.graph import weighted_kmeans as wk

try:
    from dkm_tf.graph import weighted_scalar
except ImportError:  # the old code: these tests fail on its results, not on this import
    weighted_scalar = None


def _blocks(monkeypatch, size):
    if weighted_scalar is not None:
        monkeypatch.setattr(weighted_scalar, "_BLOCK", size)


def _old_scalar(x, importance, k, seed=0):
    """The code before (weighted_kmeans' scalar branch), verbatim."""
    x = np.asarray(x).astype(np.float32).astype(np.float64)
    imp = np.asarray(importance, np.float64)
    imp = np.maximum(imp, wk.FLOOR * float(imp.mean()))
    vals, inv = np.unique(x[:, 0], return_inverse=True)
    inv = inv.reshape(-1)
    if vals.size <= k:
        return vals[:, None].astype(np.float32), inv.astype(np.int32)
    w = np.bincount(inv, weights=imp[:, 0], minlength=vals.size)
    data = _kmeans1d.Weighted1D(vals, w)
    c = _kmeans1d.solve(data, k, "kmeans++", np.random.default_rng(seed), 3000, True)
    lo, hi = data.bounds(c)
    ws, ss, _ = data.stats(lo, hi)
    c = np.where(ws > 0, ss / np.where(ws > 0, ws, 1.0), c)
    idx = np.searchsorted((c[:-1] + c[1:]) / 2.0, x[:, 0], side="left")
    return c[:, None].astype(np.float32), idx.astype(np.int32)


def _inputs(kind, n, rng):
    x = rng.standard_normal(n).astype(np.float32) * 0.05
    imp = rng.random(n) ** 3
    if kind == "dups":  # np.round gives -0.0 and +0.0
        x = np.round(x * 100).astype(np.float32) / 100
    elif kind == "negzero":
        x[::7] = -0.0
    elif kind == "mixedzero":
        x[::7], x[3::11] = -0.0, 0.0
    elif kind == "few":
        x = rng.choice(np.array([-0.1, -0.0, 0.0, 0.2], np.float32), n)
    elif kind == "float64":
        x = rng.standard_normal(n) * 0.05
    elif kind == "floored":
        imp[rng.random(n) < 0.5] = 0.0
    return x[:, None], imp[:, None]


@pytest.mark.parametrize("kind", ["normal", "dups", "negzero", "mixedzero", "few", "float64",
                                  "floored"])
@pytest.mark.parametrize("k", [3, 16])
def test_bit_identical_to_the_old_code(monkeypatch, kind, k):
    _blocks(monkeypatch, 1000)  # several blocks
    rng = np.random.default_rng(len(kind) + k)
    x, imp = _inputs(kind, 5003, rng)
    cb, idx = wk.weighted_kmeans(x, imp, k, seed=k)
    ref_cb, ref_idx = _old_scalar(x, imp, k, seed=k)
    assert cb.dtype == ref_cb.dtype and idx.dtype == np.int32
    assert cb.tobytes() == ref_cb.tobytes()  # signs of zeros included
    np.testing.assert_array_equal(idx, ref_idx)


def test_palette_memory_and_result(monkeypatch):
    _blocks(monkeypatch, 1 << 14)
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((1024, 1024), dtype=np.float32) * 0.05
    imp = rng.random((1024, 1024)) ** 2
    tracemalloc.start()
    try:
        pal = wk.weighted_palette(kernel, imp, kind="dense", n_clusters=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ratio = peak / kernel.nbytes
    # 15.6x: the prefix sums of ~1 M distinct values, the importances in unit order, the
    # solver's DP tables; the old code took 22.2x here (21.7x at 2048 x 2048)
    assert ratio < 18, f"{ratio:.1f}x the kernel's bytes (was 22.2x)"
    from dkm_tf.core import units as units_lib

    layout = pal.layout
    cb, idx = _old_scalar(units_lib.to_units(kernel, layout)[0],
                          units_lib.to_units(imp, layout)[0], 16)
    assert pal.codebook[0].tobytes() == cb.tobytes()
    np.testing.assert_array_equal(pal.indices[0], idx)
