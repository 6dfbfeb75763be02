"""Documented behaviours a user met as silent wrong results (limits audit, 2026-12-07, §A):
an overrides entry that only sets n_clusters switched a depthwise kernel to per tensor."""

import io
import json
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402

L = keras.layers


def _dw_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    y = L.DepthwiseConv2D(3, name="dw")(inp)
    y = L.SeparableConv2D(3, 3, name="sep")(y)
    return keras.Model(inp, L.Dense(2, name="fc")(L.Flatten()(y)))


def _granularities(res):
    return {p.name: p.layout.granularity for p in res.palettes}


@pytest.mark.parametrize("overrides", [{"dw": {"n_clusters": 4}, "sep": {"n_clusters": 4}},
                                       {"DepthwiseConv2D": {"n_clusters": 4}, "sep": {}},
                                       {"dw": {"init": "linear"}}])
def test_override_without_granularity_keeps_depthwise_per_channel(overrides):
    """share_weights(m, 4, overrides={"dw": {"n_clusters": 4}}) gave dw/kernel per_tensor
    (no note) where share_weights(m, 4) gives per_channel."""
    model = _dw_model()
    plain = _granularities(dkm_tf.share_weights(model, 4))
    res = dkm_tf.share_weights(model, 4, overrides=overrides)
    assert _granularities(res) == plain
    assert plain["dw/kernel"] == plain["sep/depthwise_kernel"] == "per_channel"
    assert plain["fc/kernel"] == plain["sep/pointwise_kernel"] == "per_tensor"
    by_name = {p.name: p for p in res.palettes}
    assert "per-channel codebooks" in by_name["dw/kernel"].note
    # per channel: each of the 4 channels' 9 weights has its own codebook of <= 4 values
    kernel = res.model.get_layer("dw").kernel.numpy()  # (3, 3, 4, 1)
    for c in range(4):
        assert len(np.unique(kernel[:, :, c, 0])) <= 4
    assert len(np.unique(kernel)) > 4


def test_explicit_granularity_in_an_override_wins():
    model = _dw_model()
    res = dkm_tf.share_weights(model, 4, overrides={
        "DepthwiseConv2D": {"granularity": "per_tensor"},
        "sep": {"n_clusters": 3, "granularity": "per_tensor"}})
    g = _granularities(res)
    assert g["dw/kernel"] == g["sep/depthwise_kernel"] == "per_tensor"
    assert len(np.unique(res.model.get_layer("dw").kernel.numpy())) <= 4
    # the class's granularity stays under a name's entry that does not set one
    res = dkm_tf.share_weights(model, 4, overrides={
        "DepthwiseConv2D": {"granularity": "per_tensor"}, "dw": {"n_clusters": 3}})
    assert _granularities(res)["dw/kernel"] == "per_tensor"
    # a global per_channel: every kernel per channel, named or not
    res = dkm_tf.share_weights(model, 4, granularity="per_channel",
                               overrides={"dw": {"n_clusters": 3}})
    assert set(_granularities(res).values()) == {"per_channel"}


def test_cluster_weights_override_without_granularity_keeps_depthwise_per_channel():
    model = _dw_model()
    for overrides in (None, {"dw": {"n_clusters": 4}}):
        _, report = dkm_tf.cluster_weights(model, 4, overrides=overrides, return_report=True)
        settings = {name: s for name, _, s in report.clustered}
        assert settings["dw"]["granularity"] == "per_channel", overrides
    _, report = dkm_tf.cluster_weights(
        model, 4, overrides={"dw": {"granularity": "per_tensor"}}, return_report=True)
    assert {n: s for n, _, s in report.clustered}["dw"]["granularity"] == "per_tensor"


def test_cli_overrides_entry_without_granularity_keeps_depthwise_per_channel(tmp_path):
    from dkm_tf import cli  # noqa: PLC0415
    path = tmp_path / "m.keras"
    _dw_model().save(path)
    out_dir, out, err = tmp_path / "out", io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(path), "--n_clusters", "4", "--notflite",
                  "--noplots", "--quiet", "--output_dir", str(out_dir), "--overrides",
                  json.dumps({"dw": {"n_clusters": 4}})], stdout=out, stderr=err)
    assert rc == 0, err.getvalue()
    rows = {r["name"]: r for r in json.loads((out_dir / "report.json").read_text())
            ["size"]["rows"]}
    assert rows["dw/kernel"]["granularity"] == "per_channel"
    assert rows["sep/depthwise_kernel"]["granularity"] == "per_channel"


# (b) scaled kernel clustering stored a tiny kernel's float16 scale as 0 without a word


def _tiny_kernel_model(norms=(1e-8,)):
    """Conv2D(4, 3x3) on 6x6x4 whose kernels [:, :, i, 0] are rescaled to ``norms``."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    conv = L.Conv2D(4, 3, name="c")
    model = keras.Model(inp, conv(inp))
    k, b = conv.get_weights()
    for i, norm in enumerate(norms):
        k[:, :, i, 0] *= norm / np.linalg.norm(k[:, :, i, 0])
    conv.set_weights([k, b])
    return model


def test_share_weights_notes_kernels_whose_float16_scale_underflows():
    model = _tiny_kernel_model((1e-8, 1e-6))
    res = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared")
    kernel = res.model.get_layer("c").kernel.numpy()
    assert np.all(kernel[:, :, 0, 0] == 0)  # float16's smallest subnormal is 6e-8
    note = res.palettes[0].note
    assert "1 of 16 kernel(s): float16 scale underflows to 0" in note, note
    # 1e-6 is a float16 subnormal: steps of 2^-24 = 6e-8, so up to 3 % off
    assert "1 of 16 kernel(s): float16 scale below 3e-06" in note, note
    assert "scale_bits=32 keeps them" in note
    # 32-bit scales keep both (within k-means' fit of the shape), and say nothing
    res32 = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared", scale_bits=32)
    kept = res32.model.get_layer("c").kernel.numpy()
    assert 0.5e-8 < np.linalg.norm(kept[:, :, 0, 0]) <= 1.0e-8 * 1.001
    assert "float16 scale" not in res32.palettes[0].note
    # an ordinary layer gets no such note
    plain = dkm_tf.share_weights(_tiny_kernel_model(()), 8, unit="kernel", codebook="shared")
    assert "float16 scale" not in plain.palettes[0].note


def test_cluster_weights_warns_of_kernels_whose_float16_scale_underflows():
    model = _tiny_kernel_model((1e-8,))
    with pytest.warns(UserWarning, match=r"layer 'c': 1 of 16 kernel\(s\): float16 scale "
                                         r"underflows to 0.*scale_bits=32 keeps them"):
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 32 bits: no warning
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared", scale_bits=32)


def test_compress_notes_name_the_layer_whose_float16_scales_underflow():
    model = _tiny_kernel_model((1e-8,))
    res = dkm_tf.compress(model, method="wr", n_clusters=8, unit="kernel", codebook="shared",
                          verbose=0)
    lines = [n for n in res.notes if "float16 scale" in n]
    assert len(lines) == 1 and lines[0].startswith("kernel scales of 'c': 1 of 16 kernel(s)")
    assert "scale_bits=32 keeps them" in lines[0]
    assert "note: kernel scales of 'c'" in res.summary()
    res32 = dkm_tf.compress(model, method="wr", n_clusters=8, unit="kernel",
                            codebook="shared", scale_bits=32, verbose=0)
    assert not any("float16 scale" in n for n in res32.notes)
