"""Models that are not softmax classifiers (regressors, multi-label models): no top-1
"agreement" read from a regressor's sign or arg-max, no distillation from a non-classifier
teacher, no int8 refusal of a regressor for its arg-max."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf import pipeline  # noqa: E402


def _model(units, activation=None, loss=None, seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu", name="h")(i)
    m = keras.Model(i, keras.layers.Dense(units, activation=activation, name="o")(h))
    if loss is not None:
        m.compile("adam", loss)
    return m


X = np.random.default_rng(0).normal(size=(24, 6)).astype("float32")


@pytest.mark.parametrize("loss, expected", [
    ("mse", "a regressor"), ("mean_absolute_error", "a regressor"),
    (keras.losses.Huber(), "a regressor"), (keras.losses.MeanSquaredError(), "a regressor"),
    (keras.losses.log_cosh, "a regressor"), ("keras>mse", "a regressor"),
    ("sparse_categorical_crossentropy", None), ("categorical_crossentropy", None)])
def test_non_class_loss_names(loss, expected):
    from dkm_tf.core.loss_kind import non_class_loss

    found = non_class_loss(_model(3), loss)
    assert (found and found[1]) == expected
    if not isinstance(loss, str):  # read from the compiled model too
        found = non_class_loss(_model(3, loss=loss))
        assert (found and found[1]) == expected


def test_non_class_loss_binary_cross_entropy_by_width():
    from dkm_tf.core.loss_kind import non_class_loss

    assert non_class_loss(_model(4, "sigmoid", "binary_crossentropy"))[1] == \
        "multi-label (4 units)"
    assert non_class_loss(_model(1, "sigmoid", "binary_crossentropy")) is None  # binary
    assert non_class_loss(_model(3)) is None  # not compiled: unknown


@pytest.mark.parametrize("units, activation, loss", [
    (1, None, "mse"), (3, None, "mae"), (4, "sigmoid", "binary_crossentropy")])
@pytest.mark.parametrize("n", [1, 5])
def test_no_agreement_for_a_regressor_or_multi_label(units, activation, loss, n):
    m = _model(units, activation, loss)
    assert pipeline.float_predictions(m, X[:n]) is None
    assert pipeline.agreement_data(m, X[:n]) == (None, None)
    assert repr(loss) in pipeline.accuracy_note(m)
    ints = np.zeros((n,), np.int64)  # whole-number targets of a regressor: no accuracy
    assert pipeline.evaluate_accuracy(m, (X[:n], ints)) is None
    plain = _model(units, activation)  # a file loaded with compile=False: its loss by name
    assert pipeline.agreement_data(plain, X[:n], loss=loss) == (None, None)
    assert repr(loss) in pipeline.accuracy_note(plain, loss)


def test_classifiers_keep_their_agreement():
    for m in (_model(3, "softmax", "sparse_categorical_crossentropy"), _model(3),
              _model(1, "sigmoid", "binary_crossentropy"),
              _model(3, None, keras.losses.SparseCategoricalCrossentropy(from_logits=True))):
        (x, labels), note = pipeline.agreement_data(m, X)
        ref = m.predict(X, verbose=0)
        want = (ref[:, 0] > 0.5).astype(int) if ref.shape[1] == 1 else ref.argmax(1)
        np.testing.assert_array_equal(labels, want)
        assert note is None


def test_compress_regressor_has_no_agreement_before():
    m = _model(1, None, "mse")
    y = X[:, :1] * 2.0
    r = dkm_tf.compress(m, (X, y), (X[:8], None), n_clusters=4, verbose=0)
    assert r.accuracy_before is None and r.accuracy_after is None  # was 1.0 and 0.94
    assert any("'mse'" in n and "regressor" in n for n in r.notes)


@pytest.mark.parametrize("teacher, why", [
    (lambda: _model(3, None, "mse"), "'mse': a regressor"),
    (lambda: _model(4, "sigmoid", "binary_crossentropy"), "multi-label"),
    (lambda: _model(1, "sigmoid"), "sigmoid"), (lambda: _model(4, "sigmoid"), "sigmoid")])
def test_distillation_targets_refuse_non_classifier_teachers(teacher, why):
    with pytest.raises(ValueError, match=f"argument `teacher`.*{why}"):
        dkm_tf.distillation_targets(teacher(), X, np.zeros(len(X), np.int64))


def test_distillation_targets_refuse_a_two_head_teacher():
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(i)
    m = keras.Model(i, [keras.layers.Dense(3, activation="softmax", name="cls")(h),
                        keras.layers.Dense(1, name="reg")(h)])
    with pytest.raises(ValueError, match=r"argument `teacher`.*2 outputs \(cls, reg\)"):
        dkm_tf.distillation_targets(m, X, np.arange(len(X)) % 3)  # was numpy's ValueError


def test_distillation_targets_of_a_classifier_unchanged():
    m = _model(3, "softmax", "sparse_categorical_crossentropy")
    labels = np.arange(len(X)) % 3
    t = dkm_tf.distillation_targets(m, X, labels)
    np.testing.assert_allclose(t[:, 3:], np.log(m.predict(X, verbose=0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t[:, :3], np.eye(3)[labels])


def test_int8_regressor_not_refused_for_its_arg_max(tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input((8,))
    h = keras.layers.Dense(64, activation="relu")(i)
    tied = keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(0.05))(h)
    noise = keras.layers.Dense(3, use_bias=False, kernel_initializer=(
        keras.initializers.RandomNormal(stddev=1e-3)))(h)
    m = keras.Model(i, keras.layers.Add()([tied, noise]))  # 3 near-equal regression outputs
    m.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    rep = dkm_tf.export.to_tflite(m, tmp_path / "r.tflite", format="int8", sample_inputs=x,
                                  int8_mode="full", representative_data=x)
    assert all(c.rel_error < 0.05 for c in rep.comparisons)  # a faithful file
    assert any("no top-1 check" in n and "'mse'" in n for n in rep.notes)
