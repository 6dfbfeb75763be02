"""Memory regressions of the numpy core: peak extra memory as a multiple of the input.

``tracemalloc`` sees every numpy array allocation (numpy reports them to it), so the peaks
below are exact and repeatable. Each bound is a multiple of the input plus ``FIXED`` (blocks,
the 65,536-bin histogram and the dynamic programs of the scalar engine, a few MB whatever the
size), with a margin over what is measured. The whole-model
figures (share_weights, cluster_weights + strip_clustering on 30 M parameters, RSS in a fresh
process) are in ``bench/memory.py`` / ``bench/results/memory.md``.

Before the memory work these were about 5x (cluster_values: int64 and float64 copies of all
values inside np.bincount), 3x (cluster_tensor: a transposed copy of the kernel, then a stacked
copy of the indices) and 3x (decode: an int64 copy of the indices, then a transposed copy).
"""

import tracemalloc

import numpy as np

from dkm_tf.core import kmeans
from dkm_tf.core import units as units_lib
from dkm_tf.core.palette import Palette, cluster_tensor

FIXED = 10 * 2**20


def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_cluster_values_of_many_values_needs_little_more_than_its_indices():
    x = np.random.default_rng(0).standard_normal(4_000_000, dtype=np.float32)
    peak, (c, idx) = _peak(lambda: kmeans.cluster_values(x, 16))
    assert idx.dtype == np.int32 and idx.nbytes == x.nbytes  # the result itself: 1x
    assert peak <= 1.1 * x.nbytes + FIXED, peak / x.nbytes  # measured 1.45 x at 16 MB


def test_cluster_tensor_reads_the_kernel_in_unit_order_without_a_copy():
    kernel = np.random.default_rng(1).standard_normal((1536, 1024), dtype=np.float32)
    peak, pal = _peak(lambda: cluster_tensor(kernel, kind="dense", n_clusters=16))
    assert pal.indices.dtype == np.uint8 and pal.layout.perm == (1, 0)
    # int32 indices + the uint8 palette's; measured 2.1 x at 6 MB
    assert peak <= 1.35 * kernel.nbytes + FIXED, peak / kernel.nbytes
    # the same palette as clustering the transposed copy (the units' order) explicitly
    units = units_lib.to_units(kernel, pal.layout)[0, :, 0]
    c, idx = kmeans.cluster_values(units, 16)
    np.testing.assert_array_equal(pal.indices[0], idx)
    np.testing.assert_array_equal(pal.codebook[0, :, 0], c)


def test_decode_allocates_only_the_kernel():
    layout = units_lib.layout_for((3, 3, 256, 512), "conv", "row", "per_channel")
    rng = np.random.default_rng(2)
    pal = Palette("conv", "kernel", rng.standard_normal((512, 16, 3)).astype(np.float32),
                  rng.integers(0, 16, (512, layout.n_units)), layout)
    peak, kernel = _peak(pal.decode)
    assert kernel.flags.c_contiguous and kernel.shape == (3, 3, 256, 512)
    # 65,536-value slabs: 1.24 x measured at 4.7 MB
    assert peak <= 1.05 * kernel.nbytes + 2 * 2**20, peak / kernel.nbytes
