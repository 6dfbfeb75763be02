"""Channels_first maps are checked per channel (unit_check.unit_axes).

Before, the units of every output were its last axis: of a channels_first map (N, C, H, W)
the columns W, each held to a range taken over all channels. A channel at 1e-6 of the others'
scale, off by its whole range in the file (relative 1e-6 < 1e-5), was written (0.053 of its
column's allowance). Each wrong file here is the conversion of a mutated copy of the model.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import to_tflite, verify
from dkm_tf.export.unit_errors import unit_report

pytest.importorskip("ai_edge_litert")

CF = "channels_first"
SCALES = (1.0, 1.0, 1e-6, 1e-3)


def _model(seed=0, width=10):
    """(3, 8, width) -> Conv2D(6, 3, relu) -> Conv2D(4, 3) "out", channels_first, channel c of
    "out" scaled by SCALES[c] (width - 4 != 4 channels: the bias is added on axis 1)."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((3, 8, width))
    h = keras.layers.Conv2D(6, 3, activation="relu", data_format=CF, name="h")(i)
    model = keras.Model(i, keras.layers.Conv2D(4, 3, data_format=CF, name="out")(h))
    k, b = model.get_layer("out").get_weights()
    s = np.float32(SCALES)
    model.get_layer("out").set_weights([k * s, (b + 0.1) * s])
    return model


def _conv(x, k, b):
    """Valid 3x3 channels_first convolution in float64: x (N, C, H, W), k (3, 3, C, F)."""
    n, _, h, w = x.shape
    out = np.zeros((n, k.shape[-1], h - 2, w - 2))
    for di in range(3):
        for dj in range(3):
            out += np.einsum("nchw,cf->nfhw", x[:, :, di:di + h - 2, dj:dj + w - 2], k[di, dj])
    return out + b[None, :, None, None]


def _numpy(model, x):
    h = np.maximum(_conv(x.astype(np.float64), *model.get_layer("h").get_weights()), 0)
    return _conv(h, *model.get_layer("out").get_weights())


def _mutant(model, channel, shift):
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    k, b = m.get_layer("out").get_weights()
    b[channel] += np.float32(shift)
    m.get_layer("out").set_weights([k, b])
    return m


def _convert_instead(mp, mutant):
    real = convert_lib.convert
    mp.setattr(convert_lib, "convert", lambda m, s, quantization="none",
               representative_data=None: real(mutant, s, quantization, representative_data))


def _x(n=8, seed=1, width=10):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, width)).astype("float32")


@pytest.mark.parametrize(("fmt", "channel", "off", "n", "width"), [
    ("float", 2, 1.0, 8, 10),  # the 1e-6 channel off by its whole range: relative 1e-6 < 1e-5
    ("float", 2, 1.0, 1, 10),  # one sample (and the batch check's variants of it)
    ("fp16", 3, 1.0, 8, 10),   # the 1e-3 channel off by its whole range: 1e-3 < 2e-2
    ("float", 2, 1.0, 8, 5),   # a map one column wide: no unit check at all before
])
@pytest.mark.usefixtures("cf_runs")
def test_small_channel_off_is_refused(tmp_path, monkeypatch, fmt, channel, off, n, width):
    model, x = _model(width=width), _x(n, width=width)
    ref = _numpy(model, x)
    assert np.allclose(model.predict(x, verbose=0), ref, rtol=0, atol=1e-5)
    own, whole = np.max(np.abs(ref[:, channel])), np.max(np.abs(ref))
    tol = {"float": 1e-5, "fp16": 2e-2}[fmt]
    assert off * own / whole < 0.5 * tol  # the output's relative error: passes on its own
    with monkeypatch.context() as mp:
        _convert_instead(mp, _mutant(model, channel, off * own))
        with pytest.raises(verify.ExportVerificationError,
                           match=rf"output 0 unit {channel} of axis 1: max \|keras\| .*of "
                                 r"what it is allowed"):
            to_tflite(model, tmp_path / "bad.tflite", fmt, sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(model, tmp_path / "ok.tflite", fmt, sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)


@pytest.mark.usefixtures("cf_runs")
@pytest.mark.parametrize("fmt", ["palettized", "tflm"])
def test_palettized_small_channel_off_is_refused(tmp_path, monkeypatch, fmt):
    model, x = _model(), _x()
    ref = _numpy(model, x)
    own, whole = np.max(np.abs(ref[:, 3])), np.max(np.abs(ref))
    assert 0.05 * own / whole < 0.5e-4  # 5 % of the 1e-3 channel: under palettized's 1e-4
    clustered, palettes, _ = dkm_tf.share_weights(model, 16, seed=0)
    bad, bad_palettes, _ = dkm_tf.share_weights(_mutant(model, 3, 0.05 * own), 16, seed=0)
    assert all(np.array_equal(p.codebook, q.codebook) for p, q in zip(palettes, bad_palettes))
    with monkeypatch.context() as mp:
        _convert_instead(mp, bad)
        with pytest.raises(verify.ExportVerificationError, match=r"output 0 unit 3 of axis 1"):
            to_tflite(clustered, tmp_path / "bad.tflite", fmt, palettes, sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(clustered, tmp_path / "ok.tflite", fmt, palettes, sample_inputs=x)
    assert all(c.ok for c in report.comparisons)


def _residual(seed=0):
    """Channels_first Conv + BN(axis=1) + ReLU, a depthwise residual block, pooling, a kept
    global pooling, and a Permute of a channels_last conv (layout unknown: both axes)."""
    keras.utils.set_random_seed(seed)
    L = keras.layers  # noqa: N806
    i = keras.Input((4, 10, 14))
    h = L.ReLU()(L.BatchNormalization(axis=1)(L.Conv2D(8, 3, padding="same",
                                                       data_format=CF)(i)))
    h = L.Add()([h, L.DepthwiseConv2D(3, padding="same", data_format=CF)(h)])
    h = L.MaxPooling2D(2, data_format=CF)(h)
    g = L.GlobalAveragePooling2D(data_format=CF, keepdims=True)(h)
    p = L.Permute((3, 1, 2))(L.Conv2D(3, 3)(L.Permute((2, 3, 1))(i)))
    model = keras.Model(i, [h, g, p])
    bn = model.layers[2]
    gamma, beta, mean, var = bn.get_weights()
    rng = np.random.default_rng(seed)
    bn.set_weights([gamma, beta + 0.1, 0.1 * rng.standard_normal(8).astype("float32"),
                    var + rng.random(8).astype("float32")])
    return model


@pytest.mark.usefixtures("cf_runs")
@pytest.mark.parametrize("n", [1, 4])
def test_correct_channels_first_files_are_written(tmp_path, n):
    """Guard: correct files of a channels_first model, float / fp16 / palettized, at one
    sample (with its batch variants) and at 4: none refused, far from their allowances."""
    model = _residual()
    x = np.random.default_rng(n).standard_normal((n, 4, 10, 14)).astype("float32")
    clustered, palettes, _ = dkm_tf.share_weights(model, 16, seed=0)
    for fmt, m, p in (("float", model, None), ("fp16", model, None),
                      ("palettized", clustered, palettes)):
        report = to_tflite(m, tmp_path / f"{fmt}.tflite", fmt, p, sample_inputs=x)
        assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons), fmt


class _Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 1, data_format=CF)

    def call(self, x):
        return self.conv(x)


def test_unit_axes_follow_the_layout():
    from dkm_tf.export.unit_check import unit_axes

    L = keras.layers  # noqa: N806
    i = keras.Input((3, 8, 10))
    cf = L.ReLU()(L.BatchNormalization(axis=1)(L.Conv2D(4, 3, data_format=CF)(i)))
    pooled = L.MaxPooling2D(2, data_format=CF)(cf)
    cl = L.Conv2D(4, 3)(i)
    both = L.Add()([cf, L.Permute((3, 1, 2))(L.Conv2D(4, 3)(L.Permute((2, 3, 1))(i)))])
    seq = L.Dense(5)(L.Reshape((6, 40))(i))
    flat = L.Dense(2)(L.Flatten()(i))
    model = keras.Model(i, [cf, pooled, cl, both, seq, flat, L.Reshape((2, 3, 40))(i)])
    ref = [np.zeros((1, *t.shape[1:])) for t in model.outputs]
    # a Reshape leaves the layout unknown: the last axis only (review R3 F2)
    assert unit_axes(model, ref) == [(1, -1), (1, -1), (-1,), (1, -1), (-1,), (-1,), (-1,)]
    sub = _Sub()
    assert unit_axes(sub, [np.zeros((1, 2, 8, 10))]) == [(-1,)]  # no graph: unknown


def test_unit_report_reads_each_axis():
    """A dict of floors checks the units of each named axis against its own range."""
    ref = np.ones((2, 3, 4, 5))
    ref[:, 1] = 1e-6
    got = ref.copy()
    got[:, 1] += 1e-6  # channel 1 off by its whole range
    worst, excess = unit_report([got], [ref], 1e-5, (np.full(5, 1e-5),))
    assert excess == pytest.approx(1e-6 / (1e-5 * 1 + 1e-5 * 1))  # columns: 0.05
    worst, excess = unit_report([got], [ref], 1e-5, ({1: np.float64([1e-5, 1e-8, 1e-5]),
                                                      -1: np.full(5, 1e-5)},))
    assert excess == pytest.approx(1e-6 / (1e-5 * 1e-6 + 1e-8 * 1))
    assert worst.startswith("output 0 unit 1 of axis 1: max |keras| 1e-06")
