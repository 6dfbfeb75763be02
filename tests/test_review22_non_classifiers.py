"""Review of session 22's non-classifier detection (``dkm_tf.core.loss_kind``).

- A softmax classifier compiled with ``binary_crossentropy`` or ``mse`` over one-hot labels (a
  common tutorial mistake) was called "multi-label" / "a regressor": its accuracy and
  agreement were dropped (0.926 -> None), distillation refused. A softmax output is a
  classifier whatever its loss.
- ``MeanSquaredError(name="reg_loss")``, ``Huber(name="h2")`` and a one-output loss dict were
  not recognised as regression losses (the arg-max "agreement" stayed).
- ``dkm-tf compress --model reg.keras --dataset labelled.npz`` printed "test accuracy: 21.88%
  before, 25.00% after" for a 3-output mse regressor (its arg-max as the class).
"""

import io
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
from dkm_tf.core.loss_kind import non_class_loss  # noqa: E402


def _model(units, activation, loss, name="out"):
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(i)
    m = keras.Model(i, keras.layers.Dense(units, activation=activation, name=name)(h))
    m.compile("adam", loss)
    return m


@pytest.mark.parametrize("loss", ["binary_crossentropy", "mse", "poisson",
                                  keras.losses.MeanSquaredError()])
def test_a_softmax_output_is_a_classifier_whatever_its_loss(loss):
    assert non_class_loss(_model(3, "softmax", loss)) is None
    i = keras.Input((6,))
    m = keras.Model(i, keras.layers.Softmax()(keras.layers.Dense(3)(i)))
    m.compile("adam", loss)
    assert non_class_loss(m) is None


@pytest.mark.parametrize("loss", [keras.losses.MeanSquaredError(name="reg_loss"),
                                  keras.losses.Huber(name="h2"), {"out": "mse"}])
def test_renamed_and_keyed_regression_losses_are_recognised(loss):
    found = non_class_loss(_model(3, None, loss))
    assert found is not None and found[1] == "a regressor"


def test_cli_gives_a_labelled_regressor_no_test_accuracy(tmp_path):
    from dkm_tf import cli  # noqa: PLC0415

    m = _model(3, None, "mse")
    m.save(tmp_path / "reg.keras")
    x = np.random.default_rng(0).normal(size=(96, 6)).astype("float32")
    y = (np.arange(96) % 3).astype("int64")
    np.savez(tmp_path / "lab.npz", x_train=x[:64], y_train=y[:64], x_test=x[64:],
             y_test=y[64:])
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "reg.keras"), "--dataset",
                  str(tmp_path / "lab.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "4", "--method", "wr", "--noplots", "--quiet",
                  "--notflite"], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["accuracy_before"] is None and report["accuracy_after"] is None
    assert any("no test accuracy" in n and "regressor" in n for n in report["notes"])
    assert "test accuracy:" not in out.getvalue() + err.getvalue()
