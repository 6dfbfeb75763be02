"""dkm-tf compress / dkm_tf.compress on a model with several outputs (a detector's box head
and face-probability head): no single arg-max, so no accuracy, said in a note, never a crash;
the training methods, which need one array of class labels, are refused before any work."""

import io
import json

import numpy as np
import pytest

from dkm_tf import cli, pipeline


def _two_heads():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten(name="flat")(h)
    box = keras.layers.Dense(4, name="box")(h)
    prob = keras.layers.Dense(2, activation="softmax", name="prob")(h)
    return keras.Model(inp, [box, prob], name="two_heads")


def _data(n_train=48, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, n_train + n_test)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


@pytest.fixture
def files(tmp_path):
    """The saved two-output model, a labelled .npz and an unlabelled one."""
    path = tmp_path / "two_heads.keras"
    _two_heads().save(path)
    (x_tr, y_tr), (x_te, y_te) = _data()
    labelled, unlabelled = tmp_path / "faces.npz", tmp_path / "x.npz"
    np.savez(labelled, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    np.savez(unlabelled, x_train=x_tr, x_test=x_te)
    return str(path), str(labelled), str(unlabelled)


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--noplots", "--quiet", *args], stdout=out, stderr=err)
    return rc, err.getvalue()


def _kernels_hold_codebook_values(result, n_clusters):
    for p in result.palettes:
        kernel = np.asarray(getattr(result.model.get_layer(p.layer_name), p.weight_name))
        values = np.unique(kernel)
        assert values.size <= n_clusters, p.layer_name
        assert np.isin(values, np.asarray(p.codebook, kernel.dtype)).all(), p.layer_name


def test_predicted_classes_of_several_heads_is_none_of_one_head_its_argmax():
    rng = np.random.default_rng(1)
    box, prob = rng.random((5, 4)), rng.random((5, 2))
    assert pipeline.predicted_classes([box, prob], 5) is None
    assert pipeline.predicted_classes((box, prob), 5) is None
    assert pipeline.predicted_classes({"box": box, "prob": prob}, 5) is None
    np.testing.assert_array_equal(pipeline.predicted_classes([prob], 5), prob.argmax(1))
    # a plain list of rows is still one output of class scores
    np.testing.assert_array_equal(pipeline.predicted_classes(prob.tolist(), 5), prob.argmax(1))


def test_labelled_npz_with_wr_runs_without_accuracy_and_says_why(files, tmp_path):
    model, labelled, _ = files
    out = tmp_path / "out"
    rc, err = _run("--model", model, "--dataset", labelled, "--method", "wr",
                   "--n_clusters", "4", "--output_dir", str(out))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_before"] is None and report["accuracy_after"] is None
    assert report["notes"] == ["no test accuracy: the model has 2 outputs (box, prob): top-1 "
                               "accuracy needs a single-output classifier"]
    # the files were exported and verified; no accuracy of the box head passed off as one
    assert set(report["tflite"]) == {"float", "int8", "palettized", "palettized_per_invoke"}
    assert not any("test_accuracy" in v for v in report["tflite"].values())
    (_, _), test = _data()
    assert pipeline.tflite_accuracy(str(out / "clustered.float.tflite"), test) is None


@pytest.mark.parametrize("method", [["--method", "finetune"], ["--method", "dkm"], []])
def test_training_method_with_labels_is_refused_before_any_work(files, tmp_path, monkeypatch,
                                                                 method):
    model, labelled, _ = files
    monkeypatch.setattr(pipeline, "compress", lambda *a, **k: pytest.fail("compressed"))
    out = tmp_path / "out"
    rc, err = _run("--model", model, "--dataset", labelled, *method, "--output_dir", str(out))
    assert rc == 2, err
    name = method[1] if method else "finetune"  # the default with a labelled --dataset
    assert err.count("\n") == 1 and err.startswith(
        f"dkm-tf: error: invalid --method: expected wr for a model with 2 outputs (--method "
        f"{name} trains on the class labels of --dataset {labelled}, which need a "
        "single-output classifier); received"), err
    assert not out.exists()


def test_unlabelled_npz_refine_outputs_calibrates_and_skips_agreement(files, tmp_path,
                                                                       capsys):
    model, _, unlabelled = files
    result = cli.run_compress(model, dataset=unlabelled, n_clusters=4, refine="outputs",
                              calibration_samples=16, tflite=False, plots=False, quiet=True,
                              output_dir=str(tmp_path / "o"))
    printed = capsys.readouterr().out
    why = "the model has 2 outputs (box, prob): top-1 accuracy needs a single-output classifier"
    assert f"[data] x_test: no agreement figure ({why})" in printed
    assert f"note: no agreement with the float model on x_test: {why}" in printed
    assert result.method == "wr (refine=outputs)"
    assert result.calibration == {"refine": "outputs", "samples": 16}
    assert result.accuracy_before is None and result.accuracy_after is None
    assert {p.layer_name for p in result.palettes} == {"conv", "box", "prob"}
    _kernels_hold_codebook_values(result, 4)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["notes"] == [f"no agreement with the float model on x_test: {why}"]
    assert report["calibration"] == {"refine": "outputs", "samples": 16}


def test_python_compress_of_two_heads_gives_no_accuracy_and_a_note():
    model = _two_heads()
    train, test = _data()
    result = pipeline.compress(model, (train[0], None), test, n_clusters=4, refine="outputs",
                               calibration_samples=16, verbose=0)
    assert result.accuracy_before is None and result.accuracy_after is None
    assert result.notes == ["no test accuracy: the model has 2 outputs (box, prob): top-1 "
                            "accuracy needs a single-output classifier"]
    assert "note: no test accuracy: the model has 2 outputs" in result.summary()
    assert result.to_dict()["notes"] == result.notes
    _kernels_hold_codebook_values(result, 4)


def test_python_compress_refuses_to_train_two_heads_on_one_label_array(monkeypatch):
    from dkm_tf.training import finetune

    monkeypatch.setattr(finetune, "finetune", lambda *a, **k: pytest.fail("trained"))
    train, test = _data()
    with pytest.raises(ValueError) as e:
        pipeline.compress(_two_heads(), train, test, method="finetune", verbose=0)
    assert str(e.value) == (
        "Invalid value for argument `train_data`. Expected a single-output classifier for "
        "method='finetune', which trains on the labels y (the model has 2 outputs; "
        "method='wr' trains nothing). Received: one label array y of shape (48,)")
