"""A ReLU layer the TFLite converter fuses into the op before it is not charged by the Keras
reader (`dkm_tf/energy/relu_fusion.py`).

Found at scale (MobileNetV2 224x224, K = 16): `energy.estimate(keras_model)` read 7.40e9
hierarchy units and its palettized `.tflite` 4.74e9, because each standalone ReLU / ReLU6
layer after a conv, a batch norm or an Add was charged a DRAM round trip of its activations
that the converted file (RELU fused into CONV_2D / ADD) never makes.
"""

import keras
import numpy as np
import pytest

import dkm_tf.energy
import dkm_tf.export

L = keras.layers


def _names(report):
    return {r.name for r in report.layers}


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(6.0, name="r1")(x)                       # fused (via the folded batch norm)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.ReLU(name="r2")(y)                            # fused into the depthwise conv
    y = L.Conv2D(8, 1, name="c2")(y)
    z = L.Add(name="add")([x, y])
    z = L.Activation("relu", name="r3")(z)              # fused into the ADD
    t = L.Conv2DTranspose(8, 3, padding="same", name="ct")(z)
    t = L.ReLU(name="r4")(t)                            # a RELU op of its own
    c = L.Conv2D(8, 1, name="c3")(t)
    r = L.ReLU(name="r5")(c)                            # c3's output is read twice: not fused
    u = L.Add(name="add2")([r, c])
    out = L.LeakyReLU(0.1, name="lk")(L.Dense(4, name="d")(L.Flatten()(u)))
    return keras.Model(inp, out)


def test_keras_reader_leaves_out_fused_relus_as_the_file_does(tmp_path):
    model = _model()
    keras_report = dkm_tf.energy.estimate(model)
    skipped = dict(keras_report.skipped)
    assert skipped["r1"] == "fused into c1 (as a .tflite fuses it)"
    assert skipped["r2"] == "fused into dw (as a .tflite fuses it)"
    assert skipped["r3"] == "fused into add (as a .tflite fuses it)"
    charged = _names(keras_report)
    assert {"r4", "r5", "lk"} <= charged
    assert not {"r1", "r2", "r3"} & charged
    path = str(tmp_path / "relu.tflite")
    dkm_tf.export.to_tflite(model, path, format="float")
    file_report = dkm_tf.energy.estimate(path)
    # the same totals as the converted file's (they differed by the three fused ReLUs)
    np.testing.assert_allclose(keras_report.hierarchy_total, file_report.hierarchy_total,
                               rtol=1e-6)
    np.testing.assert_allclose(keras_report.paper_total, file_report.paper_total, rtol=1e-6)


@pytest.mark.parametrize("relu", [dict(negative_slope=0.1), dict(max_value=3.0)])
def test_relu_that_is_not_a_plain_relu_stays_charged(relu):
    """3.0: a MINIMUM and a RELU after the RELU fused into the conv (`keras_lowered`)."""
    inp = keras.Input((4, 4, 2))
    out = L.ReLU(name="r", **relu)(L.Conv2D(2, 1, name="c")(inp))
    report = dkm_tf.energy.estimate(keras.Model(inp, out))
    assert "r" in _names(report)


def test_relu_with_a_threshold_is_a_compare_and_select_not_priced():
    """The file runs GREATER and SELECT_V2 (not priced); it was charged a RELU (1.58x)."""
    inp = keras.Input((4, 4, 2))
    out = L.ReLU(name="r", threshold=0.5)(L.Conv2D(2, 1, name="c")(inp))
    report = dkm_tf.energy.estimate(keras.Model(inp, out))
    assert "r" not in _names(report) and "GREATER" in dict(report.skipped)["r"]


@pytest.mark.parametrize("make", [
    lambda: L.Conv2D(4, 3, dilation_rate=2, padding="same", name="p"),
    lambda: L.DepthwiseConv2D(3, dilation_rate=2, padding="same", name="p"),
    lambda: L.TimeDistributed(L.Dense(4), name="p"),
], ids=["dilated_conv", "dilated_depthwise", "time_distributed"])
def test_relu_the_file_runs_on_its_own_stays_charged(make):
    """Review R4: a dilated conv converts to SPACE_TO_BATCH_ND / CONV_2D / BATCH_TO_SPACE_ND
    and a TimeDistributed layer to per-step ops and a PACK, each with a RELU of its own after
    it, yet the ReLU was listed "fused into" them (Keras / file hierarchy 0.63-0.75)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))  # TimeDistributed: 8 steps of (8, 4)
    layer = make()
    out = L.ReLU(name="r")(layer(inp))
    report = dkm_tf.energy.estimate(keras.Model(inp, L.Flatten()(out)))
    assert "r" in _names(report) and "r" not in dict(report.skipped)


def test_batch_norm_after_a_dilated_conv_is_charged_not_folded():
    """Review R7: the file runs it as a MUL after BATCH_TO_SPACE_ND (not folded into the
    conv); the Keras reader listed it folded (Keras / file 0.445, 0.72 for the conv alone)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 3, dilation_rate=2, padding="same", name="c")(inp)
    x = L.BatchNormalization(name="bn")(x)
    report = dkm_tf.energy.estimate(keras.Model(inp, L.Flatten()(x)))
    assert "bn" in _names(report) and "bn" not in dict(report.skipped)
    inp = keras.Input((8, 8, 4))  # undilated: folded as before
    x = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="c")(inp))
    report = dkm_tf.energy.estimate(keras.Model(inp, L.Flatten()(x)))
    assert "bn" not in _names(report)
