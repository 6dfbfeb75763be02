"""dkm-tf on data without labels and on models that leave their input size open:

- an unlabelled .npz with plain post-training k-means (wr) runs; x_test gives the agreement
  with the float model, as the --dataset help says;
- a fully convolutional model on ``Input((None, None, 3))`` without --dataset is refused
  before any work (the TFLite step needs inputs of the size to export), and exports at the
  size of the --dataset inputs;
- ``dkm-tf energy --input_shape H,W,C`` gives such a model (or a subclassed one) its input
  size, and a missing or wrong one is a usage error naming --input_shape.
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from testing import small_cnn, tf_backend_only

from dkm_tf import cli, cli_args, cli_tables, energy
from dkm_tf.cli_args import CliUsageError, check_compress_args


def _cli(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "dkm_tf.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _run(*args):
    """``dkm-tf ARGS`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    rc = cli.run(["dkm-tf", *args], stdout=io.StringIO(), stderr=err)
    return rc, err.getvalue()


def _fcn(path):
    """A tiny fully convolutional model on Input((None, None, 3)) (as MTCNN's PNet), saved."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    keras.Model(inp, keras.layers.Conv2D(2, 1, name="c2")(h), name="fcn").save(path)
    return str(path)


# --------------------------------------------------------------- (c) unlabelled, plain wr


@pytest.mark.parametrize("method", [[], ["--method", "wr"]])
def test_unlabelled_npz_with_plain_wr_reports_agreement_with_float(tmp_path, capsys, method):
    from dkm_tf import data

    model_path = tmp_path / "m.keras"
    model = small_cnn()
    model.save(model_path)
    (x_tr, _), (x_te, _) = data.load_digits()
    dataset = str(tmp_path / "x.npz")
    np.savez(dataset, x_train=x_tr[:32], x_test=x_te[:40])
    out = tmp_path / "o"
    rc, err = _run("compress", "--model", str(model_path), "--dataset", dataset,
                   "--n_clusters", "2", "--notflite", "--noplots", "--quiet",
                   "--output_dir", str(out), *method)
    assert rc == 0, err
    logged = capsys.readouterr().out
    assert "32 unlabelled samples and 40 held-out inputs of shape (8, 8, 1)" in logged
    assert "x_train not read by k-means without --refine / --weighting" in logged
    assert "agreement with the float model: 100.00% before" in logged
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "wr" and report["calibration"] == {}  # x_train not used
    assert report["metric"] == cli_tables.AGREEMENT and report["accuracy_before"] == 1.0
    import keras

    clustered = keras.models.load_model(out / "clustered.keras", compile=False)
    float_cls = np.argmax(model.predict(x_te[:40], verbose=0), 1)
    agree = np.mean(np.argmax(clustered.predict(x_te[:40], verbose=0), 1) == float_cls)
    assert report["accuracy_after"] == pytest.approx(agree)


def test_unlabelled_npz_without_x_test_and_plain_wr_is_accepted(tmp_path):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    x = tmp_path / "x.npz"
    np.savez(x, x_train=np.zeros((4, 8, 8, 1), np.float32))
    for method in (None, "wr"):
        check_compress_args(str(model), dataset=str(x), method=method,
                            output_dir=str(tmp_path / "o"))
    # the methods that train still need labels, and the message names --method
    with pytest.raises(CliUsageError, match="invalid --method: expected wr with an unlabelled "
                       "--dataset.*'finetune'"):
        check_compress_args(str(model), dataset=str(x), method="finetune",
                            output_dir=str(tmp_path / "o"))


def test_help_says_what_unlabelled_data_does():
    text = " ".join(cli_args.help_text("compress").split())
    assert "without labels, for --method wr: x_train calibrates --refine / --weighting, " \
        "x_test gives agreement with float" in text
    assert "default: wr for --model without a labelled --dataset" in text
    energy_help = cli_args.help_text("energy").splitlines()
    assert sum(line.startswith("  --input_shape STRING: Input size without the batch axis, "
                               "e.g. 12,12,3") for line in energy_help) == 1


# ------------------------------------------------- (d) open input size and the TFLite step


def test_open_input_size_without_dataset_is_refused_before_any_work(tmp_path):
    model = _fcn(tmp_path / "fcn.keras")
    out = tmp_path / "out"
    proc = _cli("compress", "--model", model, "--noplots", "--output_dir", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert "invalid --dataset: expected a .npz whose x_test (or x_train) has the input size " \
        "to export" in line
    assert "(None, None, None, 3)" in line and "--notflite" in line and "received None" in line
    assert "sample_inputs" not in line
    assert not out.exists()  # nothing clustered, nothing written


def test_open_input_size_with_notflite_needs_no_dataset(tmp_path):
    model = _fcn(tmp_path / "fcn.keras")
    out = tmp_path / "out"
    rc, err = _run("compress", "--model", model, "--notflite", "--noplots", "--quiet",
                   "--n_clusters", "4", "--output_dir", str(out))
    assert rc == 0, err
    assert {p.name for p in out.iterdir()} == {"clustered.keras", "clustered.palettes.json",
                                               "report.json"}


@tf_backend_only()
def test_open_input_size_exports_at_the_size_of_the_dataset_inputs(tmp_path):
    model = _fcn(tmp_path / "fcn.keras")
    rng = np.random.default_rng(0)
    dataset = str(tmp_path / "x9.npz")
    np.savez(dataset, x_train=rng.random((16, 9, 9, 3), np.float32),
             x_test=rng.random((8, 9, 9, 3), np.float32))
    out = tmp_path / "out"
    rc, err = _run("compress", "--model", model, "--dataset", dataset, "--n_clusters", "4",
                   "--noplots", "--quiet", "--output_dir", str(out))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert set(report["tflite"]) == set(cli_tables.TARGETS)
    from dkm_tf.export.interpreters import default_interpreters, make_interpreter

    for label in cli_tables.TARGETS:
        path = out / f"clustered.{label}.tflite"
        assert report["tflite"][label]["bytes"] == path.stat().st_size
        assert any("input size fixed at 9x9x3" in n for n in report["tflite"][label]["notes"])
        it = make_interpreter(default_interpreters()[0], path.read_bytes())
        assert list(it.get_input_details()[0]["shape"][1:]) == [9, 9, 3], label
    # the energy is estimated at the data's input size too (the model leaves it open)
    import dkm_tf

    clustered = dkm_tf.load_model(out / "clustered.keras")
    want = energy.estimate(clustered, palettes=dkm_tf.palettes_of(clustered),
                           index_cost="entropy", input_shape=(9, 9, 3))
    assert report["energy"] is not None
    assert report["energy"]["paper_total"] == pytest.approx(want.paper_total, rel=1e-9)


# -------------------------------------------------------------- (e) energy --input_shape


def test_energy_input_shape_equals_the_python_estimate(tmp_path, capsys):
    model = _fcn(tmp_path / "fcn.keras")
    rc, err = _run("energy", "--model", model, "--input_shape", "12,12,3")
    assert rc == 0, err
    printed = capsys.readouterr().out
    report = energy.estimate(model, input_shape=(12, 12, 3))
    assert printed == report.summary() + "\n"
    assert report.layer("c1").macs == 10 * 10 * 4 * 27  # 12x12 -> 10x10 after a 3x3 conv
    assert cli_args.parse_input_shape(" 12, 12,3") == (12, 12, 3)


def test_energy_of_an_open_input_size_without_input_shape_names_the_flag(tmp_path):
    model = _fcn(tmp_path / "fcn.keras")
    proc = _cli("energy", "--model", model)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "invalid --input_shape: expected the input size without the batch axis" in lines[0]
    assert "e.g. 12,12,3" in lines[0] and "dynamic input dimensions" in lines[0]
    assert "input_shape=(" not in lines[0] and proc.stdout == ""


@pytest.mark.parametrize("value", ["12,x,3", "12,0,3", "-1,12,3", "", "12,,3", "(12,12,3)",
                                   "12 12 3"])
def test_bad_input_shape_is_one_line_exit_2(tmp_path, value):
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the flag is checked first")
    rc, err = _run("energy", "--model", str(model), f"--input_shape={value}")
    assert rc == 2, err
    assert err.count("\n") == 1 and "invalid --input_shape: expected positive integers " \
        "separated by commas, without the batch axis (e.g. 12,12,3)" in err
    assert f"received {value!r}" in err


def test_input_shape_is_refused_where_it_would_be_ignored(tmp_path):
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    tfl = tmp_path / "m.tflite"  # a file of fixed size: another --input_shape is refused
    fixed = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3)])
    tfl.write_bytes(tf.lite.TFLiteConverter.from_keras_model(fixed).convert())
    rc, err = _run("energy", "--model", str(tfl), "--input_shape", "12,12,3")
    assert rc == 2 and "invalid --input_shape: expected 6,6,2 or no --input_shape" in err, err
    # a file of open size needs it, and reads its op shapes at that size
    inp = keras.Input((None, None, 2))
    tfl_open = tmp_path / "open.tflite"
    tfl_open.write_bytes(tf.lite.TFLiteConverter.from_keras_model(
        keras.Model(inp, keras.layers.Conv2D(3, 3)(inp))).convert())
    rc, err = _run("energy", "--model", str(tfl_open))
    assert rc == 2 and "invalid --input_shape: expected the input size" in err, err
    rc, err = _run("energy", "--model", str(tfl_open), "--input_shape", "6,6,2")
    assert rc == 0, err
    out = tmp_path / "out"
    rc, err = _run("compress", "--input_shape", "12,12,3", "--output_dir", str(out))
    assert rc == 2 and "invalid --input_shape: expected no --input_shape with dkm-tf " \
        "compress" in err and not out.exists()


def test_energy_input_shape_other_than_the_models_fixed_size_is_refused(tmp_path, capsys):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    rc, err = _run("energy", "--model", str(model), "--input_shape", "12,12,3")
    assert rc == 2, err
    assert "invalid --input_shape: expected 8,8,1 or no --input_shape, because model " \
        "'small_cnn' fixes its input size at (8, 8, 1); received '12,12,3'" in err
    assert err.count("\n") == 1
    rc, err = _run("energy", "--model", str(model), "--input_shape", "8,8,1")  # its own: fine
    assert rc == 0, err
    assert capsys.readouterr().out == energy.estimate(str(model)).summary() + "\n"
    with pytest.raises(ValueError, match=r"Expected None or \(8, 8, 1\).*input_shape=\(12, 12"):
        energy.estimate(str(model), input_shape=(12, 12, 3))


@tf_backend_only("a subclassed model is traced with TensorFlow")
def test_energy_of_a_saved_subclassed_model_takes_input_shape(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="test_cli_gaps")
    class Tiny(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.c = keras.layers.Conv2D(4, 3, name="c")
            self.d = keras.layers.Dense(2, name="d")

        def call(self, x):
            return self.d(keras.ops.mean(self.c(x), axis=(1, 2)))

    keras.utils.set_random_seed(0)
    model = Tiny(name="tiny")
    model(np.zeros((1, 10, 10, 3), np.float32))
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    rc, err = _run("energy", "--model", path)
    assert rc == 2 and err.count("\n") == 1, err
    assert "invalid --input_shape: expected the input size" in err and "subclassed" in err
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        rc, err = _run("energy", "--model", path, "--input_shape", "10,10,3")
    assert rc == 0, err
    assert out.getvalue() == energy.estimate(path, input_shape=(10, 10, 3)).summary() + "\n"
