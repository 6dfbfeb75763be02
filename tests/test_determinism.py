"""Same seeds, same bits: the TensorFlow sums behind hard fine-tuning and the k-means penalty.

Found by a probe: ``dkm-tf compress --method finetune`` run twice with the same seed wrote
different palettes and ``.tflite`` files (``--method wr`` and ``dkm`` did not). The gradient
of a hard codebook summed the kernel's gradient per centroid with TensorFlow's weighted 1-D
``bincount``, whose CPU kernel adds per-thread partial bins in the order the threads finish:
above a few thousand weights the same call returned 4 different results in 30 (2 threads),
and ``enable_op_determinism`` does not catch it. The k-means penalty's cluster means used the
same op. Both now use ``dkm_tf.training.segment.segment_sums`` (row-wise bincount, rows added
in float64). These tests need more than one intra-op thread to fail on the old code.
"""

import keras
import numpy as np
import pytest

from tests.testing import tf_backend_only

pytestmark = tf_backend_only("the sums under test are TensorFlow's kernels")

N = 200_000  # weights: well above the size where TF's 1-D bincount goes multi-threaded


def _distinct(fn, calls=25):
    return len({np.asarray(fn()).tobytes() for _ in range(calls)})


def test_gather_codebook_gradient_has_the_same_bits_on_every_call():
    import tensorflow as tf

    from dkm_tf.training.soft import gather_codebook

    rng = np.random.default_rng(0)
    v = tf.Variable(rng.standard_normal(16).astype(np.float32))
    idx = tf.constant(rng.integers(0, 16, N).astype(np.int32))
    up = tf.constant(rng.standard_normal(N).astype(np.float32))

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            out = gather_codebook(v, idx)
        return tape.gradient(out, v, output_gradients=up)

    assert _distinct(lambda: grad().numpy()) == 1
    want = np.bincount(idx.numpy(), weights=up.numpy().astype(np.float64), minlength=16)
    np.testing.assert_allclose(grad().numpy(), want, rtol=1e-5, atol=1e-4)


def test_kmeans_penalty_has_the_same_bits_on_every_call():
    import tensorflow as tf

    import dkm_tf

    rng = np.random.default_rng(1)
    layer = keras.layers.Dense(400)
    layer.build((None, 500))
    layer.kernel.assign(rng.standard_normal((500, 400)).astype(np.float32))
    dkm_tf.attach_regularizer(keras.Sequential([keras.Input((500,)), layer]), n_clusters=8,
                              lam=1.0, include_dense=True)
    reg = layer.kernel.regularizer

    @tf.function
    def penalty_and_grad():
        with tf.GradientTape() as tape:
            p = reg(layer.kernel)
        return p, tape.gradient(p, layer.kernel)

    def bits():
        p, g = penalty_and_grad()
        return np.concatenate([[p.numpy()], g.numpy().ravel()[:4096]])

    assert _distinct(bits) == 1


def test_hard_finetune_twice_gives_identical_weights():
    """Two fits from the same start, same data, same seed: bit-identical weights."""
    import dkm_tf

    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    base = keras.Sequential([keras.Input((512,)), keras.layers.Dense(256, name="d1"),
                             keras.layers.Dense(4, name="d2")])
    base.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.1
                      for w in base.get_weights()])
    finals = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        m = dkm_tf.cluster_weights(base, n_clusters=8)
        m.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        m.fit(x, y, batch_size=64, epochs=6, shuffle=False, verbose=0)
        finals.append(b"".join(np.asarray(w).tobytes() for w in m.get_weights()))
    assert finals[0] == finals[1]


@pytest.mark.parametrize("n", [0, 1, 7, 16_384, 16_385, 40_000])
@pytest.mark.parametrize("mode", ["eager", "graph", "dynamic", "xla"])
def test_segment_sums_equal_numpy(n, mode):
    import tensorflow as tf

    from dkm_tf.training.segment import segment_sums

    rng = np.random.default_rng(n)
    ids = rng.integers(0, 7, n).astype(np.int32)
    values = rng.standard_normal(n).astype(np.float32)

    def f(v, i):
        return segment_sums(v, i, 7)

    fn = {"eager": f, "graph": tf.function(f, autograph=False),
          "xla": tf.function(f, jit_compile=True, autograph=False),
          "dynamic": tf.function(f, autograph=False, input_signature=[
              tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int32)])}[mode]
    got = fn(tf.constant(values), tf.constant(ids)).numpy()
    want = np.bincount(ids, weights=values.astype(np.float64), minlength=7)
    assert got.dtype == np.float32 and got.shape == (7,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * (np.abs(values).sum() + 1))
