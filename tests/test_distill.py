"""DistillationLoss against a numpy reference; distillation_targets; serialization."""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.training.distill import DistillationLoss, distillation_targets
from tests.testing import small_cnn


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _reference(onehot, teacher, student, t, alpha):
    hard = -(onehot * _log_softmax(student)).sum(1)
    soft_t = np.exp(_log_softmax(teacher / t))
    soft = -(soft_t * _log_softmax(student / t)).sum(1)
    return np.mean(alpha * hard + (1 - alpha) * t * t * soft)


@pytest.mark.parametrize("t,alpha", [(1.0, 1.0), (4.0, 0.5), (2.5, 0.0)])
def test_loss_matches_numpy_reference(t, alpha):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 16)
    teacher, student = rng.normal(size=(16, 5)) * 3, rng.normal(size=(16, 5)) * 3
    y = np.concatenate([np.eye(5)[labels], teacher], axis=1).astype(np.float32)
    got = float(DistillationLoss(5, temperature=t, alpha=alpha)(y, student.astype(np.float32)))
    np.testing.assert_allclose(got, _reference(np.eye(5)[labels], teacher, student, t, alpha),
                               rtol=1e-5)


def test_targets_compile_fit_and_round_trip(tmp_path):
    teacher = small_cnn()
    x = np.random.default_rng(1).normal(size=(32, 8, 8, 1)).astype(np.float32)
    labels = np.arange(32) % 10
    y = distillation_targets(teacher, x, labels)
    assert y.shape == (32, 20) and np.array_equal(y[:, :10].argmax(1), labels)
    np.testing.assert_allclose(y[:, 10:], np.asarray(teacher(x)), rtol=1e-5, atol=1e-5)
    student = small_cnn(seed=1)
    student.compile("adam", loss=dkm_tf.DistillationLoss(num_classes=10, temperature=3.0))
    out, hist = dkm_tf.dkm_retrain(student, (x, y), n_clusters=4, epochs=1, batch_size=16)
    assert isinstance(out.loss, DistillationLoss) and len(hist.history["loss"]) == 1
    student.fit(x, y, epochs=1, batch_size=16, verbose=0)
    student.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")  # no custom_objects
    assert isinstance(loaded.loss, DistillationLoss)
    assert loaded.loss.get_config()["temperature"] == 3.0


def test_bad_arguments():
    for kwargs, arg in (({"num_classes": 1}, "num_classes"), ({"num_classes": 3,
                        "temperature": 0}, "temperature"), ({"num_classes": 3, "alpha": 1.5},
                                                            "alpha")):
        with pytest.raises(ValueError, match=f"argument `{arg}`"):
            DistillationLoss(**kwargs)
    x = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="argument `labels`"):
        distillation_targets(small_cnn(), x, np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="argument `labels`"):  # one label per sample of x
        distillation_targets(small_cnn(), x, np.array([0, 1, 2]))


def test_integer_labels_in_fit_get_the_width_message():
    """In fit, plain integer labels arrive as shape (None,) (TensorFlow traces the batch
    axis; JAX sees the batch, (8,)): the width check used to skip them and TensorFlow failed
    with a StridedSlice index error."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile("adam", DistillationLoss(num_classes=3))
    x = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`y_true` of DistillationLoss\(num_classes=3\). "
                                         r"Expected width 6.*distillation_targets.*\((None|8),\)"):
        model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)


@pytest.mark.parametrize("how", ["activation", "layer"])
def test_softmax_teacher_gives_its_log_probabilities(how):
    """A teacher that ends in a softmax (keras.applications' default) returned probabilities
    as "logits", and softmax(p / T) is nearly uniform: the soft term taught nothing. Its
    targets are now log p, which softmax-soften exactly as the pre-softmax logits do."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    z = keras.layers.Dense(5, name="logits")(keras.layers.Dense(8, activation="relu")(inp))
    out = (keras.layers.Softmax()(z) if how == "layer" else
           keras.layers.Activation("softmax")(z))
    teacher, logit_model = keras.Model(inp, out), keras.Model(inp, z)
    x = np.random.default_rng(2).normal(size=(16, 6)).astype(np.float32) * 3
    labels = np.arange(16) % 5
    y = distillation_targets(teacher, x, labels)
    ref_logits = np.asarray(logit_model(x), np.float64)
    # the same tempered teacher distribution as from the true logits, at any T
    for t in (1.0, 4.0):
        np.testing.assert_allclose(np.exp(_log_softmax(y[:, 5:] / t)),
                                   np.exp(_log_softmax(ref_logits / t)), atol=1e-5)
    student = np.random.default_rng(3).normal(size=(16, 5)).astype(np.float32)
    got = float(DistillationLoss(5, temperature=4.0)(y, student))
    np.testing.assert_allclose(got, _reference(np.eye(5)[labels], ref_logits, student, 4.0,
                                               0.5), rtol=1e-4)


def test_distillation_accuracy_reads_the_labels_half(tmp_path):
    """Keras' "accuracy" takes the arg-max over [one-hot | teacher logits] (~0 when the teacher
    logits dominate); `DistillationAccuracy` equals a numpy top-1 on the labels."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 64)
    y = np.concatenate([np.eye(10)[labels], 5.0 + rng.normal(size=(64, 10))], 1)
    pred = rng.normal(size=(64, 10)).astype(np.float32)
    pred[:40, :] -= 10.0
    pred[np.arange(40), labels[:40]] = 10.0  # the first 40 right
    metric = dkm_tf.DistillationAccuracy(num_classes=10)
    metric.update_state(y.astype(np.float32), pred)
    assert float(metric.result()) == pytest.approx(np.mean(pred.argmax(1) == labels), abs=1e-7)
    assert float(metric.result()) >= 40 / 64
    keras_acc = keras.metrics.CategoricalAccuracy()
    keras_acc.update_state(y.astype(np.float32), pred)
    assert float(keras_acc.result()) < 0.1  # what "accuracy" showed


@pytest.mark.filterwarnings("ignore:cluster_weights left")  # small_cnn's BatchNormalization
def test_finetune_reports_the_top1_for_a_distillation_loss(tmp_path):
    teacher = small_cnn()
    x = np.random.default_rng(1).normal(size=(48, 8, 8, 1)).astype(np.float32)
    labels = np.asarray(teacher(x)).argmax(1)  # the teacher's own classes: room to be right
    y = distillation_targets(teacher, x, labels)
    student = small_cnn(seed=0)
    student.compile("adam", loss=DistillationLoss(num_classes=10), metrics=["accuracy"])
    out, _, hist = dkm_tf.finetune(student, (x, y), n_clusters=8, epochs=1, batch_size=16)
    assert len(hist.history["accuracy"]) == 1
    got = out.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    want = np.mean(np.asarray(out.predict(x, verbose=0)).argmax(1) == labels)
    assert got == pytest.approx(want, abs=1e-6) and want > 0.5
    out.save(tmp_path / "s.keras")
    loaded = keras.models.load_model(tmp_path / "s.keras")  # no custom_objects
    assert loaded.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] == pytest.approx(got)


@pytest.mark.filterwarnings("ignore:cluster_weights left")  # small_cnn's BatchNormalization
def test_first_evaluate_after_finetune_is_not_mixed_with_training_totals():
    """finetune compiled its model with the metric objects fit had just updated: the first
    evaluate mixed the epoch's totals in (0.740 for a true 0.854 on a probe)."""
    x = np.random.default_rng(1).normal(size=(48, 8, 8, 1)).astype(np.float32)
    model = small_cnn(seed=0)
    y = np.asarray(model(x)).argmax(1)
    out, _, hist = dkm_tf.finetune(model, (x, y), n_clusters=8, epochs=1, batch_size=16,
                                   metrics=[keras.metrics.SparseCategoricalAccuracy("acc")])
    first = out.evaluate(x, y, verbose=0, return_dict=True)["acc"]
    want = np.mean(np.asarray(out.predict(x, verbose=0)).argmax(1) == y)
    assert first == pytest.approx(want, abs=1e-6)
    assert hist.history["acc"][0] != pytest.approx(want, abs=1e-3)  # the totals differ
