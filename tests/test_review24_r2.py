"""Review R2 of the twenty-fourth session, and what it led to."""

import keras
import numpy as np
import pytest

from dkm_tf.graph import sensitivity


def _bf16_head(bias):
    """Constant class probabilities softmax(bias), computed in float32, then stored in
    bfloat16 (a mixed-precision head): their sum is 1 only to bfloat16's rounding."""
    i = keras.Input((4,))
    h = keras.layers.Dense(3, kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(bias))(i)
    p = keras.layers.Activation("softmax", dtype="float32")(h)
    return keras.Model(i, keras.layers.Activation("linear", dtype="bfloat16")(p))


def test_fisher_takes_a_bfloat16_softmax_rounded_off_one():
    """A bfloat16 softmax head summed to 1.0019 (TF_ENABLE_ONEDNN_OPTS=0) and Fisher refused
    it as "not probabilities": the sum's tolerance was float32's 1e-3 for any dtype."""
    import ml_dtypes

    bias = [-0.62, 0.78, 0.18]
    p = np.exp(bias) / np.sum(np.exp(bias))
    stored = p.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    assert 1e-3 < stored.sum() - 1.0 < 2 * 2.0 ** -7  # the case: off by 0.0029
    model = _bf16_head(bias)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x), np.float64)[0], stored, rtol=0, atol=0)
    imp = sensitivity.fisher_importance(model, x, "sparse_categorical_crossentropy")
    # d(-log p_c)/d kernel[j, k] = x_j (onehot(c) - p)_k; true Fisher: the mean over samples
    # of x_j^2 sum_c p_c (onehot(c) - p)_k^2, + damping x its mean (p: the stored values,
    # to bfloat16's rounding of the gradient's p_c / q_c)
    g2 = sum(stored[c] * (np.eye(3)[c] - stored) ** 2 for c in range(3))
    f = np.mean(x.astype(np.float64) ** 2, axis=0)[:, None] * g2[None, :]
    want = f + sensitivity.DAMPING * f.mean()
    np.testing.assert_allclose(imp[id(model.layers[1].kernel)], want, rtol=2e-2)
    assert sensitivity.sum_tolerance(model(x)) == 2 * 2.0 ** -7
    assert sensitivity.sum_tolerance(keras.ops.ones((1, 3))) == sensitivity.SUM_TOL


def test_a_float32_output_off_one_is_still_refused():
    i = keras.Input((4,))
    out = keras.layers.Dense(3, activation="sigmoid")(i)  # not probabilities: sum != 1
    with pytest.raises(ValueError, match="argument `loss`"):
        sensitivity.fisher_importance(keras.Model(i, out), np.ones((2, 4), "float32"),
                                      "sparse_categorical_crossentropy")
