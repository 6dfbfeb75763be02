"""The hard F-step of a k-means regularizer on a big weight (bench/scale19.py).

``attach_regularizer`` + one step with ``RefreshKMeans`` on a 4096 x 4096 Dense took 1.4 GiB
over the model (22x the kernel): the F-step kept int64 copies of the indices, sorted them with
``np.unique`` and built float64 (N, d) differences of the whole weight. Measured here with
tracemalloc (numpy only) on 1 M scalar units, as a multiple of their float64 bytes.
"""

import tracemalloc

import numpy as np
import pytest

from dkm_tf.training import regularizer_state as state_lib


@pytest.mark.parametrize("warm", [False, True])
def test_hard_f_step_memory_and_result(monkeypatch, warm):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.05, (1_000_000, 1))
    previous = np.sort(rng.normal(0, 0.05, (8, 1)), axis=0) if warm else None
    monkeypatch.setattr(state_lib, "_BLOCK", 1 << 15, raising=False)
    tracemalloc.start()
    try:
        idx, means, sse = state_lib.hard_assignment(x, 8, 0, "w", previous=previous)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3.5 * x.nbytes, f"{peak / x.nbytes:.2f}x the units' bytes (was 6.6x / 9.1x)"
    assert idx.dtype == np.int32 and idx.shape == (x.shape[0],)
    used = np.unique(idx)
    np.testing.assert_array_equal(used, np.arange(means.shape[0]))  # no empty cluster left
    ref = np.array([[x[idx == j, 0].mean()] for j in used])  # float64 member means
    np.testing.assert_allclose(means, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sse, float(np.sum((x - ref[idx]) ** 2)), rtol=1e-10)
    near = np.abs(x - ref[:, 0][None, :]).argmin(axis=1)  # each unit at a nearest mean ...
    assert np.mean(near == idx) > 0.999  # ... up to ties / the final mean update
