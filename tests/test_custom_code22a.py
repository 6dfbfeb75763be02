"""A user's model with custom code (a registered layer, an activation, a loss; an unregistered
class) through ``dkm-tf compress`` / ``energy`` (``--custom_objects``), ``export/to_tflite.py``
and ``dkm_tf.load_model``: it loads with the user's code, and without it the error names the
unknown classes and functions and the flag (or ``custom_objects=``) that brings them in."""

import importlib.util
import io
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = "userpkg22a"

SOURCE = f'''
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="{PKG}")
class ScaleDense22a(keras.layers.Layer):
    def __init__(self, units, **kw):
        super().__init__(**kw)
        self.units = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], self.units), initializer="ones")

    def call(self, x):
        return ops.matmul(x, self.kernel) * 0.5

    def get_config(self):
        return {{**super().get_config(), "units": self.units}}


@keras.saving.register_keras_serializable(package="{PKG}")
def half_relu22a(x):
    return ops.relu(x) * 0.5


@keras.saving.register_keras_serializable(package="{PKG}")
def my_loss22a(y, p):
    return ops.mean(ops.square(p)) * 0.0 + keras.losses.sparse_categorical_crossentropy(
        y, p, from_logits=True)


class Plain22a(keras.layers.Layer):  # not registered: found through custom_objects only
    def call(self, x):
        return x * 2.0
'''


def _unregister(module):
    """Forget what importing ``module`` registered (a fresh process would not know it)."""
    import keras

    registry = keras.saving.get_custom_objects()
    for key in [k for k in registry if k.startswith(PKG + ">")]:
        del registry[key]
    sys.modules.pop(module.__name__, None)


@pytest.fixture
def user_code(tmp_path):
    """``(path of the user's .py file, its module)``; its registrations undone afterwards."""
    path = tmp_path / "my_layers22a.py"
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location("my_layers22a", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_layers22a"] = module
    spec.loader.exec_module(module)
    yield path, module
    _unregister(module)


def _model(module, kind):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    act = module.half_relu22a if kind == "act" else "relu"
    x = keras.layers.Dense(8, activation=act, name="fc1")(inputs)
    if kind == "layer":
        x = module.ScaleDense22a(4, name="mine")(x)
    elif kind == "plain":
        x = module.Plain22a(name="plain")(keras.layers.Dense(4, name="fc2")(x))
    else:
        x = keras.layers.Dense(4, name="fc2")(x)
    model = keras.Model(inputs, x)
    model.compile("adam", loss=module.my_loss22a if kind == "loss" else "mse")
    return model


def _saved(tmp_path, user_code, kind, suffix=".keras"):
    """The model saved to ``tmp_path``, then the user's code forgotten: a fresh process."""
    path = tmp_path / f"m_{kind}{suffix}"
    model = _model(user_code[1], kind)
    model.save(path)
    x = np.random.default_rng(0).uniform(0, 1, (5, 6)).astype("float32")
    expected = np.asarray(model(x))
    _unregister(user_code[1])
    return path, x, expected


def _cli(*args):
    from dkm_tf import cli

    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", *map(str, args)], stdout=out, stderr=err)
    return rc, err.getvalue().strip()


@pytest.mark.parametrize("kind,suffix,name", [("layer", ".keras", f"'{PKG}>ScaleDense22a' "
                                              "(module my_layers22a)"),
                                              ("act", ".h5", f"'{PKG}>half_relu22a'")])
def test_energy_names_the_unknown_code_and_loads_with_the_flag(tmp_path, user_code, kind,
                                                                suffix, name):
    # old: "Functional could not be deserialized properly" (a page of config), no flag to pass
    path, _, _ = _saved(tmp_path, user_code, kind, suffix)
    rc, err = _cli("energy", "--model", path)
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert f"Could not load --model '{path}': it uses custom code not known here: {name}. " \
           "Pass the .py files or modules that define them: --custom_objects my_layers.py" \
           in err, err
    rc, err = _cli("energy", "--model", path, "--custom_objects", user_code[0])
    assert rc == 0, err


def test_compress_with_the_flag_keeps_the_custom_layer(tmp_path, user_code):
    import keras

    path, x, expected = _saved(tmp_path, user_code, "layer")
    rc, err = _cli("compress", "--model", path, "--custom_objects", user_code[0],
                   "--notflite", "--noplots", "--quiet", "--n_clusters", "4",
                   "--output_dir", tmp_path / "out")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s[0] for s in report["skipped"]] == ["mine"], report["skipped"]  # said, not silent
    out = keras.models.load_model(tmp_path / "out" / "clustered.keras", compile=False)
    assert type(out.get_layer("mine")).__name__ == "ScaleDense22a"
    float_model = keras.models.load_model(path, compile=False)  # registered by the run
    fc1 = out.get_layer("fc1").kernel.numpy()
    assert len(np.unique(fc1)) <= 4  # fc1 clustered to K=4, the custom layer kept as it was
    np.testing.assert_allclose(out.get_layer("mine").kernel.numpy(), 1.0)
    np.testing.assert_allclose(np.asarray(float_model(x)), expected, rtol=1e-6, atol=1e-6)


def test_flag_errors_name_the_flag_the_file_and_the_import_error(tmp_path, user_code):
    path, _, _ = _saved(tmp_path, user_code, "layer")
    missing = tmp_path / "nope22a.py"
    rc, err = _cli("energy", "--model", path, "--custom_objects", missing)
    assert rc == 2 and f"invalid --custom_objects: '{missing}' is not an existing file" in err
    broken = tmp_path / "broken22a.py"
    broken.write_text("import keras\nimport no_such_package_22a\n")
    rc, err = _cli("compress", "--model", path, "--custom_objects", f"{user_code[0]},{broken}",
                   "--output_dir", tmp_path / "o")
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"invalid --custom_objects: '{broken}' failed to import (ModuleNotFoundError: " \
           "No module named 'no_such_package_22a')" in err, err
    assert "broken22a" not in sys.modules and not (tmp_path / "o").exists()
    rc, err = _cli("compress", "--custom_objects", user_code[0])  # the built-in demo: no use
    assert rc == 2 and "invalid --custom_objects: expected it with --model only" in err, err


def test_load_model_names_an_unregistered_class_and_takes_custom_objects(tmp_path, user_code):
    import dkm_tf

    path, x, expected = _saved(tmp_path, user_code, "plain")
    with pytest.raises(TypeError, match=r"it uses custom code not known here: "
                       r"'Plain22a' \(module my_layers22a\)\. Pass custom_objects="):
        dkm_tf.load_model(path, compile=False)
    model = dkm_tf.load_model(path, compile=False,
                              custom_objects={"Plain22a": user_code[1].Plain22a})
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-6, atol=1e-6)


def test_a_custom_compiled_loss_replaced_in_fine_tuning_is_said(tmp_path, user_code):
    # old: fine-tuned with the default cross-entropy, not the file's loss, without a word
    path, _, _ = _saved(tmp_path, user_code, "loss")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.uniform(0, 1, (32, 6)).astype("f4"),
             y_train=rng.integers(0, 4, 32), x_test=rng.uniform(0, 1, (16, 6)).astype("f4"),
             y_test=rng.integers(0, 4, 16))
    rc, err = _cli("compress", "--model", path, "--custom_objects", user_code[0], "--dataset",
                   data, "--method", "finetune", "--finetune_epochs", "1", "--notflite",
                   "--noplots", "--quiet", "--n_clusters", "4", "--output_dir", tmp_path / "o")
    assert rc == 0, err
    notes = json.loads((tmp_path / "o" / "report.json").read_text())["notes"]
    assert any(f"was compiled with loss '{PKG}>my_loss22a'; dkm-tf compress trains with the "
               "cross-entropy" in n for n in notes), notes


def test_to_tflite_script_takes_the_flag(tmp_path, user_code):
    path, _, _ = _saved(tmp_path, user_code, "act")
    out = tmp_path / "m.tflite"
    res = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_tflite.py"), f"--model={path}",
         "--format=float", f"--output={out}", f"--custom_objects={user_code[0]}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and out.exists(), res.stderr[-2000:]
    res = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_tflite.py"), f"--model={path}",
         "--format=float", f"--output={tmp_path / 'n.tflite'}", "--custom_objects=nope22a.py"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and "to_tflite.py: error: invalid --custom_objects: 'nope22a.py' " \
        "is not an existing file" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "n.tflite").exists()


def test_check_model_file_names_the_callers_argument(tmp_path):
    from dkm_tf.core.files import check_model_file

    missing = tmp_path / "missing.keras"
    with pytest.raises(FileNotFoundError, match=r"argument `model_or_path`\. Expected an "
                       r"existing model file\. Received: model_or_path='.*missing\.keras'"):
        check_model_file(missing, name="model_or_path")
    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match=r"argument `path`\. .*Received: path="):
        check_model_file(tmp_path / "cut.keras")  # the default name, as before


def test_a_class_of_the_saving_script_is_named_with_its_module(tmp_path):
    import zipfile

    from dkm_tf.core.custom_code import unknown_code_error

    path = tmp_path / "m.keras"  # Keras writes "module": None for a class of __main__
    layer = {"module": None, "class_name": "MainLayer22a", "config": {},
             "registered_name": "MainLayer22a"}
    dense = {"module": "keras.layers", "class_name": "Dense", "config": {},
             "registered_name": None}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"module": "keras", "class_name": "Functional",
                                              "config": {"layers": [dense, layer]}}))
    error = unknown_code_error(TypeError("Could not locate class 'MainLayer22a'"), path,
                               "Could not load 'm.keras'", "Pass X")
    assert str(error).startswith("Could not load 'm.keras': it uses custom code not known "
                                 "here: 'MainLayer22a' (module __main__) ('__main__': the "
                                 "script that saved the model; move its definitions into a "
                                 ".py file). Pass X (Keras: TypeError: Could not locate"), error
    assert unknown_code_error(ValueError("a bad zip"), path, "w", "r") is None  # not the cause
