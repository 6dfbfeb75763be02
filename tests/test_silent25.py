"""Documented behaviours a user met as silent wrong results (limits audit, 2026-12-07, §A):
an overrides entry that only sets n_clusters switched a depthwise kernel to per tensor."""

import io
import json

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

