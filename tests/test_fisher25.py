"""Fisher's loss check, class by class (h25-fisher).

``weighting="fisher"`` reads the model's class probabilities off its loss, ``p_c =
exp(-L(c, f(x)))``. It checked only ``sum_c p_c = 1``: a loss that renormalises passed (Keras'
``sparse_categorical_crossentropy`` with from_logits=False behind a lambda, on a logits head,
weighed by the clipped, renormalised logits), and so did a constant loss of log(C) (all-zero
importances) and a from_logits=True loss on a softmax head (the softmax of the
probabilities). Now each ``p_c`` must be the head's own probability (its output, or the
softmax of its logits), on the first sample and on a second, shifted output.
"""

import re
import warnings

import keras
import numpy as np
import pytest
from testing import tf_backend_only

import dkm_tf
from dkm_tf.graph import sensitivity

C = 3
X = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")


def _head(kind, zero=False, seed=0):
    """Dense(3) regression on 5 inputs: ``"logits"`` or ``"softmax"`` output; ``zero``: all
    weights 0 (a uniform output on every sample, as an untrained zero-initialised head)."""
    keras.utils.set_random_seed(seed)
    init = {"kernel_initializer": "zeros", "bias_initializer": "zeros"} if zero else {
        "bias_initializer": keras.initializers.Constant([0.3, -0.2, 0.1])}
    act = "softmax" if kind == "softmax" else None
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(C, activation=act, **init)])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _wrapped(y, p):  # the case of KNOWN_LIMITATIONS: from_logits=False hidden in a lambda
    return keras.losses.sparse_categorical_crossentropy(y, p)


def _constant(y, p):  # -log p_c = log(C) for every class, whatever the model outputs
    return keras.ops.zeros_like(keras.ops.sum(p, axis=-1)) + np.log(C)


def _reported(error):
    """(class, where, exp(-loss), model's value) read from the refusal's message."""
    m = re.search(r"exp\(-loss\) for class (\d+) on (.+?) is ([-\d.e+]+), the model's "
                  r"(?:probabilities|softmax of its logits): ([-\d.e+]+)", str(error))
    assert m, str(error)
    return int(m[1]), m[2], float(m[3]), float(m[4])


def _true_fisher_numpy(x, kernel, bias, probabilities):
    """sum_c p_c (d log p_c / dW)^2 averaged over samples, + mean (damping 1): softmax
    regression, d log p_c / dW = x (e_c - p)^T, p the softmax of x W + b."""
    x = x.astype(np.float64)
    p = _softmax(x @ kernel + bias) if probabilities is None else probabilities
    f = np.zeros_like(kernel)
    for c in range(kernel.shape[1]):
        g = x[:, :, None] * (np.eye(kernel.shape[1])[c] - p)[:, None, :]
        f += (p[:, c, None, None] * g ** 2).mean(0)
    return f + f.mean()


# ------------------------------------------------------------------ refused
@tf_backend_only("TensorFlow's from_logits=False loss renormalises these logits to a sum of 1; "
                 "JAX's clips their negative entries first (refused by the sum check)")
def test_a_renormalising_wrapper_on_logits_is_refused():
    """Keras' from_logits=False on logits: z / sum(z), clipped to [1e-7, 1 - 1e-7]; its p_c
    sum to 1 (the old check passed it) but are not softmax(z)."""
    model = _head("logits")
    z = np.asarray(model(X[:1]), np.float64)[0]
    q = z / z.sum()
    p = np.clip(q / q.sum(), 1e-7, 1 - 1e-7)  # Keras' renormalisation, numpy
    want = _softmax(z)
    assert abs(p.sum() - 1) < 1e-3 and np.abs(p - want).max() > 0.05  # the case
    for call in (lambda: sensitivity.fisher_importance(model, X, _wrapped),
                 lambda: dkm_tf.share_weights(model, 2, weighting="fisher", data=X,
                                              loss=_wrapped),
                 lambda: dkm_tf.cluster_weights(model, 2, weighting="fisher", data=X,
                                                loss=_wrapped)):
        with pytest.raises(ValueError, match=r"Invalid value for argument `loss`\. Expected a "
                                             r"cross-entropy.*softmax of its logits.*"
                                             r"from_logits=True") as e:
            call()
        c, where, got, model_p = _reported(e.value)
        assert c == int(np.argmax(np.abs(p - want))) and where == "sample 0"
        np.testing.assert_allclose([got, model_p], [p[c], want[c]], rtol=1e-4)


@pytest.mark.parametrize("kind", ["logits", "softmax"])
@pytest.mark.parametrize("zero", [False, True])
def test_a_constant_log_c_loss_is_refused(kind, zero):
    """p_c = 1/C for every class: sum 1, gradients 0, all importances 0 (accepted before).
    A zero head outputs 1/C itself at every sample: caught at the shifted second output."""
    model = _head(kind, zero=zero)
    with pytest.raises(ValueError, match=r"argument `loss`") as e:
        sensitivity.fisher_importance(model, X, _constant)
    c, where, got, model_p = _reported(e.value)
    np.testing.assert_allclose(got, 1 / C, rtol=1e-6)
    out = np.asarray(model(X[:1]), np.float64)[0]
    if not zero:
        want = out if kind == "softmax" else _softmax(out)
        assert where == "sample 0"
    else:  # numpy: logits + linspace(0, 2 + log C, C); probabilities: the same from the
        shift = np.linspace(0.0, 2.0 + np.log(C), C)  # softmax's logits (0) where its output
        want = _softmax(out + shift)  # keeps them (TensorFlow, JAX), else mixed half and half
        if kind == "softmax" and not hasattr(model(X[:1]), "_keras_logits"):  # torch
            want = 0.5 * out + 0.5 * _softmax(shift)  # with softmax(shift)
        assert where.startswith("sample 0's output shifted")
    assert c == int(np.argmax(np.abs(1 / C - want)))
    np.testing.assert_allclose(model_p, want[c], rtol=1e-5)


def _normalised_head():
    """Probabilities exp(z) / sum(exp(z)) by plain ops: no Keras softmax (on TensorFlow a
    softmax output keeps its logits, which Keras' cross-entropies read instead)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((5,))
    e = keras.layers.Lambda(keras.ops.exp)(keras.layers.Dense(C, bias_initializer=(
        keras.initializers.Constant([0.3, -0.2, 0.1])))(i))
    return keras.Model(i, keras.layers.Lambda(
        lambda t: t / keras.ops.sum(t, axis=-1, keepdims=True))(e))


def test_from_logits_true_on_probabilities_is_refused():
    """The softmax of the probabilities sums to 1 too (accepted before): not the model's."""
    model = _normalised_head()
    with pytest.raises(ValueError, match=r"argument `loss`.*the model's probabilities.*"
                                         r"'sparse_categorical_crossentropy'") as e:
        sensitivity.fisher_importance(
            model, X, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    c, where, got, model_p = _reported(e.value)
    p = np.asarray(model(X[:1]), np.float64)[0]
    assert where == "sample 0"
    np.testing.assert_allclose([got, model_p], [_softmax(p)[c], p[c]], rtol=1e-4)
    imp = sensitivity.fisher_importance(model, X, "sparse_categorical_crossentropy")
    kernel, bias = (v.numpy().astype(np.float64) for v in model.layers[1].weights)
    np.testing.assert_allclose(imp[id(model.layers[1].kernel)],
                               _true_fisher_numpy(X, kernel, bias, None), rtol=1e-4, atol=1e-9)


@tf_backend_only()
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_keras_logits_of_a_softmax_or_sigmoid_output_are_accepted(activation):
    """On TensorFlow Keras' cross-entropies read a softmax / sigmoid output's logits whatever
    from_logits says: from_logits=True on a softmax head is its true cross-entropy (with
    Keras' warning), and a sigmoid head weighs by the softmax of its logits, as before."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(
        C, activation=activation, bias_initializer=keras.initializers.Constant([0.3, -0.2, 0.1]))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "received `from_logits=True`, but..."
        imp = sensitivity.fisher_importance(
            model, X, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel, bias = (v.numpy().astype(np.float64) for v in model.layers[0].weights)
    np.testing.assert_allclose(imp[id(model.layers[0].kernel)],
                               _true_fisher_numpy(X, kernel, bias, None), rtol=1e-4, atol=1e-9)


@tf_backend_only("TensorFlow's from_logits=False loss renormalises these logits to a sum of 1; "
                 "JAX's clips their negative entries first (refused by the sum check)")
def test_a_wrapper_on_a_bfloat16_logits_head_is_refused():
    model = _bf16_logits_head()
    with pytest.raises(ValueError, match=r"argument `loss`.*softmax of its logits.*to 0\.0156"):
        sensitivity.fisher_importance(model, X, _wrapped)


# ------------------------------------------------------------------ still accepted
@pytest.mark.parametrize("kind, loss", [
    ("softmax", "sparse_categorical_crossentropy"),
    ("softmax", keras.losses.CategoricalCrossentropy()),
    ("logits", keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ("logits", keras.losses.CategoricalCrossentropy(from_logits=True)),
    ("logits", lambda y, p: keras.losses.sparse_categorical_crossentropy(y, p, from_logits=True)),
])
def test_cross_entropies_of_the_output_are_accepted(kind, loss):
    """Named or wrapped, a loss whose exp(-L(c)) is the head's distribution passes; the
    importances are the true Fisher of softmax regression (numpy)."""
    model = _head(kind)
    imp = sensitivity.fisher_importance(model, X, loss)
    kernel, bias = (v.numpy().astype(np.float64) for v in model.layers[0].weights)
    np.testing.assert_allclose(imp[id(model.layers[0].kernel)],
                               _true_fisher_numpy(X, kernel, bias, None), rtol=1e-4, atol=1e-9)


def test_a_zero_head_with_its_cross_entropy_is_accepted():
    """A uniform output (a zero-initialised head) with the right loss passes both points."""
    for kind, loss in (("softmax", "sparse_categorical_crossentropy"),
                       ("logits", keras.losses.SparseCategoricalCrossentropy(from_logits=True))):
        imp = sensitivity.fisher_importance(_head(kind, zero=True), X, loss)
        kernel = np.zeros((5, C))
        np.testing.assert_allclose(list(imp.values())[0],
                                   _true_fisher_numpy(X, kernel, np.zeros(C), None), rtol=1e-5)


def _bf16_logits_head():
    """Dense(3) computing and outputting bfloat16 logits (a mixed_bfloat16 head)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(
        C, dtype="mixed_bfloat16",
        bias_initializer=keras.initializers.Constant([0.3, -0.2, 0.1]))])


def test_a_bfloat16_logits_head_is_accepted():
    model = _bf16_logits_head()
    assert keras.backend.standardize_dtype(model(X).dtype) == "bfloat16"
    imp = sensitivity.fisher_importance(
        model, X, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernel, bias = (v.numpy().astype(np.float64) for v in model.layers[0].weights)
    z = np.asarray(keras.ops.cast(model(X), "float32"), np.float64)  # the rounded logits
    np.testing.assert_allclose(imp[id(model.layers[0].kernel)],
                               _true_fisher_numpy(X, kernel, bias, _softmax(z)), rtol=3e-2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_softmax_head_is_accepted(dtype):
    """Probabilities computed in float32 and stored in float16 / bfloat16: off their own sum
    by up to 2 eps, which a from_logits=False loss renormalises away."""
    import ml_dtypes

    keras.utils.set_random_seed(0)
    i = keras.Input((5,))
    h = keras.layers.Dense(C, bias_initializer=keras.initializers.Constant([0.3, -0.2, 0.1]))(i)
    p = keras.layers.Activation("softmax", dtype="float32")(h)
    model = keras.Model(i, keras.layers.Activation("linear", dtype=dtype)(p))
    stored = np.asarray(keras.ops.cast(model(X), "float32"), np.float64)
    ref = _softmax(X.astype(np.float64) @ model.layers[1].kernel.numpy() + model.layers[1].bias
                   .numpy()).astype(np.float32).astype(getattr(ml_dtypes, dtype, dtype))
    np.testing.assert_array_equal(stored, ref.astype(np.float64))  # rounded as said
    imp = sensitivity.fisher_importance(model, X, "sparse_categorical_crossentropy")
    kernel, bias = (v.numpy().astype(np.float64) for v in model.layers[1].weights)
    np.testing.assert_allclose(imp[id(model.layers[1].kernel)],
                               _true_fisher_numpy(X, kernel, bias, stored), rtol=2e-2)


# ------------------------------------------------------------------ compress / dkm-tf compress
def test_compress_reads_probabilities_of_an_unknown_last_layer(monkeypatch):
    """compress() of a model without a compiled loss weighs by the cross-entropy it reads
    from the output activation: from_logits=True where that is unknown, the Fisher of the
    softmax of probabilities (now refused); the calibration outputs decide instead."""
    from dkm_tf.pipeline_args import fisher_loss

    model = _normalised_head()
    seen = []
    weigh = sensitivity.fisher_importance
    monkeypatch.setattr(sensitivity, "fisher_importance",
                        lambda m, data, loss=None, **k: seen.append(loss) or weigh(m, data,
                                                                                   loss, **k))
    dkm_tf.compress(model, (X, None), method="wr", weighting="fisher", n_clusters=2,
                    calibration_samples=6, verbose=0)
    (loss,) = seen
    assert loss.get_config()["from_logits"] is False  # was True
    assert fisher_loss(model, "fisher", X).get_config()["from_logits"] is False
    assert fisher_loss(_head("logits"), "fisher", X).get_config()["from_logits"] is True


def test_cli_reports_a_loss_that_does_not_fit_as_a_bad_weighting(tmp_path, monkeypatch):
    """dkm-tf compress picks the loss itself: a refusal of it is a bad --weighting (exit 2),
    not a traceback-less "ValueError: ... argument `loss`" (exit 1) about an argument the
    command line does not have. Here the pick is made to be the renormalising wrapper."""
    import io

    from dkm_tf import cli
    from dkm_tf.training import common

    _head("logits").save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=X, x_test=X[:3])
    monkeypatch.setattr(common, "default_loss", lambda model, shape=None, x=None: _wrapped)
    err = io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "m.keras"), "--dataset",
                  str(tmp_path / "d.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "2", "--weighting", "fisher", "--notflite", "--noplots",
                  "--quiet"], stdout=io.StringIO(), stderr=err)
    assert rc == 2, err.getvalue()
    text = err.getvalue()
    assert text.startswith("dkm-tf: error: invalid --weighting: expected none for this model")
    assert "dkm_tf.compress in Python" in text, text  # JAX: refused by the sum check
    assert "exp(-loss) for class" in text or keras.backend.backend() != "tensorflow", text
    assert "received 'fisher'" in text and not (tmp_path / "o" / "report.json").exists()


def test_cli_reports_a_softmax_over_the_batch_as_a_bad_weighting(tmp_path):
    """A Softmax(axis=0) reads as a softmax head (from_logits=False) but outputs 1.0 for
    every class of one sample: refused, with exit 2 (was exit 1, "argument `loss`")."""
    import io

    from dkm_tf import cli

    keras.utils.set_random_seed(0)
    i = keras.Input((5,))
    keras.Model(i, keras.layers.Softmax(axis=0)(keras.layers.Dense(C)(i))).save(
        tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=X, x_test=X[:3])
    err = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras: "a softmax over axis 0 ..."
        rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "m.keras"), "--dataset",
                      str(tmp_path / "d.npz"), "--output_dir", str(tmp_path / "o"),
                      "--n_clusters", "2", "--weighting", "fisher", "--notflite",
                      "--noplots", "--quiet"], stdout=io.StringIO(), stderr=err)
    assert rc == 2, err.getvalue()
    assert "invalid --weighting" in err.getvalue()
    assert "from_logits=False on outputs that are not probabilities" in err.getvalue()
