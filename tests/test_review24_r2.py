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


def test_api_notes_speak_to_an_api_user():
    """The granularity note pointed a Python user to --overrides and report.json; the energy
    note said "give data" to a caller who gave data as a list of inputs (its size not read)."""
    from test_notes24a import _model

    import dkm_tf
    from dkm_tf.pipeline_report import estimate_energy

    result = dkm_tf.compress(_model(), method="wr", n_clusters=4, verbose=0)
    (note,) = [n for n in result.notes if "another granularity" in n]
    assert "--overrides" not in note and "`overrides`" in note and "result.size.rows" in note
    model = _model(open_size=True)
    x = np.random.default_rng(1).normal(size=(4, 7, 7, 2)).astype(np.float32)
    result = dkm_tf.compress(model, method="wr", n_clusters=4, verbose=0)  # no data
    (why,) = [n for n in result.notes if n.startswith("energy not estimated: ")]
    assert why.endswith("give data whose inputs have the size")
    notes = []  # data whose size is not read: a model's inputs as a list (several inputs)
    assert estimate_energy(result.model, result.palettes, notes,
                           (([x, x], np.array([0, 1, 2, 0])), None)) is None
    (why,) = notes
    assert "could not be read from the data" in why and "input_shape=" in why


def test_calibration_samples_without_weighting_or_refine_is_refused(capsys):
    """It was accepted and unused (review R2); the default 256 stays accepted."""
    from test_notes24a import _model

    import dkm_tf
    from dkm_tf import cli

    with pytest.raises(ValueError, match=r"argument `calibration_samples`.*256 \(the default\) "
                                         r"unless weighting or refine.*Received: "
                                         r"calibration_samples=64"):
        dkm_tf.compress(_model(), method="wr", n_clusters=4, calibration_samples=64, verbose=0)
    assert dkm_tf.compress(_model(), method="wr", n_clusters=4, calibration_samples=256,
                           verbose=0).palettes
    capsys.readouterr()
    assert cli.run(["dkm-tf", "compress", "--calibration_samples", "64", "--notflite"]) == 2
    err = capsys.readouterr().err
    assert "--calibration_samples" in err and "unless --weighting or --refine" in err, err


def test_label_smoothing_is_not_let_through_by_a_bfloat16_head():
    """Review R4: CategoricalCrossentropy(label_smoothing=0.02) is refused on a float32 head
    (sum_c exp(-L(c)) = 0.99) and was accepted on a bfloat16 one (its 2 eps tolerance)."""
    model = _bf16_head([-0.62, 0.78, 0.18])
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    import functools

    for loss in (keras.losses.CategoricalCrossentropy(label_smoothing=0.02),
                 functools.partial(keras.losses.categorical_crossentropy,
                                   label_smoothing=0.02)):  # review R6: a function too
        with pytest.raises(ValueError, match=r"argument `loss`.*sum_c exp\(-loss\) = 0\.99"):
            sensitivity.fisher_importance(model, x, loss)


def test_energy_reads_the_input_size_of_tensor_data():
    """Review R4: (tf.constant(x), y) read as "not one array": energy not estimated."""
    import tensorflow as tf
    from test_notes24a import _model

    import dkm_tf
    from dkm_tf.pipeline_report import estimate_energy

    model = _model(open_size=True)
    result = dkm_tf.compress(model, method="wr", n_clusters=4, verbose=0)
    x = np.random.default_rng(1).normal(size=(4, 7, 7, 2)).astype(np.float32)
    notes = []
    assert estimate_energy(result.model, result.palettes, notes,
                           ((tf.constant(x), tf.constant([0, 1, 2, 0])), None)) is not None
    assert notes and notes[0].startswith("energy estimated at the data's input size (7, 7, 2)")
