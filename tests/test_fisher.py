"""Sensitivity (Fisher) weighted k-means: exact weighted 1-D DP reference, importances, errors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.graph import sensitivity  # noqa: E402
from dkm_tf.graph.share import share_weights  # noqa: E402
from dkm_tf.training.clustering import cluster_weights  # noqa: E402


# --------------------------------------------------------------------- independent reference
def exact_weighted_1d(x, w, k):
    """Optimal weighted SSE of k-means of 1-D points x with weights w: O(k n^2) DP over the
    sorted points (optimal 1-D clusters are contiguous)."""
    order = np.argsort(x)
    x, w = np.asarray(x, np.float64)[order], np.asarray(w, np.float64)[order]
    n = x.size

    def cost(i, j):  # points i..j-1
        ww, xx = w[i:j], x[i:j]
        m = (ww * xx).sum() / ww.sum()
        return float((ww * (xx - m) ** 2).sum())

    best = np.full((k + 1, n + 1), np.inf)
    best[0, 0] = 0.0
    for c in range(1, k + 1):
        for j in range(1, n + 1):
            best[c, j] = min((best[c - 1, i] + cost(i, j) for i in range(c - 1, j)),
                             default=np.inf)
    return best[k, n]


def weighted_sse(x, w, codebook, idx):
    return float((w * (x - codebook[idx]) ** 2).sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_weighted_kmeans_reaches_exact_dp_optimum(seed, k):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, 25), rng.normal(4, 0.5, 15)])
    w = rng.exponential(1.0, x.size) ** 2  # heavy-tailed importances
    cb, idx = sensitivity.weighted_kmeans(x[:, None], w[:, None], k, seed=seed)
    got = weighted_sse(x, w, cb[:, 0].astype(np.float64), idx)
    opt = exact_weighted_1d(x, w, k)
    assert got <= opt * (1 + 1e-6) + 1e-12
    assert cb.shape == (k, 1) and idx.min() >= 0 and idx.max() < k


def test_weighting_pulls_centroids_toward_important_weights():
    x = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 1.1, 1.2, 1.3])
    uniform = np.ones_like(x)
    heavy = uniform.copy()
    heavy[3] = 1000.0  # 0.3 matters most
    cb_u, _ = sensitivity.weighted_kmeans(x[:, None], uniform[:, None], 2)
    cb_h, idx_h = sensitivity.weighted_kmeans(x[:, None], heavy[:, None], 2)
    np.testing.assert_allclose(np.sort(cb_u[:, 0]), [0.15, 1.15], atol=1e-6)
    low = np.sort(cb_h[:, 0])[0]
    assert abs(low - 0.3) < abs(0.15 - 0.3) and abs(low - 0.3) < 1e-3
    # equals the weighted mean of its members
    members = idx_h == idx_h[3]
    np.testing.assert_allclose(cb_h[idx_h[3], 0], np.average(x[members], weights=heavy[members]),
                               rtol=1e-6)


def test_vector_units_are_weighted_per_coordinate():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 3))
    f = rng.exponential(1.0, size=(60, 3))
    cb, idx = sensitivity.weighted_kmeans(x, f, 4, seed=0)
    cb = cb.astype(np.float64)

    def obj(c, i):
        return float((f * (x - c[i]) ** 2).sum())

    # a local optimum of the weighted objective: weighted means, weighted-nearest assignment
    for j in range(cb.shape[0]):
        m = idx == j
        np.testing.assert_allclose(cb[j], (f[m] * x[m]).sum(0) / f[m].sum(0), rtol=1e-5)
    cost = np.stack([(f * (x - c) ** 2).sum(1) for c in cb], 1)
    np.testing.assert_array_equal(idx, np.argmin(cost, 1))
    # no worse than the unweighted k-means it starts from, on the weighted objective
    from dkm_tf.core.kmeans import cluster_values

    c0, i0 = cluster_values(x, 4, seed=0)
    assert obj(cb, idx) <= obj(c0.astype(np.float64), i0) + 1e-9


def test_all_zero_importance_is_plain_kmeans():
    x = np.linspace(-1, 1, 30)[:, None]
    cb, idx = sensitivity.weighted_kmeans(x, np.zeros_like(x), 3)
    from dkm_tf.core.kmeans import cluster_values

    c0, i0 = cluster_values(x, 3)
    np.testing.assert_allclose(cb, c0)
    np.testing.assert_array_equal(idx, i0)


# --------------------------------------------------------------------- Fisher importances
def _softmax_regression(seed=0):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy")
    return m


def _data(n=20, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    return x, rng.integers(0, 3, n).astype("int32")


def test_fisher_importance_equals_numpy_per_sample_squared_gradients():
    m = _softmax_regression()
    x, y = _data()
    imp = sensitivity.fisher_importance(m, (x, y), labels="data", damping=0)  # empirical
    kernel, bias = (v.numpy().astype(np.float64) for v in m.layers[0].weights)
    z = x @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    delta = p - np.eye(3)[y]  # d CE / d logits, per sample
    per_sample = x[:, :, None].astype(np.float64) * delta[:, None, :]  # (n, 5, 3)
    expect = (per_sample ** 2).mean(0)
    np.testing.assert_allclose(imp[id(m.layers[0].kernel)], expect, rtol=1e-4, atol=1e-9)


def _true_fisher_numpy(x, kernel, bias, damping):
    """sum_c p_c (d log p_c / dW)^2 averaged over samples, + damping * mean: softmax regression,
    d log p_c / dW = x (e_c - p)^T."""
    x = x.astype(np.float64)
    z = x @ kernel + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    f = np.zeros_like(kernel)
    for c in range(kernel.shape[1]):
        g = x[:, :, None] * (np.eye(kernel.shape[1])[c] - p)[:, None, :]  # (n, d, C)
        f += (p[:, c, None, None] * g ** 2).mean(0)
    return f + damping * f.mean()


@pytest.mark.parametrize("damping", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("form", ["probabilities", "logits", "one-hot"])
def test_true_fisher_equals_numpy_expectation_over_classes(form, damping):
    """The default importance (labels="model"): the exact expectation over the model's own
    class probabilities, damped by damping * mean, for sparse and one-hot cross-entropies."""
    keras.utils.set_random_seed(1)
    act = "softmax" if form == "probabilities" else None
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation=act)])
    loss = {"probabilities": "sparse_categorical_crossentropy",
            "logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "one-hot": keras.losses.CategoricalCrossentropy(from_logits=True)}[form]
    x, y = _data(n=12)
    kwargs = {} if damping == 1.0 else {"damping": damping}  # 1.0 is the default
    imp = sensitivity.fisher_importance(m, x, loss, **kwargs)  # no labels needed
    kernel, bias = (v.numpy().astype(np.float64) for v in m.layers[0].weights)
    np.testing.assert_allclose(imp[id(m.layers[0].kernel)],
                               _true_fisher_numpy(x, kernel, bias, damping), rtol=1e-4, atol=1e-9)
    # labels given are not used by the true Fisher
    y = np.eye(3, dtype="float32")[y] if form == "one-hot" else y
    imp_xy = sensitivity.fisher_importance(m, (x, y), loss, **kwargs)
    np.testing.assert_allclose(imp_xy[id(m.layers[0].kernel)], imp[id(m.layers[0].kernel)],
                               rtol=1e-6)


def test_share_weights_fisher_accepts_samples_without_labels():
    m = _softmax_regression()
    x, y = _data(n=16)
    a = share_weights(m, 2, weighting="fisher", data=x)
    b = share_weights(m, 2, weighting="fisher", data=(x, y))
    c = share_weights(m, 2, weighting="fisher", data=(x, None))
    for pa, pb, pc in zip(a.palettes, b.palettes, c.palettes):
        np.testing.assert_array_equal(pa.decode(), pb.decode())
        np.testing.assert_array_equal(pa.decode(), pc.decode())
    # cluster_weights' starting centroids: the same weighted k-means, without labels too
    cw = cluster_weights(m, 2, weighting="fisher", data=x)
    np.testing.assert_allclose(cw.layers[0]._slots[0].codebook.numpy()[0, :, 0],
                               a.palettes[0].codebook[0, :, 0], atol=1e-7)


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6, 6, 1)).astype("float32")
    y = (x[:, :3].mean((1, 2, 3)) > 0).astype("int32") + (x[:, 3:].mean((1, 2, 3)) > 0)
    m.fit(x, y, epochs=5, verbose=0)
    return m, x, y.astype("int32")


def test_share_weights_fisher_uses_weighted_kmeans_of_the_importances():
    m, x, y = _cnn()
    res = share_weights(m, 4, weighting="fisher", data=(x[:16], y[:16]), unit="auto")
    imp = sensitivity.fisher_importance(m, (x[:16], y[:16]))
    for pal, layer in zip(res.palettes, [m.layers[0], m.layers[2]]):
        assert pal.note == "fisher-weighted k-means"
        assert pal.codebook.shape[1] <= 4
        decoded = res.model.get_layer(layer.name).kernel.numpy()
        np.testing.assert_array_equal(decoded, pal.decode())
        cb, idx = sensitivity.weighted_codebook(layer.kernel.numpy(), imp[id(layer.kernel)],
                                                pal.layout, 4, seed=0)
        np.testing.assert_allclose(units_lib.from_units(cb[np.arange(cb.shape[0])[:, None],
                                                           idx], pal.layout), decoded,
                                   atol=1e-6)
    # the weighted objective is no worse than plain k-means' on every tensor
    plain = share_weights(m, 4, unit="auto")
    for pw, pp, layer in zip(res.palettes, plain.palettes, [m.layers[0], m.layers[2]]):
        w = layer.kernel.numpy().astype(np.float64)
        f = imp[id(layer.kernel)]
        assert (f * (w - pw.decode()) ** 2).sum() <= (f * (w - pp.decode()) ** 2).sum() * 1.0001


def test_cluster_weights_fisher_initial_codebook():
    m, x, y = _cnn()
    c = cluster_weights(m, 4, weighting="fisher", data=(x[:16], y[:16]))
    imp = sensitivity.fisher_importance(m, (x[:16], y[:16]))
    wrapper = c.layers[0]
    cb, idx = sensitivity.weighted_codebook(m.layers[0].kernel.numpy(), imp[id(m.layers[0].kernel)],
                                            wrapper._slots[0].layout, 4, seed=0)
    np.testing.assert_allclose(wrapper._slots[0].codebook.numpy(), cb, atol=1e-7)
    np.testing.assert_array_equal(wrapper._slots[0].indices.numpy(), idx)


# --------------------------------------------------------------------- bad input
def test_bad_inputs_raise_before_any_work():
    m, x, y = _cnn()
    uncompiled = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3),
                                   keras.layers.Flatten(), keras.layers.Dense(3)])
    cases = [
        (dict(weighting="fisher"), "`data`"),
        (dict(weighting="fisher", data="x"), "`data`"),  # no sample axis
        (dict(weighting="fisher", data=(x, y[:5])), "same number"),
        (dict(weighting="fisher", data=(x[:, :4], y)), "fit model"),  # wrong spatial size
        (dict(weighting="fisher", data=(x, y), loss="not_a_loss"), "`loss`"),
        (dict(weighting="fisher", data=(x, y), loss=3), "`loss`"),
        (dict(weighting="sensitive", data=(x, y)), "`weighting`"),
        (dict(data=(x, y)), "`data`"),
        (dict(weighting="fisher", data=(x, y), preserve_sparsity=True), "`weighting`"),
    ]
    for fn in (share_weights, cluster_weights):
        for kwargs, match in cases:
            with pytest.raises(ValueError, match=match) as e:
                fn(m, 4, **kwargs)
            assert "Invalid value for argument" in str(e.value)
    for fn in (share_weights, cluster_weights):
        with pytest.raises(ValueError, match="not compiled"):
            fn(uncompiled, 4, weighting="fisher", data=(x, y))
        fn(uncompiled, 2, weighting="fisher", data=(x[:4], y[:4]),
           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # loss given: ok
    with pytest.raises(ValueError, match="`weighting`"):
        share_weights(m, 4, weighting="fisher", data=(x, y), sparsity=0.5)
    with pytest.raises(ValueError, match="single layer"):
        cluster_weights(m.layers[0], 4, weighting="fisher", data=(x, y))


def test_bad_fisher_options_raise():
    m, x, y = _cnn()
    fi = sensitivity.fisher_importance
    with pytest.raises(ValueError, match="`labels`") as e:
        fi(m, (x, y), labels="true")
    assert "'model'" in str(e.value) and "'data'" in str(e.value) and "true" in str(e.value)
    with pytest.raises(ValueError, match="`damping`"):
        fi(m, (x, y), damping=-1.0)
    with pytest.raises(ValueError, match="`damping`"):
        fi(m, (x, y), damping=float("nan"))
    with pytest.raises(TypeError, match="`damping`"):
        fi(m, (x, y), damping="1")
    with pytest.raises(ValueError, match="`data`.*labels='data'"):
        fi(m, x, labels="data")  # the empirical Fisher needs labels
    fi(m, (x[:2], y[:2]), labels="data")  # with labels: fine
    # the true Fisher needs a cross-entropy matching the output (here logits)
    wrong = [keras.losses.SparseCategoricalCrossentropy(from_logits=False), "mse"]
    for fn in (share_weights, cluster_weights, fi):
        for loss in wrong:
            kwargs = dict(weighting="fisher") if fn is not fi else {}
            with pytest.raises(ValueError, match="`loss`.*cross-entropy") as e:
                fn(m, 4, data=x, loss=loss, **kwargs) if fn is not fi else fn(m, x, loss)
            assert "Invalid value for argument `loss`" in str(e.value)
    # a model that is not a classifier (one output unit)
    keras.utils.set_random_seed(0)
    reg = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`weighting`.*classifier"):
        share_weights(reg, 4, weighting="fisher", data=x, loss="mse")
