"""Session 31: a ``.npz`` for a model of several inputs (``--dataset``, ``load_dataset``).

Before, a ``.npz`` held one input array, so ``dkm-tf compress --model`` of a model of several
inputs was refused (exit 2), and ``tflite_accuracy`` of a file of several inputs gave None.
Now the file holds one array per input, keyed ``x_train.<input name>`` /
``x_test.<input name>``, arranged as the model was built (nested lists too); a bad file is a
usage error (exit 2) naming the key, what was expected and what it holds; the ``.tflite``
files of several inputs are fed by their signature keys (the Keras input names) and scored.
"""

import io
import json

import keras
import numpy as np
import pytest

from dkm_tf import cli, data
from dkm_tf.data_files import DatasetFileError

L = keras.layers


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--noplots", "--quiet", *args], stdout=out,
                 stderr=err)
    return rc, out.getvalue(), err.getvalue()


def _tok_feat():
    """Embedding tokens (int32, 6 per sample) and 5 dense features, 3 classes."""
    keras.utils.set_random_seed(0)
    tok, feat = keras.Input((6,), dtype="int32", name="tok"), keras.Input((5,), name="feat")
    e = L.GlobalAveragePooling1D()(L.Embedding(20, 8, name="emb")(tok))
    h = L.Concatenate()([e, L.Dense(8, activation="relu", name="df")(feat)])
    return keras.Model([tok, feat], L.Dense(3, name="o")(L.Dense(16, activation="relu",
                                                                     name="h")(h)))


def _nested():
    """Inputs [a, [b, c]] of one shape: only their names tell them apart."""
    keras.utils.set_random_seed(1)
    a, b, c = (keras.Input((4,), name=n) for n in "abc")
    h = L.Concatenate()([L.Dense(6, name=f"d{t.name}")(t) for t in (a, b, c)])
    return keras.Model([a, [b, c]], L.Dense(3, name="o")(L.Activation("relu")(h)))


def _tok_feat_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return {"tok": rng.integers(0, 20, (n, 6)), "feat": rng.normal(size=(n, 5))}


@pytest.fixture(scope="module")
def tok_feat(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokfeat")
    model = _tok_feat()
    train, test = _tok_feat_arrays(64, 0), _tok_feat_arrays(40, 1)
    y = {k: np.argmax(model.predict([v["tok"], v["feat"]], verbose=0), 1)
         for k, v in (("train", train), ("test", test))}
    y["test"][::4] = (y["test"][::4] + 1) % 3  # the float model: 75 % on x_test
    path = tmp / "m.keras"
    model.save(path)
    arrays = {"x_train.feat": train["feat"], "x_train.tok": train["tok"], "y_train": y["train"],
              "x_test.feat": test["feat"], "x_test.tok": test["tok"], "y_test": y["test"]}
    np.savez(tmp / "d.npz", **arrays)
    return tmp, str(path), str(tmp / "d.npz"), arrays


def _signature_run(path, feeds, batch):
    """Outputs of the .tflite at ``path`` fed by signature key, ``batch`` samples per invoke."""
    import tensorflow as tf

    runner = tf.lite.Interpreter(model_path=str(path)).get_signature_runner()
    n = len(next(iter(feeds.values())))
    outs = [runner(**{k: v[i:i + batch] for k, v in feeds.items()})["output_0"]
            for i in range(0, n, batch)]
    return np.concatenate(outs)


def test_load_dataset_of_one_array_per_input_gives_dicts(tok_feat):
    _, _, npz, arrays = tok_feat
    (x, y), (xt, yt) = data.load_dataset(npz)
    assert sorted(x) == sorted(xt) == ["feat", "tok"]
    np.testing.assert_array_equal(x["tok"], arrays["x_train.tok"].astype(np.float32))
    np.testing.assert_array_equal(xt["feat"], arrays["x_test.feat"].astype(np.float32))
    np.testing.assert_array_equal(yt, arrays["y_test"])
    assert x["tok"].dtype == np.float32 and y.dtype == np.int32


def test_compress_two_inputs_keras_and_tflite_match_numpy(tok_feat):
    tmp, model_path, npz, arrays = tok_feat
    out = tmp / "out"
    rc, printed, err = _run("--model", model_path, "--dataset", npz, "--method", "wr",
                            "--n_clusters", "8", "--output_dir", str(out))
    assert rc == 0, err  # was 2: "a .npz holds one input array"
    report = json.loads((out / "report.json").read_text())
    clustered = keras.models.load_model(out / "clustered.keras")
    xt = [arrays["x_test.tok"].astype(np.float32), arrays["x_test.feat"]]
    ref = np.asarray(clustered.predict(xt, verbose=0))
    y = arrays["y_test"]
    assert report["accuracy_after"] == pytest.approx(np.mean(np.argmax(ref, 1) == y), abs=1e-9)
    assert report["accuracy_before"] == pytest.approx(0.75, abs=1e-9)
    feeds = {"tok": arrays["x_test.tok"].astype(np.int32),
             "feat": arrays["x_test.feat"].astype(np.float32)}
    for label, rep in report["tflite"].items():
        outs = {b: _signature_run(rep["path"], feeds, b) for b in (1, 7, 40)}
        if label != "int8":
            for b, got in outs.items():
                assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref)), (label, b)
        for got in outs.values():  # the accuracy printed is the file's own, at any batch
            assert rep["test_accuracy"] == pytest.approx(np.mean(np.argmax(got, 1) == y), abs=1e-9)
    assert "no accuracy" not in printed + err


def test_nested_inputs_are_arranged_by_name_not_by_order(tmp_path):
    model = _nested()
    rng = np.random.default_rng(2)
    x = {n: rng.normal(size=(40, 4)).astype(np.float32) for n in "abc"}
    y = np.argmax(model.predict([x["a"], [x["b"], x["c"]]], verbose=0), 1)
    swapped = np.argmax(model.predict([x["a"], [x["c"], x["b"]]], verbose=0), 1)
    assert np.mean(swapped == y) < 0.8  # an order mix-up would show
    model.save(tmp_path / "n.keras")
    np.savez(tmp_path / "n.npz", **{f"x_train.{k}": v[:24] for k, v in sorted(x.items())[::-1]},
             y_train=y[:24], **{f"x_test.{k}": v[24:] for k, v in x.items()}, y_test=y[24:])
    rc, printed, err = _run("--model", str(tmp_path / "n.keras"), "--dataset",
                            str(tmp_path / "n.npz"), "--method", "wr", "--n_clusters", "16",
                            "--output_dir", str(tmp_path / "out"))
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy_before"] == 1.0  # the labels are the float model's classes
    clustered = keras.models.load_model(tmp_path / "out" / "clustered.keras")
    ref = clustered.predict([x["a"][24:], [x["b"][24:], x["c"][24:]]], verbose=0)
    assert report["accuracy_after"] == pytest.approx(np.mean(np.argmax(ref, 1) == y[24:]))
    for rep in report["tflite"].values():
        got = _signature_run(rep["path"], {k: v[24:] for k, v in x.items()}, 16)
        assert rep["test_accuracy"] == pytest.approx(np.mean(np.argmax(got, 1) == y[24:]))


def _bad(tmp_path, tok_feat, change):
    _, model_path, _, arrays = tok_feat
    arrays = dict(arrays)
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "out"
    rc, printed, err = _run("--model", model_path, "--dataset", str(tmp_path / "bad.npz"),
                            "--method", "wr", "--output_dir", str(out))
    assert rc == 2, err
    assert err.startswith("dkm-tf: error: invalid --dataset") and "[model]" not in printed
    assert not out.exists()
    return " ".join(err.split())


def test_bad_files_are_usage_errors_naming_the_key(tmp_path, tok_feat):
    err = _bad(tmp_path, tok_feat, lambda a: a.pop("x_test.feat"))
    assert "it lacks ['x_test.feat']" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update({"x_test.extra": a["x_test.feat"]}))
    assert "['x_test.extra'] name no input of x_train" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update({"x_train.extra": a["x_train.feat"],
                                                       "x_test.extra": a["x_test.feat"]}))
    assert "one array per input of the model (x_train.tok, x_train.feat)" in err
    assert "['x_train.extra'] name no input of the model" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update({"x_train.feat": a["x_train.feat"][:-1]}))
    assert "x_train.feat with the 64 samples of y_train" in err and "(63, 5)" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update({"x_train.feat": a["x_train.feat"][:, :4],
                                                       "x_test.feat": a["x_test.feat"][:, :4]}))
    assert "x_train.feat of shape (samples, 5) (the model's input feat)" in err
    assert "shape (64, 4)" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update({"x_test.feat": a["x_test.feat"][:, :4]}))
    assert "x_test.feat with the shape per sample of x_train.feat, (5,)" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update(x_train=a["x_train.feat"]))
    assert "not both" in err
    err = _bad(tmp_path, tok_feat, lambda a: a.update(y_test=a["y_test"][:-2]))
    assert "x_test.feat with the 38 samples of y_test" in err


def test_built_in_cnn_refuses_one_array_per_input(tmp_path, tok_feat):
    _, _, npz, _ = tok_feat
    rc, printed, err = _run("--dataset", npz, "--output_dir", str(tmp_path / "out"))
    assert rc == 2 and "one input array x_train for the built-in CNN" in err, err
    assert "[train]" not in printed


def test_check_npz_names_the_key_before_loading(tmp_path):
    np.savez(tmp_path / "u.npz", **{"x_train.a": np.zeros((3, 2)), "x_train.b": np.zeros((4,))})
    with pytest.raises(DatasetFileError, match=r"x_train.b with the 3 samples of x_train.a"):
        data.check_npz(tmp_path / "u.npz")
    np.savez(tmp_path / "v.npz", **{"x_train.a": np.zeros((3, 2)), "x_train.b": np.ones((3,))})
    (x, y), test = data.load_dataset(str(tmp_path / "v.npz"))  # unlabelled, scalar input b
    assert y is None and test is None and x["b"].shape == (3,)


def test_tflite_accuracy_of_two_inputs_by_key(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from dkm_tf.export import to_tflite
    from dkm_tf.pipeline import tflite_accuracy

    model = _nested()
    rng = np.random.default_rng(3)
    x = {n: rng.normal(size=(30, 4)).astype(np.float32) for n in "abc"}
    out = model.predict([x["a"], [x["b"], x["c"]]], verbose=0)
    y = np.argmax(out, 1)
    y[:6] = (y[:6] + 1) % 3
    path = tmp_path / "n.tflite"
    to_tflite(model, str(path), "float", sample_inputs=[x["a"][:4], x["b"][:4], x["c"][:4]])
    for batch in (1, 8, 256):
        assert tflite_accuracy(str(path), (x, y), batch_size=batch) == pytest.approx(0.8)
    notes = []
    assert tflite_accuracy(str(path), ([x["a"], x["b"], x["c"]], y), notes=notes) is None
    assert "x is no dict keyed by them (['a', 'b', 'c']" in notes[0]
    with pytest.raises(ValueError, match=r"Expected x keyed by the file's inputs"):
        tflite_accuracy(str(path), ({"a": x["a"], "b": x["b"]}, y))
    assert tf is not None


def test_calibration_set_of_several_inputs_draws_the_same_samples_of_each():
    from dkm_tf.pipeline import calibration_set

    a = np.arange(20, dtype=np.float32).reshape(10, 2)
    b = np.arange(10, dtype=np.float32)[:, None] * 10 + np.arange(3)  # b row i: 10 i + 0..2
    y = np.arange(10)
    (ca, [cb]), cy = calibration_set(([a, [b]], y), 4, seed=1)
    assert ca.shape == (4, 2) and cb.shape == (4, 3)  # was np.asarray of the list: refused
    np.testing.assert_array_equal(ca[:, 0] / 2, cy)
    np.testing.assert_array_equal(cb[:, 0] / 10, cy)
    x, _ = calibration_set(({"p": a, "q": b}, None), 99)
    np.testing.assert_array_equal(x["q"], b)


def test_fisher_weighting_calibrates_on_every_sample_of_two_inputs(tok_feat):
    tmp, model_path, npz, _ = tok_feat
    rc, printed, err = _run("--model", model_path, "--dataset", npz, "--method", "wr",
                            "--weighting", "fisher", "--notflite", "--n_clusters", "8",
                            "--output_dir", str(tmp / "fisher"))
    assert rc == 0, err
    report = json.loads((tmp / "fisher" / "report.json").read_text())
    assert report["calibration"] == {"weighting": "fisher", "samples": 64}  # len(list): 2
