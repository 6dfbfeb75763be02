"""Soft (DKM) assignments: numpy reference of the update, gradients, strip, schedule, errors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import gradients, to_numpy  # noqa: E402

from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.training import soft as soft_lib  # noqa: E402
from dkm_tf.training.clustering import cluster_weights, strip_clustering  # noqa: E402
from dkm_tf.training.soft import TemperatureSchedule, dkm_assign  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402


def _tensor(x):
    return keras.ops.convert_to_tensor(x)


# --------------------------------------------------------------------- independent reference
def _attention(w, c, tau):
    d = np.sqrt(((w[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    z = -d / tau
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _step(w, c, tau):
    a = _attention(w, c, tau)
    return a, (a.T @ w) / a.sum(0)[:, None]


def ref_converge(w, c, tau, n_steps, tol):
    """Fixed-point iteration c <- A(c)^T w / colsum(A(c)) until max |c - c_new| <= tol (that
    step applied) or n_steps steps."""
    for _ in range(n_steps):
        c_new = _step(w, c, tau)[1]
        step = np.abs(c_new - c).max()
        c = c_new
        if step <= tol:
            break
    return c


def ref_dkm(w, c, tau, max_iter=5, tol=1e-4):
    """DKM (Cho et al., ICLR 2022, §3.1) on one group: w (M, d), c (K, d), float64.

    A = softmax(-||w - c|| / tau) row-wise (Euclidean distance); up to max_iter - 1 steps of
    the fixed-point iteration, then a last step A = A(c*), c = A^T w / colsum(A); output A c.
    """
    w, c = np.asarray(w, np.float64), np.asarray(c, np.float64)
    c = ref_converge(w, c, tau, max_iter - 1, tol)
    a, c_new = _step(w, c, tau)
    return a @ c_new, c_new


def ref_unrolled(w, c, tau, max_iter=5, tol=1e-4):
    """The paper's loop, all steps differentiated: max_iter steps (or until tol), A(c) c."""
    w, c = np.asarray(w, np.float64), np.asarray(c, np.float64)
    c = ref_converge(w, c, tau, max_iter, tol)
    return _attention(w, c, tau) @ c, c


def test_dkm_assign_equals_numpy_reference_scalar_and_vector():
    rng = np.random.default_rng(0)
    for d, tau in ((1, 0.05), (3, 0.2)):
        w = rng.normal(size=(2, 17, d))
        c0 = rng.normal(size=(2, 4, d))
        for full, ref in ((False, ref_dkm), (True, ref_unrolled)):
            got_w, got_c, _ = dkm_assign(_tensor(w), c0, tau, full_backprop=full)
            for g in range(2 if full else 1):  # the while loop runs on all groups at once
                ref_w, ref_c = ref(w[g], c0[g], tau)
                np.testing.assert_allclose(to_numpy(got_w[g]), ref_w, rtol=0, atol=1e-10)
                np.testing.assert_allclose(to_numpy(got_c[g]), ref_c, rtol=0, atol=1e-10)


def test_chunked_attention_equals_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    w, c0 = rng.normal(size=(1, 50, 2)), rng.normal(size=(1, 3, 2))
    whole = [to_numpy(t) for full in (False, True)
             for t in dkm_assign(_tensor(w), c0, 0.3, full_backprop=full)[:2]]
    monkeypatch.setattr(soft_lib, "CHUNK", 21)  # 7 units x 3 centroids per block
    parts = [to_numpy(t) for full in (False, True)
             for t in dkm_assign(_tensor(w), c0, 0.3, full_backprop=full)[:2]]
    for a, b in zip(whole, parts):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_fixed_point_iteration_converges():
    rng = np.random.default_rng(2)
    w = np.concatenate([rng.normal(-1, 0.1, 30), rng.normal(1, 0.1, 30)])[None, :, None]
    c0 = np.array([[[-0.5], [0.4]]])
    _, c, moved = dkm_assign(_tensor(w), c0, 0.05, max_iter=50, tol=1e-12)
    assert int(moved) < 50  # stopped by the tolerance, not the cap
    # c is a fixed point of the update: one more step moves it by < 1e-12
    c2 = _step(w[0], to_numpy(c)[0], 0.05)[1]
    np.testing.assert_allclose(c2, to_numpy(c)[0], rtol=0, atol=1e-12)
    # near the means of the two blobs (the soft fixed point of well-separated clusters)
    np.testing.assert_allclose(np.sort(to_numpy(c).ravel()),
                               [w[0, :30, 0].mean(), w[0, 30:, 0].mean()], atol=1e-6)


@pytest.mark.parametrize("full", [False, True])
def test_gradient_matches_finite_differences(full):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(1, 6, 1))
    c0 = np.array([[[-0.5], [0.6]]])
    r = rng.normal(size=(1, 6, 1))
    wt = keras.Variable(w, dtype="float64")
    (grad,) = gradients(
        lambda: keras.ops.sum(dkm_assign(wt.value, c0, 0.4, full_backprop=full)[0] * r), [wt])
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    # full: through every step; default: through the last step, the converged c* held fixed
    c_star = ref_converge(w[0], c0[0], 0.4, 4, 1e-4)

    def f(x):
        if full:
            return float((ref_unrolled(x[0], c0[0], 0.4)[0] * r[0]).sum())
        a, c_new = _step(x[0], c_star, 0.4)
        return float((a @ c_new * r[0]).sum())

    num = np.zeros_like(w)
    for i in range(6):
        e = np.zeros_like(w)
        e[0, i, 0] = 1e-6
        num[0, i, 0] = (f(w + e) - f(w - e)) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


def _logits_loss():
    # _model() ends in a Dense without softmax: logits. Read as probabilities they gave a NaN
    # loss on JAX (and NaN weights, which strip_clustering then snapped silently)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0.5).astype("int32")


def test_wrapper_forward_equals_reference_and_stores_warm_start():
    base = _model()
    m = cluster_weights(base, 4, assignment="soft", temperature=0.02)
    layer = m.layers[0]
    w = to_numpy(layer.layer.kernel).astype(np.float64)
    c0 = to_numpy(layer._slots[0].codebook).astype(np.float64)  # k-means init
    ref_w, ref_c = ref_dkm(w.reshape(-1, 1), c0[0], 0.02)
    got = to_numpy(layer.shared_kernels()["kernel"])
    np.testing.assert_allclose(got, ref_w.reshape(w.shape), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(to_numpy(layer._slots[0].codebook), c0)  # a query only
    x = _data()[0]
    expect = np.maximum(x @ ref_w.reshape(w.shape) + to_numpy(layer.layer.bias), 0)
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), expect, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(to_numpy(layer._slots[0].codebook)[0], ref_c, atol=1e-5)
    # the next call starts from the stored centroids (DKM's warm start); inference does
    # not move them
    ref_w2, _ = ref_dkm(w.reshape(-1, 1), to_numpy(layer._slots[0].codebook)[0], 0.02)
    stored = to_numpy(layer._slots[0].codebook)
    expect = np.maximum(x @ ref_w2.reshape(w.shape) + to_numpy(layer.layer.bias), 0)
    np.testing.assert_allclose(to_numpy(layer(x)), expect, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(to_numpy(layer._slots[0].codebook), stored)
    # the float kernel trains, the codebook does not (DKM learns no centroids)
    names = [v.path for v in m.trainable_weights]
    # (Keras numbers auto-named layers per process: "dense", "dense_3", ...)
    assert any(re.search(r"dense(_\d+)?/kernel$", n) for n in names), names
    assert not any("codebook" in n for n in names)


def test_fit_with_schedule_gives_finite_gradients_and_strip_at_most_k_values():
    base = _model()
    x, y = _data()
    m = cluster_weights(base, 2, assignment="soft", temperature=0.05)
    m.compile(keras.optimizers.Adam(1e-2), _logits_loss())
    grads = gradients(lambda: m.compute_loss(x=x, y=y, y_pred=m(x)), m.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    assert float(np.abs(grads[0]).max()) > 0  # reaches the kernel through A and C
    sched = TemperatureSchedule(0.05, 0.005, epochs=3, schedule="exponential")
    hist = m.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[sched])
    assert np.all(np.isfinite(hist.history["loss"]))
    assert float(to_numpy(m.layers[0].temperature_variable)) == pytest.approx(0.005, rel=1e-6)
    plain, pals = strip_clustering(m)
    for layer, pal in zip(plain.layers, pals):
        k = to_numpy(layer.kernel)
        assert np.unique(k).size <= 2
        np.testing.assert_array_equal(k, pal.decode())
        # hard assignment: each weight on the centroid nearest to its trained float value
        w = to_numpy(m.get_layer(f"cluster_{layer.name}").layer.kernel)
        cb = pal.codebook[0, :, 0]
        np.testing.assert_array_equal(k, cb[np.argmin(np.abs(w[..., None] - cb), -1)])


def test_inference_leaves_the_warm_start_alone_and_training_moves_it():
    # predict twice gives identical outputs on every backend (on JAX, predict used to move
    # the warm start, so two identical calls differed by ~1e-7); a train step moves it
    x, y = _data()
    m = cluster_weights(_model(), 4, assignment="soft", temperature=0.5)
    m.compile(keras.optimizers.SGD(0.0), _logits_loss())
    codebooks = [to_numpy(layer._slots[0].codebook) for layer in m.layers]
    first = m.predict(x, verbose=0)
    np.testing.assert_array_equal(m.predict(x, verbose=0), first)
    m.evaluate(x, y, verbose=0)
    for layer, c in zip(m.layers, codebooks):
        np.testing.assert_array_equal(to_numpy(layer._slots[0].codebook), c)
    m.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)  # lr 0: kernel unchanged
    moved = [float(np.abs(to_numpy(layer._slots[0].codebook) - c).max())
             for layer, c in zip(m.layers, codebooks)]
    assert max(moved) > 1e-4, moved  # tau 0.5: the fixed point is far from k-means'


def test_palettes_and_strip_leave_the_wrapped_model_alone():
    # palettes_of / strip_clustering snapped the wrapper's own codebook and indices, so
    # asking for palettes mid-training changed the next epoch (probe: loss 1.46780 untouched
    # vs 1.46802 after one palettes_of call)
    from dkm_tf.training.clustering import palettes_of  # noqa: PLC0415

    x, y = _data()
    m = cluster_weights(_model(), 4, assignment="soft", temperature=0.5)
    m.compile(keras.optimizers.SGD(1e-2), _logits_loss())
    m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = [to_numpy(v).copy() for v in m.variables]
    pals = palettes_of(m)
    plain, stripped_pals = strip_clustering(m)
    for v, b in zip(m.variables, before):
        np.testing.assert_array_equal(to_numpy(v), b, err_msg=v.path)
    for a, b in zip(pals, stripped_pals):  # the same snapped palettes either way
        np.testing.assert_array_equal(a.decode(), b.decode())
    for layer, pal in zip(plain.layers, pals):
        k = to_numpy(layer.kernel)
        assert np.unique(k).size <= 4
        np.testing.assert_array_equal(k, pal.decode())


def test_schedule_values():
    lin = TemperatureSchedule(1.0, 0.1, epochs=4, schedule="linear")
    np.testing.assert_allclose([lin.value(e) for e in range(5)], [1.0, 0.7, 0.4, 0.1, 0.1])
    exp = TemperatureSchedule(1.0, 0.001, epochs=4)
    np.testing.assert_allclose([exp.value(e) for e in range(4)], [1.0, 0.1, 0.01, 0.001])
    assert TemperatureSchedule(0.3).value(7) == 0.3


def test_soft_model_saves_and_loads(tmp_path):
    m = cluster_weights(_model(), 4, assignment="soft", temperature=0.02)
    x = _data()[0]
    m.layers[0].temperature_variable.assign(0.01)
    path = str(tmp_path / "soft.keras")
    m.save(path)
    back = keras.models.load_model(path)
    assert back.layers[0].assignment == "soft"
    assert float(to_numpy(back.layers[0].temperature_variable)) == pytest.approx(0.01)
    np.testing.assert_allclose(back.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-6)


def test_hard_stays_the_default():
    m = cluster_weights(_model(), 4)
    assert m.layers[0].assignment == "hard" and "assignment" not in m.layers[0].get_config()


@pytest.mark.parametrize("kwargs, match", [
    ({"assignment": "soft", "temperature": 0.0}, "temperature"),
    ({"assignment": "soft", "temperature": -1.0}, "temperature"),
    ({"assignment": "soft", "temperature": float("nan")}, "temperature"),
    ({"assignment": "soft", "temperature": True}, "temperature"),
    ({"assignment": "soft", "temperature": "0.1"}, "temperature"),
    ({"assignment": "soft"}, "temperature=None"),
    ({"assignment": "hard", "temperature": 0.1}, "temperature"),
    ({"assignment": "fuzzy", "temperature": 0.1}, "assignment"),
    ({"assignment": "soft", "temperature": 0.1, "latent": True}, "latent"),
    ({"assignment": "soft", "temperature": 0.1, "preserve_sparsity": True}, "preserve_sparsity"),
])
def test_bad_soft_settings_raise_eagerly(kwargs, match):
    base = _model()
    with pytest.raises(ValueError, match=match) as e:
        cluster_weights(base, 4, **kwargs)
    assert "Invalid value for argument" in str(e.value)
    with pytest.raises(ValueError, match=match):
        ClusterWeights(keras.layers.Dense(2), 4, **kwargs)


@pytest.mark.parametrize("args, match", [
    ((0.0,), "start"), ((0.1, -0.1), "end"), ((0.1, 0.01, 0), "epochs"),
    ((0.1, 0.01, 2, "cosine"), "schedule"),
])
def test_bad_schedule_raises(args, match):
    with pytest.raises(ValueError, match=match):
        TemperatureSchedule(*args)


def test_schedule_on_a_model_without_soft_layers_raises():
    m = cluster_weights(_model(), 4)
    m.compile("adam", _logits_loss())
    x, y = _data()
    with pytest.raises(ValueError, match="assignment='soft'"):
        m.fit(x, y, epochs=1, verbose=0, callbacks=[TemperatureSchedule(0.1)])


def test_row_units_per_channel_forward_and_strip():
    keras.utils.set_random_seed(1)
    base = keras.Sequential([keras.Input((7, 7, 2)), keras.layers.Conv2D(3, 3),
                             keras.layers.Flatten(), keras.layers.Dense(2)])
    m = cluster_weights(base, 2, unit="row", granularity="per_channel", assignment="soft",
                        temperature=0.1, overrides={"Dense": None})
    layer = m.layers[0]
    slot = layer._slots[0]
    w = units_lib.to_units(to_numpy(layer.layer.kernel), slot.layout).astype(np.float64)
    c = to_numpy(slot.codebook).astype(np.float64)
    for _ in range(4):  # the fixed-point loop runs on all groups until all have converged
        new = np.stack([_step(w[g], c[g], 0.1)[1] for g in range(len(w))])
        step, c = np.abs(new - c).max(), new
        if step <= 1e-4:
            break
    expect = np.stack([_step(w[g], c[g], 0.1)[0] @ _step(w[g], c[g], 0.1)[1]
                       for g in range(len(w))])
    got = units_lib.to_units(to_numpy(layer.shared_kernels()["kernel"]), slot.layout)
    assert got.shape == w.shape and w.shape[2] == 3  # rows of 3 values, one group per channel
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5)
    plain, pals = strip_clustering(m)
    units = units_lib.to_units(to_numpy(plain.layers[0].kernel), pals[0].layout)
    assert all(np.unique(units[g], axis=0).shape[0] <= 2 for g in range(units.shape[0]))


def test_collapsed_centroids_count_once_in_the_palette():
    """At a large temperature DKM's centroids collapse onto one value; the palette said K=2
    with two equal entries (an index bit wasted, the compression table overstated)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(7, name="L")(inp))
    wrapped = cluster_weights(model, 3, assignment="soft", temperature=10.0)
    wrapped(np.zeros((1, 5), np.float32))
    plain, (palette,) = strip_clustering(wrapped)
    kernel = to_numpy(plain.get_layer("L").kernel)
    assert palette.n_clusters == np.unique(kernel).size
    np.testing.assert_array_equal(palette.decode(), kernel)


def test_compact_merges_equal_entries_and_keeps_the_decode():
    from dkm_tf.core import codebook as codebook_lib  # noqa: PLC0415

    cb = np.array([[[0.0], [1.5], [1.5], [-2.0]], [[3.0], [3.0], [3.0], [4.0]]], np.float32)
    idx = np.array([[0, 1, 2, 3, 2], [0, 1, 2, 3, 3]], np.uint8)
    out_cb, out_idx = codebook_lib.compact(cb, idx)
    assert out_cb.shape == (2, 3, 1) and out_idx.dtype == np.uint8
    for g in range(2):  # decode unchanged; group 1 has 2 distinct values (padded to 3)
        np.testing.assert_array_equal(out_cb[g, out_idx[g], 0], cb[g, idx[g], 0])
    assert np.unique(out_idx[1]).size == 2
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3, 2], [0, 1, 2, 3, 3]])  # input untouched


def test_constant_schedule_refuses_an_end_it_would_ignore():
    assert TemperatureSchedule(0.1, schedule="constant").value(5) == 0.1
    assert TemperatureSchedule(0.1, 0.1, schedule="constant").value(0) == 0.1
    with pytest.raises(ValueError, match=r"`end`. Expected None or start=0.1 with "
                                         r"schedule='constant'.*Received: end=0.001"):
        TemperatureSchedule(0.1, 0.001, epochs=3, schedule="constant")
