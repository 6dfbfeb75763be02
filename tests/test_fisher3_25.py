"""Fisher's loss check on every sample, one-hot losses, many classes (h25-fisher3).

Review R6 of h25-fisher2: the distribution check ran on sample 0 and one shifted output only,
so a loss that clips the logits of confident samples was accepted with importances 25-32 %
off; a correct one-hot cross-entropy written by hand (or Keras' focal loss at gamma=0,
alpha=1) was refused because sparse targets ``[c]`` broadcast against it and summed to 1;
at C ~ 12,000 classes Keras' clipping of each p_c to >= 1e-7 exceeded the fixed tolerances;
one-hot targets were row views of an n x n identity matrix; a float32 model's non-finite
importances were blamed on a float16 softmax.
"""

import keras
import numpy as np
import pytest
from keras import ops

from dkm_tf.graph import sensitivity, sensitivity_loss
from dkm_tf.graph.sensitivity_loss import LossMismatchError
from tests.testing import tf_backend_only

SCCE_LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _linear(n_in, n_classes, seed=0):
    """A logits head ``x @ W + b`` with random W and b."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(n_classes)])
    model.layers[0].bias.assign(np.linspace(-1.0, 1.0, n_classes).astype("float32"))
    return model


def _reference(model, x, damping=1.0):
    """The true Fisher of a linear logits head, in numpy: ``d log p_c / d W_ij = x_i (d_cj -
    p_j)``, so ``sum_c p_c (...)^2 = x_i^2 p_j (1 - p_j)`` (bias: ``p_j (1 - p_j)``)."""
    w, b = (np.asarray(v, np.float64) for v in model.layers[0].get_weights())
    p = _softmax(x.astype(np.float64) @ w + b)
    f_w = np.mean(x.astype(np.float64)[:, :, None] ** 2 * (p * (1 - p))[:, None, :], axis=0)
    f_b = np.mean(p * (1 - p), axis=0)
    return [f + damping * f.mean() for f in (f_w, f_b)]


def test_a_loss_that_clips_the_logits_of_later_samples_is_refused_naming_the_sample():
    """Accepted before (sample 0's logits lie inside the clip; the shifted output too): the
    clipped loss's distribution differs from the model's on the confident samples."""
    model = _linear(6, 10)
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    x[1:] *= 30.0  # confident samples: logits spread far beyond the clip
    z = np.asarray(model(x), np.float64)
    shifted = z[0] + np.linspace(0.0, 2.0 + np.log(10), 10)  # the check's second point
    a = float(np.abs(np.concatenate([z[0], shifted])).max()) + 0.5  # neither is clipped
    moved = np.abs(_softmax(np.clip(z, -a, a)) - _softmax(z)).sum(-1)
    assert moved[0] < 1e-12 and moved[1:].max() > 0.05, moved  # the loss is wrong there

    def clipped(y, p):
        return keras.losses.sparse_categorical_crossentropy(y, ops.clip(p, -a, a),
                                                            from_logits=True)

    first = int(np.argmax(moved > 2e-3))
    with pytest.raises(LossMismatchError, match=rf"argument `loss`.*exp\(-loss\) for class "
                                                 rf"\d+ on sample {first} is .*the model's "
                                                 r"softmax of its logits: "):
        sensitivity.fisher_importance(model, x, clipped)


@pytest.mark.parametrize("name", ["one-hot by hand", "focal gamma=0 alpha=1"])
def test_correct_one_hot_cross_entropies_are_accepted(name):
    """Refused before: sparse targets [c] broadcast against a one-hot loss, summed to ~1 and
    failed the distribution check, and one-hot targets were never tried."""
    loss = {"one-hot by hand": lambda y, z: -ops.sum(ops.cast(y, "float32")
                                                     * ops.log_softmax(z), axis=-1),
            "focal gamma=0 alpha=1": keras.losses.CategoricalFocalCrossentropy(
                alpha=1.0, gamma=0.0, from_logits=True)}[name]
    model = _linear(5, 4)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    imp = sensitivity.fisher_importance(model, x, loss)
    np.testing.assert_allclose(imp[id(model.layers[0].kernel)], _reference(model, x)[0],
                               rtol=1e-5, atol=0)


def test_a_loss_that_fits_neither_format_reports_the_sparse_misfit():
    """A tempered sparse cross-entropy sums to 1 but is not the model's distribution: the
    first error (sparse labels, the distribution) is raised, not a sum message."""
    model = _linear(5, 4)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype("float32")

    def tempered(y, z):
        return keras.losses.sparse_categorical_crossentropy(y, z / 2.0, from_logits=True)

    with pytest.raises(LossMismatchError, match=r"argument `loss`.*on sample 0 is "):
        sensitivity.fisher_importance(model, x, tempered)


def test_one_hot_targets_do_not_keep_an_identity_matrix_alive():
    """np.eye(n)[c:c+1] kept the n x n matrix per row: 4 n^3 bytes, 4.5 GB at n = 1000."""
    model = _linear(5, 7)
    pred = model(np.ones((1, 5), "float32"))
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    targets = sensitivity_loss.class_targets(model, loss, None, pred, keras)[0]
    assert len(targets) == 7
    for c, t in enumerate(targets):
        assert t.base is None and t.shape == (1, 7) and t.dtype == np.float32
        np.testing.assert_array_equal(t[0], np.eye(7)[c])


@tf_backend_only()
def test_a_correct_loss_on_a_confident_12000_class_probability_head_is_accepted():
    """Refused before: without kept logits, TensorFlow's loss clips each p_c to >= 1e-7 and
    renormalises, moving ~ 2 C 1e-7 = 2.4e-3 of the distribution at C = 12,000."""
    n = 12000
    inp = keras.Input((8,))
    dense = keras.layers.Dense(n)
    out = keras.layers.Lambda(lambda z: ops.exp(z - ops.max(z, -1, keepdims=True)) / ops.sum(
        ops.exp(z - ops.max(z, -1, keepdims=True)), -1, keepdims=True))(dense(inp))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    dense.kernel.assign(rng.normal(size=(8, n)).astype("float32") * 3.0)
    x = rng.normal(size=(1, 8)).astype("float32")
    pred = model(x)
    q = np.asarray(pred, np.float64)[0]
    clipped = np.clip(q, 1e-7, 1.0)
    moved = np.abs(clipped / clipped.sum() - q).sum()
    assert q.max() > 0.99 and 1.5e-3 < moved < 2 * n * 1e-7, (q.max(), moved)
    loss = keras.losses.get("sparse_categorical_crossentropy")
    found = sensitivity_loss.class_targets(model, loss, x, pred, keras)
    assert len(found[0]) == n and found[1] == sensitivity_loss.SUM_TOL


def test_check_distribution_allows_twice_the_clipped_mass_only():
    """``tol + 2 C eps``: a clipped, renormalised copy of q passes, a 1 % move does not."""
    n = 12000
    q = _softmax(np.concatenate([np.zeros(n - 1), [40.0]]))  # the others ~ 4e-18
    clipped = np.clip(q, 1e-7, 1.0)
    p = clipped / clipped.sum()
    assert sensitivity_loss.distance(p, q) > sensitivity_loss.SUM_TOL + n * 1e-7
    model = _linear(2, 3)
    sensitivity_loss.check_distribution(model, p, [q], sensitivity_loss.SUM_TOL, "sample 3",
                                        True, keras)
    with pytest.raises(LossMismatchError, match=r"argument `loss`.*on sample 3 is"):
        sensitivity_loss.check_distribution(model, 0.99 * q + 0.01 / n, [q],
                                            sensitivity_loss.SUM_TOL, "sample 3", True, keras)


def test_non_finite_importances_of_a_float32_model_do_not_blame_float16():
    """A float32 model whose gradients overflow float32 (weights 1e20 times inputs 1e20,
    logits ~ 1e10): the refusal named a saturating float16 softmax whatever the dtype."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False),
                              keras.layers.Dense(3, use_bias=False)])
    model.layers[0].kernel.assign(rng.normal(size=(4, 3)).astype("float32") * 1e-30)
    model.layers[1].kernel.assign(rng.normal(size=(3, 3)).astype("float32") * 1e20)
    x = (rng.normal(size=(2, 4)) * 1e20).astype("float32")
    assert np.all(np.isfinite(np.asarray(model(x))))
    with pytest.raises(ValueError, match=r"argument `weighting`.*gradients that overflow "
                                         r"float32.*NaN or infinite importances") as info:
        sensitivity.fisher_importance(model, x, SCCE_LOGITS)
    assert "float16" not in str(info.value), str(info.value)


_JAX_12000 = """
import keras, numpy as np
from keras import ops
from dkm_tf.graph import sensitivity_loss
n = 12000
inp = keras.Input((8,))
dense = keras.layers.Dense(n)
out = keras.layers.Lambda(lambda z: ops.exp(z - ops.max(z, -1, keepdims=True)) / ops.sum(
    ops.exp(z - ops.max(z, -1, keepdims=True)), -1, keepdims=True))(dense(inp))
model = keras.Model(inp, out)
rng = np.random.default_rng(0)
dense.kernel.assign(rng.normal(size=(8, n)).astype("float32") * 3.0)
x = rng.normal(size=(1, 8)).astype("float32")
pred = model(x)
assert float(np.asarray(pred).max()) > 0.99
loss = keras.losses.get("sparse_categorical_crossentropy")
print("targets", len(sensitivity_loss.class_targets(model, loss, x, pred, keras)[0]))
"""


def test_a_correct_loss_on_a_confident_12000_class_head_is_accepted_on_jax():
    """Refused before on JAX: its loss clips each p_c up to 1e-7 (sum_c exp(-loss) = 1.00117
    at C = 12,000, over the fixed 1e-3). A KERAS_BACKEND=jax subprocess (~20 s here)."""
    import importlib.util
    import pathlib
    import subprocess
    import sys

    from tests._jax_env24e import jax_env

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    root = pathlib.Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-c", _JAX_12000], cwd=root, capture_output=True,
                          text=True, timeout=600,
                          env=jax_env(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(root)))
    assert proc.returncode == 0 and "targets 12000" in proc.stdout, proc.stderr[-2000:]
