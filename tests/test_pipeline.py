"""compress(): every method end to end on a tiny digits model."""

import numpy as np
import pytest

import dkm_tf
from dkm_tf import data, models, pipeline


@pytest.fixture(scope="module")
def trained():
    (x_tr, y_tr), (x_te, y_te) = data.load_digits()
    model = models.digits_cnn()
    pipeline.train_classifier(model, (x_tr[:600], y_tr[:600]), epochs=3)
    return model, (x_tr[:600], y_tr[:600]), (x_te[:200], y_te[:200])


def _compress_every_method(trained, method, progress=None):
    model, train, test = trained
    before = [w.copy() for w in model.get_weights()]
    result = dkm_tf.compress(model, train, test, method=method, n_clusters=4, unit="auto",
                             finetune_epochs=1, dkm_epochs=1, verbose=0, progress=progress)
    return before, result


@pytest.fixture(scope="module")
def dkm_finetune_with_progress(trained):
    """test_every_method's dkm+finetune run, with a Progress on a buffer: one compress for
    test_every_method[dkm+finetune] and test_progress_shows_every_stage."""
    import io

    from dkm_tf.progress import Progress

    buf = io.StringIO()  # no heartbeat line: a loaded machine can take 15 s over a stage
    before, result = _compress_every_method(trained, "dkm+finetune",
                                            Progress(stream=buf, tty=False, heartbeat_s=3600))
    return before, result, buf.getvalue().splitlines()


@pytest.mark.parametrize("method", pipeline.METHODS)
def test_every_method(trained, method, request):
    model, _, _ = trained
    if method == "dkm+finetune":
        before, result, _ = request.getfixturevalue("dkm_finetune_with_progress")
    else:
        before, result = _compress_every_method(trained, method)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the input model is never modified
    assert result.method == method
    assert {p.layer_name for p in result.palettes} == {"conv1", "conv2", "fc1", "fc2"}
    for p in result.palettes:
        kernel = getattr(result.model.get_layer(p.layer_name), p.weight_name).numpy()
        np.testing.assert_array_equal(kernel, p.decode())
        assert p.n_clusters <= 4
    by = {p.layer_name: p for p in result.palettes}
    assert by["conv1"].unit_dim == 3 and by["fc1"].unit_dim == 1
    assert 0 <= result.accuracy_after <= 1 and result.accuracy_before > 0.5
    assert result.size.totals["cr_model_log2"] > 5
    assert result.energy is not None and result.energy.reduction.paper > 1
    assert method in result.summary()


def test_bad_arguments(trained):
    model, train, _ = trained
    with pytest.raises(ValueError, match=r"`method`. Expected one of \['wr', 'finetune'"):
        dkm_tf.compress(model, train, method="prune")
    with pytest.raises(ValueError, match="pass `train_data"):
        dkm_tf.compress(model, None, method="finetune")


def test_calibrated_wr_is_share_weights_on_a_seeded_sample(trained):
    model, train, test = trained
    before = [w.copy() for w in model.get_weights()]
    result = dkm_tf.compress(model, train, test, n_clusters=4, weighting="fisher",
                             refine="gptq", calibration_samples=48, seed=3, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert result.method == "wr (weighting=fisher, refine=gptq)"
    assert result.calibration == {"weighting": "fisher", "refine": "gptq", "samples": 48}
    assert result.to_dict()["calibration"] == result.calibration
    x, y = pipeline.calibration_set(train, 48, seed=3)
    direct = dkm_tf.share_weights(model, 4, weighting="fisher", refine="gptq", data=(x, y),
                                  seed=3)
    for a, b in zip(direct.model.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    plain = dkm_tf.compress(model, train, n_clusters=4, seed=3, verbose=0)
    assert plain.method == "wr" and plain.calibration == {}


def test_calibration_set_draws_distinct_samples():
    x, y = np.arange(50.0).reshape(25, 2), np.arange(25)
    cx, cy = pipeline.calibration_set((x, y), 10, seed=1)
    assert len(set(cy)) == 10 and np.all(np.diff(cy) > 0)
    np.testing.assert_array_equal(cx, x[cy])
    assert not np.array_equal(cy, pipeline.calibration_set((x, y), 10, seed=2)[1])
    np.testing.assert_array_equal(pipeline.calibration_set((x, y), 99)[1], y)  # all of them


@pytest.mark.parametrize("kwargs, match", [
    ({"refine": "hessian"}, r"`refine`. Expected one of \[None, 'outputs', 'gptq'\]"),
    ({"weighting": "l2"}, r"`weighting`. Expected one of \[None, 'fisher'\]"),
    ({"refine": "gptq", "calibration_samples": 0}, "`calibration_samples`"),
    ({"refine": "gptq", "method": "finetune"}, r"`refine`. Expected None with "
     r"method='finetune'"),
    ({"weighting": "fisher", "train": None}, r"`train_data`. Expected an \(x, y\) pair"),
    ({"refine": "gptq", "unit": "kernel", "codebook": "shared"},
     r"`refine`. Expected None with unit='kernel'"),
    ({"refine": "outputs", "sparsity": 0.2}, r"`refine`. Expected None with sparsity"),
    ({"weighting": "fisher", "preserve_sparsity": True}, "`weighting`"),
    ({"refine": "outputs", "train": (np.zeros((4, 5, 5, 1)), np.zeros(4))}, "`train_data`"),
])
def test_bad_calibration_arguments_fail_before_any_work(trained, kwargs, match, monkeypatch):
    model, train, test = trained
    train = kwargs.pop("train", train)
    monkeypatch.setattr(pipeline, "evaluate_accuracy", lambda *a: pytest.fail("evaluated"))
    with pytest.raises(ValueError, match=match):
        dkm_tf.compress(model, train, test, n_clusters=4, verbose=0, **kwargs)


@pytest.mark.parametrize("which, labels", [("train_data", 10), ("test_data", -1)])
def test_labels_outside_the_model_outputs_fail_before_any_work(trained, which, labels,
                                                               monkeypatch):
    model, train, test = trained
    bad = (train[0][:8], np.full(8, labels))
    data_ = {"train_data": train, "test_data": test, which: bad}
    monkeypatch.setattr(pipeline, "evaluate_accuracy", lambda *a: pytest.fail("evaluated"))
    with pytest.raises(ValueError, match=rf"`{which}`. Expected class labels in \[0, 9\] "
                       rf"\(the model has 10 outputs\). Received: labels from {labels} to "
                       rf"{labels}"):
        dkm_tf.compress(model, data_["train_data"], data_["test_data"], method="finetune",
                        n_clusters=4, verbose=0)


def test_unlabelled_train_data_calibrates_and_cannot_train(trained, monkeypatch):
    model, train, _ = trained
    result = dkm_tf.compress(model, (train[0], None), n_clusters=4, refine="outputs",
                             calibration_samples=32, seed=1, verbose=0)
    x, y = pipeline.calibration_set((train[0], None), 32, seed=1)
    assert y is None and result.calibration["samples"] == 32
    direct = dkm_tf.share_weights(model, 4, refine="outputs", data=x, seed=1)
    for a, b in zip(direct.model.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(pipeline, "evaluate_accuracy", lambda *a: pytest.fail("evaluated"))
    with pytest.raises(ValueError, match=r"`train_data`. Expected \(x, y\) with labels y for "
                       r"method='finetune'"):
        dkm_tf.compress(model, (train[0], None), method="finetune", n_clusters=4, verbose=0)


def test_fisher_on_an_uncompiled_model_uses_the_cross_entropy_of_its_outputs(trained):
    """A model loaded with compile=False (what the CLI does) has no loss: the fine-tuning
    methods' default (logits here: digits_cnn ends in a linear Dense) is used."""
    import keras

    model, train, _ = trained
    bare = models.digits_cnn()
    bare.set_weights(model.get_weights())
    assert not bare.compiled
    result = dkm_tf.compress(bare, train, n_clusters=4, weighting="fisher",
                             calibration_samples=32, verbose=0)
    x, y = pipeline.calibration_set(train, 32)
    direct = dkm_tf.share_weights(
        bare, 4, weighting="fisher", data=(x, y),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for a, b in zip(direct.model.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_progress_shows_every_stage(trained, dkm_finetune_with_progress):
    _, train, _ = trained
    lines = dkm_finetune_with_progress[2]
    assert [line.split("]")[0] + "]" for line in lines] == ["[dkm]", "[k-means K=4]",
                                                            "[finetune]"]
    steps = -(-len(train[1]) // 64)  # batch_size 64
    assert lines[0].startswith(f"[dkm] {steps}/{steps} batches in ")
    assert lines[1].startswith("[k-means K=4] 4/4 tensors in ")
    assert lines[1].endswith("conv1/kernel, conv2/kernel, fc1/kernel, fc2/kernel")
    assert lines[2].startswith(f"[finetune] {steps}/{steps} batches in ")


def test_tflite_accuracy_matches_keras(trained, tmp_path):
    from dkm_tf.export import to_tflite

    model, _, test = trained
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, format="float", sample_inputs=test[0][:4])
    keras_acc = pipeline.evaluate_accuracy(model, test)
    assert abs(pipeline.tflite_accuracy(path, test) - keras_acc) <= 1 / len(test[1])
    first = pipeline.tflite_accuracy(path, test, max_samples=50, batch_size=7)
    assert first == pipeline.evaluate_accuracy(model, (test[0][:50], test[1][:50]))
