"""Session 30 probe of the JAX backend (``KERAS_BACKEND=jax``) on the training functions that
count each epoch's batches (tests/test_trainfix29.py, run there on TensorFlow only).

Keras' JAX ``fit`` reads a batch to build the compiled loss and metrics before epoch 1. On a
``tf.data.Dataset.from_generator`` over a one-shot generator of 4 batches that read took 2 of
them (tf.data prefetches), so ``finetune`` trained 2 batches where TensorFlow trains 4 (noted
as "trained 2 batch(es)", and silently with one epoch); on data that gave no batch at all
(``compress(method="dkm+finetune")``'s fine-tune stage after its DKM stage used the generator
up) ``fit`` raised a bare ``StopIteration``, and a first epoch of no batch an
``UnboundLocalError`` after Keras had dropped the model's weights (``get_weights`` failed
after). ``training.batches.fit_counted`` builds the model from the dataset's ``element_spec``
instead, and takes data of no batch as TensorFlow does (epochs of no batch, noted). The JAX
run is a subprocess, as in tests/test_backend_jax.py; every number is checked against numpy.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import _backend_checks as bc
from tests._jax_env24e import jax_env

if importlib.util.find_spec("jax") is None:
    pytest.skip("jax is not installed (pip install -e '.[jax]'): the JAX backend is not tested",
                allow_module_level=True)

SCRIPT = os.path.join(bc.REPO, "tests", "_jaxprobe30_run.py")


@pytest.fixture(scope="module")
def jax_run():
    env = jax_env(TF_CPP_MIN_LOG_LEVEL="2",
                  PYTHONPATH=os.pathsep.join(filter(None, [bc.REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, SCRIPT], cwd=bc.REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax"
    return out


def test_finetune_trains_every_batch_of_a_one_shot_generator_as_tensorflow(jax_run):
    error, said = jax_run["finetune"]
    assert error is None
    assert len(said) == 1, said  # was "trained 2 batch(es)": Keras' build read 2 of the 4
    assert said[0].startswith("finetune trained 4 batch(es) in 1 of its 2 epochs and none in "
                              "epoch(s) 2: the training data ran out"), said


def test_train_classifier_trains_every_batch_of_a_one_shot_generator(jax_run):
    error, said = jax_run["train_classifier"]
    assert error is None
    assert len(said) == 1 and said[0].startswith(
        "train_classifier trained 4 batch(es) in 1 of its 2 epochs and none in epoch(s) 2: "
        "the training data ran out"), said


def test_compress_notes_a_fine_tune_stage_of_no_batch_instead_of_stop_iteration(jax_run):
    error, _ = jax_run["compress"]
    assert error is None  # was "StopIteration: " from Keras' _symbolic_build
    notes = jax_run["compress_result"]["notes"]
    assert len(notes) == 2, notes
    assert notes[0].startswith("dkm_retrain trained 4 batch(es) in 1 of its 2 epochs and none "
                               "in epoch(s) 2: the training data ran out"), notes
    assert notes[1].startswith("finetune trained no batch in its 2 epoch(s)"), notes
    assert all(n <= 4 for n in jax_run["compress_result"]["unique"])  # still clustered


def test_data_of_no_batch_keeps_the_weights_and_is_noted(jax_run):
    error, said = jax_run["empty"]
    assert error is None, error
    assert len(said) == 1 and said[0].startswith(
        "train_classifier trained no batch in its 2 epoch(s): the training data gave none"), said
    start = [np.asarray(w) for w in jax_run["empty_start"]]
    after = [np.asarray(w) for w in jax_run["empty_after"]]
    for a, b in zip(start, after, strict=True):
        np.testing.assert_array_equal(a, b)
    # the metrics' values too (jaxprobe2): Keras had dropped them, get_metrics_result() failed
    assert jax_run["empty_metrics"] == {"loss": 0.0, "accuracy": 0.0}, jax_run["empty_metrics"]
    x = np.random.default_rng(0).normal(size=(64, 6))[:4].astype(np.float32)
    h = np.maximum(x.astype(np.float64) @ start[0] + start[1], 0)  # the model, in numpy
    np.testing.assert_allclose(jax_run["empty_predicts"], h @ start[2] + start[3], rtol=1e-5,
                               atol=1e-5)


def test_a_callbacks_stop_iteration_goes_through_on_jax(jax_run):
    """jaxprobe2: a StopIteration out of a callback's on_train_begin was taken for data of no
    batch (an empty history, "trained no batch" warned); it goes through, as on TensorFlow
    (tests/test_jaxprobe230.py)."""
    assert jax_run["callback_stop"] == ["StopIteration: ", []], jax_run["callback_stop"]


def test_one_shot_generator_trains_all_four_sgd_steps(jax_run):
    """Plain SGD (lr 0.1) on a linear model, MSE, batches of 16 in order: the numpy steps."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32).astype(np.float64)
    t = x @ np.arange(1, 7, dtype=np.float64)[:, None] / 6
    w, b = np.full((6, 1), 0.1), np.zeros(1)
    for i in range(0, 64, 16):
        xb, tb = x[i:i + 16], t[i:i + 16]
        err = xb @ w + b - tb  # d mean((xw + b - t)^2) = 2 / n x^T err
        w, b = w - 0.1 * 2 / 16 * xb.T @ err, b - 0.1 * 2 / 16 * err.sum(0)
    got = jax_run["linear"]
    assert got["per_epoch"] == [4]
    np.testing.assert_allclose(got["kernel"], w.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bias"], b, rtol=1e-5, atol=1e-6)


def test_a_time_distributed_layer_left_float_names_the_layer_it_wraps():
    """share_weights said "TimeDistributed is not a supported kernel layer (supported: ...,
    TimeDistributed (of any of these))" of a TimeDistributed(LayerNormalization): it names the
    wrapped layer now (TensorFlow, in this process; the same text on JAX)."""
    import keras  # noqa: PLC0415

    import dkm_tf  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 6))
    td_ln = keras.layers.TimeDistributed(keras.layers.LayerNormalization(), name="td_ln")(inp)
    out = keras.layers.TimeDistributed(keras.layers.Dense(2), name="td_d")(td_ln)
    shared = dkm_tf.share_weights(keras.Model(inp, out), 4)
    assert [p.name for p in shared.palettes] == ["td_d/layer.kernel"]
    ((name, why),) = shared.skipped
    assert name == "td_ln", shared.skipped
    assert why.startswith("TimeDistributed(LayerNormalization) is not a supported kernel layer "
                          "(supported: "), why
