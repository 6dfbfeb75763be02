"""Fisher's loss check at many classes, half-precision heads and its refusals (h25-fisher2).

Review R2 of h25-fisher: the class-by-class check used an absolute tolerance per class (1e-3),
so at C = 1000 classes, where every p_c is ~ 1e-3, a wrong distribution fitted; the shifted
second point moved each class < 1e-3 there. A bfloat16 softmax's rows sum to 1 +- 0.003, so
compress read its probabilities as logits; Fisher's "not a classifier" refusals left
``dkm-tf compress`` with exit 1; a saturated float16 head gave NaN importances silently.
"""

import io
import warnings

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.graph import sensitivity

N_CLASSES = 1000
X = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
SCCE_LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _wrapped(y, p):  # Keras' from_logits=False behind a lambda: clips and renormalises logits
    return keras.losses.sparse_categorical_crossentropy(y, p)


def _saturated_float16_head():
    """A float16 softmax head whose p_c ~ 8e-7 is a float16 subnormal, and 8 inputs for it."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(4, activation="softmax", kernel_initializer=(
                                      keras.initializers.RandomNormal(stddev=10.0)))])
    finally:
        keras.config.set_dtype_policy("float32")
    return model, np.random.default_rng(0).normal(size=(8, 5)).astype("float32")


def _compress_with_fisher(tmp_path, model, x):
    """``dkm-tf compress --weighting fisher`` of ``model`` saved, on ``x``: (exit code, stderr)."""
    from dkm_tf import cli

    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=x, x_test=x[:3])
    err = io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "m.keras"), "--dataset",
                  str(tmp_path / "d.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "2", "--weighting", "fisher", "--notflite", "--noplots",
                  "--quiet"], stdout=io.StringIO(), stderr=err)
    return rc, err.getvalue()


def _dense(layers, policy="float32"):
    """A Sequential model on 16 inputs of ``layers()`` made under dtype ``policy``."""
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((16,))] + layers())
    finally:
        keras.config.set_dtype_policy("float32")


def _distance_of_wrapper_at_shift(c):
    """sum_c |p_c - q_c| of the wrapper against softmax at logits s = linspace(0, 2 + log C)
    (a zero head's shifted point), numpy: p = clip(s / sum s), q = softmax(s)."""
    s = np.linspace(0.0, 2.0 + np.log(c), c)
    p = np.clip(s / s.sum(), 1e-7, 1 - 1e-7)
    return np.abs(p - _softmax(s)).sum()


def test_a_wrapper_on_a_zero_1000_class_logits_head_is_refused():
    """Accepted before (each p_c within 1e-3 at C = 1000), importances 100 % wrong."""
    assert _distance_of_wrapper_at_shift(N_CLASSES) > 0.3  # tolerance 1e-3 + 2 C 1e-7
    model = _dense(lambda: [keras.layers.Dense(N_CLASSES, kernel_initializer="zeros")])
    with pytest.raises(ValueError, match=r"argument `loss`.*softmax of its logits.*to "
                                         r"0\.0012 in sum_c.*sample 0's output shifted"):
        sensitivity.fisher_importance(model, X, _wrapped)


def test_from_logits_true_on_a_1000_class_probability_head_is_refused():
    """exp + normalise (no Keras softmax): from_logits=True weighs by softmax(p), ~ uniform."""
    model = _dense(lambda: [keras.layers.Dense(N_CLASSES, kernel_initializer=keras.initializers
                                       .RandomNormal(stddev=0.05)),
                    keras.layers.Lambda(keras.ops.exp),
                    keras.layers.Lambda(lambda t: t / keras.ops.sum(t, -1, keepdims=True))])
    p = np.asarray(model(X[:1]), np.float64)[0]
    assert np.abs(_softmax(p) - p).max() < 1e-3 < np.abs(_softmax(p) - p).sum()  # the case
    with pytest.raises(ValueError, match=r"argument `loss`.*the model's probabilities.*on "
                                         r"sample 0"):
        sensitivity.fisher_importance(model, X, SCCE_LOGITS)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_half_precision_1000_class_softmax_with_from_logits_is_refused(policy):
    """The loss casts the output to float32 (its logits are lost): softmax of probabilities.
    The same head with its own cross-entropy is still accepted."""
    model = _dense(lambda: [keras.layers.Dense(N_CLASSES, activation="softmax", kernel_initializer=(
        keras.initializers.RandomNormal(stddev=0.02)))], policy)
    model.compile("adam", SCCE_LOGITS)
    with warnings.catch_warnings(), pytest.raises(
            ValueError, match=r"argument `loss`.*the model's probabilities"):
        warnings.simplefilter("ignore", UserWarning)  # "received `from_logits=True`, but..."
        sensitivity.fisher_importance(model, X)
    imp = sensitivity.fisher_importance(model, X[:1], "sparse_categorical_crossentropy")
    assert all(np.all(np.isfinite(v)) for v in imp.values())


def test_the_distance_of_correct_float32_losses_is_far_below_the_tolerance():
    """Measured: sum_c |exp(-loss(c)) - softmax_c| <= 3e-7 for C = 2..1000 (float32)."""
    from dkm_tf.graph import sensitivity_loss

    seen = []
    real = sensitivity_loss.distance
    try:
        sensitivity_loss.distance = lambda p, q: seen.append(real(p, q)) or seen[-1]
        for layers, loss in (
                (lambda: [keras.layers.Dense(N_CLASSES, activation="softmax")],
                 "categorical_crossentropy"),
                (lambda: [keras.layers.Dense(N_CLASSES)], SCCE_LOGITS)):
            sensitivity.check_weighting(_dense(layers), "fisher", X, loss)
    finally:
        sensitivity_loss.distance = real
    assert len(seen) >= 4 and max(seen) < 1e-5, seen


# ------------------------------------------------------------------ probabilities, by dtype
def _lambda_softmax(policy, n=10, named=False):
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        i = keras.Input((16,), name="a")
        h = keras.layers.Dense(n, kernel_initializer=keras.initializers.RandomNormal(
            stddev=0.5))(i)
        out = keras.layers.Lambda(lambda t: keras.ops.softmax(t))(h)
        return keras.Model({"a": i} if named else i, out)
    finally:
        keras.config.set_dtype_policy("float32")


def test_a_bfloat16_softmax_is_read_as_probabilities():
    """Its rows sum to 1 +- 0.003 (more than 1e-3): read as logits, the Fisher check then
    refused the loss compress picked, advising --weighting none."""
    from dkm_tf.pipeline_args import fisher_loss

    x = np.random.default_rng(1).normal(size=(64, 16)).astype("float32")
    model = _lambda_softmax("bfloat16")
    rows = np.asarray(keras.ops.cast(model(x[:32]), "float32"), np.float64).sum(-1)
    assert np.abs(rows - 1).max() > 1e-3  # the case
    assert fisher_loss(model, "fisher", x).get_config()["from_logits"] is False
    result = dkm_tf.compress(model, (x, None), method="wr", weighting="fisher", n_clusters=4,
                             calibration_samples=8, verbose=0)
    assert len(np.unique(result.model.layers[1].kernel.numpy())) <= 4


def test_dict_inputs_are_read_as_probabilities():
    from dkm_tf.pipeline_args import fisher_loss

    x = np.random.default_rng(1).normal(size=(40, 16)).astype("float32")
    loss = fisher_loss(_lambda_softmax("float32", named=True), "fisher", {"a": x})
    assert loss.get_config()["from_logits"] is False


# ------------------------------------------------------------------ refusals
def test_non_finite_importances_are_refused_naming_weighting():
    """A saturated float16 softmax: p_c ~ 8e-7 is a float16 subnormal, 1 / p_c overflows in the
    gradient of log p_c and 0 * inf is NaN (share_weights refused it naming no argument)."""
    model, x = _saturated_float16_head()
    match = (r"argument `weighting`.*float16 softmax that saturates.*Activation\('softmax', "
             r"dtype='float32'\).*NaN or infinite importances for .*kernel")
    with pytest.raises(ValueError, match=match):
        sensitivity.fisher_importance(model, x, "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=match):
        dkm_tf.share_weights(model, 2, weighting="fisher", data=x,
                             loss="sparse_categorical_crossentropy")


@pytest.mark.parametrize("kind", ["sigmoid", "timesteps"])
def test_cli_reports_a_model_fisher_cannot_weigh_as_a_bad_weighting(tmp_path, kind):
    """Exit 2 and the flag, as a loss refusal: it was exit 1, "ValueError: ... `weighting`"."""
    keras.utils.set_random_seed(0)
    if kind == "sigmoid":
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1, activation="sigmoid")])
        x = X[:, :5]
    else:
        model = keras.Sequential([keras.Input((4, 5)), keras.layers.Dense(3, activation="softmax")])
        x = np.random.default_rng(0).normal(size=(6, 4, 5)).astype("float32")
    rc, text = _compress_with_fisher(tmp_path, model, x)
    assert rc == 2, text
    assert text.startswith("dkm-tf: error: invalid --weighting: expected none for a model "
                           "that is not a classifier with one output of shape (batch, "
                           "classes)"), text
    assert "received 'fisher with output (1, " in text and "argument `" not in text, text
    assert not (tmp_path / "o" / "report.json").exists()


def test_cli_reports_non_finite_importances_as_a_bad_weighting(tmp_path):
    """The saturated float16 head above, saved and compressed by dkm-tf compress: exit 2."""
    model, x = _saturated_float16_head()
    rc, text = _compress_with_fisher(tmp_path, model, x)
    assert rc == 2, text
    assert text.startswith("dkm-tf: error: invalid --weighting: expected none for model "), text
    assert "float16 softmax that saturates" in text and "NaN or infinite importances" in text
