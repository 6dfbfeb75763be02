"""Tests of the Keras / traced-graph / TFLite readers and the reference networks."""

import math
import time

import pytest

keras = pytest.importorskip("keras")

from dkm_tf import energy  # noqa: E402
from dkm_tf.energy import SharingInfo, networks  # noqa: E402

L = keras.layers


def _tiny_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3), name="x")
    x = L.Conv2D(8, 3, activation="relu", name="c1")(inp)
    x = L.MaxPooling2D(2, name="p1")(x)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Add(name="add")([x, y])
    x = L.Conv2D(8, 3, strides=2, name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, name="fc")(x)
    return keras.Model(inp, out, name="tiny")


def _macs_by_kind(report):
    return [(x.shape.kind, x.macs, x.shape.n_weights) for x in report.layers]


# ----------------------------------------------------------------------------- Keras reader


def test_keras_reader_tiny_model():
    report = energy.estimate(_tiny_model())
    names = [x.name for x in report.layers]
    assert names == ["c1", "p1", "dw", "add", "c2", "gap", "fc"]
    c1 = report.layer("c1")
    assert c1.macs == 10 * 10 * 8 * 27
    assert report.layer("dw").shape.groups == 8
    assert report.layer("dw").macs == 5 * 5 * 8 * 9
    assert report.layer("c2").macs == 2 * 2 * 8 * 72
    assert report.layer("fc").macs == 40
    assert ("x", "no compute") in report.skipped


def test_keras_reader_conv1d_separable_grouped_and_sharing():
    inp = keras.Input((16, 4))
    x = L.Conv1D(6, 3, name="c1d")(inp)  # (14, 6)
    x = L.Reshape((14, 1, 6))(x)
    x = L.SeparableConv2D(8, (3, 1), depth_multiplier=2, name="sep")(x)  # (12, 1, 8)
    x = L.Conv2D(4, 1, groups=2, name="grp")(x)
    x = L.Flatten()(x)
    x = L.Dense(3, name="fc")(x)
    report = energy.estimate(keras.Model(inp, x))
    c1d = report.layer("c1d")
    assert (c1d.shape.kernel_h, c1d.shape.kernel_w, c1d.macs) == (1, 3, 14 * 6 * 12)
    dw, pw = report.layer("sep/depthwise"), report.layer("sep/pointwise")
    assert dw.macs == 12 * 12 * 3 and dw.shape.groups == 6  # 6 channels x multiplier 2
    assert pw.macs == 12 * 8 * 12
    assert report.layer("grp").macs == 12 * 4 * 4
    # A SharingInfo keyed by the layer name is matched to the kernel of the right size.
    shared = energy.estimate(keras.Model(inp, x), weight_sharing={
        "sep": [SharingInfo(n_clusters=4, unit_dim=1, n_units=96)],
        "c1d": SharingInfo(n_clusters=2, unit_dim=3, n_units=24)})
    assert shared.layer("sep/pointwise").n_clusters == 4
    assert shared.layer("sep/depthwise").n_clusters is None
    assert shared.layer("c1d").n_clusters == 2


class _PassThroughWrapper(L.Wrapper):
    """A minimal wrapper, like a clustering wrapper: same shapes as the inner layer."""

    def build(self, input_shape=None):
        self.layer.build(input_shape)
        self.built = True

    def call(self, inputs):
        return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def test_wrapped_layers_are_read_through_the_wrapper():
    def build(wrap):
        keras.utils.set_random_seed(0)
        inp = keras.Input((10, 10, 2))
        conv = L.Conv2D(4, 3, name="conv")
        dense = L.Dense(3, name="dense")
        x = (_PassThroughWrapper(conv, name="wrapped_conv") if wrap else conv)(inp)
        x = L.Flatten()(x)
        x = (_PassThroughWrapper(dense, name="wrapped_dense") if wrap else dense)(x)
        return keras.Model(inp, x)

    plain, wrapped = energy.estimate(build(False)), energy.estimate(build(True))
    assert _macs_by_kind(plain) == _macs_by_kind(wrapped)
    assert wrapped.paper_total == pytest.approx(plain.paper_total)
    info = SharingInfo(n_clusters=2, unit_dim=3, n_units=24)
    by_inner = energy.estimate(build(True), weight_sharing={"conv": info})
    by_outer = energy.estimate(build(True), weight_sharing={"wrapped_conv": info})
    assert by_inner.paper_total == pytest.approx(by_outer.paper_total)
    assert by_inner.layers[0].n_clusters == 2


def test_time_distributed_repeat():
    inp = keras.Input((5, 8, 8, 1))
    x = L.TimeDistributed(L.Conv2D(2, 3), name="td")(inp)
    report = energy.estimate(keras.Model(inp, x))  # one record per step, as the file's ops
    assert [(r.name, r.shape.repeat) for r in report.layers] == [("td", 1)] + [
        (f"td#{i}", 1) for i in range(2, 6)]
    assert report.macs == 5 * 6 * 6 * 2 * 9


def test_unsupported_layers_are_listed_with_reasons():
    inp = keras.Input((4, 4, 4, 1))
    x = L.Conv3D(2, 3, name="c3d")(inp)
    x = L.Flatten()(x)
    x = L.Dropout(0.5)(x)
    x = L.Dense(2, name="fc")(x)
    report = energy.estimate(keras.Model(inp, x))
    reasons = dict(report.skipped)
    assert "unsupported layer type Conv3D" in reasons["c3d"]
    assert any(r == "no compute" for r in reasons.values())
    assert [x.name for x in report.layers] == ["fc"]
    assert "c3d (unsupported layer type Conv3D" in report.summary()


def test_palette_integration_with_dkm_tf_palette():
    palette_mod = pytest.importorskip("dkm_tf.core.palette")
    model = _tiny_model()
    kernel = model.get_layer("c1").kernel.numpy()
    pal = palette_mod.cluster_tensor(kernel, kind="conv", n_clusters=4, unit="row",
                                     layer_name="c1", seed=0)
    report = energy.estimate(model, palettes=[pal], index_cost="entropy")
    layer = report.layer("c1")
    assert layer.n_clusters == pal.n_clusters and layer.unit_dim == pal.unit_dim
    assert layer.index_bits == pytest.approx(pal.entropy_bits())
    assert report.reduction.paper > 1


# ----------------------------------------------------------------------------- subclassed


class _Sub(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.c = L.Conv2D(4, 3, activation="relu", name="c")
        self.bn = L.BatchNormalization(name="bn")
        self.d = L.Dense(2, name="d")

    def build(self, input_shape):
        self.c.build(input_shape)
        shape = self.c.compute_output_shape(input_shape)
        self.bn.build(shape)
        self.d.build((input_shape[0], shape[-1]))
        self.built = True

    def call(self, x, training=False):
        h = self.bn(self.c(x), training=training)
        h = keras.ops.max(h, axis=(1, 2))
        return self.d(h)


def test_subclassed_model_needs_input_shape_then_is_traced():
    model = _Sub()
    model.build((None, 10, 10, 3))
    with pytest.raises(ValueError, match=r"subclassed.*Pass input_shape"):
        energy.estimate(model)
    report = energy.estimate(model, input_shape=(10, 10, 3))
    conv = report.layer("c")
    assert conv.macs == 8 * 8 * 4 * 27
    assert report.layer("d").macs == 8
    shared = energy.estimate(model, input_shape=(10, 10, 3),
                             weight_sharing={"c": SharingInfo(2, 3, 36)})
    assert shared.layer("c").n_clusters == 2
    with pytest.raises(ValueError, match="input_shape"):
        energy.estimate(model, input_shape=(10, -1, 3))


# ----------------------------------------------------------------------------- TFLite


def test_tflite_reader_agrees_with_keras_reader(tmp_path):
    tf = pytest.importorskip("tensorflow")
    model = _tiny_model()
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    from_keras = energy.estimate(model, bits_w=8, bits_x=8)
    from_tflite = energy.estimate(str(path), bits_w=8, bits_x=8)
    assert _macs_by_kind(from_tflite) == _macs_by_kind(from_keras)
    for a, b in zip(from_keras.layers, from_tflite.layers):
        assert a.paper_total == pytest.approx(b.paper_total), (a.name, b.name)
        assert a.hierarchy_total == pytest.approx(b.hierarchy_total), (a.name, b.name)
    ops = [x.shape.op for x in from_tflite.layers]
    assert ops == ["CONV_2D", "MAX_POOL_2D", "DEPTHWISE_CONV_2D", "ADD", "CONV_2D", "MEAN",
                   "FULLY_CONNECTED"]
    # Compression info keyed by the Keras name finds the TFLite op (export renames c1 -> c1_1).
    info = SharingInfo(n_clusters=4, unit_dim=3, n_units=3 * 3 * 8)
    a = energy.estimate(model, weight_sharing={"c1": info})
    b = energy.estimate(str(path), weight_sharing={"c1": info})
    assert a.paper_total == pytest.approx(b.paper_total)
    text = energy.energy_cli_text(str(path))
    assert "CONV_2D" in text and "TOTAL" in text
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ValueError, match="not a readable TFLite model"):
        energy.estimate(str(bad))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside keras saving
def test_cli_text_on_saved_keras_file(tmp_path):
    path = tmp_path / "tiny.keras"
    _tiny_model().save(path)
    text = energy.energy_cli_text(str(path), bits_w=8, bits_x=8)
    assert text.splitlines()[0].startswith("Energy estimate: tiny.keras (B_w=8, B_x=8")
    assert "c1" in text and "fc" in text


# ----------------------------------------------------------------------------- networks


def test_lenet5_caffe_macs():
    report = energy.estimate(networks.lenet5_caffe())
    # conv1 24*24*20*25, conv2 8*8*50*500, ip1 800*500, ip2 500*10 = 2.293 M.
    expected = 24 * 24 * 20 * 25 + 8 * 8 * 50 * 500 + 800 * 500 + 500 * 10
    assert report.macs == expected == 2_293_000
    assert sum(x.shape.n_weights for x in report.layers) == 430_500


@pytest.fixture(scope="module")
def alexnet_model():
    return networks.alexnet()


def test_alexnet_grouped_macs(alexnet_model):
    report = energy.estimate(alexnet_model)
    conv = {"conv1": 55 * 55 * 96 * (11 * 11 * 3), "conv2": 27 * 27 * 256 * (5 * 5 * 48),
            "conv3": 13 * 13 * 384 * (3 * 3 * 256), "conv4": 13 * 13 * 384 * (3 * 3 * 192),
            "conv5": 13 * 13 * 256 * (3 * 3 * 192)}
    fc = {"fc6": 9216 * 4096, "fc7": 4096 * 4096, "fc8": 4096 * 1000}
    for name, macs in {**conv, **fc}.items():
        assert report.layer(name).macs == macs, name
    # Sze et al., Proc. IEEE 2017, Table: AlexNet 724 M MACs (666 M conv, 58.6 M FC), 61 M weights.
    assert report.macs == 724_406_816
    assert sum(conv.values()) == pytest.approx(666e6, rel=1e-3)
    assert sum(x.shape.n_weights for x in report.layers) == pytest.approx(61e6, rel=2e-3)


def test_googlenet_v1_macs_match_szegedy_table1():
    report = energy.estimate(networks.googlenet_v1())
    # Szegedy et al. 2015, Table 1, "ops" column (M), rounded.
    table = {"conv1_7x7_s2": 118, "conv2": 360, "inception_3a": 128, "inception_3b": 304,
             "inception_4a": 73, "inception_4b": 88, "inception_4c": 100, "inception_4d": 119,
             "inception_4e": 170, "inception_5a": 54, "inception_5b": 71}
    for prefix, mops in table.items():
        macs = sum(x.macs for x in report.layers if x.name.startswith(prefix))
        # Table 1's 5a row (1072K params, 54M ops) disagrees with its own filter counts,
        # which give 1042K params and 49 * 1,042,432 = 51.1M MACs.
        tol = 3.5 if prefix == "inception_5a" else 1.0
        assert macs / 1e6 == pytest.approx(mops, abs=tol), prefix
    assert sum(x.macs for x in report.layers if x.name.startswith("inception_5a")) == 49 * (
        832 * 256 + 832 * 160 + 160 * 9 * 320 + 832 * 32 + 32 * 25 * 128 + 832 * 128)
    assert report.macs == pytest.approx(sum(table.values()) * 1e6, rel=3e-3)
    assert all(x.shape.kind != "dense" for x in report.layers)  # GAP variant, no FC
    assert sum(x.shape.n_weights for x in report.layers) == pytest.approx(5.97e6, rel=5e-3)


def test_wrn_16_4_shapes():
    report = energy.estimate(networks.wrn_16_4())
    convs = [x for x in report.layers if x.shape.kind == "conv"]
    assert len(convs) == 16
    assert sum(x.shape.n_weights for x in convs) == 2_742_704  # methods.md §1.7
    per_pixel = {32: 432 + 9216 + 36864 + 1024 + 2 * 36864 + 73728,
                 16: 147456 + 8192 + 2 * 147456 + 294912,
                 8: 589824 + 32768 + 2 * 589824}
    expected = sum(hw * hw * w for hw, w in per_pixel.items())
    assert sum(x.macs for x in convs) == expected == 505_856_000


def test_estimate_is_fast_on_a_big_model(alexnet_model):
    # The formal timing is in bench/energy_validation.py; this only guards against blow-ups.
    t0 = time.perf_counter()
    report = energy.estimate(alexnet_model)
    assert time.perf_counter() - t0 < 5.0
    assert math.isfinite(report.hierarchy_total) and math.isfinite(report.paper_total)


def test_dynamic_functional_model_needs_input_shape():
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, name="c")(inp)
    x = L.Conv2D(4, 3, groups=2, name="g")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, L.Dense(2, name="d")(x))
    with pytest.raises(ValueError, match="dynamic input dimensions"):
        energy.estimate(model)
    report = energy.estimate(model, input_shape=(10, 10, 3))
    assert report.layer("c").macs == 8 * 8 * 4 * 27
    assert report.layer("d").macs == 8
    # Grouped convolutions are nested tf.functions in the trace: listed, not dropped.
    assert any("nested function call" in why for _, why in report.skipped)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cluster_weights_wrapper_and_its_palettes():
    layers_mod = pytest.importorskip("dkm_tf.training.wrapper")
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 3))
    w1 = layers_mod.ClusterWeights(L.Conv2D(4, 3, name="conv"), n_clusters=4, unit="row",
                                   name="cw_conv")
    w2 = layers_mod.ClusterWeights(L.SeparableConv2D(6, 3, name="sep"), n_clusters=3,
                                   name="cw_sep")
    x = L.Flatten()(w2(w1(inp)))
    model = keras.Model(inp, L.Dense(2, name="fc")(x))
    palettes = w1.palettes() + w2.palettes()
    report = energy.estimate(model, palettes=palettes, index_cost="entropy")
    assert report.layer("cw_conv").macs == 8 * 8 * 4 * 27
    assert report.layer("cw_conv").unit_dim == 3
    assert report.layer("cw_sep/depthwise").n_clusters == palettes[1].n_clusters
    assert report.layer("cw_sep/pointwise").n_clusters == palettes[2].n_clusters
    assert report.layer("fc").n_clusters is None
    assert report.reduction.paper > 1
