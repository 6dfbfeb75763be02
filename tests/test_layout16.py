"""channels_first layers and preprocessing / augmentation layers (probe of session 16).

Measured before the fixes (old numbers in comments):

* Keras reader: a `BatchNormalization(axis=1)` after a linear channels_first conv was charged
  as an "affine" record, while the converter folds it (the channels_last twin lists it as
  folded): +21 % hierarchy energy on a small cf CNN, +28 % on conv -> BN.
* Traced reader (subclassed models): an NCHW `Conv2D` was read as H=C, W=H, C=W (4x the MACs
  of a 4x6x4 conv, or a crash "groups=0"; a `Conv2DTranspose` crashed the same way); a
  channels_first global pooling (a Mean over axes 2, 3) was not recognised; the MUL / ADD of a
  channels_first batch norm (constant `(1, C, 1, 1)`) was charged, and so was the batch norm of
  a channels_last Conv1D (its output passes a Squeeze before the BiasAdd).
* `.tflite` reader: a channels_first global pooling (MEAN over axes [2, 3] after the
  converter's TRANSPOSE) was listed as "normalization statistics", not charged.
* Random augmentation layers (identity at inference, no op in the `.tflite`) were listed as
  "unsupported layer type RandomFlip"; CenterCrop and Resizing too.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf import energy  # noqa: E402

L = keras.layers
CF = "channels_first"
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="tracing and TFLite conversion need TensorFlow")


def _file(model, path, batch=None):
    from dkm_tf.export import convert as cv

    path.write_bytes(cv.convert(model, cv.input_specs(model, batch=batch)))
    return str(path)


def _set_bn(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2, c), rng.normal(size=c),
                               rng.normal(size=c) * 0.1, rng.uniform(0.5, 2, c)])
    return model


def _layers(fmt):
    """conv -> BN -> relu -> pool -> depthwise -> BN -> separable -> pool -> conv -> GAP ->
    dense; no output width equals its channel count (see KNOWN_LIMITATIONS: Keras' bias add)."""
    ax = 1 if fmt == CF else -1
    return [L.Conv2D(8, 3, padding="same", data_format=fmt, name="c1"),
            L.BatchNormalization(axis=ax, name="bn1"), L.ReLU(name="r1"),
            L.MaxPooling2D(2, data_format=fmt, name="mp"),
            L.DepthwiseConv2D(3, depth_multiplier=2, data_format=fmt, name="dw"),
            L.BatchNormalization(axis=ax, name="bn2"),
            L.SeparableConv2D(12, 3, padding="same", data_format=fmt, name="sep"),
            L.AveragePooling2D(2, data_format=fmt, name="ap"),
            L.Conv2D(5, (2, 1), data_format=fmt, name="c2"),
            L.GlobalAveragePooling2D(data_format=fmt, name="gap"), L.Dense(4, name="d")]


def _shape(fmt):
    return (3, 16, 14) if fmt == CF else (16, 14, 3)


class Chain(keras.Model):
    def __init__(self, layers):
        super().__init__()
        self.ls = layers

    def call(self, x):
        for layer in self.ls:
            x = layer(x)
        return x


def _pair(fmt):
    keras.utils.set_random_seed(0)
    model = _set_bn(keras.Sequential([keras.Input(_shape(fmt))] + _layers(fmt)))
    keras.utils.set_random_seed(0)
    sub = Chain(_layers(fmt))
    sub(np.zeros((1,) + _shape(fmt), np.float32))
    return model, sub


def _records(report):
    return sorted((x.shape.kind, x.macs, x.shape.in_h, x.shape.in_w, x.shape.in_c, x.shape.out_h,
                   x.shape.out_w, x.shape.out_c, x.shape.groups) for x in report.layers)


# hand count of `_layers` on 16x14: c1 16*14*8*27, (pool 8x7) dw 6*5*16*9, sep 6*5*16*9 +
# 6*5*12*16, (pool 3x2) c2 2*2*5*(2*1*12), d 5*4
HAND_MACS = 16 * 14 * 8 * 27 + 6 * 5 * 16 * 9 * 2 + 6 * 5 * 12 * 16 + 2 * 2 * 5 * 24 + 20


def test_channels_first_energy_equals_channels_last_twin_and_the_file(tmp_path, cf_runs):
    cl, cl_sub = _pair("channels_last")
    cf, cf_sub = _pair(CF)
    reports = {"cl": energy.estimate(cl), "cf": energy.estimate(cf),
               "cl traced": energy.estimate(cl_sub, input_shape=_shape("channels_last")),
               "cf traced": energy.estimate(cf_sub, input_shape=_shape(CF)),
               "cf file": energy.estimate(_file(cf, tmp_path / "cf.tflite"))}
    for name, r in reports.items():
        assert r.macs == HAND_MACS, name  # old cf traced: crash (groups=0)
        assert not [x for x in r.layers if x.shape.kind == "eltwise" and "bn" in x.name], name
    assert _records(reports["cf"]) == _records(reports["cl"])
    assert _records(reports["cf traced"]) == _records(reports["cl traced"])
    assert ("bn1", "folded into c1 (as a .tflite folds it)") in reports["cf"].skipped
    assert ("bn2", "folded into dw (as a .tflite folds it)") in reports["cf"].skipped
    # old: bn1 and bn2 charged as "affine" records, +21 % hierarchy energy
    assert reports["cf"].hierarchy_total == pytest.approx(reports["cl"].hierarchy_total)
    assert reports["cf traced"].hierarchy_total == pytest.approx(reports["cf file"].hierarchy_total)
    gap = [x for x in reports["cf file"].layers if x.shape.kind == "pool" and "gap" in x.name]
    assert [(g.shape.in_h, g.shape.in_w, g.shape.in_c) for g in gap] == [(2, 2, 5)]


@pytest.mark.parametrize("conv", ["Conv2D", "DepthwiseConv2D", "SeparableConv2D"])
def test_keras_reader_folds_a_channels_first_batch_norm_as_the_converter(conv, tmp_path):
    keras.utils.set_random_seed(0)
    args = (3,) if conv == "DepthwiseConv2D" else (4, 3)
    model = _set_bn(keras.Sequential([
        keras.Input((3, 9, 7)), getattr(L, conv)(*args, data_format=CF, name="c"),
        L.BatchNormalization(axis=1, name="bn"), L.Flatten(), L.Dense(2, name="d")]))
    k, f = energy.estimate(model), energy.estimate(_file(model, tmp_path / "c.tflite"))
    assert not [x for x in f.layers if x.shape.kind == "eltwise"]  # the converter folds it
    assert ("bn", "folded into c (as a .tflite folds it)") in k.skipped  # old: "affine"
    assert k.macs == f.macs and k.hierarchy_total == pytest.approx(f.hierarchy_total)


def test_traced_nchw_conv_is_read_in_its_own_layout(cf_runs):
    keras.utils.set_random_seed(0)
    sub = Chain([L.Conv2D(8, 3, data_format=CF, name="c"),
                L.Conv2DTranspose(3, 3, strides=2, data_format=CF, name="t"),
                L.GlobalMaxPooling2D(data_format=CF, name="g")])
    sub(np.zeros((1, 4, 6, 4), np.float32))
    r = energy.estimate(sub, input_shape=(4, 6, 4))
    c, t = r.layer("c").shape, r.layer("t").shape
    # old: in_hw (4, 6), in_c 4, out_hw (8, 4): 9,216 MACs instead of 2,304
    assert (c.in_h, c.in_w, c.in_c, c.out_h, c.out_w, c.out_c) == (6, 4, 4, 4, 2, 8)
    assert r.layer("c").macs == 4 * 2 * 8 * 36
    assert r.layer("t").macs == 4 * 2 * 8 * 9 * 3 and (t.in_h, t.in_w, t.in_c) == (4, 2, 8)
    pools = [x.shape for x in r.layers if x.shape.kind == "pool"]
    assert [(p.in_h, p.in_w, p.in_c) for p in pools] == [(9, 5, 3)]  # old: not found


def test_channels_first_global_pooling_in_a_file_is_charged(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 9, 7)),
                              L.Conv2D(6, 3, data_format=CF, name="c"),
                              L.GlobalAveragePooling2D(data_format=CF, name="gap"),
                              L.Dense(2, name="d")])
    f = energy.estimate(_file(model, tmp_path / "g.tflite"))
    pools = [x.shape for x in f.layers if x.shape.kind == "pool"]
    assert [(p.in_h, p.in_w, p.in_c, p.pool_op) for p in pools] == [(7, 5, 6, "avg")]
    assert f.hierarchy_total == pytest.approx(energy.estimate(model).hierarchy_total)
    assert not any("MEAN" in why or "mean" in name for name, why in f.skipped)


def test_traced_conv1d_batch_norm_is_folded_as_the_keras_reader_folds_it():
    for fmt, shape in (("channels_last", (20, 3)), (CF, (3, 20))):
        keras.utils.set_random_seed(0)
        layers = [L.Conv1D(8, 3, data_format=fmt, name="c"),
                  L.BatchNormalization(axis=1 if fmt == CF else -1, name="bn"),
                  L.GlobalMaxPooling1D(data_format=fmt, name="g"), L.Dense(2, name="d")]
        model = _set_bn(keras.Sequential([keras.Input(shape)] + layers))
        sub = Chain(layers)
        traced, k = energy.estimate(sub, input_shape=shape), energy.estimate(model)
        assert traced.macs == k.macs == 18 * 8 * 9 + 16
        assert not [x for x in traced.layers if x.shape.kind == "eltwise"], fmt  # old: 2
        assert traced.hierarchy_total == pytest.approx(k.hierarchy_total), fmt


def test_share_weights_per_channel_and_bn_folding_on_channels_first(cf_runs):
    model, _ = _pair(CF)
    x = np.random.default_rng(0).random((4,) + _shape(CF)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    folded, pairs, skipped = dkm_tf.fold_batch_norm(model)
    assert [p[1] for p in pairs] == ["bn1", "bn2"] and not skipped
    np.testing.assert_allclose(folded.predict(x, verbose=0), ref, rtol=0, atol=1e-5)
    r = dkm_tf.share_weights(model, 4, granularity="per_channel")
    kernel = np.asarray(r.model.get_layer("c1").kernel)  # HWIO whatever the data_format
    assert max(len(np.unique(kernel[..., j])) for j in range(8)) == 4
    assert len(np.unique(kernel)) > 4
    lossless = dkm_tf.share_weights(model, 256, granularity="per_channel").model
    np.testing.assert_allclose(lossless.predict(x, verbose=0), ref, rtol=0, atol=1e-5)


def _augmented(seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 20, 20, 3)).astype(np.float32)
    aug = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1),
                            L.RandomZoom(0.1), L.RandomContrast(0.1)], name="data_augmentation")
    norm = L.Normalization(name="norm")
    norm.adapt(x / 255.0)
    inp = keras.Input((20, 20, 3))
    h = norm(L.Rescaling(1 / 255.0, name="rescale")(aug(inp)))
    h = L.CenterCrop(16, 16, name="crop")(L.Resizing(18, 18, name="resize")(h))
    h = L.Conv2D(8, 3, activation="relu", name="c1")(h)
    out = L.Dense(4, name="d")(L.GlobalAveragePooling2D(name="gap")(h))
    return keras.Model(inp, out), x


def test_augmentation_layers_listed_as_identities_at_inference(tmp_path):
    model, _ = _augmented()
    r = energy.estimate(model)
    why = dict(r.skipped)
    random = [w for w in why.values() if w.startswith("Random")]
    assert len(random) == 4 and all("identity at inference" in w for w in random), random
    assert why["crop"] == "CenterCrop: a slice of its input, no compute"
    assert "interpolation, not priced" in why["resize"]
    assert not any("unsupported" in w for w in why.values())
    f = energy.estimate(_file(model, tmp_path / "a.tflite"))
    assert f.macs == r.macs == 14 * 14 * 8 * 27 + 32
    assert {x.shape.output_size for x in r.layers if x.shape.kind == "eltwise"} == {1200}


def test_augmentation_survives_share_and_cluster(tmp_path):
    model, x = _augmented()
    ref = np.asarray(model(x[:4], training=False))
    shared = dkm_tf.share_weights(model, 256).model
    aug = shared.get_layer("data_augmentation")
    assert [type(a).__name__ for a in aug.layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"]
    np.testing.assert_array_equal(np.asarray(aug(x[:2], training=False)), x[:2])
    assert np.abs(np.asarray(aug(x[:2], training=True)) - x[:2]).max() > 0
    for a, b in (("mean", "mean"), ("variance", "variance")):
        np.testing.assert_array_equal(np.asarray(getattr(shared.get_layer("norm"), a)),
                                      np.asarray(getattr(model.get_layer("norm"), b)))
    np.testing.assert_allclose(np.asarray(shared(x[:4], training=False)), ref, rtol=0,
                               atol=1e-2 * np.abs(ref).max())
    with pytest.warns(UserWarning, match=r"norm \(Normalization\)"):  # listed, not dropped
        wrapped = dkm_tf.cluster_weights(model, 4)
    wrapped.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(x, np.arange(32) % 4, epochs=1, batch_size=16, verbose=0)
    train = [np.asarray(wrapped(x[:4], training=True)) for _ in range(2)]
    assert np.abs(train[0] - train[1]).max() > 0  # augmentation active while training
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    np.testing.assert_allclose(np.asarray(plain(x[:4], training=False)),
                               np.asarray(wrapped(x[:4], training=False)), rtol=0, atol=1e-6)
    from dkm_tf.export import to_tflite

    rep = to_tflite(plain, str(tmp_path / "p.tflite"), format="palettized", palettes=palettes,
                    sample_inputs=x[:4].astype(np.uint8), decode="per_invoke")
    assert "batch 1 and 4" in rep.summary()


def test_lookup_and_encoding_layers_are_listed_as_no_macs():
    ints = np.random.default_rng(0).choice([3, 7, 11, 19], (16, 5)).astype(np.int64)
    lookup = L.IntegerLookup(name="il")
    lookup.adapt(ints)
    inp = keras.Input((5,), dtype="int64")
    emb = L.Flatten()(L.Embedding(lookup.vocabulary_size(), 4, name="emb")(lookup(inp)))
    hot = L.CategoryEncoding(16, output_mode="multi_hot", name="ce")(L.Hashing(16, name="h")(inp))
    model = keras.Model(inp, L.Dense(3, name="d")(L.Concatenate()([emb, hot])))
    r = energy.estimate(model)
    why = dict(r.skipped)
    for name, cls in (("il", "IntegerLookup"), ("h", "Hashing"), ("ce", "CategoryEncoding")):
        assert why[name].startswith(f"{cls}: a lookup / index encoding"), why[name]  # old:
        # "unsupported layer type IntegerLookup; supported: Conv1D/2D ..."
    assert r.macs == 36 * 3
