"""Session 27 review R1 of ``dkm-tf compress --model`` training a regressor file with its loss.

A regressor of several output values per sample was trained with its "mse" against the one
class id per sample of ``--dataset`` (3 units: a raw ValueError after the k-means step; 64
units at batch 64: broadcast, silently wrong): refused now before any work, except outputs
that are rows of (log-)probabilities (class scores: the cross-entropy and a note, as for a
softmax). An ``.h5`` file compiled with a loss object was refused as custom code, its
built-in metric objects dropped as such; a saved copy's unknown metric was dropped silently."""

import json
import re
import warnings
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf import cli  # noqa: E402
from dkm_tf.cli_args import CliUsageError  # noqa: E402
from dkm_tf.cli_custom import loss_note, train_loss  # noqa: E402
from dkm_tf.core.loss_kind import SETTINGS_KEY  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402
from dkm_tf.training.compile_settings import compile_settings  # noqa: E402

L = keras.layers
ARGS = {"n_clusters": 4, "finetune_epochs": 2, "seed": 0}


def _data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)).astype("float32") > 0).astype("int32")[:, 0]
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=x[:96], y_train=y[:96], x_test=x[96:], y_test=y[96:])
    return path, (x[:96], y[:96]), (x[96:], y[96:])


def _model(units, last=None, **compile_args):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    out = L.Dense(units, name="o")(L.Dense(8, activation="relu", name="h")(inp))
    if last is not None:
        out = last(out)
    model = keras.Model(inp, out)
    if compile_args:
        model.compile(**compile_args)
    return model


def _save(model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 is a legacy format"
        model.save(path)
    return str(path)


def _cli(path, npz, out, **args):
    return cli.run_compress(path, dataset=npz, output_dir=str(out), tflite=False, plots=False,
                            quiet=True, progress=Progress(enabled=False), **{**ARGS, **args})


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(
        a.get_weights(), b.get_weights(), strict=True))


@pytest.mark.parametrize("units", [3, 64])
@pytest.mark.parametrize("method", ["finetune", None])
def test_a_regressor_of_several_values_per_sample_is_refused_before_any_work(
        tmp_path, units, method):
    npz, _, _ = _data(tmp_path)
    path = _save(_model(units, optimizer="adam", loss="mse"), tmp_path / "m.keras")
    default = r" \(the default with a labelled --dataset\)" if method is None else ""
    with pytest.raises(CliUsageError, match=(
            r"invalid --method: expected wr for --model .*, which is a regressor of "
            f"{units} output values per sample by its loss 'mse' \\(--dataset labels are one "
            f"number per sample, not the rows of {units} values it trains on.*received "
            f"'finetune'{default}$")):
        _cli(path, npz, tmp_path / "out", method=method)
    assert not (tmp_path / "out" / "clustered.keras").exists()
    assert _cli(path, npz, tmp_path / "wr", method="wr").model is not None  # wr: no labels


def test_the_multi_label_refusal_says_the_method_was_the_default(tmp_path):
    npz, _, _ = _data(tmp_path)
    model = _model(3, L.Activation("sigmoid"), optimizer="adam", loss="binary_crossentropy")
    path = _save(model, tmp_path / "ml.keras")
    with pytest.raises(CliUsageError, match=r"multi-label \(3 units\).*one class id per "
                       r"sample.*received 'finetune' \(the default with a labelled "
                       r"--dataset\)$"):
        _cli(path, npz, tmp_path / "out")


@pytest.mark.parametrize("units", [3, 64])
def test_probability_rows_compiled_with_mse_train_with_the_cross_entropy_as_before(
        tmp_path, units):
    # a log_softmax's rows are class scores (as a softmax output compiled with "mse"): the
    # cross-entropy of the output and a note, weight-equal to the same model saved
    # uncompiled (bef5bf1: 3 units a ValueError after the k-means step)
    npz, _, _ = _data(tmp_path)
    layer = L.Activation("log_softmax")
    path = _save(_model(units, layer, optimizer="adam", loss="mse"), tmp_path / "m.keras")
    plain = _save(_model(units, layer), tmp_path / "plain.keras")
    result = _cli(path, npz, tmp_path / "out", method="finetune")
    expected = _cli(plain, npz, tmp_path / "out2", method="finetune")
    assert _max_diff(result.model, expected.model) < 1e-6
    said = " ".join(result.notes)
    assert "trains with the cross-entropy of the model's output" in said
    assert "dkm_tf.compress(model, (x, one-hot y), ...)" in said


def test_the_mse_on_softmax_note_gives_advice_that_runs(tmp_path):
    # "call dkm_tf.compress in Python on the model compiled with it" crashed there ([64] vs
    # [64,2]): it takes one-hot training labels
    _, train, test = _data(tmp_path)
    model = _model(2, L.Activation("softmax"), optimizer="adam", loss="mse")
    path = _save(model, tmp_path / "m.keras")
    note = loss_note(path, "finetune", None, keras.models.load_model(path, compile=False))
    assert "dkm_tf.compress(model, (x, one-hot y), ...)" in note
    assert "held-out labels stay class ids" in note
    onehot = np.eye(2, dtype="float32")[train[1]]
    result = dkm_tf.compress(model, (train[0], onehot), test, method="finetune",
                             progress=Progress(enabled=False), **ARGS)
    assert 0.0 <= result.accuracy_after <= 1.0


@pytest.mark.parametrize("loss", ["MeanSquaredError", "Huber"])
def test_an_h5_file_compiled_with_a_loss_object_trains_with_it(tmp_path, loss):
    # a legacy dict without "module": refused as "custom code" on bef5bf1
    npz, train, test = _data(tmp_path)
    path = _save(_model(1, optimizer="adam", loss=getattr(keras.losses, loss)()),
                 tmp_path / "m.h5")
    result = _cli(path, npz, tmp_path / "out", method="finetune")
    loaded = keras.models.load_model(path, compile=False)
    loaded.compile("adam", getattr(keras.losses, loss)())
    expected = dkm_tf.compress(loaded, train, test, method="finetune",
                               progress=Progress(enabled=False), **ARGS)
    assert _max_diff(result.model, expected.model) < 1e-5
    plain = _cli(_save(_model(1), tmp_path / "p.h5"), npz, tmp_path / "o2", method="finetune")
    assert _max_diff(result.model, plain.model) > 1e-4  # the cross-entropy trains otherwise


def test_an_h5_files_built_in_metric_objects_are_kept(tmp_path):
    # dropped with a "not known here (custom code)" note on bef5bf1
    model = _model(1, optimizer="adam", loss="mse", metrics=[
        keras.metrics.MeanAbsoluteError(), keras.metrics.RootMeanSquaredError()])
    path = _save(model, tmp_path / "m.h5")
    loaded = keras.models.load_model(path, compile=False)
    assert train_loss(loaded, path, "finetune") == []
    got = loaded._compile_config.config["metrics"]  # noqa: SLF001
    assert [type(m).__name__ for m in got] == ["MeanAbsoluteError", "RootMeanSquaredError"]


def test_a_copys_carried_metric_unknown_here_is_named_in_a_note(tmp_path):
    # restore_source_loss left it out with no word (a compiled file's got a note)
    model = _model(1, optimizer="adam", loss="mse", metrics=["mae"])
    path = _save(dkm_tf.share_weights(model, 4).model, tmp_path / "c.keras")
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    config = json.loads(items["config.json"])
    config["build_config"][SETTINGS_KEY]["metrics"] = ["mae", {
        "module": None, "class_name": "NoSuchMetric", "config": {},
        "registered_name": "nowhere>NoSuchMetric"}]
    items["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in items.items():
            z.writestr(name, data)
    loaded = keras.models.load_model(path, compile=False)
    notes = train_loss(loaded, path, "finetune")
    assert len(notes) == 1 and re.search(r"the metric\(s\) 'nowhere>NoSuchMetric' of .*"
                                          r"--custom_objects", notes[0])
    assert compile_settings(loaded)["metrics"] == ["mae"]  # the known one: kept
    with pytest.warns(UserWarning, match=r"the metric\(s\) 'nowhere>NoSuchMetric' of the "
                      r"model it was copied from are not known here"):
        api_loaded = dkm_tf.load_model(path)  # silent on bef5bf1
    assert compile_settings(api_loaded)["metrics"] == ["mae"]
