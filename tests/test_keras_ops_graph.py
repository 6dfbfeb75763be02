"""Functional models whose graph holds operations that are not layers.

``h + r``, ``keras.ops.relu(h)``, ``h[:, 1:7]`` and ``h * 0.5`` on symbolic tensors put
stateless ``keras.Operation`` nodes into a Functional graph (residual nets are written this
way). Every path that copies the model must carry them over: they used to fail with
"'Add' object has no attribute 'weights'".
"""

import keras
import numpy as np
import pytest
from testing import run_tflite_per_sample, tf_backend_only

import dkm_tf
import dkm_tf.export as ex

K = 4
CLUSTERED = ("c1", "c2", "d")


@pytest.fixture(scope="module")
def ops_model():
    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((8, 8, 3))
    h = L.Conv2D(8, 3, padding="same", name="c1")(i)
    h = keras.ops.relu(L.BatchNormalization(name="bn1")(h))
    h = h + L.Conv2D(8, 3, padding="same", name="c2")(h)
    h = L.Flatten()(h[:, 1:7, 1:7, :])
    model = keras.Model(i, L.Dense(5, activation="softmax", name="d")(h * 0.5))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, 24)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)  # moving statistics away from their initial values
    assert len(model.operations) > len(model.layers)  # the graph really holds bare ops
    return model, x, y


@pytest.mark.parametrize("kwargs", [{}, {"refine": "gptq"}, {"weighting": "fisher"}],
                         ids=["plain", "gptq", "fisher"])
def test_share_weights_copies_bare_ops(ops_model, kwargs):
    model, x, y = ops_model
    if kwargs:
        kwargs["data"] = x if "refine" in kwargs else (x, y)
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=K, fold_bn=False, **kwargs)
    assert sorted(p.layer_name for p in palettes) == sorted(CLUSTERED)
    for name in CLUSTERED:
        assert len(np.unique(shared.get_layer(name).kernel.numpy())) <= K
    # the copy computes what the original graph computes with the same weight values
    saved = model.get_weights()
    try:
        model.set_weights(shared.get_weights())
        want = model.predict(x, verbose=0)
    finally:
        model.set_weights(saved)
    np.testing.assert_allclose(shared.predict(x, verbose=0), want, atol=1e-6)


def test_fold_batch_norm_keeps_bare_ops(ops_model):
    model, x, _ = ops_model
    folded = dkm_tf.fold_batch_norm(model)
    assert folded.folded == [("c1", "bn1")] and folded.skipped == []
    np.testing.assert_allclose(folded.model.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_cluster_fit_strip_and_reload(ops_model, tmp_path):
    model, x, y = ops_model
    with pytest.warns(UserWarning, match=r"unclustered.*bn1 \(BatchNormalization\)"):
        wrapped = dkm_tf.cluster_weights(model, K)
    wrapped.compile("adam", "sparse_categorical_crossentropy")
    wrapped.fit(x, y, batch_size=8, epochs=1, verbose=0)
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    np.testing.assert_allclose(plain.predict(x, verbose=0), wrapped.predict(x, verbose=0),
                               atol=1e-6)
    assert {p.layer_name for p in palettes} == set(CLUSTERED)
    plain.save(tmp_path / "p.keras")
    again = keras.models.load_model(tmp_path / "p.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), plain.predict(x, verbose=0))


@tf_backend_only()
def test_palettized_export_of_bare_ops(ops_model, tmp_path):
    model, x, _ = ops_model
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=K)
    r = ex.to_tflite(shared, tmp_path / "m.tflite", "palettized", palettes, x[:7])
    assert r.max_rel_error < 1e-4
    got = run_tflite_per_sample(r.path, x[:7])
    np.testing.assert_allclose(got, shared.predict(x[:7], verbose=0), atol=1e-5)
