"""The ``KERAS_BACKEND=jax`` process of tests/test_jaxprobe30.py: prints one JSON line."""

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf import pipeline  # noqa: E402
from dkm_tf.progress import Progress  # noqa: E402
from dkm_tf.training.batches import BatchCount  # noqa: E402

L = keras.layers
SIG = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int32))
REG = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None, 1), tf.float32))


def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


def one_shot(x, y, sig=SIG, n=16):
    gen = ((x[i:i + n], y[i:i + n]) for i in range(0, len(x), n))  # made once
    return tf.data.Dataset.from_generator(lambda: gen, output_signature=sig)


def classifier():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(2, name="o")(L.Dense(8, activation="relu", name="h")(inp)))
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5
                       for w in model.get_weights()])
    return model


class Bad(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        next(iter(()))  # a bug in a user callback


def caught(fn):
    """``(error or None, [UserWarning texts that mention batches])`` of ``fn()``."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        try:
            fn()
            error = None
        except Exception as e:  # noqa: BLE001 - reported to the test
            error = f"{type(e).__name__}: {e}"[:300]
    return error, [str(w.message) for w in got if "trained" in str(w.message)]


def main():
    out = {"backend": keras.backend.backend()}
    x, y = xy()
    # finetune on a one-shot generator of 4 batches, 2 epochs
    out["finetune"] = caught(lambda: dkm_tf.finetune(classifier(), one_shot(x, y), n_clusters=4,
                                                     epochs=2, seed=0))
    # train_classifier (fit's data given as x=) on the same
    out["train_classifier"] = caught(lambda: pipeline.train_classifier(
        classifier(), one_shot(x, y), epochs=2))
    # compress: the DKM stage uses it up, the fine-tune stage gets no batch
    res = {}

    def compress():
        r = dkm_tf.compress(classifier(), one_shot(x, y), method="dkm+finetune", n_clusters=4,
                            dkm_epochs=2, finetune_epochs=2, seed=0, verbose=0,
                            progress=Progress(enabled=False))
        res["notes"] = [n for n in r.notes if "one-shot" in n]
        res["unique"] = [len(np.unique(np.asarray(r.model.get_layer(n).kernel)))
                         for n in ("h", "o")]
    out["compress"] = caught(compress)
    out["compress_result"] = res
    # train_classifier on data of no batch: the weights are those it started from
    model = classifier()
    start = [np.asarray(w).tolist() for w in model.get_weights()]
    out["empty"] = caught(lambda: pipeline.train_classifier(model, one_shot(x[:0], y[:0]),
                                                            epochs=2))
    out["empty_start"] = start
    try:  # the parent's Keras dropped them (UnboundLocalError) or kept them (StopIteration)
        out["empty_after"] = [np.asarray(w).tolist() for w in model.get_weights()]
        out["empty_predicts"] = np.asarray(model.predict(x[:4], verbose=0)).tolist()
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["empty_after"] = out["empty_predicts"] = f"{type(e).__name__}: {e}"[:300]
    try:  # the metrics' values too (jaxprobe2: Keras had dropped them, a TypeError here)
        out["empty_metrics"] = {k: float(v) for k, v in model.get_metrics_result().items()}
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["empty_metrics"] = f"{type(e).__name__}: {e}"[:300]
    # a callback's own StopIteration (a bug) is not data of no batch (jaxprobe2)
    out["callback_stop"] = caught(lambda: pipeline.train_classifier(
        classifier(), (x, y), epochs=2, batch_size=16, callbacks=[Bad()]))
    # plain SGD on a linear model, one-shot generator of 4 batches, 1 epoch: the weights
    # after every batch's step (numpy reference in the test)
    from dkm_tf.training import batches  # noqa: PLC0415

    def fit_counted(model, _counter, *args, **kwargs):  # the parent's: Keras' fit as it is
        return model.fit(*args, **kwargs)

    fit_counted = getattr(batches, "fit_counted", fit_counted)
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    lin = keras.Model(inp, L.Dense(1, name="d")(inp))
    lin.set_weights([np.full((6, 1), 0.1, "float32"), np.zeros(1, "float32")])
    lin.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    target = (x @ np.arange(1, 7, dtype="float32")[:, None] / 6).astype("float32")
    counter = BatchCount()
    try:
        fit_counted(lin, counter, one_shot(x, target, REG), epochs=1, verbose=0,
                    callbacks=[counter])
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["linear_error"] = f"{type(e).__name__}: {e}"[:300]
    out["linear"] = {"per_epoch": counter.per_epoch,
                     "kernel": np.asarray(lin.get_layer("d").kernel).ravel().tolist(),
                     "bias": np.asarray(lin.get_layer("d").bias).tolist()}
    return out


if __name__ == "__main__":
    result = main()
    sys.stdout.write(json.dumps(result) + "\n")
