"""Found by a probe of the input checks on the JAX and PyTorch backends: ``train_classifier``
chose a sparse categorical cross-entropy for a one-unit *subclassed* binary classifier (it has
no ``output_shape``). Labels 1 fell outside its one column: an error on TensorFlow and PyTorch,
and on JAX no error at all, training silently doing nothing (about 50 % accuracy on separable
data). The output shape is now read from one sample run through the model.

Each check runs here (Keras' default backend, in this process: a fresh one only re-imported
TensorFlow) and, when jax is installed, in a subprocess with ``KERAS_BACKEND=jax`` (about 10 s),
where the failure was silent.
"""

import contextlib
import importlib.util
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests._jax_env24e import xla_flags

REPO = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = r'''
import json
import numpy as np
import keras
from dkm_tf.pipeline import evaluate_accuracy, train_classifier


class Sub(keras.Model):
    def __init__(self, activation):
        super().__init__()
        self.dense = keras.layers.Dense(1, activation=activation)

    def call(self, x):
        return self.dense(x)


rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4)).astype("float32")
y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
out = {"backend": keras.backend.backend()}
for activation, threshold in (("sigmoid", 0.5), (None, 0.0)):
    keras.utils.set_random_seed(0)
    model = Sub(activation)
    hist = train_classifier(model, (x, y.astype("float32").tolist()), epochs=30,
                            batch_size=32, learning_rate=0.05)
    scores = np.asarray(model.predict(x, verbose=0))
    out[str(activation)] = {
        "loss": model.loss.get_config(),
        "first_loss": float(hist.history["loss"][0]),
        "last_loss": float(hist.history["loss"][-1]),
        "accuracy": evaluate_accuracy(model, (x, y)),
        "recount": float(np.mean((scores[:, 0] > threshold).astype("int32") == y)),
    }
print(json.dumps(out))
'''


def _run(backend):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if backend == "jax":
        env["XLA_FLAGS"] = xla_flags(env)  # fast compile, as the other JAX subprocesses
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("backend") == backend
    return out


def _check(out):
    for activation, from_logits in (("sigmoid", False), ("None", True)):
        got = out[activation]
        assert got["loss"]["name"] == "binary_crossentropy", got
        assert got["loss"]["from_logits"] is from_logits, got
        assert got["last_loss"] < 0.5 * got["first_loss"], got  # it trained
        assert got["accuracy"] == got["recount"], got
        assert got["accuracy"] > 0.9, got  # separable data (was ~0.5 on JAX)


def test_train_classifier_subclassed_binary_default_backend():
    import keras

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(SCRIPT, {"__name__": "probe"})  # noqa: S102 - the script the JAX run runs
    out = json.loads(printed.getvalue().strip().splitlines()[-1])
    assert out.pop("backend") == keras.backend.backend()
    _check(out)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_train_classifier_subclassed_binary_on_jax():
    _check(_run("jax"))
