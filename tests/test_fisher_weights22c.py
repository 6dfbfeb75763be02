"""Sample-weighted Fisher importance (session 22, helper c).

``fisher_importance(model, (x, y, sample_weight))``, ``share_weights`` / ``cluster_weights``
with ``weighting="fisher", data=(x, y, sample_weight)`` refused the triple; the importance is
now the weighted mean ``F = sum_n s_n g_n^2 / sum_n s_n`` (true Fisher: ``g_n^2`` is the
expectation over the model's own classes; ``labels="data"``: the sample's own label),
checked against an independent numpy backprop of a two-layer MLP. Bad weights are refused
before any forward pass; ``refine`` (an unweighted least-squares fit) refuses weights.
Tiny models, fixed seeds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402

K = 4
N = 10
RTOL, ATOL = 1e-4, 1e-9  # float32 gradients against the float64 numpy reference


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mlp(seed=0):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("adam", _sce())
    return m


def _data(n=N, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 5)).astype("float32")
    return x, r.integers(0, 3, n).astype("int64")


def _weights(n=N, seed=1):
    return np.random.default_rng(seed).integers(1, 4, n).astype("float32")  # 1, 2 or 3


def _reference(m, x, y, w, labels="model", damping=0.0):
    """Independent numpy Fisher of both kernels: manual backprop of the MLP, the weighted
    mean over samples ``sum_n w_n (...) / sum_n w_n``, damped by ``damping * mean``."""
    w1, b1, w2, b2 = (v.numpy().astype(np.float64) for v in m.weights)
    x = x.astype(np.float64)
    pre = x @ w1 + b1
    h = np.maximum(pre, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    f1, f2 = np.zeros_like(w1), np.zeros_like(w2)
    classes = range(3) if labels == "model" else [None]
    for c in classes:
        onehot = np.eye(3)[y] if c is None else np.eye(3)[[c] * len(x)]
        d = onehot - p  # d log p(c) / d z, per sample
        prob = np.ones(len(x)) if c is None else p[:, c]
        g2 = h[:, :, None] * d[:, None, :]
        g1 = x[:, :, None] * ((d @ w2.T) * (pre > 0))[:, None, :]
        f1 += ((w * prob)[:, None, None] * g1 ** 2).sum(0)
        f2 += ((w * prob)[:, None, None] * g2 ** 2).sum(0)
    out = [f / w.sum() for f in (f1, f2)]
    return [f + damping * f.mean() for f in out]


def _kernels(m, imp):
    return [imp[id(m.layers[0].kernel)], imp[id(m.layers[1].kernel)]]


@pytest.mark.parametrize("labels", ["model", "data"])
def test_integer_weights_equal_the_repeated_data_and_the_numpy_reference(labels):
    m, (x, y), w = _mlp(), _data(), _weights()
    got = _kernels(m, dkm_tf.fisher_importance(m, (x, y, w), labels=labels, damping=0))
    reps = w.astype(int)
    rep = _kernels(m, dkm_tf.fisher_importance(m, (np.repeat(x, reps, 0), np.repeat(y, reps)),
                                               labels=labels, damping=0))
    ref = _reference(m, x, y, w.astype(np.float64), labels)
    plain = _reference(m, x, y, np.ones(N), labels)
    for g, r, e, u in zip(got, rep, ref, plain):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-15)  # same sums, other order
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)
        assert np.abs(e - u).max() > 0.05 * np.abs(u).max()  # the weights matter here
    # damping: lambda * mean of the weighted F, per kernel
    damped = _kernels(m, dkm_tf.fisher_importance(m, (x, y, w), labels=labels, damping=2.0))
    for g, e in zip(damped, _reference(m, x, y, w.astype(np.float64), labels, damping=2.0)):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_zero_weights_drop_samples_and_uniform_weights_change_nothing():
    m, (x, y) = _mlp(), _data()
    half = np.r_[np.ones(N // 2), np.zeros(N - N // 2)].astype("float32")
    got = _kernels(m, dkm_tf.fisher_importance(m, (x, None, half)))
    first = _kernels(m, dkm_tf.fisher_importance(m, x[: N // 2]))
    for g, f in zip(got, first):
        np.testing.assert_allclose(g, f, rtol=1e-12, atol=0)
    plain = _kernels(m, dkm_tf.fisher_importance(m, (x, y)))
    for value in (1.0, 2.5, 1e-3, 1e308, 1e-300):  # 1e308 * N sums to inf: F was 0
        uniform = _kernels(m, dkm_tf.fisher_importance(m, (x, y, np.full(N, value))))
        for g, p in zip(uniform, plain):
            np.testing.assert_allclose(g, p, rtol=1e-12, atol=0)
    for weights in (np.ones(N), None, list(np.ones(N))):  # None: unweighted, as in Keras
        ones = _kernels(m, dkm_tf.fisher_importance(m, (x, y, weights)))
        for g, p in zip(ones, plain):  # no weights and weights 1: the same bits
            np.testing.assert_array_equal(g, p)


def test_a_dataset_of_weighted_batches_equals_the_arrays():
    import tensorflow as tf  # noqa: PLC0415

    m, (x, y), w = _mlp(), _data(), _weights()
    arrays = _kernels(m, dkm_tf.fisher_importance(m, (x, y, w)))
    for ds in (tf.data.Dataset.from_tensor_slices((x, y, w)).batch(4),
               tf.data.Dataset.from_tensor_slices((x, y, w)).batch(3).filter(
                   lambda *_: True)):  # unknown cardinality: read too
        for g, a in zip(_kernels(m, dkm_tf.fisher_importance(m, ds)), arrays):
            np.testing.assert_array_equal(g, a)
    plain = _kernels(m, dkm_tf.fisher_importance(m, x))
    for ds in (tf.data.Dataset.from_tensor_slices(x).batch(4),
               tf.data.Dataset.from_tensor_slices((x, y)).batch(4)):
        for g, p in zip(_kernels(m, dkm_tf.fisher_importance(m, ds)), plain):
            np.testing.assert_array_equal(g, p)
    for ds, match in ((tf.data.Dataset.from_tensor_slices((x, y, w)).repeat(), "infinite"),
                      (tf.data.Dataset.from_tensor_slices((x, y, w)), "unbatched"),
                      (tf.data.Dataset.from_tensor_slices((x, y, w)).take(0).batch(2), "empty")):
        with pytest.raises(ValueError, match=rf"`data`.*{match}"):
            dkm_tf.fisher_importance(m, ds)


def test_share_and_cluster_weights_give_the_palettes_of_the_repeated_data():
    m, (x, y), w = _mlp(), _data(), _weights()
    reps = w.astype(int)
    xr, yr = np.repeat(x, reps, 0), np.repeat(y, reps)
    got = dkm_tf.share_weights(m, K, weighting="fisher", data=(x, y, w))
    rep = dkm_tf.share_weights(m, K, weighting="fisher", data=(xr, yr))
    plain = dkm_tf.share_weights(m, K, weighting="fisher", data=(x, y))
    assert len(got.palettes) == 2
    differ = False
    for pg, pr, pp in zip(got.palettes, rep.palettes, plain.palettes):
        np.testing.assert_allclose(pg.codebook, pr.codebook, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(pg.indices, pr.indices)
        differ |= not np.allclose(pg.decode(), pp.decode(), atol=1e-6)
    assert differ  # the weights change the palettes of this model
    cw = dkm_tf.cluster_weights(m, K, weighting="fisher", data=(x, y, w))
    cr = dkm_tf.cluster_weights(m, K, weighting="fisher", data=(xr, yr))
    for a, b in zip(cw.layers, cr.layers):
        np.testing.assert_allclose(a._slots[0].codebook.numpy(), b._slots[0].codebook.numpy(),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(a._slots[0].indices.numpy(), b._slots[0].indices.numpy())


class _Count(keras.layers.Layer):
    """Counts the forward passes on the data: eager calls on non-zero inputs (the structural
    checks that run first trace the layer, or call it once on zeros)."""
    calls = 0

    def call(self, x):
        _Count.calls += type(x).__name__ == "EagerTensor" and bool(np.any(x.numpy() != 0))
        return x


def test_bad_weights_are_refused_before_any_forward_pass():
    import tensorflow as tf  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((5,)), _Count(), keras.layers.Dense(3)])
    m.compile("adam", _sce())
    (x, y), w = _data(), _weights()
    nan, neg = w.copy(), w.copy()
    nan[3], neg[2] = np.nan, -0.5
    cases = [(w[:-1], r"shape \(10,\).*shape \(9,\)"), (np.stack([w, w], 1), r"shape \(10, 2\)"),
             (nan, "finite.*1 NaN"), (np.where(w > 2, np.inf, w), "finite"),
             (neg, r">= 0.*1 negative"), (np.zeros(N), "at least one weight > 0.*all 10"),
             (np.array(["a"] * N), "real numbers.*<U1"), (np.ones(N, complex), "complex"),
             ({"a": w}, "object")]
    calls = [lambda d: dkm_tf.fisher_importance(m, d),
             lambda d: dkm_tf.fisher_importance(m, d, labels="data"),
             lambda d: dkm_tf.share_weights(m, K, weighting="fisher", data=d),
             lambda d: dkm_tf.cluster_weights(m, K, weighting="fisher", data=d)]
    _Count.calls = 0
    for bad, match in cases:
        for call in calls:
            with pytest.raises(ValueError, match=rf"`data`.*sample weights.*{match}"):
                call((x, y, bad))
    ds = tf.data.Dataset.from_tensor_slices((x, y, neg)).batch(4)
    with pytest.raises(ValueError, match=r"`data`.*sample weights.*negative"):
        dkm_tf.share_weights(m, K, weighting="fisher", data=ds)
    assert _Count.calls == 0  # refused before the trial sample ran
    dkm_tf.fisher_importance(m, (x, y, w))
    assert _Count.calls > 0  # which the count sees


@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_refine_refuses_sample_weights_it_would_ignore(refine):
    m, (x, y), w = _mlp(), _data(), _weights()
    for weighting in (None, "fisher"):
        for weights in (w, list(w)):
            with pytest.raises(ValueError,
                               match=rf"`data`.*refine='{refine}'.*no sample weights"):
                dkm_tf.share_weights(m, K, weighting=weighting, refine=refine,
                                     data=(x, y, weights))


class ThreeInputs(keras.Model):
    def __init__(self):
        super().__init__()
        self.join = keras.layers.Concatenate()
        self.fc = keras.layers.Dense(3)

    def call(self, xs):
        return self.fc(self.join(list(xs)))


def test_a_subclassed_three_input_model_takes_its_inputs_or_weighted_triples():
    r = np.random.default_rng(0)
    xs = [r.normal(size=(6, 2)).astype("float32") for _ in range(3)]
    keras.utils.set_random_seed(0)
    model = ThreeInputs()
    model(xs)
    model.compile("adam", _sce())
    w = np.array([1, 2, 1, 3, 1, 2], "float32")
    got = dkm_tf.fisher_importance(model, (list(xs), None, w))
    rep = dkm_tf.fisher_importance(model, [np.repeat(a, w.astype(int), 0) for a in xs])
    plain = dkm_tf.fisher_importance(model, tuple(xs))  # its three inputs, as before
    assert got.keys() == rep.keys() == plain.keys() and len(got) == 1
    for key in got:
        np.testing.assert_allclose(got[key], rep[key], rtol=1e-10)
        assert not np.allclose(got[key], plain[key], rtol=1e-3)
