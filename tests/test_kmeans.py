"""k-means core against exact and independent references."""

import numpy as np
import pytest

from dkm_tf.core import kmeans


def _data(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.normal(0, 0.05, n)
    if kind == "laplacian":
        return rng.laplace(0, 0.02, n)
    return np.concatenate([rng.normal(-0.1, 0.02, n // 2), rng.normal(0.15, 0.05, n - n // 2)])


@pytest.mark.parametrize("dist", ["gaussian", "laplacian", "bimodal"])
@pytest.mark.parametrize("k", [2, 4, 8, 16, 32])
def test_scalar_sse_matches_exact_optimum(dist, k):
    """The DP seed + windowed DP reach the exact 1-D optimum (kmeans1d, O(kn) DP) for K <= 16
    (1e-6 relative, float rounding) and stay within 0.1 % at K = 32, for every init."""
    kmeans1d = pytest.importorskip("kmeans1d")
    x = _data(dist, 20_000, seed=k)
    clusters, centroids = kmeans1d.cluster(x, k)
    optimum = kmeans.sse(x, np.asarray(centroids), np.asarray(clusters))
    for init in kmeans.INITS:
        codebook, idx = kmeans.cluster_values(x, k, init=init, seed=1)
        assert codebook.shape == (k,)
        got = kmeans.sse(x, codebook, idx)
        assert got <= optimum * (1 + (1e-6 if k <= 16 else 1e-3)), (init, got / optimum)


def test_plain_lloyd_uses_the_init_and_can_be_worse():
    """refine=False is plain Lloyd from the init: deterministic per seed, never better than
    the refined result (which does not depend on the init)."""
    x = _data("laplacian", 20_000, seed=3)
    refined = kmeans.sse(x, *kmeans.cluster_values(x, 16, refine=True))
    worse = 0
    for init in kmeans.INITS:
        plain = kmeans.sse(x, *kmeans.cluster_values(x, 16, init=init, refine=False))
        assert plain >= refined * (1 - 1e-9)
        worse += plain > refined * 1.001
    assert worse >= 1  # Lloyd alone stalls in a local optimum for some init


def test_scalar_histogram_path_matches_exact_path(monkeypatch):
    x = _data("bimodal", 1_000_000, seed=3).astype(np.float32)
    c_hist, i_hist = kmeans.scalar_kmeans(x, 16)  # > 65,536 values: histogram engine
    monkeypatch.setattr(kmeans, "_HIST_THRESHOLD", 10**9)
    c_exact, i_exact = kmeans.scalar_kmeans(x, 16)  # exact engine on the same values
    assert kmeans.sse(x, c_hist, i_hist) <= kmeans.sse(x, c_exact, i_exact) * 1.001
    # indices are the nearest centroids (up to the last mean update) and centroids are the
    # exact member means
    dist = np.abs(x[:, None] - c_hist[None, :])
    assigned = np.take_along_axis(dist, i_hist[:, None].astype(int), 1)[:, 0]
    assert np.all(assigned <= dist.min(axis=1) + 1e-4 * np.ptp(x))
    for j in range(c_hist.size):
        np.testing.assert_allclose(c_hist[j], x[i_hist == j].astype(np.float64).mean(),
                                   rtol=1e-5, atol=1e-7)


def test_scalar_indices_are_nearest_and_centroids_are_means():
    x = _data("laplacian", 5000, 0)
    c, idx = kmeans.cluster_values(x, 8, init="random", seed=4)
    d = np.abs(x[:, None] - c[None, :].astype(np.float64))
    assert np.all(d[np.arange(x.size), idx] <= d.min(axis=1) + 1e-7)
    for j in range(8):
        np.testing.assert_allclose(c[j], x[idx == j].mean(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("init", kmeans.INITS)
def test_deterministic_for_a_seed(init):
    x = _data("gaussian", 3000, 0)
    a = kmeans.cluster_values(x, 5, init=init, seed=7)
    b = kmeans.cluster_values(x, 5, init=init, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    u = np.random.default_rng(0).normal(size=(500, 3))
    a = kmeans.cluster_values(u, 6, init=init, seed=7)
    b = kmeans.cluster_values(u, 6, init=init, seed=7)
    np.testing.assert_array_equal(a[0], b[0])


def test_empty_clusters_never_nan():
    # 3 tight groups, K=8: Lloyd leaves clusters empty unless they are re-seeded
    x = np.concatenate([np.full(1000, -1.0), np.full(1000, 0.0), np.full(1000, 1.0),
                        np.linspace(2, 3, 50)])
    for init in kmeans.INITS:
        c, idx = kmeans.cluster_values(x, 8, init=init)
        assert np.all(np.isfinite(c))
        assert c.size == 8 and idx.max() < 8
        assert np.bincount(idx, minlength=8).min() > 0


def test_more_clusters_than_distinct_values_is_lossless():
    x = np.array([0.5, -0.25, 0.5, 0.125, -0.25])
    c, idx = kmeans.cluster_values(x, 16)
    assert c.size == 3
    np.testing.assert_array_equal(c[idx], x.astype(np.float32))
    u = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    c, idx = kmeans.cluster_values(u, 5)
    assert c.shape == (2, 2)
    np.testing.assert_array_equal(c[idx], u)


def test_vector_kmeans_within_1_percent_of_sklearn_at_equal_iterations():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (20, 9))
    x = centers[rng.integers(0, 20, 20_000)] + rng.normal(0, 0.4, (20_000, 9))
    for k in (16, 64):
        ref = sklearn_cluster.KMeans(k, init="k-means++", n_init=1, max_iter=20, tol=0,
                                     random_state=0).fit(x)
        c, idx = kmeans.vector_kmeans(x, k, max_iter=20, tol=0, use_faiss=False)
        ours = kmeans.sse(x, c, idx)
        assert ours <= ref.inertia_ * 1.01, (k, ours / ref.inertia_)


def test_vector_faiss_path_agrees_with_numpy_path():
    pytest.importorskip("faiss")
    x = np.random.default_rng(1).normal(size=(20_000, 3))
    c1, i1 = kmeans.vector_kmeans(x, 32, use_faiss=True, max_iter=25)
    c2, i2 = kmeans.vector_kmeans(x, 32, use_faiss=False, max_iter=25)
    s1, s2 = kmeans.sse(x, c1, i1), kmeans.sse(x, c2, i2)
    assert abs(s1 - s2) <= 0.02 * s2


def test_vector_chunking_gives_same_result():
    x = np.random.default_rng(2).normal(size=(3000, 4))
    a = kmeans.vector_kmeans(x, 10, chunk=64, use_faiss=False)
    b = kmeans.vector_kmeans(x, 10, chunk=100_000, use_faiss=False)
    np.testing.assert_array_equal(a[1], b[1])


def test_entropy_and_unique_helpers():
    assert kmeans.assignment_entropy([0, 0, 1, 1]) == pytest.approx(1.0)
    assert kmeans.assignment_entropy([3, 3, 3]) == 0.0
    p = np.array([0.5, 0.25, 0.25])
    idx = np.repeat([0, 1, 2], (p * 400).astype(int))
    assert kmeans.assignment_entropy(idx) == pytest.approx(-(p * np.log2(p)).sum())
    assert kmeans.count_unique(np.array([[1, 2], [1, 1]])) == 2
    np.testing.assert_array_equal(kmeans.count_unique(np.array([[1, 2], [1, 1]]), axis=1), [1, 2])


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_n_clusters(bad):
    with pytest.raises(ValueError, match=r"`n_clusters`. Expected an integer >= 1. Received: "
                                         rf"n_clusters={bad}"):
        kmeans.cluster_values(np.ones(4), bad)


def test_n_clusters_type_error():
    with pytest.raises(TypeError, match="n_clusters=2.5"):
        kmeans.cluster_values(np.ones(4), 2.5)


def test_unknown_init_lists_allowed():
    with pytest.raises(ValueError, match=r"Expected one of \['kmeans\+\+', 'linear', "
                                         r"'density', 'random'\]. Received: init='foo'"):
        kmeans.cluster_values(np.ones(4), 2, init="foo")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_error_names_the_layer(bad):
    x = np.array([0.1, bad, 0.3])
    with pytest.raises(ValueError, match="in conv1/kernel: 1 of 3 values are NaN or Inf"):
        kmeans.cluster_values(x, 2, name="conv1/kernel")
    with pytest.raises(ValueError, match="NaN or Inf"):
        kmeans.cluster_values(np.stack([x, x], axis=1), 2)
    big = np.linspace(-1, 1, 100_000, dtype=np.float32)  # histogram engine: checks min / max
    big[12_345] = bad
    with pytest.raises(ValueError, match="in fc/kernel: 1 of 100000 values are NaN or Inf"):
        kmeans.cluster_values(big, 16, name="fc/kernel")


def test_bad_rank():
    with pytest.raises(ValueError, match="shape \\(2, 2, 2\\)"):
        kmeans.cluster_values(np.ones((2, 2, 2)), 2)


# --------------------------------------------------------------------------- vector Lloyd engine
def _mixture(n, d, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (12, d))
    return offset + centers[rng.integers(0, 12, n)] + rng.normal(0, 0.3, (n, d))


def _reference_lloyd(x, c, iters):
    """Textbook Lloyd in float64 with the full N x K distance matrix (independent reference):
    assign, move each centroid to its mean, re-seed empty clusters at the worst-fit units."""
    c = np.array(c, dtype=np.float64)
    for _ in range(iters):
        d = np.sum((x[:, None, :] - c[None]) ** 2, axis=2)
        a = d.argmin(axis=1)
        counts = np.bincount(a, minlength=len(c))
        new = c.copy()
        for j in np.flatnonzero(counts):
            new[j] = x[a == j].mean(axis=0)
        empty = np.flatnonzero(counts == 0)
        new[empty] = x[np.argsort(d[np.arange(len(x)), a])[::-1][:empty.size]]
        c = new
    return c, np.sum((x[:, None, :] - c[None]) ** 2, axis=2).argmin(axis=1)


def _sse64(x, c, a):
    return float(np.sum((x - c[a]) ** 2))


def test_vector_lloyd_matches_textbook_lloyd_from_the_same_centroids():
    from dkm_tf.core import _kmeans_vec

    x = _mixture(4000, 9, seed=3)
    c0 = x[np.random.default_rng(0).choice(len(x), 24, replace=False)]
    for iters in (0, 1, 3, 10):
        c, a = _kmeans_vec.lloyd(x.copy(), c0, max_iter=iters, tol=0.0, chunk=65_536)
        rc, ra = _reference_lloyd(x, c0, iters)
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_allclose(c, rc, rtol=0, atol=1e-9)


def test_vector_lloyd_is_nearest_and_sse_never_increases():
    """Far from the origin (offset 1e3): centring keeps the float32 distances exact enough."""
    from dkm_tf.core import _kmeans_vec

    for offset in (0.0, 1e3):
        x = _mixture(3000, 9, seed=4, offset=offset)
        c0 = x[:40] + 0.5
        sses = []
        for iters in range(7):
            c, a = _kmeans_vec.lloyd(x.copy(), c0, max_iter=iters, tol=0.0, chunk=500)
            sses.append(_sse64(x, c, a))
            d = np.sum((x[:, None, :] - c[None]) ** 2, axis=2)
            slack = 1e-5 * np.sum((x - x.mean(0)) ** 2, axis=1).max()
            assert np.all(d[np.arange(len(x)), a] <= d.min(axis=1) + slack)
        assert all(b <= a * (1 + 1e-12) for a, b in zip(sses, sses[1:])), sses


def test_vector_lloyd_reseeds_empty_clusters_like_the_reference():
    from dkm_tf.core import _kmeans_vec

    x = _mixture(2000, 4, seed=5)
    c0 = np.vstack([x[:7], np.full((3, 4), 50.0)])  # three centroids that no unit picks
    c, a = _kmeans_vec.lloyd(x.copy(), c0, max_iter=6, tol=0.0, chunk=65_536)
    rc, ra = _reference_lloyd(x, c0, 6)
    np.testing.assert_array_equal(a, ra)
    np.testing.assert_allclose(c, rc, atol=1e-9)
    assert np.all(np.bincount(a, minlength=10) > 0)


def test_vector_kmeans_equals_reference_from_its_own_kmeanspp_init():
    """The public path: same seeded k-means++ centroids, then the same Lloyd iterations."""
    x = _mixture(3000, 9, seed=6).astype(np.float32)
    xd = x.astype(np.float64)
    rng = np.random.default_rng(7)  # k-means++ on a subsample of 20 K units
    c0 = kmeans._kmeanspp(xd[rng.choice(len(x), 20 * 16, replace=False)], 16, rng)
    c, idx = kmeans.vector_kmeans(x, 16, seed=7, max_iter=8, tol=0, use_faiss=False)
    rc, ra = _reference_lloyd(xd, c0, 8)
    assert abs(_sse64(xd, c.astype(np.float64), idx) - _sse64(xd, rc, ra)) <= 1e-6 * _sse64(
        xd, rc, ra)
    again = kmeans.vector_kmeans(x, 16, seed=7, max_iter=8, tol=0, use_faiss=False)
    np.testing.assert_array_equal(again[1], idx)  # seeded determinism
    np.testing.assert_array_equal(again[0], c)


def test_vector_lloyd_threads_and_blocks_do_not_change_the_result(monkeypatch):
    from dkm_tf.core import _kmeans_vec

    x = _mixture(5000, 9, seed=8)
    c0 = x[:32].copy()
    monkeypatch.setattr(_kmeans_vec, "THREADS", 1)
    ref = _kmeans_vec.lloyd(x.copy(), c0, max_iter=5, tol=0.0, chunk=65_536)
    monkeypatch.setattr(_kmeans_vec, "THREADS", 3)
    monkeypatch.setattr(_kmeans_vec, "_THREAD_MIN_WORK", 1)
    for chunk in (7, 100, 65_536):
        got = _kmeans_vec.lloyd(x.copy(), c0, max_iter=5, tol=0.0, chunk=chunk)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("init", ["kmeans++", "linear", "density", "random"])
def test_scalar_keeps_values_whose_sse_cancels_in_prefix_sums(init):
    """Found by hypothesis: 0, 1.2e-38 and 2.7e-37 next to -1..4 have SSEs that cancel to 0
    in float64 prefix sums; with K=7 of 8 distinct values the engine still returns 7
    centroids (it used to merge the three tiny values into one and return 6)."""
    from dkm_tf.core.kmeans import cluster_values

    x = np.array([2.0, 1.1754944e-38, 3.0, 0.0, 1.0, -1.0, 4.0, 2.7388870e-37], np.float32)
    c, idx = cluster_values(x, 7, seed=0, init=init)
    assert c.size == 7
    assert np.all(np.abs(c[idx] - x) <= np.abs(x[:, None] - c[None, :]).min(axis=1))
    np.testing.assert_array_equal(c[idx][[0, 2, 4, 5, 6]], x[[0, 2, 4, 5, 6]])
