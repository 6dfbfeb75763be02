"""A Functional model built on ``[input]`` (fer's legacy ``.h5`` mini-Xception) takes a list.

Called with the bare array, Keras 3 warns "The structure of `inputs` doesn't match" on every
call: where warnings are errors (as in this suite), ``weighting="fisher"`` refused correct
``data`` as not fitting the model. The importances must equal those of the same weights built
on a bare input.
"""

import keras
import numpy as np

import dkm_tf


def _twins():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(8, "relu")(inp))
    listed = keras.Model([inp], out)  # built on a one-element list
    bare = keras.Model(inp, out)
    return listed, bare


def test_fisher_of_a_model_built_on_an_input_list_takes_a_bare_array():
    listed, bare = _twins()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    loss = "sparse_categorical_crossentropy"
    got = dkm_tf.fisher_importance(listed, (x, y), loss=loss, labels="data")
    want = dkm_tf.fisher_importance(bare, (x, y), loss=loss, labels="data")
    assert set(got) == set(want) and len(got) >= 2  # the twins share their layers
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-12)
    shared = dkm_tf.share_weights(listed, 4, weighting="fisher", data=(x, y), loss=loss)
    assert len(shared.palettes) == 2
    np.testing.assert_allclose(shared.model([x]), shared.model.predict([x], verbose=0),
                               rtol=1e-6)


def test_fisher_of_a_bare_input_model_takes_a_one_element_list():
    # the reverse (review): data=[x] on a model built on one bare input warned the same way
    listed, bare = _twins()
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    y = rng.integers(0, 3, 4)
    loss = "sparse_categorical_crossentropy"
    for model in (bare, seq):
        got = dkm_tf.fisher_importance(model, ([x], y), loss=loss, labels="data")
        want = dkm_tf.fisher_importance(model, (x, y), loss=loss, labels="data")
        assert set(got) == set(want)
        for key, value in want.items():
            np.testing.assert_array_equal(got[key], value)


def test_energy_reads_a_keras_file_named_hdf5(tmp_path):
    # fer's own model file is emotion_model.hdf5: estimate refused the suffix (Keras loads it)
    _, bare = _twins()
    bare.save(tmp_path / "m.h5")
    (tmp_path / "m.h5").rename(tmp_path / "m.hdf5")
    got = dkm_tf.energy.estimate(str(tmp_path / "m.hdf5"))
    assert got.paper_total == dkm_tf.energy.estimate(bare).paper_total > 0
