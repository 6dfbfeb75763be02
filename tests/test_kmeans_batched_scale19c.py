"""Per-channel k-means of a big tensor solves its groups in blocks (bench/scale19.py).

A 4096 x 4096 Dense kernel clustered per channel at K = 16 took 1.3 GiB of work arrays (20x
the kernel: argsort int64, float64 sorted copies, prefix sums, int64 indices of every value
at once). The groups are independent: blocks of about ``_BATCH_VALUES`` values give the same
result with O(block) work arrays.
"""

import numpy as np

from dkm_tf.core import kmeans_batched
from dkm_tf.core.kmeans_batched import batched_scalar_kmeans


def _groups():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, (23, 40)).astype(np.float32)
    x[3] = np.repeat([0.1, -0.2, 0.3, 0.0], 10)  # 4 distinct values: lossless, padded codebook
    x[17, :20] = 1e3  # an outlier-heavy group
    return x


def test_blocks_of_groups_give_the_whole_result(monkeypatch):
    x = _groups()
    for k in (2, 8, 64):  # 64 > 40 values: every group lossless, K' = the largest distinct count
        want_cb, want_idx = batched_scalar_kmeans(x, k)
        monkeypatch.setattr(kmeans_batched, "_BATCH_VALUES", 100, raising=False)  # 2 groups
        got_cb, got_idx = batched_scalar_kmeans(x, k)
        monkeypatch.undo()
        assert got_cb.dtype == np.float32 and got_idx.dtype == np.int32
        np.testing.assert_array_equal(got_cb, want_cb)
        np.testing.assert_array_equal(got_idx, want_idx)


def test_work_arrays_span_one_block(monkeypatch):
    sizes = []
    inner = kmeans_batched._Groups

    class Recording(inner):
        def __init__(self, v):
            sizes.append(v.size)
            super().__init__(v)

    monkeypatch.setattr(kmeans_batched, "_Groups", Recording)
    monkeypatch.setattr(kmeans_batched, "_BATCH_VALUES", 100, raising=False)
    x = _groups()
    cb, idx = batched_scalar_kmeans(x, 4)
    assert sizes and max(sizes) <= 100, sizes  # 920 values: 12 blocks of 2 groups
    # still k-means: every value at its nearest centroid, centroids the member means (float64)
    for g in range(x.shape[0]):
        xg = x[g].astype(np.float64)
        np.testing.assert_array_equal(np.abs(xg[:, None] - cb[g][None, :]).argmin(1)
                                      == idx[g], True)
        for j in np.unique(idx[g]):
            np.testing.assert_allclose(cb[g, j], xg[idx[g] == j].mean(), rtol=1e-6, atol=1e-9)
