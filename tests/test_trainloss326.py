"""Session 26, review R8 of the carried compile settings: a tuple loss / loss_weights was not
saved (Keras loads a tuple back as a list, so the round-trip check refused it); one unsaveable
or unknown metric dropped every metric beside it."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.core.loss_kind import (  # noqa: E402
    FILE_KEY,
    SETTINGS_KEY,
    restore_source_loss,
    source_loss,
)
from dkm_tf.training.compile_settings import compile_settings  # noqa: E402

L = keras.layers


def _two_outputs(**compile_kwargs):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    h = L.Dense(8, activation="relu", name="h")(inp)
    model = keras.Model(inp, [L.Dense(1, name="a")(h), L.Dense(1, name="b")(h)])
    model.compile("adam", **compile_kwargs)
    return model


def test_a_tuple_loss_and_tuple_loss_weights_survive_save(tmp_path):
    """`loss=("mse", "mae"), loss_weights=(1.0, 0.0)`: the saved copy loads back with both
    (it loaded back as a plain uncompiled model, trained by a cross-entropy)."""
    model = _two_outputs(loss=("mse", "mae"), loss_weights=(1.0, 0.0))
    copy = dkm_tf.share_weights(model, 4).model
    copy.save(tmp_path / "c.keras")
    loaded = dkm_tf.load_model(tmp_path / "c.keras")
    assert list(source_loss(loaded)) == ["mse", "mae"]
    settings = compile_settings(loaded)
    assert list(settings["loss_weights"]) == [1.0, 0.0]
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    y = [np.ones((16, 1), "float32"), np.zeros((16, 1), "float32")]
    start, _, _ = dkm_tf.finetune(loaded, (x, y), n_clusters=4, epochs=0, seed=0)
    mse = float(np.mean((np.asarray(start.predict(x, verbose=0)[0], np.float64) - 1.0) ** 2))
    _, _, history = dkm_tf.finetune(loaded, (x, y), n_clusters=4, epochs=1, seed=0,
                                    batch_size=16, learning_rate=1e-6)
    assert history.history["loss"][0] == pytest.approx(mse, rel=1e-4)  # b weighs 0


@keras.saving.register_keras_serializable(package="dkm_tf_tests_r8")
class Known26(keras.metrics.Mean):
    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_pred, sample_weight)


class Unregistered26(keras.metrics.Mean):
    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_pred, sample_weight)


def test_an_unsaveable_metric_drops_only_itself_at_save(tmp_path):
    """`metrics=["mae", Known26(), Unregistered26()]`: "mae" and the registered one are saved
    (no metric at all was saved: the loaded copy trained with the default accuracy)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(inp))
    model.compile("adam", "mse", metrics=["mae", Known26(name="known"),
                                          Unregistered26(name="unreg")])
    copy = dkm_tf.share_weights(model, 4).model
    copy.save(tmp_path / "c.keras")
    loaded = dkm_tf.load_model(tmp_path / "c.keras")
    metrics = compile_settings(loaded)["metrics"]
    names = [m if isinstance(m, str) else m.name for m in metrics]
    assert names == ["mae", "known"], names


def test_a_metric_unknown_at_load_drops_only_itself():
    """Saved `["mae", SparseTopKCategoricalAccuracy(k=2), <unknown>]`: the two known ones come
    back (they came back as the default ['accuracy'])."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(inp))
    unknown = {"module": None, "class_name": "NoSuchMetric", "config": {},
               "registered_name": "nowhere>NoSuchMetric"}
    topk = keras.saving.serialize_keras_object(
        keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"))
    config = {"build_config": {FILE_KEY: "sparse_categorical_crossentropy", SETTINGS_KEY: {
        "metrics": ["mae", topk, unknown]}}}
    assert restore_source_loss(model, config) is None
    metrics = compile_settings(model)["metrics"]
    assert metrics[0] == "mae" and metrics[1].name == "top2" and metrics[1].k == 2
    assert len(metrics) == 2


def test_a_flat_per_output_metrics_list_is_not_shortened(tmp_path):
    """Two outputs, `metrics=[Unregistered26(), "mae"]` (one per output): saving `["mae"]`
    made the loaded copy's `finetune` fail ("tuple arity mismatch"); the whole entry is left
    out instead, and the copy trains (review R9)."""
    model = _two_outputs(loss=["mse", "mse"], metrics=[Unregistered26(name="u"), "mae"])
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32")
    y = [np.ones((16, 1), "float32"), np.zeros((16, 1), "float32")]
    model.fit(x, y, epochs=1, verbose=0)
    copy = dkm_tf.share_weights(model, 4).model
    copy.save(tmp_path / "c.keras")
    loaded = dkm_tf.load_model(tmp_path / "c.keras")
    assert compile_settings(loaded)["metrics"] is None
    _, _, history = dkm_tf.finetune(loaded, (x, y), n_clusters=4, epochs=1, seed=0,
                                    batch_size=16)
    assert np.isfinite(history.history["loss"][0])
