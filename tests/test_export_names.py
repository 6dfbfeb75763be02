"""Palettes are matched to a model's layers by name: two layers of one name are refused.

Two nested models each with a Dense named ``"fc"`` give two palettes ``"fc/kernel"``; matched
by name, both were checked against the first ``fc`` and the export failed with "differs from
palette.decode() ... Assign the decoded values", which sends users the wrong way. The export
now says the names collide, before any conversion. One nested model applied twice (the same
layer objects) is one layer, not a collision.
"""

import numpy as np
import pytest

import dkm_tf

keras = pytest.importorskip("keras")


def _sub(name, layer_name, seed):
    i = keras.Input((8,))
    init = keras.initializers.GlorotUniform(seed)
    return keras.Model(i, keras.layers.Dense(8, name=layer_name, kernel_initializer=init)(i),
                       name=name)


def _parent(names=("fc", "fc")):
    a, b = _sub("a", names[0], 1), _sub("b", names[1], 2)
    i = keras.Input((8,))
    return keras.Model(i, keras.layers.Add()([a(i), b(i)]), name="parent")


def _x():
    return np.random.default_rng(0).normal(size=(4, 8)).astype("float32")


def test_share_weights_duplicate_names_refused_before_conversion(tmp_path):
    result = dkm_tf.share_weights(_parent(), 4)
    assert [p.name for p in result.palettes] == ["fc/kernel", "fc/kernel"]
    with pytest.raises(ValueError, match=r"two layers named 'fc' \(inside 'a', 'b'\).*"
                       r"Rename them") as info:
        dkm_tf.export.to_tflite(result.model, tmp_path / "m.tflite", "palettized",
                                result.palettes, _x())
    assert "Assign the decoded values" not in str(info.value)
    assert not (tmp_path / "m.tflite").exists()


def test_stripped_duplicate_names_refused():
    plain, palettes = dkm_tf.strip_clustering(dkm_tf.cluster_weights(_parent(), 4))
    with pytest.raises(ValueError, match=r"two layers named 'fc'.*\['fc/kernel'\]"):
        dkm_tf.export.check_palettes(plain, palettes)


def test_distinct_names_pass():
    result = dkm_tf.share_weights(_parent(("fc_a", "fc_b")), 4)
    dkm_tf.export.check_palettes(result.model, result.palettes)


def test_one_nested_model_applied_twice_is_one_layer():
    sub = _sub("a", "fc", 1)
    i = keras.Input((8,))
    model = keras.Model(i, keras.layers.Add()([sub(i), sub(i)]), name="parent")
    result = dkm_tf.share_weights(model, 4)
    assert [p.name for p in result.palettes] == ["fc/kernel"]
    dkm_tf.export.check_palettes(result.model, result.palettes)


def test_duplicate_name_without_a_palette_is_not_refused():
    # only the names palettes refer to must be unique: two weightless 'drop' layers are fine
    def sub(name, seed):
        i = keras.Input((8,))
        y = keras.layers.Dropout(0.1, name="drop")(i)
        init = keras.initializers.GlorotUniform(seed)
        return keras.Model(i, keras.layers.Dense(8, name=f"fc_{name}",
                                                 kernel_initializer=init)(y), name=name)

    i = keras.Input((8,))
    model = keras.Model(i, keras.layers.Add()([sub("a", 1)(i), sub("b", 2)(i)]))
    result = dkm_tf.share_weights(model, 4)
    assert sorted(p.name for p in result.palettes) == ["fc_a/kernel", "fc_b/kernel"]
    dkm_tf.export.check_palettes(result.model, result.palettes)


def test_export_interpreters_reexports_core():
    # the interpreter factory moved to dkm_tf.core (shared with energy); the old path remains
    from dkm_tf.core import interpreters as core
    from dkm_tf.export import interpreters, verify

    for name in core.__all__:  # its own additions (file_tensor_types, ...) read files
        assert getattr(interpreters, name) is getattr(core, name)
    assert set(core.__all__) <= set(interpreters.__all__)
    assert verify.make_interpreter is core.make_interpreter
