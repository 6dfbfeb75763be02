"""The ``KERAS_BACKEND=jax`` process of tests/test_jaxspec31.py: prints one JSON line.

Each case trains on a ``from_generator`` dataset of 4 batches of 16 that counts the batches
its generator gave; ``per_epoch`` lists the batches each ``fit`` trained per epoch."""

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
from dkm_tf.training import batches  # noqa: E402

L = keras.layers
UNKNOWN = (tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.int32))
UNKNOWN_REG = (tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.float32))
KNOWN = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int32))
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


def batches_of(x, y, sig, once=True, read=None):
    """A from_generator dataset of 4 batches: over one generator (``once``) or a generator
    function; ``read`` counts the batches the generator gave."""
    def gen():
        for i in range(0, len(x), 16):
            if read is not None:
                read.append(i)
            yield x[i:i + 16], y[i:i + 16]
    made = gen()
    return tf.data.Dataset.from_generator((lambda: made) if once else gen, output_signature=sig)


def classifier():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(2, name="o")(L.Dense(8, activation="relu", name="h")(inp)))


class Sub(keras.Model):
    """Subclassed: no output_shape until built; constant initial weights."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.d = L.Dense(units, kernel_initializer=keras.initializers.Constant(0.1), name="d")

    def call(self, x):
        return self.d(x)


def counted(fn):
    """Batches trained per fit (per epoch), batches the generator gave, and warnings."""
    COUNTERS.clear()
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        try:
            result = fn()
            error = None
        except Exception as e:  # noqa: BLE001 - reported to the test
            result, error = None, f"{type(e).__name__}: {e}"[:300]
    return {"per_fit": [list(c.per_epoch) for c in COUNTERS], "error": error,
            "said": [str(w.message)[:200] for w in got  # dkm_tf's read of a batch (not the
                     if "read the first batch" in str(w.message)]}, result  # from_logits note)


def main():
    out = {"backend": keras.backend.backend()}
    x, y = xy()
    # 1. a spec of unknown rank: finetune, train_classifier, compress(dkm+finetune)
    read = []
    out["finetune"], _ = counted(lambda: dkm_tf.finetune(
        classifier(), batches_of(x, y, UNKNOWN, read=read), n_clusters=4, epochs=1, seed=0))
    out["finetune"]["read"] = len(read)
    read = []
    out["train_classifier"], _ = counted(lambda: pipeline.train_classifier(
        classifier(), batches_of(x, y, UNKNOWN, read=read), epochs=1))
    out["train_classifier"]["read"] = len(read)
    read = []
    out["compress"], _ = counted(lambda: dkm_tf.compress(
        classifier(), batches_of(x, y, UNKNOWN, read=read), method="dkm+finetune",
        n_clusters=4, dkm_epochs=1, finetune_epochs=1, seed=0, verbose=0,
        progress=Progress(enabled=False)))
    out["compress"]["read"] = len(read)
    # plain SGD on a linear model through fit_counted: one-shot (1 epoch), generator function
    # (2 epochs: the second reads the data anew, the first batch not twice)
    target = (x @ np.arange(1, 7, dtype="float32")[:, None] / 6).astype("float32")
    for name, once, epochs in (("linear_once", True, 1), ("linear_function", False, 2)):
        inp = keras.Input((6,))
        lin = keras.Model(inp, L.Dense(1, name="d")(inp))
        lin.set_weights([np.full((6, 1), 0.1, "float32"), np.zeros(1, "float32")])
        lin.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        counter = batches.BatchCount()
        out[name], _ = counted(lambda lin=lin, once=once, epochs=epochs, counter=counter:
                               batches.fit_counted(
                                   lin, counter, batches_of(x, target, UNKNOWN_REG, once),
                                   epochs=epochs, verbose=0, shuffle=False, callbacks=[counter]))
        out[name].update(per_epoch=counter.per_epoch,
                         kernel=np.asarray(lin.get_layer("d").kernel).ravel().tolist(),
                         bias=np.asarray(lin.get_layer("d").bias).tolist())
    # 2. a subclassed one-unit model (no output_shape) in train_classifier, both specs
    for name, sig in (("sub_known", KNOWN), ("sub_unknown", UNKNOWN)):
        keras.utils.set_random_seed(0)
        model = Sub(1)
        out[name], _ = counted(lambda model=model, sig=sig: pipeline.train_classifier(
            model, batches_of(x, y, sig), epochs=1, learning_rate=0.01))
        loss = model.loss
        out[name].update(loss=type(loss).__name__, from_logits=loss.get_config()["from_logits"],
                         kernel=np.asarray(model.d.kernel).ravel().tolist(),
                         bias=np.asarray(model.d.bias).tolist())
    # sequences of 4 lengths (3, 5, 4, 2) of unknown rank: built from the first batch's sizes,
    # as Keras' build did, and every later length trained
    seqs = [np.random.default_rng(n).normal(size=(8, n, 6)).astype("float32")
            for n in (3, 5, 4, 2)]
    made = ((s, (s[:, 0, 0] > 0).astype("int32")) for s in seqs)
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 6))
    model = keras.Model(inp, L.Dense(2)(L.GlobalAveragePooling1D()(inp)))
    out["lengths"], _ = counted(lambda: pipeline.train_classifier(
        model, tf.data.Dataset.from_generator(lambda: made, output_signature=UNKNOWN), epochs=1))
    return out


if __name__ == "__main__":
    result = main()
    sys.stdout.write(json.dumps(result) + "\n")
