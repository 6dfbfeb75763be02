"""Soft (DKM) assignment on big tensors: no (M x K) attention kept whole.

Found by bench/scale19.py: a 2048 x 2048 Dense kernel at K = 16 took 1.4 GiB (90x the kernel)
per training step and 0.66 GiB (41x) in ``palettes_of`` / ``strip_clustering``, growing with
M K: snap kept every float64 attention chunk plus W_tilde, and autodiff kept every chunk of the
last step until the backward pass. Here tiny tensors with a tiny ``CHUNK`` count the attention
chunks alive at once (weak references), and the recomputing gradient is checked against
autodiff's.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import weakref  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import gradients, to_numpy  # noqa: E402

from dkm_tf.training import soft as soft_lib  # noqa: E402
from dkm_tf.training.clustering import cluster_weights, palettes_of  # noqa: E402
from dkm_tf.training.soft import dkm_assign  # noqa: E402

try:  # the module of the fix (absent before it: the tests then fail on their assertions)
    from dkm_tf.training import soft_bounded
except ImportError:  # pragma: no cover
    import types

    soft_bounded = types.SimpleNamespace(KEEP_ATTENTION=None)

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the recomputing gradient is TensorFlow's")


class _Alive:
    """Wraps soft._attention; records the most attention elements alive at one call."""

    def __init__(self, monkeypatch):
        self.refs, self.most, self.inner = [], 0, soft_lib._attention
        monkeypatch.setattr(soft_lib, "_attention", self)

    def alive(self):
        return sum(int(np.prod(r().shape)) for r in self.refs if r() is not None)

    def __call__(self, w, c, tau):
        self.most = max(self.most, self.alive())
        a = self.inner(w, c, tau)
        self.refs.append(weakref.ref(a))
        return a


def _soft_dense(k, seed=0):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(30)])
    model.layers[0].kernel.assign(rng.normal(0, 0.05, (40, 30)).astype("float32"))
    return cluster_weights(model, k, assignment="soft", temperature=0.01)


def test_snap_keeps_one_attention_chunk(monkeypatch):
    clustered = _soft_dense(8)
    want = palettes_of(clustered)  # the whole tensor in one chunk
    monkeypatch.setattr(soft_lib, "CHUNK", 80)  # 10 units x 8 centroids per chunk
    alive = _Alive(monkeypatch)
    got = palettes_of(clustered)
    assert alive.refs, "snap did not go through the attention"
    assert alive.most <= 80, f"{alive.most} attention elements alive at once (1,200 units x 8)"
    np.testing.assert_allclose(got[0].codebook, want[0].codebook, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got[0].indices, want[0].indices)


@pytest.mark.parametrize("d,unroll", [(1, 8), (3, 8), (3, 100)])  # 10 chunks: loop / written
def test_recomputed_gradient_equals_autodiff(monkeypatch, d, unroll):
    rng = np.random.default_rng(d)
    w = rng.normal(size=(2, 37, d))
    c0 = rng.normal(size=(2, 5, d))
    r = rng.normal(size=(2, 37, d))
    rc = rng.normal(size=(2, 5, d))
    wt = keras.Variable(w, dtype="float64")

    def loss():
        w_t, c, _ = dkm_assign(wt.value, c0, 0.3)
        return keras.ops.sum(w_t * r) + keras.ops.sum(c * rc)  # both outputs carry a gradient

    monkeypatch.setattr(soft_lib, "CHUNK", 20)  # 4 units x 5 centroids per chunk
    monkeypatch.setattr(soft_bounded, "UNROLL", unroll, raising=False)
    (kept,) = gradients(loss, [wt])
    out_kept = to_numpy(dkm_assign(wt.value, c0, 0.3)[0])
    monkeypatch.setattr(soft_bounded, "KEEP_ATTENTION", 0)  # recompute from here on
    (recomputed,) = gradients(loss, [wt])
    out = to_numpy(dkm_assign(wt.value, c0, 0.3)[0])
    np.testing.assert_allclose(out, out_kept, rtol=0, atol=1e-12)
    assert np.abs(kept).max() > 1e-3
    np.testing.assert_allclose(recomputed, kept, rtol=1e-9, atol=1e-10)


def test_forward_keeps_no_attention_for_backward(monkeypatch):
    import tensorflow as tf

    rng = np.random.default_rng(4)
    w = tf.Variable(rng.normal(size=(1, 300, 1)))
    c0 = np.sort(rng.normal(size=(1, 6, 1)), axis=1)
    monkeypatch.setattr(soft_lib, "CHUNK", 60)  # 10 units x 6 centroids per chunk
    monkeypatch.setattr(soft_bounded, "KEEP_ATTENTION", 1000)  # 1,800 elements: recompute
    alive = _Alive(monkeypatch)
    with tf.GradientTape() as tape:
        w_t, _, _ = dkm_assign(w, c0, 0.2)
        loss = tf.reduce_sum(w_t ** 2)
        held = alive.alive()  # what the tape holds for the backward pass
    grad = tape.gradient(loss, w)
    assert held <= 60, f"{held} attention elements held for the backward pass (300 x 6)"
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).max() > 0
    assert alive.most <= 60, alive.most


def test_soft_fit_step_on_the_recomputing_path_matches_autodiff(monkeypatch):
    x = np.random.default_rng(5).normal(size=(4, 40)).astype("float32")
    y = np.arange(4) % 3

    def step():
        clustered = _soft_dense(4, seed=1)
        clustered.compile(keras.optimizers.SGD(0.5), "mse")
        clustered.fit(x, keras.utils.to_categorical(y, 30), epochs=1, batch_size=4, verbose=0)
        return [to_numpy(v) for v in clustered.trainable_weights]

    monkeypatch.setattr(soft_lib, "CHUNK", 400)  # 100 units x 4 centroids: 12 chunks, a loop
    monkeypatch.setattr(soft_lib, "_XLA", {})  # compiled functions are cached per shape
    before = step()
    monkeypatch.setattr(soft_bounded, "KEEP_ATTENTION", 0)
    monkeypatch.setattr(soft_lib, "_XLA", {})
    after = step()
    assert before[0].shape == (40, 30)  # the float kernel moved the same way on both paths
    for a, b in zip(before, after):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_graph_does_not_grow_with_the_chunks(monkeypatch):
    import tensorflow as tf

    calls = []
    inner = soft_lib._attention

    def counting(w, c, tau):
        calls.append(1)
        return inner(w, c, tau)

    monkeypatch.setattr(soft_lib, "_attention", counting)
    monkeypatch.setattr(soft_lib, "CHUNK", 60)  # 300 units x 6 centroids: 30 chunks
    monkeypatch.setattr(soft_bounded, "KEEP_ATTENTION", 0)
    rng = np.random.default_rng(6)
    w = tf.Variable(rng.normal(size=(1, 300, 1)))
    c0 = np.sort(rng.normal(size=(1, 6, 1)), axis=1)

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(dkm_assign(w, c0, 0.2)[0] ** 2)
        return tape.gradient(loss, w)

    step.get_concrete_function()  # trace once: one attention per loop body, not per chunk
    assert 0 < len(calls) <= 8, f"the attention was written {len(calls)} times into the graph"
