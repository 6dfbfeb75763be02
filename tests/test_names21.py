"""Layer and model names that pair the wrong things, or that the converter cannot trace.

Probed on tiny models: a palette of a skipped Embedding `emb` was charged on a float Dense
`emb_1` of its size (a Keras model's names are exact; the `_1` tolerance is a `.tflite`'s);
in a `.tflite`, separable convs `a` and `a_1` get scopes `a_1` and `a_1_2`, and `a_1`'s
palettes were charged on `a`'s records; names with a space, `é`, `:`, a leading `_` failed
inside TensorFlow with messages that named no layer (or blamed missing builtin ops).
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf import energy, export  # noqa: E402
from dkm_tf.pipeline import save_palettes  # noqa: E402


def _linear(report):
    return [(r.name, r.shape.macs, r.n_clusters) for r in report.layers
            if r.shape.kind in ("conv", "dense")]


def _embedding_and_dense_of_its_size():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="emb")(inp)  # 160 weights
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10, name="d")(x)
    x = keras.layers.Dense(16, name="emb_1")(x)  # 160 weights, float
    return keras.Model(inp, x)


def test_embedding_palette_is_not_charged_on_a_dense_named_emb_1(tmp_path):
    model = _embedding_and_dense_of_its_size()
    shared = dkm_tf.share_weights(model, 4, overrides={"d": None, "emb_1": None})
    assert [(p.layer_name, p.weight_name) for p in shared.palettes] == [("emb", "embeddings")]
    float_report = energy.estimate(shared.model)
    report = energy.estimate(shared.model, palettes=shared.palettes)
    # was: ('emb_1', 160, 4), its energy the K=4 one
    assert _linear(report) == [("d", 480, None), ("emb_1", 160, None)]
    for got, want in zip(report.layers, float_report.layers, strict=True):
        np.testing.assert_allclose(got.hierarchy.total, want.hierarchy.total, rtol=1e-12)
    assert "its palette (K=4, d=1) is not charged" in dict(report.skipped)["emb"]
    path = tmp_path / "e.keras"  # the same through a saved model and its palettes.json
    shared.model.save(path)
    save_palettes(shared.palettes, str(path))
    assert _linear(energy.estimate(str(path))) == [("d", 480, None), ("emb_1", 160, None)]


def _separable_twins(first, second):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.SeparableConv2D(3, 3, padding="same", name=first)(inp)
    x = keras.layers.SeparableConv2D(3, 3, padding="same", name=second)(x)
    x = keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(x))
    return keras.Model(inp, x)


@pytest.mark.parametrize("clustered", ["a", "a_1"])
def test_separable_twin_palettes_land_on_their_own_tflite_records(tmp_path, clustered):
    model = _separable_twins("a", "a_1")
    other = "a_1" if clustered == "a" else "a"
    shared = dkm_tf.share_weights(model, 4, overrides={other: None, "fc": None})
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 3)).astype("float32")
    path = tmp_path / "s.tflite"
    export.to_tflite(shared.model, path, "palettized", shared.palettes, x, keep_float=None)
    from_file = energy.estimate(str(path))  # the file's own codebooks: the truth
    given = energy.estimate(str(path), palettes=shared.palettes)
    k = [None, None, 4, 4] if clustered == "a_1" else [4, 4, None, None]
    assert [r[2] for r in _linear(from_file)] == [*k, None]
    # was, for `a_1`: [4, 4, None, None, None] (its palettes on `a`'s records `a_1`, `a_1#2`)
    assert _linear(given) == _linear(from_file)
    np.testing.assert_allclose(given.hierarchy_total, from_file.hierarchy_total, rtol=1e-9)


def test_depthwise_beside_a_separable_named_like_its_renamed_scope(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inp)  # 27 weights, file scope `dw_1`
    x = keras.layers.SeparableConv2D(8, 3, name="dw_1")(x)  # depthwise: 27 weights too
    x = keras.layers.Dense(5, name="fc")(keras.layers.Flatten()(x))
    shared = dkm_tf.share_weights(keras.Model(inp, x), 8, overrides={
        "dw": {"n_clusters": 4}, "fc": None})
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 3)).astype("float32")
    path = tmp_path / "d.tflite"
    export.to_tflite(shared.model, path, "palettized", shared.palettes, x, keep_float=None)
    # was: ValueError "describes kernel 'dw_1' (27 weights) more than once"
    given = energy.estimate(str(path), palettes=shared.palettes)
    assert [r[2] for r in _linear(given)] == [4, 8, 8, None]
    assert _linear(given) == _linear(energy.estimate(str(path)))


def _dense_model(layer="c", model="m", nested=None):
    inp = keras.Input((4,), name="in put é")  # input names are no scopes: free
    x = keras.layers.Dense(3, name=layer)(inp)
    if nested is not None:
        i2 = keras.Input((3,))
        x = keras.Model(i2, keras.layers.Dense(2, name=nested)(i2), name="inner")(x)
    return keras.Model(inp, x, name=model)


@pytest.mark.parametrize("kwargs", [
    {"layer": "my conv"}, {"layer": "fc é"}, {"layer": "卷积"}, {"layer": "a:0"},
    {"layer": "_c"}, {"layer": "-c"}, {"layer": "c\\d"}, {"model": "my model"},
    {"nested": "s t"}])
def test_to_tflite_refuses_names_tensorflow_cannot_trace(tmp_path, kwargs):
    model, (bad,) = _dense_model(**kwargs), kwargs.values()
    path = tmp_path / "n.tflite"
    with pytest.raises(ValueError, match="cannot trace layer or model names") as info:
        export.to_tflite(model, path, "float", sample_inputs=np.ones((2, 4), "float32"))
    assert repr(bad) in str(info.value)  # was: Keras' or TensorFlow's message, or none
    assert not path.exists()


def test_to_tflite_takes_the_odd_names_tensorflow_can_trace(tmp_path):
    model = _dense_model(layer=".c-1>x", model="1.m", nested="n_")
    path = tmp_path / "ok.tflite"
    export.to_tflite(model, path, "float", sample_inputs=np.ones((3, 4), "float32"))
    assert [r[1] for r in _linear(energy.estimate(str(path)))] == [12, 6]


def test_last_dense_of_a_prefix_name_beside_same_sized_twins(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((10,))
    x = keras.layers.Dense(10, name="fc")(inp)
    x = keras.layers.Dense(10, name="fc_1")(x)
    x = keras.layers.Dense(10, name="fc_10")(x)  # zero bias, dropped: record op-named
    shared = dkm_tf.share_weights(keras.Model(inp, x), 4, overrides={
        "fc": None, "fc_1": {"n_clusters": 2}, "fc_10": {"n_clusters": 8}})
    x = np.random.default_rng(1).normal(size=(3, 10)).astype("float32")
    path = tmp_path / "t.tflite"
    export.to_tflite(shared.model, path, "palettized", shared.palettes, x, keep_float=None)
    keras_k = [r[2] for r in _linear(energy.estimate(shared.model, palettes=shared.palettes))]
    assert keras_k == [None, 2, 8]
    from_file = energy.estimate(str(path))
    assert [r[2] for r in _linear(from_file)] == keras_k
    # `fc_10`'s record carries no name; `fc_1`'s palette has its size: refused, saying so
    # (was: only "names layer 'fc_10', which is not a conv or dense layer")
    with pytest.raises(ValueError, match=r"names layer 'fc_10'.*names no layer for records "
                                         r"\['fully_connected_\d+'\] of its size"):
        energy.estimate(str(path), palettes=shared.palettes)
    fc_10 = [p for p in shared.palettes if p.layer_name == "fc_10"]
    assert _linear(energy.estimate(str(path), palettes=fc_10))[2][2] == 8


def _shared_layer_beside_a_hash_name():
    keras.utils.set_random_seed(0)
    inp = keras.Input((10,))
    fc = keras.layers.Dense(10, name="fc")
    x = keras.layers.Dense(10, name="fc#2")(fc(fc(inp)))  # `fc`'s 2nd call: record `fc#2`
    return keras.Model(inp, x)


@pytest.mark.parametrize(("overrides", "ks"), [({"fc": None}, [None, None, 4]),
                                                ({"fc#2": None}, [4, 4, None]),
                                                ({"fc": {"n_clusters": 2}}, [2, 2, 4])])
def test_layer_named_like_a_later_calls_record_is_charged_its_own(overrides, ks):
    shared = dkm_tf.share_weights(_shared_layer_beside_a_hash_name(), 4, overrides=overrides)
    # was: `fc`'s 2nd call charged `fc#2`'s K=4 ({"fc": None}: K [None, 4, 4], want
    # [None, None, 4]), or the float `fc#2` charged `fc`'s ({"fc#2": None}); then refused
    # ("records ['fc#2'] name two layers' kernels"); since 2026-12-07 the reader names `fc`'s
    # 2nd call past the layer names (`fc#3`, `energy.record_names`): each charged its own
    records = _linear(energy.estimate(shared.model, palettes=shared.palettes))
    assert [(r[0], r[2]) for r in records] == [("fc", ks[0]), ("fc#3", ks[1]), ("fc#2", ks[2])]
    pruned = energy.estimate(shared.model, pruning={"fc": 0.5})
    assert [(x.name, x.shape.layer, x.kept_fraction) for x in pruned.layers] == [
        ("fc", "fc", 0.5), ("fc#3", "fc", 0.5), ("fc#2", "fc#2", 1.0)]
    assert len(_linear(energy.estimate(shared.model))) == 3  # no compression info: estimated


def test_pruning_of_an_unknown_name_lists_the_records():
    model = _embedding_and_dense_of_its_size()
    with pytest.raises(ValueError, match=r"names layer 'nope'.*Known records: \['d', 'emb_1'\]"):
        energy.estimate(model, pruning={"nope": 0.5})


def test_overrides_key_that_is_a_layer_name_and_a_class_name_is_refused():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="Dense")(inp)
    x = keras.layers.Dense(10, name="fc")(keras.layers.Flatten()(x))
    model = keras.Model(inp, x)
    # was: {"Dense": None} left both float (no palette), {"Dense": {...}} set both
    for value in (None, {"n_clusters": 4}):
        with pytest.raises(ValueError, match=r"key 'Dense' names layer 'Dense' \(a Conv2D\) "
                                             r"and is the class of layers \['fc'\]"):
            dkm_tf.share_weights(model, 16, overrides={"Dense": value})
    shared = dkm_tf.share_weights(model, 16, overrides={"Conv2D": {"n_clusters": 4}})
    assert [(p.layer_name, p.n_clusters) for p in shared.palettes] == [("Dense", 4), ("fc", 16)]
