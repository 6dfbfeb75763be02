"""Wrapper names that clash with a layer of the model, and everything that maps them back.

``cluster_weights`` named every wrapper ``cluster_<layer>``: a model holding `fc` (clustered)
and a layer `cluster_fc` left as it is failed in Keras ("The name "cluster_fc" is used 2
times in the model"). Now such a wrapper is `cluster_fc_1` (the first free name), and only
there: a model without a clash keeps its names. The stripped model has the original names,
its palettes name the layers, the palettized file computes the Keras outputs.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf import energy, export  # noqa: E402
from tests.testing import run_tflite_batch  # noqa: E402

X = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")


def _clash_model(float_kind="dense"):
    """`fc` (clustered), `cluster_fc` (a float Dense or a ReLU), `out` (clustered)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = keras.layers.Dense(8, name="fc")(inp)
    x = (keras.layers.Dense(5, name="cluster_fc") if float_kind == "dense"
         else keras.layers.ReLU(name="cluster_fc"))(x)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(x))


def _names(model):
    return [lay.name for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]


@pytest.mark.parametrize("float_kind", ["dense", "relu"])
def test_clash_model_clusters_trains_strips_and_exports(tmp_path, float_kind):
    overrides = {"cluster_fc": None} if float_kind == "dense" else None
    clustered = dkm_tf.cluster_weights(_clash_model(float_kind), 4, overrides=overrides)
    # was: ValueError 'The name "cluster_fc" is used 2 times in the model'
    assert _names(clustered) == ["cluster_fc_1", "cluster_fc", "cluster_out"]
    assert clustered.get_layer("cluster_fc_1").layer.name == "fc"
    clustered.compile("sgd", "mse")
    before = clustered.get_layer("cluster_fc_1").get_weights()
    clustered.fit(X, np.ones((3, 3), "float32"), epochs=1, batch_size=3, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in
               zip(before, clustered.get_layer("cluster_fc_1").get_weights(), strict=True))
    assert [(p.layer_name, p.n_clusters) for p in dkm_tf.palettes_of(clustered)] == [
        ("fc", 4), ("out", 4)]
    plain, palettes = dkm_tf.strip_clustering(clustered)
    assert _names(plain) == ["fc", "cluster_fc", "out"]
    assert [p.layer_name for p in palettes] == ["fc", "out"]
    want = clustered.predict(X, verbose=0)
    np.testing.assert_allclose(plain.predict(X, verbose=0), want, atol=1e-6)
    for batch in (1, 3):
        path = tmp_path / f"m{batch}.tflite"
        export.to_tflite(plain, path, "palettized", palettes, X[:batch], keep_float=None)
        got = run_tflite_batch(path.read_bytes(), X[:batch])
        np.testing.assert_allclose(got, plain.predict(X[:batch], verbose=0), atol=1e-5)
        k = [r.n_clusters for r in energy.estimate(str(path)).layers]
        assert k == ([4, None, 4] if float_kind == "dense" else [4, 4])
    charged = energy.estimate(clustered, palettes=palettes)
    assert [(r.name, r.n_clusters) for r in charged.layers if r.shape.macs] == (
        [("cluster_fc_1", 4), ("cluster_fc", None), ("cluster_out", 4)]
        if float_kind == "dense" else [("cluster_fc_1", 4), ("cluster_out", 4)])


def test_saved_clash_model_loads_and_clusters_again(tmp_path):
    clustered = dkm_tf.cluster_weights(_clash_model(), 4, overrides={"cluster_fc": None},
                                       latent=True)
    path = tmp_path / "c.keras"
    clustered.save(path)
    loaded = dkm_tf.load_model(path)
    assert _names(loaded) == ["cluster_fc_1", "cluster_fc", "cluster_out"]
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), clustered.predict(X, verbose=0))
    loaded.compile("sgd", "mse")  # ReassignClusters finds the renamed wrapper
    loaded.fit(X, np.ones((3, 3), "float32"), batch_size=3, verbose=0,
               callbacks=[dkm_tf.ReassignClusters(1)])
    again = dkm_tf.cluster_weights(loaded, 4, overrides={"cluster_fc": {"n_clusters": 2}})
    assert _names(again) == ["cluster_fc_1", "cluster_cluster_fc", "cluster_out"]
    assert [(p.layer_name, p.n_clusters) for p in dkm_tf.palettes_of(again)] == [
        ("fc", 4), ("cluster_fc", 2), ("out", 4)]
    assert _names(dkm_tf.strip_clustering(again)[0]) == ["fc", "cluster_fc", "out"]


def _dense_chain(names):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = inp
    for name in names:
        x = keras.layers.Dense(5, name=name)(x)
    return keras.Model(inp, x)


@pytest.mark.parametrize(("names", "floats", "wrapped"), [
    (["fc", "cluster_fc"], [], ["cluster_fc", "cluster_cluster_fc"]),  # no clash: unchanged
    (["fc", "cluster_fc", "cluster_cluster_fc"], ["cluster_cluster_fc"],
     ["cluster_fc", "cluster_cluster_fc_1", "cluster_cluster_fc"]),
    (["fc", "cluster_fc", "cluster_fc_1", "fc_1"], ["cluster_fc"],  # `cluster_fc_1` is
     ["cluster_fc_2", "cluster_fc", "cluster_cluster_fc_1", "cluster_fc_1"]),  # `fc_1`'s
    (["cluster_x", "y"], [], ["cluster_cluster_x", "cluster_y"]),
    (["fc", "Cluster_fc", "FC"], ["Cluster_fc"], ["cluster_fc", "Cluster_fc", "cluster_FC"]),
])
def test_other_collisions(names, floats, wrapped):
    model = _dense_chain(names)
    clustered = dkm_tf.cluster_weights(model, 4, overrides=dict.fromkeys(floats))
    assert _names(clustered) == wrapped
    plain, palettes = dkm_tf.strip_clustering(clustered)
    assert _names(plain) == names
    assert [p.layer_name for p in palettes] == [n for n in names if n not in floats]
    np.testing.assert_allclose(plain.predict(X, verbose=0), clustered.predict(X, verbose=0),
                               atol=1e-6)


def test_nested_model_and_pipeline_names():
    keras.utils.set_random_seed(0)
    i2 = keras.Input((6,))
    inner = keras.Model(i2, keras.layers.ReLU(name="cluster_fc")(
        keras.layers.Dense(5, name="fc")(i2)), name="inner")
    inp = keras.Input((6,))
    x = keras.layers.Dense(4, name="fc")(inner(inp))  # its own scope: no clash
    x = keras.layers.Pipeline([keras.layers.Dense(4, name="q")], name="cluster_p")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="p")(x))
    clustered = dkm_tf.cluster_weights(model, 4)
    assert _names(clustered) == ["inner", "cluster_fc", "cluster_p", "cluster_p_1"]
    assert _names(clustered.get_layer("inner")) == ["cluster_fc_1", "cluster_fc"]
    plain, palettes = dkm_tf.strip_clustering(clustered)
    assert _names(plain) == ["inner", "fc", "cluster_p", "p"]
    assert _names(plain.get_layer("inner")) == ["fc", "cluster_fc"]
    assert [p.layer_name for p in palettes] == ["fc", "fc", "q", "p"]
    np.testing.assert_allclose(plain.predict(X, verbose=0), clustered.predict(X, verbose=0),
                               atol=1e-6)


@pytest.mark.parametrize("codebook", ["shared", "layer"])
def test_kernel_clustering_names(tmp_path, codebook):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    y = keras.layers.Conv2D(4, 3, name="c")(inp)
    y = keras.layers.Conv2D(4, 3, name="cluster_c")(y)
    y = keras.layers.ReLU(name="codebook_kernel_3x3")(y)  # the shared codebook layer's name
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, name="d")(y))
    clustered = dkm_tf.cluster_weights(model, 4, unit="kernel", codebook=codebook,
                                       overrides={"cluster_c": None})
    names = [n for n in _names(clustered) if n.startswith("cluster")]
    assert names == ["cluster_c_1", "cluster_c", "cluster_d"]
    if codebook == "shared":  # was: 'The name "codebook_kernel_3x3" is used 2 times'
        assert "codebook_kernel_3x3_1" in _names(clustered)
    plain, palettes = dkm_tf.strip_clustering(clustered)
    assert _names(plain) == ["c", "cluster_c", "codebook_kernel_3x3", "d"]
    assert [p.layer_name for p in palettes] == ["c", "d"]
    xc = np.random.default_rng(2).normal(size=(2, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(plain.predict(xc, verbose=0), clustered.predict(xc, verbose=0),
                               atol=1e-5)
    path = tmp_path / "k.keras"
    clustered.save(path)
    np.testing.assert_array_equal(dkm_tf.load_model(path).predict(xc, verbose=0),
                                  clustered.predict(xc, verbose=0))


def test_strip_of_a_wrapper_named_by_hand_beside_its_layers_name_says_why():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = dkm_tf.ClusterWeights(keras.layers.Dense(5, name="fc"), 4, name="w")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x))
    with pytest.raises(ValueError, match=r"wrapper 'w' holds layer 'fc', the name of another "
                                         r"layer.*Rename one of them"):
        dkm_tf.strip_clustering(model)  # was: Keras' message alone
