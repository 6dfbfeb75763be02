"""The ``KERAS_BACKEND=jax`` process of tests/test_jaxspec231.py: prints one JSON line.

Datasets of 4 batches of 16 whose ``element_spec`` has a component of unknown rank, where
``training.first_batch.keep_first_batch`` reads the first batch and gives it back."""

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
from dkm_tf.training import batches  # noqa: E402
from dkm_tf.training.first_batch import build_spec, keep_first_batch  # noqa: E402

L = keras.layers
COUNTERS = []  # every BatchCount made (one per fit of a training function)
_init = batches.BatchCount.__init__


def _registered(self):
    _init(self)
    COUNTERS.append(self)


batches.BatchCount.__init__ = _registered


def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


class Probs(L.Layer):
    """A custom last layer whose outputs are probabilities (its activation unreadable)."""

    def call(self, z):
        return keras.ops.softmax(z)


class Sub(keras.Model):
    """Subclassed, one unit: no output_shape until built; constant initial weights."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(1, kernel_initializer=keras.initializers.Constant(0.1), name="d")

    def call(self, x):
        return self.d(x)


def parsed(x, y):
    """Repeatable, of unknown rank and known length: serialized batches parsed back."""
    ser = [tf.io.serialize_tensor(x[i:i + 16]).numpy() for i in range(0, 64, 16)]
    ys = np.stack([y[i:i + 16] for i in range(0, 64, 16)])
    return tf.data.Dataset.from_tensor_slices((ser, ys)).map(
        lambda s, t: (tf.io.parse_tensor(s, tf.float32), t))


def py_mapped(x, y):
    """Repeatable, of unknown rank and known length: batches through a ``py_function``."""
    def pyf(a, b):
        return tf.py_function(lambda u, v: (u, v), [a, b], [tf.float32, tf.int32])
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(pyf)


def one_shot_known_length(x, y, read):
    """One generator (not a function), unknown rank, its length given by assert_cardinality."""
    def gen():
        for i in range(0, 64, 16):
            read.append(i)
            yield x[i:i + 16], y[i:i + 16]
    made = gen()
    return tf.data.Dataset.from_generator(lambda: made, output_signature=(
        tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.int32))).apply(
        tf.data.experimental.assert_cardinality(4))


def classifier(head=None):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    out = L.Dense(3 if head else 2, name="d")(inp)
    return keras.Model(inp, head(out) if head else out)


def counted(fn):
    """Batches trained per fit (per epoch), the error, and warnings' texts."""
    COUNTERS.clear()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        try:
            fn()
            error = None
        except Exception as e:  # noqa: BLE001 - reported to the test
            error = f"{type(e).__name__}: {e}"[:300]
    return {"per_fit": [list(c.per_epoch) for c in COUNTERS], "error": error,
            "said": [str(w.message)[:200] for w in got if issubclass(w.category, UserWarning)
                     and "ran out of data" not in str(w.message)]}


def weights(layer):
    return [np.asarray(layer.kernel).tolist(), np.asarray(layer.bias).tolist()]


def main():
    out = {"backend": keras.backend.backend()}
    x, y = xy()
    # 1. the loss of a custom softmax last layer on a repeatable dataset of unknown rank
    model = classifier(Probs())
    start = weights(model.get_layer("d"))
    out["loss_choice"] = counted(lambda: pipeline.train_classifier(
        model, parsed(x, y), epochs=2, learning_rate=0.05))
    out["loss_choice"].update(
        loss=type(model.loss).__name__, from_logits=model.loss.get_config()["from_logits"],
        start=start, end=weights(model.get_layer("d")))
    tuned = {}
    out["finetune_loss"] = counted(lambda: tuned.setdefault("m", dkm_tf.finetune(
        classifier(Probs()), parsed(x, y), n_clusters=4, epochs=1, seed=0)))
    loss = tuned["m"][0].loss if "m" in tuned else None
    out["finetune_loss"]["from_logits"] = None if loss is None else \
        loss.get_config()["from_logits"]
    # 2. a known length: the build spec kept on the dataset keep_first_batch returns
    for name, data in (("spec_py_mapped", py_mapped(x, y)), ("spec_parsed", parsed(x, y))):
        spec = build_spec(keep_first_batch(data))
        out[name] = [s.shape.as_list() for s in spec]
    for name, fn in (("card_train_classifier", lambda d: pipeline.train_classifier(
            classifier(), d, epochs=1)),
                     ("card_finetune", lambda d: dkm_tf.finetune(
            classifier(), d, n_clusters=4, epochs=1, seed=0))):
        read = []
        out[name] = counted(lambda fn=fn, read=read: fn(one_shot_known_length(x, y, read)))
        out[name]["read"] = len(read)
    model = Sub(name="sub")
    out["sub_py_mapped"] = counted(lambda: pipeline.train_classifier(
        model, py_mapped(x, y), epochs=2, learning_rate=0.01))
    out["sub_py_mapped"].update(
        loss=type(model.loss).__name__, from_logits=model.loss.get_config()["from_logits"],
        end=weights(model.d))
    return out


if __name__ == "__main__":
    result = main()
    sys.stdout.write(json.dumps(result) + "\n")
