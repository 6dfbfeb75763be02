"""Fixes found by probing the graph transforms (fold_batch_norm, share_weights, refine,
factorise_convs): each test failed before its fix."""

import keras
import numpy as np

import dkm_tf
from dkm_tf.graph.clusterable import walk_layers

L = keras.layers


def _flags(model):
    return {layer.name: layer.trainable for layer in [model, *walk_layers(model)]
            if layer.weights or isinstance(layer, keras.Model)}


def _frozen_base_classifier():
    """A transfer-learning classifier: a frozen Functional base (conv + BN) and a head."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    feat = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="conv")(inp))
    base = keras.Model(inp, L.Conv2D(4, 1, name="pw")(feat), name="base")
    base.trainable = False
    x = keras.Input((8, 8, 3))
    y = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(base(x)))
    return keras.Model(x, y)


def test_fold_batch_norm_keeps_a_nested_functional_models_trainable_flag(tmp_path):
    model = _frozen_base_classifier()
    before = _flags(model)
    folded = dkm_tf.fold_batch_norm(model)
    assert folded.folded == [("conv", "bn")]
    expected = {k: v for k, v in before.items() if k != "bn"}
    assert _flags(folded.model) == expected  # "base" read True before the fix
    shared = dkm_tf.share_weights(model, 4)  # folds first, through the same code
    assert _flags(shared.model) == expected
    assert _flags(model) == before  # the original is untouched
    path = tmp_path / "folded.keras"
    folded.model.save(path)
    assert keras.models.load_model(path).get_layer("base").trainable is False


def test_factorise_convs_keeps_a_frozen_convs_trainable_flag():
    keras.utils.set_random_seed(1)
    inp = keras.Input((9, 9, 4))
    y = L.Conv2D(6, 3, padding="same", name="c1")(inp)
    model = keras.Model(inp, L.Conv2D(5, 3, name="c2")(y))
    model.get_layer("c1").trainable = False
    shared = dkm_tf.share_weights(model, 4, unit="kernel", codebook="shared", scale_bits=32)
    new, report = dkm_tf.factorise_convs(shared.model, shared.palettes, force=True)
    assert report.replaced == ["c1", "c2"]
    assert type(new.get_layer("c1")).__name__ == "FactorisedConv2D"
    assert new.get_layer("c1").trainable is False  # True before the fix
    assert new.get_layer("c2").trainable is True
    assert len(new.trainable_weights) == 3  # c2's codebook, scales, bias
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(shared.model(x)), atol=1e-5)


def test_gptq_note_names_the_conv2d_setting_it_does_not_handle():
    keras.utils.set_random_seed(2)
    inp = keras.Input((6, 6, 4))
    y = L.Conv2D(4, 3, groups=2, name="grouped")(inp)
    model = keras.Model(inp, L.Dense(3, name="head")(L.Flatten()(y)))
    x = np.random.default_rng(0).normal(size=(16, 6, 6, 4)).astype(np.float32)
    result = dkm_tf.share_weights(model, 4, refine="gptq", data=x)
    note = {p.layer_name: p.note for p in result.palettes}["grouped"]
    assert "not Conv2D with groups=2" in note  # was "... Conv2D kernels only, not Conv2D"


def test_refine_leaves_a_shared_layer_alone_and_says_why():
    """A layer called twice: the layer-wise fit saw only its first call's inputs (its note
    reported that call's SSE as the layer's)."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((6,))
    shared = L.Dense(6, activation="tanh", name="shared_d")
    model = keras.Model(inp, L.Dense(4, name="head")(shared(shared(inp))))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    result = dkm_tf.share_weights(model, 3, refine="outputs", data=x)
    notes = {p.layer_name: p.note for p in result.palettes}
    assert "output refine not applied: the layer is called 2 times (shared layer)" in \
        notes["shared_d"]
    assert "SSE" not in notes["shared_d"]
    plain = dkm_tf.share_weights(model, 3)
    np.testing.assert_array_equal(result.model.get_layer("shared_d").kernel.numpy(),
                                  plain.model.get_layer("shared_d").kernel.numpy())


def _conv_bn_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((9, 9, 3))
    y = L.BatchNormalization(name="bn")(L.Conv2D(6, 3, name="c")(inp))
    model = keras.Model(inp, L.Conv2D(4, 3, name="c2")(L.ReLU()(y)))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(3)
    bn.gamma.assign(rng.uniform(2.0, 4.0, 6).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.1, 0.3, 6).astype(np.float32))
    return model


def test_factorise_convs_refuses_factors_with_a_batch_norm_folded_in_twice():
    """share_weights folds BatchNormalization before kernel clustering; its palettes applied to
    the unfolded model applied BN twice, silently (only kernel_max_abs_diff showed it)."""
    import pytest

    model = _conv_bn_model()
    shared = dkm_tf.share_weights(model, 32, unit="kernel", codebook="shared", scale_bits=32)
    assert shared.folded == [("c", "bn")]
    with pytest.raises(ValueError, match=r"factors\['c'\].*'bn'.*twice"):
        dkm_tf.factorise_convs(model, shared.palettes, force=True)
    new, report = dkm_tf.factorise_convs(shared.model, shared.palettes, force=True)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(shared.model(x)), atol=1e-4)
    for k in (4, 32):  # factors of its own kernel, however lossy: accepted
        unfolded = dkm_tf.share_weights(model, k, unit="kernel", codebook="shared",
                                        scale_bits=32, fold_bn=False)
        new, report = dkm_tf.factorise_convs(model, unfolded.palettes, force=True)
        assert report.replaced == ["c", "c2"]


def test_factorise_convs_says_which_regularizers_and_constraints_it_drops():
    keras.utils.set_random_seed(2)
    inp = keras.Input((9, 9, 4))
    y = L.Conv2D(6, 3, padding="same", name="c1", kernel_regularizer="l2",
                 bias_constraint=keras.constraints.NonNeg())(inp)
    model = keras.Model(inp, L.Conv2D(5, 3, name="c2")(y))
    shared = dkm_tf.share_weights(model, 4, unit="kernel", codebook="shared", scale_bits=32)
    new, report = dkm_tf.factorise_convs(shared.model, shared.palettes, force=True)
    reasons = {r.name: r.reason for r in report.layers}
    assert reasons["c1"].endswith("; kernel_regularizer, bias_constraint dropped")
    assert "dropped" not in reasons["c2"]
    assert new.get_layer("c1").losses == []  # what the note says: FactorisedConv2D has none


def test_refine_counts_calls_in_the_models_graph_not_keras_rebuild_nodes():
    """A Sequential built with add() (or loaded from .keras) leaves one inbound node per
    rebuild on its layers: refine_codebooks read its conv as "called 3 times (shared
    layer)" and left it unrefined."""
    from dkm_tf.graph.refine import refine_codebooks  # noqa: PLC0415

    def built_with_add():
        keras.utils.set_random_seed(6)
        m = keras.Sequential()
        for layer in (keras.Input((8, 8, 1)), L.Conv2D(4, 3, name="c"), L.Flatten(),
                      L.Dense(3, name="d")):
            m.add(layer)
        return m

    model, model_q = built_with_add(), built_with_add()
    assert len(model_q.get_layer("c")._inbound_nodes) > 1  # the trap
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
    shared = dkm_tf.share_weights(model, 3)
    model_q.set_weights(shared.model.get_weights())
    notes = {p.layer_name: p.note for p in refine_codebooks(model, model_q, shared.palettes, x)}
    assert "called" not in notes["c"] and "SSE" in notes["c"], notes["c"]


def test_factorise_convs_accepts_lossy_factors_of_the_convs_own_kernel():
    """k-means shrinks a kernel towards zero, so coarse factors of the conv's own kernel sit
    close to ``W s`` for a batch-norm scale s < 1 too: the fold check refused them (K=16,
    s ~ 0.4-0.7, clustered with fold_bn=False as its message advised)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 8))
    y = L.BatchNormalization(name="bn1")(L.Conv2D(16, 3, padding="same", use_bias=False,
                                                  name="c1")(inp))
    model = keras.Model(inp, L.Conv2D(4, 1, name="head")(L.ReLU()(y)))
    rng = np.random.default_rng(0)
    model.get_layer("bn1").moving_variance.assign(rng.uniform(2, 6, 16).astype(np.float32))
    model.get_layer("bn1").gamma.assign(rng.uniform(0.8, 1.2, 16).astype(np.float32))
    shared = dkm_tf.share_weights(model, 16, unit="kernel", fold_bn=False,
                                  overrides={"head": None})
    pal = [p for p in shared.palettes if p.layer_name == "c1"]
    _, report = dkm_tf.factorise_convs(model, pal, force=True)
    assert report.replaced == ["c1"]
