"""Review of ``--custom_objects`` (f6e2612) and of the default loss' output activation:
a user's helper named like a Keras built-in (``relu``) must not replace it in the model;
a user's class that fails for another reason keeps Keras' own error; module names found
from the current folder and files inside packages; files imported once; a name defined in
two files refused; a file named like an installed library keeps off its name; a model whose
output is ``keras.ops.softmax(x)`` trains with ``from_logits=False``."""

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.cli_custom import custom_code, loss_note
from dkm_tf.core.custom_code import import_custom_code
from dkm_tf.training.common import default_loss, output_activation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


def _relu_h5(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(3, activation="gelu")])
    path = str(tmp_path / "m.h5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras: "HDF5 is a legacy format"
        model.save(path)
    return path


def test_user_relu_gelu_dense_do_not_replace_keras_builtins_in_h5(tmp_path, clean_modules):
    path = _relu_h5(tmp_path)
    user = _write(tmp_path / "u" / "shadow22r.py", """
        import keras
        from keras import ops
        def relu(x):
            return ops.relu(x) * 0.0 - 1.0
        def gelu(x):
            return x * 0.0 + 5.0
        class Dense(keras.layers.Dense):
            def call(self, x):
                return super().call(x) * 0.0
        class Scale(keras.layers.Layer):
            def call(self, x):
                return x * 2.0
    """)
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    expected = np.asarray(dkm_tf.load_model(path, compile=False)(x))
    assert set(import_custom_code(user)) == {"Scale"}  # only names Keras does not know
    with custom_code(user):
        got = np.asarray(dkm_tf.load_model(path, compile=False)(x))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_user_class_named_like_a_builtin_kept_when_the_keras_file_names_it(tmp_path,
                                                                          clean_modules):
    user = _write(tmp_path / "dense22r.py", """
        import keras
        class Dense(keras.layers.Dense):
            def call(self, x):
                return super().call(x) * 0.0 + 7.0
    """)
    objects = import_custom_code(user)
    assert "Dense" not in objects
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, sys.modules["dense22r"].Dense(2)(inputs))
    path = str(tmp_path / "mine.keras")
    model.save(path)
    kept = import_custom_code(user, path=path)
    assert kept["Dense"] is sys.modules["dense22r"].Dense
    with keras.saving.custom_object_scope(kept):
        out = keras.models.load_model(path, compile=False)(np.ones((1, 3), "float32"))
    np.testing.assert_allclose(np.asarray(out), 7.0)


_PLAIN = """
    import keras
    class Plain(keras.layers.Layer):
        def __init__(self, factor, {extra}**kw):
            super().__init__(**kw)
            self.factor = factor
        def call(self, x):
            return x * self.factor
        def get_config(self):
            return {{**super().get_config(), "factor": self.factor}}
"""


def _plain_model(tmp_path):
    folder = tmp_path / "old"
    _write(folder / "plain22r.py", _PLAIN.format(extra=""))
    spec = importlib.util.spec_from_file_location("plain22r_old", folder / "plain22r.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, module.Plain(2.0)(keras.layers.Dense(2)(inputs)))
    path = str(tmp_path / "plain.keras")
    model.save(path)
    return path, _write(tmp_path / "new" / "plain22r.py", _PLAIN.format(extra="offset, "))


def test_load_model_with_the_class_given_keeps_keras_error(tmp_path, clean_modules):
    path, new = _plain_model(tmp_path)
    spec = importlib.util.spec_from_file_location("plain22r_new", new)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises((TypeError, ValueError)) as info:
        dkm_tf.load_model(path, compile=False, custom_objects={"Plain": module.Plain})
    assert "not known here" not in str(info.value)
    assert "offset" in str(info.value)


def test_to_tflite_with_the_class_given_keeps_keras_error(tmp_path, clean_modules):
    path, new = _plain_model(tmp_path)
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "export", "to_tflite.py"), "--model", path,
         "--n_clusters", "4", "--custom_objects", new, "--format", "float"],
        env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode == 1, done.stderr[-2000:]
    line = [ln for ln in done.stderr.splitlines() if "to_tflite.py: error" in ln]
    assert line and "offset" in line[0], done.stderr[-2000:]
    assert "not known here" not in line[0] and "Pass --custom_objects" not in line[0]


def test_module_name_found_in_the_current_folder(tmp_path, monkeypatch, clean_modules):
    _write(tmp_path / "userpkg22r" / "__init__.py", "")
    _write(tmp_path / "userpkg22r" / "layers.py", """
        import keras
        class Twice22r(keras.layers.Layer):
            def call(self, x):
                return 2 * x
    """)
    monkeypatch.chdir(tmp_path)  # the console script: neither '' nor the cwd on sys.path
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path), os.getcwd())]
    objects = import_custom_code("userpkg22r.layers")
    assert objects["Twice22r"].__module__ == "userpkg22r.layers"
    assert str(tmp_path) not in sys.path


def test_file_in_a_package_imports_with_its_relative_imports(tmp_path, clean_modules):
    _write(tmp_path / "pkg22r" / "__init__.py", "")
    _write(tmp_path / "pkg22r" / "base.py", "SCALE = 3.0\n")
    layers = _write(tmp_path / "pkg22r" / "layers.py", """
        import keras
        from .base import SCALE
        class Thrice22r(keras.layers.Layer):
            def call(self, x):
                return SCALE * x
    """)
    objects = import_custom_code(layers)
    assert objects["Thrice22r"].__module__ == "pkg22r.layers"
    assert sys.modules["pkg22r.layers"].SCALE == 3.0


def test_file_imported_under_another_name_is_reused(tmp_path, clean_modules):
    path = _write(tmp_path / "reg22r.py", """
        import keras
        @keras.saving.register_keras_serializable(package="r22r")
        class Reg22r(keras.layers.Layer):
            def call(self, x):
                return x
    """)
    spec = importlib.util.spec_from_file_location("already_reg22r", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["already_reg22r"] = module
    spec.loader.exec_module(module)
    objects = import_custom_code(path)
    assert objects["Reg22r"] is module.Reg22r
    assert keras.saving.get_registered_object("r22r>Reg22r") is module.Reg22r


def test_a_name_defined_in_two_files_is_refused_naming_both(tmp_path, clean_modules):
    a = _write(tmp_path / "a22r.py", "def act22r(x):\n    return x\n")
    b = _write(tmp_path / "b22r.py", "def act22r(x):\n    return 2 * x\n")
    with pytest.raises(ValueError, match="act22r") as info:
        import_custom_code(f"{a},{b}")
    assert a in str(info.value) and b in str(info.value)


def test_file_named_like_an_installed_library_keeps_off_its_name(tmp_path, clean_modules):
    library = next((n for n in ("tabnanny", "colorsys", "sndhdr", "mailcap", "nntplib")
                    if n not in sys.modules and importlib.util.find_spec(n)), None)
    if library is None:
        pytest.fail("no unimported standard library module to stand for the library")
    path = _write(tmp_path / f"{library}.py", "def helper22r(x):\n    return x\n")
    objects = import_custom_code(path)
    assert objects["helper22r"].__module__ != library
    real = sys.modules.get(library)
    assert real is None or os.path.realpath(real.__file__) != os.path.realpath(path)


def _ops_softmax_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    logits = keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inputs))
    return keras.Model(inputs, keras.ops.softmax(logits))


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 6)).astype("float32"), rng.integers(0, 3, 48)


def _numpy_ce(model, x, y):
    p = np.asarray(model(x, training=False), dtype=np.float64)
    return float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))))


def test_output_activation_reads_the_operation_that_made_the_output():
    model = _ops_softmax_model()
    assert isinstance(model.layers[-1], keras.layers.Dense)  # the op is not a layer
    assert output_activation(model) == "softmax"
    inputs = keras.Input((6,))
    assert output_activation(keras.Model(inputs, model(inputs))) == "softmax"  # nested
    sig = keras.Model(inputs, keras.ops.sigmoid(keras.layers.Dense(1)(inputs)))
    assert output_activation(sig) == "sigmoid"
    assert default_loss(sig).get_config()["from_logits"] is False
    assert default_loss(model).get_config()["from_logits"] is False


def test_custom_last_layer_with_probabilities_read_from_a_batch():
    class Probs(keras.layers.Layer):
        def call(self, x):
            return keras.ops.softmax(x)

    inputs = keras.Input((6,))
    model = keras.Model(inputs, Probs()(keras.layers.Dense(3)(inputs)))
    x, _ = _data()
    assert output_activation(model) == ""
    assert default_loss(model).get_config()["from_logits"] is True  # no data: as before
    assert default_loss(model, x=x).get_config()["from_logits"] is False
    logits = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    assert default_loss(logits, x=x).get_config()["from_logits"] is True


def test_finetune_and_compress_of_ops_softmax_model_use_probabilities():
    x, y = _data()
    stripped, _, _ = dkm_tf.finetune(_ops_softmax_model(), (x, y), n_clusters=8, epochs=1,
                                     batch_size=16)
    assert stripped.loss.get_config()["from_logits"] is False
    reported = stripped.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(reported, _numpy_ce(stripped, x, y), rtol=1e-4)
    result = dkm_tf.compress(_ops_softmax_model(), (x, y), (x, y), method="finetune",
                             n_clusters=8, finetune_epochs=1, batch_size=16, verbose=0)
    model = result.model
    assert model.loss.get_config()["from_logits"] is False
    reported = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(reported, _numpy_ce(model, x, y), rtol=1e-4)


def test_loss_note_cross_entropies_are_the_default_loss(tmp_path):
    model = _ops_softmax_model()
    path = str(tmp_path / "cce.keras")
    model.compile(loss="categorical_crossentropy")
    model.save(path)
    assert loss_note(path, "finetune", None) is None
    assert loss_note(path, "finetune", None, model=model) is None
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(path := str(tmp_path / "logits.keras"))
    note = loss_note(path, "finetune", None, model=model)
    assert note and "from_logits=True" in note and "from_logits=False" in note
    model.compile(loss="mse")
    model.save(path := str(tmp_path / "mse.keras"))
    assert "'mse'" in loss_note(path, "finetune", None)


def test_binary_accuracy_of_an_ops_sigmoid_model_thresholds_at_one_half():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.ops.sigmoid(keras.layers.Dense(1)(inputs)))
    x, _ = _data()
    p = np.asarray(model(x))[:, 0]
    y = (p > 0.5).astype("int64")  # labels it predicts: accuracy 1 at the right threshold
    expected = 1.0
    assert 0 < y.mean() < 1
    from dkm_tf.pipeline import binary_threshold, evaluate_accuracy  # noqa: PLC0415

    assert binary_threshold(model) == 0.5
    got = evaluate_accuracy(model, (x, y))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
