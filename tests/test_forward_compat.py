"""Files saved today with default settings load in dkm_tf from before 2026-12-03.

dkm_tf at 0491ce8~1 (2026-12-03, before ``preserve_sparsity``) built ``ClusterWeights`` and
``SpectralKMeansRegularizer`` from these keyword arguments only; a config carrying any other key
fails there with "Unrecognized keyword arguments". Measured once by hand: a clustered model and
a regularized one saved by today's code load in that checkout, the clustered one with outputs
equal to today's (max difference 0.0).
"""
import keras
import numpy as np
import pytest

import dkm_tf

OLD_WRAPPER_KEYS = {"layer", "n_clusters", "unit", "granularity", "init", "seed", "latent",
                    "kmeans_options"}
OLD_REGULARIZER_KEYS = {"n_clusters", "lam", "relaxation", "unit", "sparsity", "seed", "base"}
LAYER_KEYS = {"name", "trainable", "dtype"}  # Keras' own, taken by Layer.__init__


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(3)])


def test_default_wrapper_config_has_only_old_keys():
    clustered = dkm_tf.cluster_weights(_model(), n_clusters=4)
    for layer in clustered.layers:
        assert set(layer.get_config()) <= OLD_WRAPPER_KEYS | LAYER_KEYS, layer.name


def test_default_regularizer_config_has_only_old_keys():
    reg = dkm_tf.SpectralKMeansRegularizer(n_clusters=4)
    assert set(reg.get_config()) <= OLD_REGULARIZER_KEYS


@pytest.mark.parametrize("preserve", [False, True])
def test_preserve_sparsity_round_trips(tmp_path, preserve):
    model = _model()
    kernel = model.layers[0].kernel
    kernel.assign(np.where(np.abs(kernel.numpy()) < 0.2, 0.0, kernel.numpy()))
    clustered = dkm_tf.cluster_weights(model, n_clusters=4, preserve_sparsity=preserve)
    path = tmp_path / "m.keras"
    clustered.save(path)
    loaded = keras.models.load_model(path)
    assert [layer.preserve_sparsity for layer in loaded.layers] == [preserve, preserve]
    assert ("preserve_sparsity" in loaded.layers[0].get_config()) is preserve
    x = np.random.RandomState(1).randn(5, 8).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0))
    reg = dkm_tf.SpectralKMeansRegularizer(n_clusters=4, preserve_sparsity=preserve)
    again = dkm_tf.SpectralKMeansRegularizer.from_config(reg.get_config())
    assert again.preserve_sparsity is preserve
