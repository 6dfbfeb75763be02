"""Per-layer ``overrides``: keys and settings that used to be silently ignored now raise
before any k-means, naming the entry; settings that work give the same K per layer through
share_weights and cluster_weights + strip_clustering."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402


def _flat():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(8, name="fc")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x), name="flat_model")


def _nested():
    keras.utils.set_random_seed(0)
    base_in = keras.Input((6,))
    base = keras.Model(base_in, keras.layers.Dense(8, name="inner")(base_in), name="base")
    inp = keras.Input((6,))
    return keras.Model(inp, keras.layers.Dense(3, name="head")(base(inp)), name="outer")


def _twins():
    """Two nested models whose 3x3 convs have the same name and shape."""
    keras.utils.set_random_seed(0)

    def sub(name):
        i = keras.Input((6, 6, 2))
        return keras.Model(i, keras.layers.Conv2D(2, 3, padding="same", name="conv")(i),
                           name=name)

    inp = keras.Input((6, 6, 2))
    return keras.Model(inp, sub("b")(sub("a")(inp)))


@pytest.mark.parametrize("key", ["base", "Functional", "outer"])
@pytest.mark.parametrize("value", [None, {"n_clusters": 2}])
def test_key_naming_a_model_raises(key, value):
    # before: ignored, so {"base": None} still clustered every layer of the nested model
    with pytest.raises(ValueError, match=rf"Key '{key}' names a model, not a layer.*'inner'"):
        dkm_tf.share_weights(_nested(), 4, overrides={key: value})


def test_layers_inside_a_nested_model_are_named_directly():
    res = dkm_tf.share_weights(_nested(), 4, overrides={"inner": None, "head": {"n_clusters": 2}})
    assert [(p.name, p.n_clusters) for p in res.palettes] == [("head/kernel", 2)]
    assert res.skipped == [("inner", "excluded by overrides")]


@pytest.mark.parametrize("key", ["bn", "BatchNormalization", "drop", "flat"])
def test_settings_for_a_layer_never_clustered_raise(key):
    # before: silently ignored (the user believed the layer was clustered with them)
    with pytest.raises(ValueError, match=rf"`overrides\['{key}'\]`.*never clustered"):
        dkm_tf.share_weights(_flat(), 4, overrides={key: {"n_clusters": 2}})
    with pytest.raises(ValueError, match=rf"`overrides\['{key}'\]`.*never clustered"):
        dkm_tf.cluster_weights(_flat(), 4, overrides={key: {"n_clusters": 2}})


def test_none_for_a_layer_never_clustered_is_allowed():
    res = dkm_tf.share_weights(_flat(), 4, overrides={"drop": None, "BatchNormalization": None})
    assert [p.name for p in res.palettes] == ["conv/kernel", "fc/kernel", "head/kernel"]
    # {} (the plain defaults) changes nothing either: allowed as None is
    res = dkm_tf.share_weights(_flat(), 4, overrides={"bn": {}, "drop": {}})
    assert [p.name for p in res.palettes] == ["conv/kernel", "fc/kernel", "head/kernel"]


def test_unknown_key_lists_close_matches():
    with pytest.raises(ValueError, match=r"Keys \['fcc'\] match no layer.*'fcc' -> \['fc'"):
        dkm_tf.share_weights(_flat(), 4, overrides={"fcc": None})


def test_bad_setting_names_the_entry():
    with pytest.raises(TypeError, match=r"In overrides\['fc'\]: .*`n_clusters`.*8.0"):
        dkm_tf.share_weights(_flat(), 4, overrides={"fc": {"n_clusters": 8.0}})
    # before: raised from the k-means worker, without naming the entry
    with pytest.raises(ValueError, match=r"In overrides\['fc'\]: .*`sparsity`.*0.25"):
        dkm_tf.share_weights(_flat(), 4, sparsity=0.25,
                             overrides={"fc": {"preserve_sparsity": True}})


def _fisher_kwargs():
    x = np.random.default_rng(0).random((2, 6, 6, 2)).astype(np.float32)
    return {"weighting": "fisher", "data": x,
            "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}


@pytest.mark.parametrize("setting", [{"sparsity": 0.5}, {"preserve_sparsity": True},
                                     {"init": "linear"}])
def test_fisher_refuses_per_layer_settings_it_would_ignore(setting):
    # before: the Fisher-weighted k-means dropped them (sparsity 0.5 gave no zero at all)
    with pytest.raises(ValueError, match=rf"`overrides\['fc'\]`.*{list(setting)[0]}.*fisher"):
        dkm_tf.share_weights(_flat(), 4, overrides={"fc": setting}, **_fisher_kwargs())


def test_fisher_refuses_another_init():
    with pytest.raises(ValueError, match=r"`init`.*'kmeans\+\+' with weighting='fisher'"):
        dkm_tf.share_weights(_flat(), 4, init="linear", **_fisher_kwargs())


@pytest.mark.parametrize("setting", [{"sparsity": 0.5}, {"preserve_sparsity": True}])
def test_refine_refuses_per_layer_sparsity(setting):
    # before: refine moved the zero centroid (sparsity 0.5 -> no exact zero left)
    x = np.random.default_rng(0).random((4, 6, 6, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"`overrides\['fc'\]`.*refine='outputs'"):
        dkm_tf.share_weights(_flat(), 4, overrides={"fc": setting}, refine="outputs", data=x)
    res = dkm_tf.share_weights(_flat(), 4, overrides={"fc": {"init": "linear"}},
                               refine="outputs", data=x)  # init is fine with refine
    assert len(res.palettes) == 3


def test_kernel_codebook_scope_checks_override_keys():
    # before: a typo was ignored with unit="kernel" and a codebook scope
    with pytest.raises(ValueError, match=r"Keys \['convv'\] match no layer.*-> \['conv'"):
        dkm_tf.share_weights(_twins(), 4, unit="kernel", codebook="shared",
                             overrides={"convv": None})


def test_kernel_codebook_scope_refuses_duplicate_layer_names():
    # before: one palette; layer 'a/conv' silently got the kernel of 'b/conv'
    with pytest.raises(ValueError, match=r"distinct names.*two layers named 'conv'"):
        dkm_tf.share_weights(_twins(), 4, unit="kernel", codebook="shared")


def test_duplicate_names_per_layer_scope_keep_each_kernel():
    model = _twins()
    res = dkm_tf.share_weights(model, 4, overrides={"conv": {"n_clusters": 2}})
    assert [(p.name, p.n_clusters) for p in res.palettes] == [("conv/kernel", 2)] * 2
    for sub, pal in zip(("a", "b"), res.palettes):
        np.testing.assert_array_equal(res.model.get_layer(sub).get_layer("conv").kernel.numpy(),
                                      pal.decode())


def test_same_k_per_layer_through_share_and_cluster_weights():
    model = _flat()
    overrides = {"conv": {"n_clusters": 3}, "fc": {"n_clusters": 2, "granularity":
                                                   "per_channel"}, "head": None}
    shared = dkm_tf.share_weights(model, 4, overrides=overrides, fold_bn=False)
    with pytest.warns(UserWarning, match=r"bn \(BatchNormalization\)"):
        wrapped = dkm_tf.cluster_weights(model, 4, overrides=overrides)
    _, pals = dkm_tf.strip_clustering(wrapped, fold_bn=False)

    def summary(palettes):
        return [(p.name, p.n_clusters, p.layout.granularity) for p in palettes]

    assert summary(shared.palettes) == summary(pals) == [
        ("conv/kernel", 3, "per_tensor"), ("fc/kernel", 2, "per_channel")]


def test_compress_refuses_fisher_with_another_init_before_any_work(monkeypatch):
    """`compress(weighting="fisher", init=...)` and Fisher with a per-layer sparsity were
    refused only inside share_weights, after the float model's accuracy had been measured."""
    import dkm_tf
    from dkm_tf import data, pipeline

    def no_work(*a, **k):
        raise AssertionError("work started before the arguments were checked")

    (x, y), _ = data.load_digits()
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, name="fc")])
    monkeypatch.setattr(pipeline, "evaluate_accuracy", no_work)
    for kw in ({"init": "random"}, {"overrides": {"fc": {"init": "random"}}},
               {"overrides": {"fc": {"sparsity": 0.5}}}):
        with pytest.raises(ValueError, match="init|sparsity"):
            dkm_tf.compress(model, (x[:32], y[:32]), (x[:32], y[:32]), n_clusters=4,
                            weighting="fisher", verbose=0, **kw)


def test_a_layer_name_wins_over_its_class_none():
    """``{"Dense": None, "fc": {...}}``: fc is clustered with its settings (its class's None
    used to win, leaving fc float with "excluded by overrides"), head stays float, and the
    same holds through cluster_weights + strip_clustering."""
    model = _flat()
    overrides = {"Dense": None, "fc": {"n_clusters": 3}}
    shared = dkm_tf.share_weights(model, 4, overrides=overrides, fold_bn=False)
    with pytest.warns(UserWarning, match=r"bn \(BatchNormalization\)"):
        wrapped = dkm_tf.cluster_weights(model, 4, overrides=overrides)
    stripped, pals = dkm_tf.strip_clustering(wrapped, fold_bn=False)
    for palettes in (shared.palettes, pals):
        assert [(p.name, p.n_clusters) for p in palettes] == [("conv/kernel", 4),
                                                              ("fc/kernel", 3)]
    assert dict(shared.skipped)["head"] == "excluded by overrides"
    for m in (shared.model, stripped):
        assert np.unique(m.get_layer("fc").kernel.numpy()).size <= 3
        np.testing.assert_array_equal(m.get_layer("head").kernel.numpy(),
                                      model.get_layer("head").kernel.numpy())
