"""The backend handoff: train on JAX, save ``.keras``, load and export on TensorFlow (and back).

Export is TensorFlow-only, so a JAX user trains, saves, and finishes in a TensorFlow process.
These tests check that nothing is lost on the way: the loaded model predicts what the JAX one
did, ``strip_clustering`` gives the same palettes (at most K values per codebook group), a
palettized ``.tflite`` of it verifies and runs to the same outputs, and training resumed on the
other backend continues from the saved state (optimizer slots, soft-assignment warm-start
centroids and temperature, k-means regularizer F and refresh step) to the weights the first
backend reaches. Models are small with numpy-drawn weights; SGD keeps float noise from being
amplified (with Adam, a conv bias in front of a BatchNormalization has a zero gradient that
Adam turns into lr-sized noise steps, and the runs then differ by ~1e-4 on any two backends).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests._jax_env24e import jax_env
from tests.testing import tf_backend_only

pytestmark = [tf_backend_only("the handoff ends in TensorFlow (export)"),
              pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                 reason="jax is not installed (pip install -e '.[jax]')")]

COMMON = r'''
import json, os, sys
import numpy as np
import keras
import dkm_tf
L = keras.layers
K = 4


def data(kind, n=48, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6, 5) if kind == "seq" else (n, 8, 8, 1)).astype(np.float32)
    flat = x.reshape(n, -1)
    y = (flat[:, :10].sum(1) > 0).astype(np.int64) + (flat[:, 10:20].mean(1) > 0.3)
    return x, y.astype(np.int64)


def build(kind, seed=0):
    if kind == "seq":  # LSTM -> MultiHeadAttention -> GRU -> Dense
        inp = keras.Input((6, 5))
        h = L.LSTM(8, return_sequences=True, name="lstm")(inp)
        h = L.MultiHeadAttention(2, 4, name="mha")(h, h)
        out = L.Dense(3, name="out")(L.GRU(6, name="gru")(h))
    else:  # conv (no bias) -> BatchNormalization -> relu -> conv -> pool -> dense
        inp = keras.Input((8, 8, 1))
        h = L.Conv2D(6, 3, padding="same", use_bias=False, name="c1")(inp)
        h = L.Activation("relu")(L.BatchNormalization(name="bn1")(h))
        h = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(h)
        out = L.Dense(3, name="out")(L.GlobalAveragePooling2D()(h))
    m = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    m.set_weights([(np.abs(rng.standard_normal(w.shape) * 0.3 + 1) if "variance" in w.path
                    or "gamma" in w.path else rng.standard_normal(w.shape) * 0.3)
                   .astype(np.float32) for w in m.weights])
    return m


CASES = {  # name: (data kind, how to make it trainable, callbacks of each fit)
    "seq_hard": "seq", "cnn_soft": "cnn", "cnn_row_pc": "cnn", "cnn_regularized": "cnn"}


def make(name):
    import warnings
    with warnings.catch_warnings():  # BatchNormalization stays live (folded at strip)
        warnings.filterwarnings("ignore", "cluster_weights left 1 layer", UserWarning)
        return _make(name)


def _make(name):
    m = build(CASES[name])
    if name == "seq_hard":
        m = dkm_tf.cluster_weights(m, n_clusters=K)
    elif name == "cnn_soft":
        m = dkm_tf.cluster_weights(m, n_clusters=K, granularity="per_channel",
                                   assignment="soft", temperature=0.05)
    elif name == "cnn_row_pc":
        m = dkm_tf.cluster_weights(m, n_clusters=K, unit="row", granularity="per_channel")
    else:
        dkm_tf.attach_regularizer(m, n_clusters=K, lam=0.5, include_dense=True)
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def callbacks(name):
    if name == "cnn_soft":
        return [dkm_tf.TemperatureSchedule(0.05, 0.01, epochs=3)]
    if name == "cnn_regularized":
        return [dkm_tf.RefreshKMeans(every_n_epochs=2)]
    return []


def fit(m, name, x, y, first, last):
    m.fit(x, y, batch_size=16, epochs=last, initial_epoch=first, shuffle=False, verbose=0,
          callbacks=callbacks(name))


def state(m, name, x):
    """Predictions, the stripped model's predictions and palettes, every weight."""
    out = {"pred": keras.ops.convert_to_numpy(m.predict(x, verbose=0))}
    if name == "cnn_regularized":
        from dkm_tf.training.attach import kmeans_regularizers
        for i, (_, reg) in enumerate(kmeans_regularizers(m)):
            out[f"assign_{i}"] = np.asarray(reg.assignment)
            out[f"refresh_{i}"] = np.array(reg.refresh_step)
    else:
        plain, palettes = dkm_tf.strip_clustering(m)
        out["strip"] = keras.ops.convert_to_numpy(plain.predict(x, verbose=0))
        for i, p in enumerate(palettes):
            out[f"cb_{i}"], out[f"ix_{i}"] = np.asarray(p.codebook), np.asarray(p.indices)
    out["weights"] = np.concatenate([np.ravel(keras.ops.convert_to_numpy(v)).astype(np.float64)
                                     for v in m.weights])
    return out


def train_and_save(name, folder):
    x, y = data(CASES[name])
    keras.utils.set_random_seed(0)
    m = make(name)
    fit(m, name, x, y, 0, 2)
    m.save(os.path.join(folder, name + ".keras"))
    np.savez(os.path.join(folder, name + "_saved.npz"), **state(m, name, x))
    fit(m, name, x, y, 2, 3)
    np.savez(os.path.join(folder, name + "_resumed.npz"), **state(m, name, x))


def load_and_resume(name, folder, tag):
    x, y = data(CASES[name])
    m = dkm_tf.load_model(os.path.join(folder, name + ".keras"))
    np.savez(os.path.join(folder, f"{name}_{tag}_loaded.npz"), **state(m, name, x))
    fit(m, name, x, y, 2, 3)
    np.savez(os.path.join(folder, f"{name}_{tag}_resumed.npz"), **state(m, name, x))
'''

JAX_MAIN = COMMON + r'''
mode, folder, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in names:
    train_and_save(name, folder) if mode == "train" else load_and_resume(name, folder, "jax")
print(json.dumps({"backend": keras.backend.backend(), "done": names}))
'''

NAMES = ["seq_hard", "cnn_soft", "cnn_row_pc", "cnn_regularized"]
ns = {}
exec(compile(COMMON, "handoff_common", "exec"), ns)  # the same builders in this process


def run_jax(*args, x64=False):
    env = jax_env(TF_CPP_MIN_LOG_LEVEL="2")  # XLA's fast compile
    env.pop("JAX_ENABLE_X64", None)
    if x64:
        env["JAX_ENABLE_X64"] = "1"
    proc = subprocess.run([sys.executable, "-c", JAX_MAIN, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["backend"] == "jax"


def compare(got, want, name, what):
    assert sorted(got.files) == sorted(want.files), (name, what)
    for key in want.files:
        a, b = got[key], want[key]
        assert a.shape == b.shape, (name, what, key, a.shape, b.shape)
        if key.startswith(("ix_", "assign_", "refresh_")):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} {what} {key}")
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-5, err_msg=f"{name} {what} {key}")


@pytest.fixture(scope="module")
def jax_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("handoff_jax")
    run_jax("train", str(folder), *NAMES)
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_jax_trained_model_loads_strips_and_resumes_on_tensorflow(jax_folder, name):
    ns["load_and_resume"](name, str(jax_folder), "tf")
    saved = np.load(jax_folder / f"{name}_saved.npz")
    compare(np.load(jax_folder / f"{name}_tf_loaded.npz"), saved, name, "loaded")
    compare(np.load(jax_folder / f"{name}_tf_resumed.npz"),
            np.load(jax_folder / f"{name}_resumed.npz"), name, "resumed")
    for key in saved.files:  # at most K values per codebook group
        if key.startswith("cb_"):
            assert saved[key].shape[1] <= ns["K"], (name, key, saved[key].shape)


def test_jax_trained_soft_model_exports_palettized_on_tensorflow(jax_folder, tmp_path):
    import dkm_tf

    x, _ = ns["data"]("cnn")
    plain, palettes = dkm_tf.strip_clustering(dkm_tf.load_model(jax_folder / "cnn_soft.keras"))
    path = tmp_path / "soft.tflite"
    dkm_tf.export.to_tflite(plain, str(path), format="palettized", palettes=palettes,
                            sample_inputs=x[:8])
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")

    interp = interpreter.Interpreter(model_path=str(path))
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    want = np.load(jax_folder / "cnn_soft_saved.npz")["strip"]  # JAX's stripped model
    np.testing.assert_allclose(interp.get_tensor(out["index"]), want, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def tf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("handoff_tf")
    for name in REVERSE:
        ns["train_and_save"](name, str(folder))
    return folder


REVERSE = ["cnn_soft"]


def test_tensorflow_trained_model_loads_strips_and_resumes_on_jax(tf_folder):
    """The reverse, on JAX with JAX_ENABLE_X64 (the JAX-trained models above run without it);
    one soft model: JAX's compile time dominates (~30 s a model on a loaded 2-core machine)."""
    names = REVERSE
    run_jax("load", str(tf_folder), *names, x64=True)
    for name in names:
        compare(np.load(tf_folder / f"{name}_jax_loaded.npz"),
                np.load(tf_folder / f"{name}_saved.npz"), name, "loaded on jax")
        compare(np.load(tf_folder / f"{name}_jax_resumed.npz"),
                np.load(tf_folder / f"{name}_resumed.npz"), name, "resumed on jax")
