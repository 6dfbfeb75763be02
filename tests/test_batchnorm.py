"""BatchNormalization folding: exact for every foldable layer, reported when left alone, and
wired into share_weights, strip_clustering and the palettized export.

References are independent: the unfolded Keras model itself (outputs), and numpy formulas
(s = gamma / sqrt(var + eps) on the output-channel axis) for the rescaled palettes.
"""

import warnings

import keras
import numpy as np
import pytest
from testing import subclassed_model, tf_backend_only, to_numpy

import dkm_tf
import dkm_tf.export as ex
from dkm_tf.core.palette import cluster_tensor
from dkm_tf.core.units import to_units
from dkm_tf.graph.batchnorm import fold_batch_norm
from dkm_tf.graph.batchnorm_palettes import fold_with_palettes
from dkm_tf.graph.clusterable import walk_layers

L = keras.layers
ATOL = 1e-5
# plain granularity for depthwise/separable kernels (the default would make them per channel)
PLAIN = {"DepthwiseConv2D": {"granularity": "per_tensor"},
         "SeparableConv2D": {"granularity": "per_tensor"}}


def randomize(model, seed=0):
    """Non-trivial BN statistics and biases (Keras initialises them to 0 / 1)."""
    rng = np.random.default_rng(seed)
    for layer in walk_layers(model):
        for v in layer.weights:
            name = v.path.rsplit("/", 1)[-1]
            draw = {"gamma": lambda s: rng.uniform(0.5, 2.0, s),
                    "beta": lambda s: rng.normal(0, 1, s),
                    "moving_mean": lambda s: rng.normal(0, 1, s),
                    "moving_variance": lambda s: rng.uniform(0.05, 3.0, s),
                    "bias": lambda s: rng.normal(0, 0.5, s)}.get(name)
            if draw is not None:
                v.assign(draw(tuple(v.shape)).astype(np.float32))
    return model


def snapshot(model):
    return [layer.name for layer in walk_layers(model)], [to_numpy(w).copy() for w in model.weights]


def bn_names(model):
    return sorted(x.name for x in walk_layers(model) if isinstance(x, L.BatchNormalization))


def x_for(model, n=4, seed=1):
    shape = tuple(model.input_shape[1:])
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


# (name, input shape, layer factory, kind of the folded kernel, its attribute)
KINDS = [
    ("conv1d", (9, 3), lambda b: L.Conv1D(4, 3, use_bias=b), "conv", "kernel"),
    ("conv2d", (7, 7, 3), lambda b: L.Conv2D(4, 3, strides=2, use_bias=b), "conv", "kernel"),
    ("conv2d_groups", (6, 6, 4), lambda b: L.Conv2D(6, 3, groups=2, use_bias=b), "conv",
     "kernel"),
    ("conv3d", (5, 5, 5, 2), lambda b: L.Conv3D(3, 3, use_bias=b), "conv", "kernel"),
    ("dw1d", (9, 3), lambda b: L.DepthwiseConv1D(3, depth_multiplier=2, use_bias=b),
     "depthwise", "kernel"),
    ("dw2d", (7, 7, 3), lambda b: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=b),
     "depthwise", "kernel"),
    ("sep1d", (9, 3), lambda b: L.SeparableConv1D(4, 3, depth_multiplier=2, use_bias=b),
     "conv", "pointwise_kernel"),
    ("sep2d", (7, 7, 3), lambda b: L.SeparableConv2D(4, 3, use_bias=b), "conv",
     "pointwise_kernel"),
    ("convt1d", (6, 3), lambda b: L.Conv1DTranspose(4, 3, strides=2, use_bias=b), "conv_t",
     "kernel"),
    ("convt2d", (5, 5, 3), lambda b: L.Conv2DTranspose(4, 3, strides=2, use_bias=b),
     "conv_t", "kernel"),
    ("convt3d", (4, 4, 4, 2), lambda b: L.Conv3DTranspose(3, 3, use_bias=b), "conv_t",
     "kernel"),
    ("dense", (5,), lambda b: L.Dense(4, use_bias=b), "dense", "kernel"),
    ("dense_3d_input", (3, 5), lambda b: L.Dense(4, use_bias=b), "dense", "kernel"),
]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("name,shape,make,kind,attr", KINDS, ids=[k[0] for k in KINDS])
def test_fold_is_exact_for_every_layer_kind(name, shape, make, kind, attr, use_bias):
    keras.utils.set_random_seed(0)
    model = randomize(keras.Sequential([keras.Input(shape), make(use_bias),
                                        L.BatchNormalization(name="bn")]))
    before = snapshot(model)
    x = x_for(model)
    result = fold_batch_norm(model)
    layer = result.model.layers[0]
    assert result.folded == [(model.layers[0].name, "bn")] and result.skipped == []
    assert len(result.model.layers) == 1 and layer.use_bias
    np.testing.assert_allclose(np.asarray(result.model(x)), np.asarray(model(x)), atol=ATOL)
    # the input model is untouched
    after = snapshot(model)
    assert after[0] == before[0]
    for a, b in zip(after[1], before[1]):
        np.testing.assert_array_equal(a, b)
    # palettes of the unfolded kernel (per tensor, row units) -> exact per-channel palettes
    var = getattr(model.layers[0], attr)
    pal = cluster_tensor(to_numpy(var), kind=kind, n_clusters=4, unit="row",
                         layer_name=model.layers[0].name, weight_name=attr)
    var.assign(pal.decode())
    folded, (new_pal,), _ = fold_with_palettes(model, [pal])
    kernel = to_numpy(getattr(folded.layers[0], attr))
    np.testing.assert_array_equal(kernel, new_pal.decode())
    assert new_pal.layout.granularity == "per_channel"
    assert np.array_equal(new_pal.indices.reshape(-1), pal.indices.reshape(-1))
    bn = model.layers[1]
    s = to_numpy(bn.gamma).astype(np.float64) / np.sqrt(to_numpy(bn.moving_variance) + bn.epsilon)
    np.testing.assert_allclose(new_pal.codebook, pal.codebook * s[:, None, None], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), atol=ATOL)


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_off(center, scale):
    keras.utils.set_random_seed(1)
    model = randomize(keras.Sequential([
        keras.Input((6, 6, 2)), L.Conv2D(3, 3, name="c"),
        L.BatchNormalization(center=center, scale=scale, epsilon=0.01, name="bn")]))
    x = x_for(model)
    result = fold_batch_norm(model)
    assert result.folded == [("c", "bn")]
    np.testing.assert_allclose(np.asarray(result.model(x)), np.asarray(model(x)), atol=ATOL)


@pytest.mark.parametrize("make", [lambda: L.Conv1D(4, 3, data_format="channels_first"),
                                  lambda: L.DepthwiseConv2D(3, depth_multiplier=2,
                                                            data_format="channels_first")])
def test_channels_first(make):
    layer = make()
    shape = (3, 9) if isinstance(layer, L.Conv1D) else (3, 7, 7)
    model = randomize(keras.Sequential([keras.Input(shape), layer,
                                        L.BatchNormalization(axis=1, name="bn"),
                                        L.BatchNormalization(name="bn_last")]))
    x = x_for(model)
    result = fold_batch_norm(model)
    assert result.folded == [(layer.name, "bn")]
    assert result.skipped == [("bn_last", result.skipped[0][1])]  # follows a BN
    np.testing.assert_allclose(np.asarray(result.model(x)), np.asarray(model(x)), atol=ATOL)
    plain = keras.Sequential([keras.Input(shape), make(), L.BatchNormalization(name="bn")])
    (why,) = fold_batch_norm(plain).skipped  # axis -1 is not the channel axis 1
    assert why == ("bn", why[1]) and "not the channel axis 1" in why[1]


def test_functional_folds_what_it_can_and_reports_the_rest():
    keras.utils.set_random_seed(2)
    inp = keras.Input((8, 8, 3))
    a = L.BatchNormalization(name="bn_a")(L.Conv2D(4, 3, padding="same", name="a")(inp))
    b = L.Conv2D(4, 3, padding="same", name="b")(inp)
    ab = L.Add()([L.BatchNormalization(name="bn_b")(b), b])  # b's output feeds two layers
    r = L.BatchNormalization(name="bn_r")(L.Conv2D(4, 1, activation="relu", name="r")(inp))
    p = L.BatchNormalization(name="bn_pool")(L.MaxPooling2D(name="pool")(a))
    m_in = L.BatchNormalization(name="bn_in")(inp)
    ax = L.BatchNormalization(axis=1, name="bn_axis")(L.Conv2D(8, 1, name="ax")(inp))
    shared = L.Conv2D(3, 1, name="shared")
    s1 = L.BatchNormalization(name="bn_shared")(shared(inp))
    s2 = shared(m_in)
    out_bn = L.BatchNormalization(name="bn_out")(L.Dense(3, name="head")(L.Flatten()(a)))
    model = randomize(keras.Model(inp, [ab, r, p, ax, s1, s2, out_bn]))
    x = x_for(model)
    result = fold_batch_norm(model)
    assert sorted(result.folded) == [("a", "bn_a"), ("head", "bn_out")]
    why = dict(result.skipped)
    assert sorted(why) == ["bn_axis", "bn_b", "bn_in", "bn_pool", "bn_r", "bn_shared"]
    assert "also feeds other layers" in why["bn_b"]
    assert "activation 'relu'" in why["bn_r"]
    assert "MaxPooling2D 'pool'" in why["bn_pool"]
    assert "model input" in why["bn_in"]
    assert "not the channel axis" in why["bn_axis"]
    assert "called 2 times" in why["bn_shared"]
    assert bn_names(result.model) == sorted(why)  # nothing dropped silently
    for got, ref in zip(result.model(x), model(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=ATOL)
    assert "bn_a -> a" in result.summary() and "bn_pool: it follows" in result.summary()


def test_nested_models_and_compiled_input():
    keras.utils.set_random_seed(3)
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="in_c"),
                              L.BatchNormalization(name="in_bn"), L.ReLU()], name="inner")
    i = keras.Input((6, 6, 4))
    y = L.ReLU()(L.BatchNormalization(name="f_bn")(
        L.DepthwiseConv2D(3, use_bias=False, name="f_dw")(i)))
    func = keras.Model(i, y, name="func")
    model = randomize(keras.Sequential([
        keras.Input((8, 8, 3)), inner, L.BatchNormalization(name="after_inner"), func,
        L.GlobalAveragePooling2D(), L.Dense(5, name="d"), L.BatchNormalization(name="d_bn")]))
    model.compile(optimizer="adam", loss=lambda y, p: keras.ops.mean(p))  # unregistered loss
    x = x_for(model)
    result = fold_batch_norm(model)
    assert sorted(result.folded) == [("d", "d_bn"), ("f_dw", "f_bn"), ("in_c", "in_bn")]
    assert result.skipped == [("after_inner", result.skipped[0][1])]
    assert "Sequential 'inner'" in result.skipped[0][1]
    assert bn_names(result.model) == ["after_inner"]
    np.testing.assert_allclose(np.asarray(result.model(x)), np.asarray(model(x)), atol=ATOL)
    assert model.compiled and bn_names(model) == ["after_inner", "d_bn", "f_bn", "in_bn"]


def test_bad_input_errors():
    def conv_bn(**bn):
        m = keras.Sequential([keras.Input((4, 4, 2)), L.Conv2D(2, 1, name="c"),
                              L.BatchNormalization(name="bn", **bn)])
        return m

    m = conv_bn()
    m.get_layer("bn").moving_variance.assign([1.0, np.nan])
    with pytest.raises(ValueError, match=r"'bn' has non-finite .*moving_variance"):
        fold_batch_norm(m)
    with pytest.raises(ValueError, match="'bn' has non-finite"):  # share_weights folds too
        dkm_tf.share_weights(m, 2)
    m = conv_bn(epsilon=1e-3)
    m.get_layer("bn").moving_variance.assign([1.0, -0.5])
    with pytest.raises(ValueError, match=r"moving_variance \+ epsilon <= 0"):
        fold_batch_norm(m)
    inp = keras.Input((4, 4, 2))
    out = L.BatchNormalization(name="bn_t")(L.Conv2D(2, 1)(inp), training=True)
    with pytest.raises(ValueError, match="'bn_t' is called with training=True"):
        fold_batch_norm(keras.Model(inp, out))
    with pytest.raises(TypeError, match="only Sequential and Functional"):
        fold_batch_norm(subclassed_model())
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        fold_batch_norm(L.Dense(2))
    with pytest.raises(ValueError, match="`fold_bn`"):
        dkm_tf.share_weights(conv_bn(), 2, fold_bn=True, inplace=True)
    with pytest.raises(TypeError, match="`fold_bn`"):
        dkm_tf.strip_clustering(conv_bn(), fold_bn="yes")


def conv_bn_net(seed=4):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    y = L.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(inp)
    y = L.ReLU()(L.BatchNormalization(name="bn_c1")(y))
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.ReLU()(L.BatchNormalization(name="bn_dw")(y))
    y = L.BatchNormalization(name="bn_sep")(L.SeparableConv2D(8, 3, name="sep")(y))
    y = L.Dense(16, name="fc")(L.Flatten()(y))
    y = L.ReLU()(L.BatchNormalization(name="bn_fc")(y))
    return randomize(keras.Model(inp, L.Dense(4, name="out")(y)), seed)


@tf_backend_only()
def test_share_weights_folds_and_the_palettized_export_verifies(tmp_path):
    model = conv_bn_net()
    x = np.random.default_rng(5).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    res = dkm_tf.share_weights(model, 16, overrides=PLAIN)
    assert sorted(layer for layer, _ in res.folded) == ["c1", "dw", "fc", "sep"]
    assert bn_names(res.model) == [] and len(bn_names(model)) == 4
    for p in res.palettes:
        np.testing.assert_array_equal(to_numpy(getattr(res.model.get_layer(p.layer_name),
                                              p.weight_name)), p.decode())
    for decode, storage in (("per_invoke", "int4"), ("once", "int16")):
        r = ex.to_tflite(res.model, tmp_path / f"{decode}.tflite", "palettized", res.palettes,
                         x, decode=decode, **({"keep_float": None} if decode == "once" else {}))
        assert all(c.ok for c in r.comparisons) and not any("folded" in n for n in r.notes)
        info = ex.inspect_tflite(r.path)
        assert len(info.palettized) == len(res.palettes) == 6
        assert {(p["mode"], p["storage"], p["K"]) for p in info.palettized} == \
            {(decode, storage, 16)}
        if decode == "per_invoke":  # 4 bits per weight, one 16-entry codebook per tensor
            assert sorted(p["index_bytes"] for p in info.palettized) == \
                sorted(-(-p.n_values // 2) for p in res.palettes)
            assert {p["codebook_bytes"] for p in info.palettized} == {4 * 16}


@tf_backend_only()
def test_export_folds_an_unfolded_model_and_rescales_its_palettes(tmp_path):
    """Palettes of the unfolded kernels (share_weights(fold_bn=False)): to_tflite folds as the
    converter does, stores per-channel codebooks, and verifies against the unfolded model."""
    model = conv_bn_net()
    x = np.random.default_rng(6).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    res = dkm_tf.share_weights(model, 16, fold_bn=False, overrides=PLAIN)
    assert res.folded == [] and len(bn_names(res.model)) == 4
    assert all("BatchNormalization" in r and "not folded" not in r for _, r in res.skipped)
    r = ex.to_tflite(res.model, tmp_path / "m.tflite", "palettized", res.palettes, x,
                     decode="per_invoke")
    assert all(c.ok for c in r.comparisons)
    assert any(n.startswith("folded 4 BatchNormalization") for n in r.notes)
    books = {"c1/kernel": 8, "dw/kernel": 8, "sep/depthwise_kernel": 1,  # codebooks per tensor
             "sep/pointwise_kernel": 8, "fc/kernel": 16, "out/kernel": 1}
    info = ex.inspect_tflite(r.path)
    assert sorted(p["codebook_bytes"] for p in info.palettized) == \
        sorted(4 * 16 * books[p.name] for p in res.palettes)
    assert {(p["storage"], p["K"]) for p in info.palettized} == {("int4", 16)}
    assert r.max_rel_error <= 1e-4


def test_cluster_strip_folds_with_per_channel_codebooks():
    model = conv_bn_net(seed=7)
    x = np.random.default_rng(8).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BatchNormalization is not clusterable
        wrapped = dkm_tf.cluster_weights(model, 4, overrides={"DepthwiseConv2D": PLAIN[
            "DepthwiseConv2D"]})
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    kept, kept_palettes = dkm_tf.strip_clustering(wrapped, fold_bn=False)
    assert bn_names(plain) == [] and len(bn_names(kept)) == 4
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(wrapped(x)), atol=ATOL)
    by_name = {p.name: p for p in kept_palettes}
    folded = {"c1/kernel", "dw/kernel", "sep/pointwise_kernel", "fc/kernel"}
    for p in palettes:  # decodes exactly to the stripped kernel
        np.testing.assert_array_equal(to_numpy(getattr(plain.get_layer(p.layer_name),
                                              p.weight_name)), p.decode())
        old = by_name[p.name]
        if p.name not in folded:
            np.testing.assert_array_equal(p.codebook, old.codebook)
            continue
        bn = kept.get_layer("bn_" + p.layer_name)
        s = to_numpy(bn.gamma).astype(np.float64) / np.sqrt(to_numpy(bn.moving_variance)
                                                          + bn.epsilon)
        assert p.layout.granularity == "per_channel" and p.codebook.shape[0] == s.size
        np.testing.assert_allclose(p.codebook, old.codebook * s[:, None, None], rtol=1e-6)
        assert p.n_clusters == 4 and old.layout.granularity == "per_tensor"
        assert all(np.unique(g).size <= 4 for g in to_units(p.decode(), p.layout))
