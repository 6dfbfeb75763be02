"""Session 31: training batches that dkm_tf's own reads lost, silently, before epoch 1.

1. On Keras' JAX backend, ``training.batches.fit_counted`` builds the model from a
   ``tf.data.Dataset``'s ``element_spec`` so that ``fit`` reads no batch; on a spec of
   unknown rank (``tf.TensorSpec(None)``) it gave up silently and Keras' build read the first
   batches of a one-shot generator (``finetune``, ``train_classifier``, ``compress``'s DKM
   stage: 2 of 4 batches trained, no warning). The first batch is now read by dkm_tf and given
   back (``training.first_batch.keep_first_batch``): 4 of 4.
2. A subclassed model (no ``output_shape`` until built) in ``train_classifier``: the read of
   one sample for its output shape (``next(iter(data))``) took 1-2 batches of a one-shot
   generator (2-3 of 4 trained, TensorFlow and JAX); the shape now comes from a symbolic call
   on the ``element_spec``, reading nothing: 4 of 4, the loss' choice unchanged.

Trained weights are checked against numpy's SGD / Adam steps over the 4 batches in order.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from dkm_tf import pipeline
from dkm_tf.training.batches import BatchCount
from tests import _backend_checks as bc
from tests._jax_env24e import jax_env

SCRIPT = os.path.join(bc.REPO, "tests", "_jaxspec31_run.py")
pytestmark = [pytest.mark.filterwarnings(  # Keras', at the end of any dataset of unknown length
    "ignore:Your input ran out of data:UserWarning"), pytest.mark.filterwarnings(
    # train_classifier's note (test_sigcli31) of a subclassed head it cannot read: expected here
    "ignore:trained with the cross-entropy from_logits=True:UserWarning")]
KNOWN = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int32))


def _xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def _sgd_linear(epochs):
    """The runner's linear model: SGD (lr 0.1), MSE, batches of 16 in order, ``epochs``."""
    x = _xy()[0].astype(np.float64)
    t = x @ np.arange(1, 7, dtype=np.float64)[:, None] / 6
    w, b = np.full((6, 1), 0.1), np.zeros(1)
    for _ in range(epochs):
        for i in range(0, 64, 16):
            xb, tb = x[i:i + 16], t[i:i + 16]
            err = xb @ w + b - tb  # d mean((xw + b - t)^2) = 2 / n x^T err
            w, b = w - 0.1 * 2 / 16 * xb.T @ err, b - 0.1 * 2 / 16 * err.sum(0)
    return w.ravel(), b


def _adam_logistic(lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    """A Dense(1) from kernel 0.1, bias 0, binary cross-entropy on logits, Keras' Adam, the 4
    batches of 16 in order."""
    x, y = _xy()
    x, y = x.astype(np.float64), y.astype(np.float64)[:, None]
    params = [np.full((6, 1), 0.1), np.zeros(1)]
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    for step, i in enumerate(range(0, 64, 16), 1):
        xb, yb = x[i:i + 16], y[i:i + 16]
        err = (1 / (1 + np.exp(-(xb @ params[0] + params[1]))) - yb) / 16
        for k, g in enumerate((xb.T @ err, err.sum(0))):
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            alpha = lr * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
            params[k] = params[k] - alpha * m[k] / (np.sqrt(v[k]) + eps)
    return params[0].ravel(), params[1]


class Sub31(keras.Model):
    """Subclassed: no output_shape until built; constant initial weights."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.d = keras.layers.Dense(units, kernel_initializer=keras.initializers.Constant(0.1))

    def call(self, x):
        return self.d(x)


def _one_shot(sig=KNOWN):
    x, y = _xy()
    made = ((x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16))
    return tf.data.Dataset.from_generator(lambda: made, output_signature=sig)


# ---------- TensorFlow (this process) ----------

@pytest.mark.parametrize("units", [1, 2])
def test_subclassed_model_trains_every_batch_of_a_one_shot_generator(units):
    """Was 2-3 of 4 batches trained (the sample read for the output shape took the rest)."""
    keras.utils.set_random_seed(0)
    model, counter = Sub31(units), BatchCount()
    pipeline.train_classifier(model, _one_shot(), epochs=1, learning_rate=0.01,
                              callbacks=[counter])
    assert counter.per_epoch == [4]
    loss = model.loss  # the choice the read existed for: one unit -> binary, on logits
    want = keras.losses.BinaryCrossentropy if units == 1 else \
        keras.losses.SparseCategoricalCrossentropy
    assert isinstance(loss, want) and loss.get_config()["from_logits"] is True
    if units == 1:
        w, b = _adam_logistic()
        np.testing.assert_allclose(np.asarray(model.d.kernel).ravel(), w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(model.d.bias), b, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Layer 'valued' looks like it has unbuilt state")  # Keras'
@pytest.mark.filterwarnings("ignore:`build[(][)]` was called on layer 'valued'")  # Keras'
def test_a_model_that_needs_values_warns_of_the_read():
    """A model that cannot be called on symbolic inputs (it reads values; TensorFlow ops are
    fine): its output shape is read from one sample as before (a one-shot generator loses what
    the read took), now with a warning naming the model."""
    from dkm_tf.training.first_batch import output_shape

    class Valued(Sub31):
        def call(self, x):
            if float(keras.ops.convert_to_numpy(keras.ops.sum(x))) > 1e9:  # needs values
                return self.d(x) * 0
            return self.d(x)

    data = _one_shot()
    with pytest.warns(UserWarning, match="read the first batch .* model 'valued'"):
        assert output_shape(Valued(2, name="valued"), data) == (1, 2)
    assert sum(1 for _ in data) in (2, 3)  # what the read left of 4


def test_a_model_of_tensorflow_ops_is_called_symbolically():
    """TensorFlow ops in a subclassed model's call: no read, no warning, 4 of 4 trained."""
    class RawTF(Sub31):
        def call(self, x):
            return self.d(tf.math.square(x))

    keras.utils.set_random_seed(0)
    model, counter = RawTF(2, name="raw_tf"), BatchCount()
    pipeline.train_classifier(model, _one_shot(), epochs=1, callbacks=[counter])
    assert counter.per_epoch == [4]


# ---------- JAX (a subprocess) ----------

@pytest.fixture(scope="module")
def jax_run():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -e '.[jax]'): JAX is not tested")
    env = jax_env(TF_CPP_MIN_LOG_LEVEL="2",
                  PYTHONPATH=os.pathsep.join(filter(None, [bc.REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, SCRIPT], cwd=bc.REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax"
    return out


@pytest.mark.parametrize(("stage", "per_fit"), [
    ("finetune", [[4]]), ("train_classifier", [[4]]),
    ("compress", [[4], [0]]),  # DKM stage: all 4; fine-tune stage: used up (noted, as on TF)
])
def test_a_spec_of_unknown_rank_loses_no_batch_on_jax(jax_run, stage, per_fit):
    """Was [[2]] ([[2], [0]]): Keras' build read 2 of the 4 batches, with no warning."""
    got = jax_run[stage]
    assert got["error"] is None and got["said"] == []
    assert got["per_fit"] == per_fit
    assert got["read"] == 4  # the generator gave each batch once


@pytest.mark.parametrize(("name", "epochs"), [("linear_once", 1), ("linear_function", 2)])
def test_a_spec_of_unknown_rank_trains_the_numpy_sgd_steps_on_jax(jax_run, name, epochs):
    """One-shot generator: the 4 steps (was 2: the batches Keras' build read never trained);
    a generator function over 2 epochs: 8 steps, its first batch not trained twice."""
    got = jax_run[name]
    assert got["error"] is None
    assert got["per_epoch"] == [4] * epochs
    w, b = _sgd_linear(epochs)
    np.testing.assert_allclose(got["kernel"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bias"], b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sub_known", "sub_unknown"])
def test_subclassed_model_loses_no_batch_on_jax(jax_run, name):
    """Was [[3]] / [[2]] with a known spec, [[0]] or [[1]] of unknown rank: the sample read and
    Keras' build took the batches."""
    got = jax_run[name]
    assert got["error"] is None and got["said"] == []
    assert got["per_fit"] == [[4]]
    assert got["loss"] == "BinaryCrossentropy" and got["from_logits"] is True
    w, b = _adam_logistic()
    np.testing.assert_allclose(got["kernel"], w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["bias"], b, rtol=1e-4, atol=1e-6)


def test_sequences_of_several_lengths_of_unknown_rank_train_on_jax(jax_run):
    """Batches of lengths 3, 5, 4, 2: all 4 trained (was 2); the spec given back keeps the
    rank only, so a later length is no error."""
    got = jax_run["lengths"]
    assert got["error"] is None and got["said"] == []
    assert got["per_fit"] == [[4]]
