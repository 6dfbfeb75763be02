"""A legacy .h5 model file and the k-means regularizer's state (session 14).

Keras' legacy HDF5 format (``model.save("m.h5")``) stores the model config and the layers'
weights, never ``save_own_variables``: the state of a ``SpectralKMeansRegularizer`` (F of the
last refresh, warm-start centroids, ``refresh_step``) is lost, and the loaded regularizer
rebuilds F from the loaded weights at its first call (another penalty). A ``.keras`` file
keeps it exactly. Old: the loss was silent.
"""

import logging
import os
import re
import warnings

import keras
import numpy as np
import pytest

from dkm_tf.training import attach
from dkm_tf.training import regularizer_state as state_lib
from dkm_tf.training.callbacks import RefreshKMeans
from tests.testing import small_cnn


def _trained(tmp_path):
    model = small_cnn()
    attach.attach_regularizer(model, 3, lam=0.05, relaxation="hard", include_dense=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[RefreshKMeans(every_n_epochs=1)])
    return model


def _penalties(model):
    return {var.path.split("/")[-2]: float(reg(var))
            for var, reg in attach.kmeans_regularizers(model)}


def test_h5_round_trip_loses_the_state_keras_keeps_it(tmp_path):
    model = _trained(tmp_path)
    want = _penalties(model)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' "legacy HDF5" warning (and ours, once wired)
        model.save(tmp_path / "m.h5")
    from_keras = _penalties(keras.models.load_model(tmp_path / "m.keras"))
    from_h5 = _penalties(keras.models.load_model(tmp_path / "m.h5", compile=False))
    assert from_keras == pytest.approx(want, rel=1e-6)
    # the loss the warning below reports: F rebuilt from the loaded weights
    assert from_h5["c1"] != pytest.approx(want["c1"], rel=1e-4)


def test_warning_when_a_legacy_h5_file_drops_the_state(tmp_path, caplog):
    # old: no such helper, nothing said
    from keras.src.legacy.saving import saving_options  # noqa: PLC0415

    model = _trained(tmp_path)
    (_, reg), = [(v, r) for v, r in attach.kmeans_regularizers(model)
                 if v.path.split("/")[-2] == "c1"]
    with saving_options.keras_option_scope(use_legacy_config=True):
        with caplog.at_level(logging.WARNING, logger="dkm_tf"):
            state_lib.warn_legacy_h5_save(reg)
    assert re.search(r"legacy .h5 model file does not store the k-means state.*step \d+.*"
                     r"\.keras", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dkm_tf"):
        state_lib.warn_legacy_h5_save(reg)  # outside the scope (a .keras save): silent
        unbuilt = type(reg)(n_clusters=3)
        with saving_options.keras_option_scope(use_legacy_config=True):
            state_lib.warn_legacy_h5_save(unbuilt)  # no state to lose: silent
    assert caplog.text == ""


def test_model_save_h5_says_so_and_writes_a_loadable_file(tmp_path, caplog):
    # logged, not warnings.warn: under warnings-as-errors a warning raised inside Keras'
    # legacy save (the file already opened) left an unreadable 800-byte file
    model = _trained(tmp_path)
    path = os.fspath(tmp_path / "m.h5")
    with caplog.at_level(logging.WARNING, logger="dkm_tf"), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (Keras' h5 writer trips numpy's
        model.save(path)  # DeprecationWarning on its own)
    assert caplog.text.count("legacy .h5 model file does not store") == len(
        attach.kmeans_regularizers(model))
    loaded = keras.models.load_model(path, compile=False)
    x = np.random.default_rng(3).random((2, *model.input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
