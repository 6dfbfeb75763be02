"""Issue 12, the cheaper convolution: FLOP counts (methods.md §2.6) against brute force,
FactorisedConv2D against an independent numpy conv of the decoded kernel (Keras and TFLite),
factorise_convs' per-layer report, save/load, the energy reader, bad input."""

import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkm_tf.core.kernel_flops import conv_output_hw, distinct_counts, kernel_flops  # noqa: E402
from dkm_tf.graph.factorise import factorise_convs  # noqa: E402
from dkm_tf.graph.factorised import FactorisedConv2D, slot_tables  # noqa: E402

RTOL = 1e-5  # Keras float32, relative to max |reference|
TFLITE_ATOL = 1e-5  # TFLite float32 on O(1) outputs of small layers


def factors(seed, cin, cout, k, kh=3, kw=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, kh, kw)).astype(np.float32),
            rng.integers(0, k, (cin, cout)).astype(np.int32),
            rng.standard_normal((cin, cout)).astype(np.float32))


def decode(cb, idx, sc):
    return (cb[idx] * sc[..., None, None]).transpose(2, 3, 0, 1)


def np_conv(x, w, b, stride, padding):
    """Independent float64 reference: y[n, p, q, j] = sum x[n, p*s + a - pt, q*s + c - pl, i]
    * w[a, c, i, j] (+ b), TensorFlow's 'same' padding split (extra row/column at the end)."""
    n, h, wd, _ = x.shape
    kh, kw, _, cout = w.shape
    oh, ow = conv_output_hw((h, wd), (kh, kw), stride, padding)
    if padding == "same":
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    y = np.zeros((n, oh, ow, cout))
    for a, c in itertools.product(range(kh), range(kw)):
        patch = x[:, a:a + stride * (oh - 1) + 1:stride, c:c + stride * (ow - 1) + 1:stride]
        y += np.einsum("npqi,ij->npqj", patch.astype(np.float64), w[a, c].astype(np.float64))
    return y + (0 if b is None else b)


# ------------------------------------------------------------------------ FLOP counts
def brute_flops(idx, hi, wi, ho, wo, kh, kw):
    cin, cout = idx.shape
    u_in = [len({int(idx[i, j]) for j in range(cout)}) for i in range(cin)]
    u_out = [len({int(idx[i, j]) for i in range(cin)}) for j in range(cout)]
    return {"baseline": ho * wo * cin * cout * kh * kw,
            "conv_then_add": sum(u_in) * ho * wo * kh * kw,
            "conv_then_add_accumulate": cin * cout * ho * wo,
            "add_then_conv": sum(u_out) * ho * wo * kh * kw,
            "add_then_conv_additions": cin * cout * hi * wi,
            "paper_baseline": hi * wi * cin * cout * kh * kw,
            "paper_conv_then_add": sum(u_in) * hi * wi * kh * kw,
            "paper_add_then_conv": sum(u_out) * hi * wi * kh * kw,
            "realised_dense": (cin * max(u_in) * ho * wo * kh * kw
                               + cin * max(u_in) * cout * ho * wo),
            "realised_gather": cin * max(u_in) * ho * wo * kh * kw + cin * cout * ho * wo,
            "channel_multiplier": max(u_in)}


@pytest.mark.parametrize("seed", range(6))
def test_kernel_flops_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    cin, cout, k = (int(v) for v in rng.integers(1, 9, 3))
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    stride, padding = int(rng.integers(1, 3)), ["same", "valid"][seed % 2]
    idx = rng.integers(0, k, (cin, cout))
    hi, wi = 7 + seed, 5 + seed
    f = kernel_flops(idx, in_hw=(hi, wi), kernel=(kh, kw), strides=stride, padding=padding)
    ho, wo = ((hi + stride - 1) // stride, (wi + stride - 1) // stride) if padding == "same" \
        else ((hi - kh) // stride + 1, (wi - kw) // stride + 1)
    expected = brute_flops(idx, hi, wi, ho, wo, kh, kw)
    assert {key: getattr(f, key) for key in expected} == expected
    assert f.conv_then_add_total == expected["conv_then_add"] + cin * cout * ho * wo
    assert f.best == ("add_then_conv" if f.add_then_conv_total < f.conv_then_add_total
                      else "conv_then_add")
    assert f.ratio("paper") == pytest.approx(
        expected["paper_baseline"] / min(expected["paper_conv_then_add"],
                                         expected["paper_add_then_conv"]))


def test_kernel_flops_known_values_and_distinct_counts():
    idx = np.array([[0, 0, 1], [2, 2, 2]])
    np.testing.assert_array_equal(distinct_counts(idx, 1), [2, 1])
    np.testing.assert_array_equal(distinct_counts(idx, 0), [2, 2, 2])
    f = kernel_flops(idx, in_hw=4, kernel=3, strides=2, padding="same")  # out 2x2
    assert (f.baseline, f.conv_then_add, f.add_then_conv) == (4 * 6 * 9, 4 * 3 * 9, 4 * 6 * 9)
    assert f.paper_conv_then_add == 16 * 3 * 9  # the paper counts at the input size
    assert f.ratio("theoretical") == pytest.approx(216 / (108 + 24))


# ------------------------------------------------------------------------ the layer
@pytest.mark.parametrize("mixing,form", [("dense", "conv_then_add"), ("gather", "conv_then_add"),
                                         ("dense", "add_then_conv")])
@pytest.mark.parametrize("stride,padding,bias", [(1, "same", True), (1, "valid", False),
                                                 (2, "same", False), (2, "valid", True)])
def test_factorised_layer_equals_plain_conv_of_decoded_kernel(mixing, form, stride, padding,
                                                              bias):
    cb, idx, sc = factors(1, cin=5, cout=6, k=4)
    b = np.linspace(-1, 1, 6).astype(np.float32) if bias else None
    layer = FactorisedConv2D.from_factors(cb, idx, sc, b, strides=stride, padding=padding,
                                          mixing=mixing, form=form)
    x = np.random.default_rng(2).standard_normal((2, 9, 8, 5)).astype(np.float32)
    y = np.asarray(layer(x))
    ref = np_conv(x, decode(cb, idx, sc), b, stride, padding)
    assert y.shape == ref.shape == layer.compute_output_shape(x.shape)
    assert np.max(np.abs(y - ref)) <= RTOL * np.max(np.abs(ref))
    plain = keras.layers.Conv2D(6, 3, strides=stride, padding=padding, use_bias=bias)
    plain.build(x.shape)
    plain.set_weights([decode(cb, idx, sc)] + ([b] if bias else []))
    assert np.max(np.abs(y - np.asarray(plain(x)))) <= RTOL * np.max(np.abs(ref))
    np.testing.assert_array_equal(layer.indices, idx)


def test_slot_tables_pad_short_rows():
    table, slots = slot_tables(np.array([[3, 1, 3], [0, 0, 0]]))
    np.testing.assert_array_equal(table, [[1, 3], [0, 0]])
    np.testing.assert_array_equal(np.take_along_axis(table, slots, 1), [[3, 1, 3], [0, 0, 0]])


def three_conv_model():
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="valid", activation="relu",
                            name="c2")(h)
    h = keras.layers.Conv2D(4, 1, name="c3")(h)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(h))


def model_factors(k=4, seed=0):
    return {"c1": factors(seed, 3, 8, k), "c2": factors(seed + 1, 8, 16, k)}


def decoded_model(model, fac):
    ref = keras.models.clone_model(model)
    ref.set_weights(model.get_weights())
    for name, f in fac.items():
        ref.get_layer(name).kernel.assign(decode(*f))
    return ref


def test_factorise_convs_report_and_outputs():
    model, fac = three_conv_model(), model_factors()
    before = [w.copy() for w in model.get_weights()]
    new, report = factorise_convs(model, fac, form="conv_then_add")
    assert report.replaced == ["c1", "c2"]
    rows = {r.name: r for r in report.layers}
    assert rows["c3"].action == "kept" and rows["c3"].reason == "no factors given"
    assert rows["c2"].ratio == pytest.approx(
        kernel_flops(fac["c2"][1], in_hw=12, kernel=3, strides=2, padding="valid")
        .ratio("theoretical"))
    assert rows["c1"].kernel_max_abs_diff > 0.1  # random factors are not the layer's kernel
    assert isinstance(new.get_layer("c1"), FactorisedConv2D)
    assert new.get_layer("c2").activation is keras.activations.relu
    x = np.random.default_rng(3).standard_normal((3, 12, 12, 3)).astype(np.float32)
    ref = np.asarray(decoded_model(model, fac)(x))
    assert np.max(np.abs(np.asarray(new(x)) - ref)) <= RTOL * np.max(np.abs(ref))
    for a, b in zip(before, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(a, b)
    assert "c1: replaced" in report.summary()


def test_factorise_convs_keeps_layers_that_are_not_cheaper():
    model = three_conv_model()
    cb, _, sc = factors(0, 3, 8, 24)
    idx = np.arange(24, dtype=np.int32).reshape(3, 8)  # U_i = 8 = cout: no sharing to use
    fac = {"c1": (cb, idx, sc)}
    new, report = factorise_convs(model, fac)
    row = report.layers[0]
    assert row.name == "c1" and row.action == "kept" and row.reason.startswith("not cheaper")
    assert row.ratio < 1 and type(new.get_layer("c1")) is keras.layers.Conv2D
    forced, report = factorise_convs(model, fac, force=True)
    assert report.replaced == ["c1"] and "forced" in report.layers[0].reason
    assert isinstance(forced.get_layer("c1"), FactorisedConv2D)
    # K=16 on 8 -> 16 channels: cheaper in theory, but the dense mixing (cin*U*cout MACs per
    # position) makes what the layer runs dearer than the conv; "realised" keeps it
    fac = {"c2": factors(7, 8, 16, 16)}
    flops = kernel_flops(fac["c2"][1], in_hw=12, kernel=3, strides=2, padding="valid")
    assert flops.ratio("theoretical") > 1 > flops.ratio("realised")
    for criterion, action in (("theoretical", "replaced"), ("realised", "kept")):
        _, report = factorise_convs(model, fac, criterion=criterion)
        assert {r.name: r.action for r in report.layers}["c2"] == action


def test_factorise_convs_from_kernel_palettes():
    import dkm_tf

    model = three_conv_model()
    shared = dkm_tf.share_weights(model, 4, unit="kernel", codebook="shared")
    new, report = factorise_convs(shared.model, shared.palettes, force=True)
    assert sorted(report.replaced) == ["c1", "c2"]
    assert all(r.kernel_max_abs_diff < 1e-5 for r in report.layers if r.action == "replaced")
    x = np.random.default_rng(4).standard_normal((2, 12, 12, 3)).astype(np.float32)
    ref = np.asarray(shared.model(x))
    assert np.max(np.abs(np.asarray(new(x)) - ref)) <= RTOL * np.max(np.abs(ref))


@pytest.mark.parametrize("mixing,ops", [("dense", {"DEPTHWISE_CONV_2D", "CONV_2D"}),
                                        ("gather", {"DEPTHWISE_CONV_2D", "GATHER", "SUM"})])
def test_tflite_float_export_matches(tmp_path, mixing, ops):
    from dkm_tf.export.inspect import inspect_tflite
    from dkm_tf.export.tflite import to_tflite
    from dkm_tf.export.verify import run_tflite

    model, fac = three_conv_model(), model_factors()
    new, _ = factorise_convs(model, fac, mixing=mixing, force=True)
    x = np.random.default_rng(5).standard_normal((4, 12, 12, 3)).astype(np.float32)
    path = str(tmp_path / "f.tflite")
    to_tflite(new, path, format="float", sample_inputs=x)
    info = inspect_tflite(path)
    assert ops <= set(info.ops)
    # the depthwise kernel and the mixing matrix are folded into constants: nothing rebuilds
    # them per invoke (a run-time kernel would also keep XNNPACK off the conv)
    assert not {"ONE_HOT", "TRANSPOSE"} & set(info.ops), info.ops
    assert info.ops.get("GATHER", 0) == (2 if mixing == "gather" else 0), info.ops
    assert not any(op.startswith(("CUSTOM", "Flex")) for op in info.ops), info.ops
    with open(path, "rb") as f:
        y = run_tflite(f.read(), [x])[0]
    assert np.max(np.abs(y - np.asarray(new(x)))) <= TFLITE_ATOL
    assert np.max(np.abs(y - np_reference(model, fac, x))) <= TFLITE_ATOL


def np_reference(model, fac, x):
    """The three-conv model in numpy, float64, with decoded kernels."""
    w = {layer.name: layer.get_weights() for layer in model.layers}
    h = np.maximum(np_conv(x, decode(*fac["c1"]), w["c1"][1], 1, "same"), 0)
    h = np.maximum(np_conv(h, decode(*fac["c2"]), w["c2"][1], 2, "valid"), 0)
    h = np_conv(h, w["c3"][0], w["c3"][1], 1, "valid")
    return h.mean(axis=(1, 2))


@pytest.mark.parametrize("mixing", ["dense", "gather"])
def test_save_load_round_trip(tmp_path, mixing):
    new, _ = factorise_convs(three_conv_model(), model_factors(), mixing=mixing, force=True)
    path = str(tmp_path / "f.keras")
    new.save(path)
    back = keras.models.load_model(path)  # no custom_objects: the class is registered
    x = np.random.default_rng(6).standard_normal((2, 12, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(new(x)))
    layer = back.get_layer("c2")
    assert isinstance(layer, FactorisedConv2D) and layer.mixing == mixing
    np.testing.assert_array_equal(layer.indices, model_factors()["c2"][1])


@pytest.mark.parametrize("form", ["conv_then_add", "add_then_conv"])
def test_energy_counts_the_factorised_macs(form):
    from dkm_tf.energy import estimate

    model, fac = three_conv_model(), model_factors()
    new, _ = factorise_convs(model, fac, force=True, form=form)
    plain, fact = estimate(model), estimate(new)
    macs = {}
    for rec in fact.layers:
        macs[rec.shape.layer] = macs.get(rec.shape.layer, 0) + rec.shape.macs
    total = f"{form}_total"
    assert macs["c1"] == getattr(kernel_flops(fac["c1"][1], in_hw=12, kernel=3), total)
    assert macs["c2"] == getattr(kernel_flops(fac["c2"][1], in_hw=12, kernel=3, strides=2,
                                              padding="valid"), total)
    base = {rec.shape.layer: rec.shape.macs for rec in plain.layers}
    assert macs["c3"] == base["c3"]
    names = [rec.shape.name for rec in fact.layers if rec.shape.layer == "c2"]
    if form == "conv_then_add":
        assert macs["c1"] < base["c1"]
        assert names[-1] == "c2/accumulate" and names[0].startswith("c2/centroids")
    else:
        assert names == ["c2/sums", "c2/centroids"]


# ------------------------------------------------------------------------ bad input
def test_bad_factors_are_refused():
    cb, idx, sc = factors(0, 3, 8, 4)
    with pytest.raises(ValueError, match="`indices`.*\\[0, 4\\)"):
        FactorisedConv2D.from_factors(cb, idx + 4, sc)
    with pytest.raises(ValueError, match="`scales`"):
        FactorisedConv2D.from_factors(cb, idx, sc[:, :4])
    with pytest.raises(ValueError, match="`codebook`"):
        FactorisedConv2D.from_factors(cb[0], idx, sc)
    with pytest.raises(TypeError, match="`indices`"):
        FactorisedConv2D.from_factors(cb, idx.astype(np.float32), sc)
    with pytest.raises(ValueError, match="`bias`"):
        FactorisedConv2D.from_factors(cb, idx, sc, np.zeros(3))
    with pytest.raises(ValueError, match="`data_format`"):
        FactorisedConv2D.from_factors(cb, idx, sc, data_format="channels_first")
    with pytest.raises(ValueError, match="`mixing`"):
        FactorisedConv2D.from_factors(cb, idx, sc, mixing="sparse")
    layer = FactorisedConv2D.from_factors(cb, idx, sc)
    with pytest.raises(ValueError, match="3 channels"):
        layer(np.zeros((1, 5, 5, 4), np.float32))


def test_factorise_convs_bad_input():
    model = three_conv_model()
    cb, idx, sc = factors(0, 3, 8, 4)
    with pytest.raises(ValueError, match="unknown layer names \\['nope'\\]"):
        factorise_convs(model, {"nope": (cb, idx, sc)})
    with pytest.raises(ValueError, match="codebook \\(K, 3, 3\\)"):
        factorise_convs(model, {"c1": (cb[:, :2, :2], idx, sc)})
    with pytest.raises(ValueError, match="indices/scales"):
        factorise_convs(model, {"c1": factors(0, 3, 5, 4)})
    with pytest.raises(ValueError, match="transforms"):
        factorise_convs(model, {"c1": (cb, idx, np.ones_like(idx), sc)})
    with pytest.raises(ValueError, match="criterion"):
        factorise_convs(model, {"c1": (cb, idx, sc)}, criterion="fastest")
    first = keras.Sequential([keras.Input((3, 8, 8)),
                              keras.layers.Conv2D(4, 3, data_format="channels_first",
                                                  name="cf")])
    with pytest.raises(ValueError, match="channels_first"):
        factorise_convs(first, {"cf": factors(0, 3, 4, 2)})
    dilated = keras.Sequential([keras.Input((8, 8, 3)),
                                keras.layers.Conv2D(4, 3, dilation_rate=2, name="d")])
    with pytest.raises(ValueError, match="dilation_rate"):
        factorise_convs(dilated, {"d": factors(0, 3, 4, 2)})


def test_kernel_flops_bad_input():
    with pytest.raises(ValueError, match="`indices`"):
        kernel_flops(np.zeros((2, 2, 2), int), in_hw=4, kernel=3)
    with pytest.raises(ValueError, match="`indices`"):
        kernel_flops(np.array([[-1]]), in_hw=4, kernel=3)
    with pytest.raises(ValueError, match="`padding`"):
        kernel_flops(np.array([[0]]), in_hw=4, kernel=3, padding="full")
    with pytest.raises(ValueError, match="`in_hw`"):
        kernel_flops(np.array([[0]]), in_hw=2, kernel=3, padding="valid")


def test_add_then_conv_chosen_where_outputs_share_centroids(tmp_path):
    """Outputs that each use one centroid (inputs use all K): add-then-conv is the cheaper
    form, ``form="auto"`` picks it, and it computes the plain conv in Keras and TFLite."""
    from dkm_tf.export.inspect import inspect_tflite
    from dkm_tf.export.tflite import to_tflite
    from dkm_tf.export.verify import run_tflite

    model = three_conv_model()
    rng = np.random.default_rng(7)
    fac = {}
    for name, cin, cout in (("c1", 3, 8), ("c2", 8, 16)):
        cb = rng.standard_normal((4, 3, 3)).astype(np.float32)
        idx = np.tile(np.arange(cout) % 4, (cin, 1))            # column j: one centroid
        sc = rng.standard_normal((cin, cout)).astype(np.float32)
        fac[name] = (cb, idx, sc)
    new, report = factorise_convs(model, fac)
    rows = {r.name: r for r in report.layers}
    # c1 (stride 1): 8 outputs x 1 centroid beat 3 inputs x 4 centroids; c2 (stride 2,
    # valid): add-then-conv's input sums run at 12x12, not 5x5, so conv-then-add stays cheaper
    for name, want in (("c1", "add_then_conv"), ("c2", "conv_then_add")):
        f = kernel_flops(fac[name][1], in_hw=12, kernel=3, strides=1 if name == "c1" else 2,
                         padding="same" if name == "c1" else "valid")
        assert rows[name].flops["best"] == f.best == want
        assert f"({want.replace('_', '-')})" in rows[name].reason
        assert new.get_layer(name).form == want
        total = f.add_then_conv_total if want == "add_then_conv" else f.conv_then_add_total
        assert rows[name].ratio == pytest.approx(f.baseline / total)
    x = rng.standard_normal((3, 12, 12, 3)).astype(np.float32)
    ref = np_reference(model, fac, x)
    assert np.max(np.abs(np.asarray(new(x)) - ref)) <= RTOL * np.max(np.abs(ref))
    path = str(tmp_path / "a.tflite")
    to_tflite(new, path, format="float", sample_inputs=x)
    info = inspect_tflite(path)
    assert {"DEPTHWISE_CONV_2D", "CONV_2D", "SUM"} <= set(info.ops)
    assert not {"ONE_HOT", "GATHER", "TRANSPOSE"} & set(info.ops), info.ops
    with open(path, "rb") as fh:
        y = run_tflite(fh.read(), [x])[0]
    assert np.max(np.abs(y - ref)) <= TFLITE_ATOL
    back_path = str(tmp_path / "a.keras")
    new.save(back_path)
    back = keras.models.load_model(back_path)
    assert back.get_layer("c1").form == "add_then_conv"
    np.testing.assert_array_equal(back.get_layer("c1").indices, fac["c1"][1])
    np.testing.assert_array_equal(np.asarray(back(x)), np.asarray(new(x)))
    with pytest.raises(ValueError, match="mixing"):
        factorise_convs(model, fac, form="add_then_conv", mixing="gather")


@pytest.mark.parametrize("strides", [1, 2])
def test_unknown_spatial_size_judges_add_then_conv_as_a_known_one(strides):
    """add-then-conv's input additions scale with the input positions: the stand-in for an
    unknown size counted them kh*kw times per output position (ratio 0.94 vs 5.76 on 32x32),
    and the reason printed conv-then-add's MACs next to add-then-conv's ratio."""
    cin = cout = 16
    idx = np.tile(np.arange(cout) % 4, (cin, 1)).astype(np.int32)
    rng = np.random.default_rng(0)
    cb = rng.standard_normal((4, 3, 3)).astype(np.float32)
    sc = rng.standard_normal((cin, cout)).astype(np.float32)

    def build(hw):
        inp = keras.Input((hw, hw, cin))
        m = keras.Model(inp, keras.layers.Conv2D(cout, 3, strides=strides, padding="same",
                                                 name="c")(inp))
        m.get_layer("c").set_weights([(cb[idx] * sc[..., None, None]).transpose(2, 3, 0, 1),
                                      np.zeros(cout, np.float32)])
        return m

    rows = {hw: factorise_convs(build(hw), {"c": (cb, idx, sc)},
                                       form="add_then_conv")[1].layers[0] for hw in (32, None)}
    out = 32 // strides
    flops = kernel_flops(idx, in_hw=32, kernel=3, strides=strides)
    want = flops.baseline / flops.add_then_conv_total  # hand count: 2304 / (144 + 256 s^2)
    np.testing.assert_allclose(want, 2304 / (144 + 256 * strides ** 2))
    for row in rows.values():
        assert row.action == "replaced"
        np.testing.assert_allclose(row.ratio, want, rtol=1e-9)
    assert rows[32].reason.startswith(f"cheaper: {flops.add_then_conv_total:,} vs "
                                      f"{out * out * 2304:,} MACs")
