"""Regressors through compress() and dkm-tf compress: no "agreement with the float model"
after compression either."""

import io
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402


def _regressor(units=1, seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu", name="h")(i)
    m = keras.Model(i, keras.layers.Dense(units, name="o")(h))
    m.compile("adam", "mse")
    return m


X = np.random.default_rng(0).normal(size=(48, 6)).astype("float32")


def test_compress_regressor_with_whole_number_targets_has_no_accuracy_after():
    # targets 0 / 1 of an "mse" regressor: accuracy_before None (compiled with "mse"), but
    # accuracy_after was the clustered copy's (which lost the loss): its sign read as a class
    y = (np.arange(len(X)) % 2).astype("float32")
    r = dkm_tf.compress(_regressor(), (X, None), (X[:16], y[:16]), n_clusters=4, verbose=0)
    assert r.accuracy_before is None and r.accuracy_after is None
    assert any("'mse'" in n for n in r.notes)


def test_cli_regressor_file_reports_no_agreement(tmp_path):
    from dkm_tf import cli

    _regressor(3).save(tmp_path / "reg.keras")
    np.savez(tmp_path / "reg.npz", x_train=X[:32], x_test=X[32:])
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "reg.keras"), "--dataset",
                  str(tmp_path / "reg.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "4", "--notflite", "--noplots", "--quiet"],
                 stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    # before: accuracy_before 1.0, accuracy_after 0.77 "agreement" (the arg-max of 3 outputs)
    assert report["accuracy_before"] is None and report["accuracy_after"] is None
    assert any("'mse'" in n and "regressor" in n for n in report["notes"])


def test_cli_refuses_fisher_weighting_of_a_regressor_file(tmp_path):
    from dkm_tf import cli

    _regressor(3).save(tmp_path / "reg.keras")
    np.savez(tmp_path / "reg.npz", x_train=X[:32], x_test=X[32:])
    out, err = io.StringIO(), io.StringIO()
    # before: weighted by the Fisher of a softmax over the 3 regression outputs (with a note
    # pointing to compress() in Python, which refuses weighting='fisher' for this model)
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "reg.keras"), "--dataset",
                  str(tmp_path / "reg.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "4", "--weighting", "fisher", "--notflite", "--noplots",
                  "--quiet"], stdout=out, stderr=err)
    assert rc == 2
    assert "--weighting" in err.getvalue() and "'mse'" in err.getvalue()
    assert not (tmp_path / "o" / "report.json").exists()


def test_compress_two_heads_dict_labels_named_in_the_refusal():
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(i)
    m = keras.Model(i, [keras.layers.Dense(3, activation="softmax", name="cls")(h),
                        keras.layers.Dense(1, name="reg")(h)])
    m.compile("adam", {"cls": "sparse_categorical_crossentropy", "reg": "mse"})
    y = {"cls": np.arange(len(X)) % 3, "reg": X[:, :1]}
    with pytest.raises(ValueError, match=r"Received: labels for 2 outputs \(cls, reg\) "
                                         r"\(dkm_tf.finetune"):  # was "of shape ()"
        dkm_tf.compress(m, (X, y), method="finetune", n_clusters=4, verbose=0)
