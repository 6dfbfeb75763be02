"""``finetune`` of an uncompiled model with several outputs (its docstring takes ``y`` as a
list per output): the default metrics were ``["accuracy"]``, which Keras refused inside
``fit`` ("tuple arity mismatch") after the clustering; now one accuracy per output."""

import keras
import numpy as np

import dkm_tf


def test_finetune_two_heads_with_default_metrics():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h")(inp)
    model = keras.Model(inp, [keras.layers.Dense(3, name="a")(h),
                              keras.layers.Dense(2, name="b")(h)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = [rng.integers(0, 3, 32), rng.integers(0, 2, 32)]
    stripped, palettes, history = dkm_tf.finetune(model, (x, y), n_clusters=4, epochs=1)
    assert len(history.history["loss"]) == 1
    assert sum("accuracy" in k for k in history.history) == 2, history.history.keys()
    for p in palettes:
        w = stripped.get_layer(p.layer_name).get_weights()[0]
        assert len(np.unique(w)) <= 4
        np.testing.assert_array_equal(w, p.decode())
    out = stripped.evaluate(x, y, verbose=0)  # compiled with the same per-output metrics
    assert len(out) == 5  # loss, two losses, two accuracies
