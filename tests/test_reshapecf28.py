"""A channels_first map behind a Reshape that keeps its channels is checked per channel.

Before, a Reshape (or Flatten, Concatenate) made the layout unknown and the map kept its last
axis only: a channel at 1e-6 of the others' scale, off by its whole range in the file, was
held to the range of the columns it lies in and written (0.056 of its column's allowance
after a same-shape Reshape). A chain of Reshape / Flatten layers is one row-major reshape: a
channels_first map keeps its channels on axis 1 where that axis keeps its size ((C, H, W) ->
(C, H*W)), a channels_last one on its last axis; maps of one layout joined by a Concatenate
keep it. Axis 1 of any other reshape may be time steps and keeps the last axis only (review
R3 F2, tests/test_uafix26.py). Each wrong file here is the conversion of a mutated copy.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import to_tflite, verify
from dkm_tf.export.unit_check import unit_axes

pytest.importorskip("ai_edge_litert")

CF = "channels_first"
L = keras.layers
SCALES = np.float32((1.0, 1.0, 1e-6, 1e-3))

TAILS = {  # the conv map o (N, 4, h, w) (channels_last: (N, h, w, 4)) and the hidden map
    "same": lambda o, h: L.Reshape(tuple(o.shape[1:]))(o),
    "c_hw": lambda o, h: L.Reshape((4, -1))(o),
    "flatten": lambda o, h: L.Reshape((4, -1))(L.Flatten()(o)),
    "split": lambda o, h: L.Reshape((4, 2, -1))(o),
    "concat": lambda o, h: L.Concatenate(axis=1)([o, L.Conv2D(2, 3, data_format=CF,
                                                               name="extra")(h)]),
    "ops_reshape": lambda o, h: keras.ops.reshape(o, (-1, 4, o.shape[2] * o.shape[3])),
    "cl": lambda o, h: L.Permute((2, 1))(L.Reshape((-1, 4))(o)),  # channels_last -> (4, hw)
    "cl_transpose": lambda o, h: keras.ops.transpose(o, (0, 3, 1, 2)),  # -> (4, h, w)
}


def _model(tail, seed=0, size=(8, 10)):
    """(3, *size) -> Conv2D(6, 3, relu) "h" -> Conv2D(4, 3) "out" (channels_first; channels_last
    on a (*size, 3) input for "cl"), channel c of "out" scaled by SCALES[c], then ``tail``."""
    keras.utils.set_random_seed(seed)
    cf = not tail.startswith("cl")
    i = keras.Input((3, *size) if cf else (*size, 3))
    fmt = CF if cf else "channels_last"
    h = L.Conv2D(6, 3, activation="relu", data_format=fmt, name="h")(i)
    model = keras.Model(i, TAILS[tail](L.Conv2D(4, 3, data_format=fmt, name="out")(h), h))
    k, b = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([k * SCALES, (b + 0.1) * SCALES])
    return model


def _conv(x, k, b):
    """Valid 3x3 channels_first convolution in float64: x (N, C, H, W), k (3, 3, C, F)."""
    n, _, h, w = x.shape
    out = np.zeros((n, k.shape[-1], h - 2, w - 2))
    for di in range(3):
        for dj in range(3):
            out += np.einsum("nchw,cf->nfhw", x[:, :, di:di + h - 2, dj:dj + w - 2], k[di, dj])
    return out + b[None, :, None, None]


def _numpy(model, tail, x):
    """The model's output in float64, the map's channels on axis 1 (numpy, row-major)."""
    x = x.astype(np.float64)
    x = x.transpose(0, 3, 1, 2) if tail.startswith("cl") else x
    h = np.maximum(_conv(x, *model.get_layer("h").get_weights()), 0)
    c = _conv(h, *model.get_layer("out").get_weights())  # (N, 4, h, w)
    if tail == "concat":
        return np.concatenate([c, _conv(h, *model.get_layer("extra").get_weights())], axis=1)
    if tail in ("same", "cl_transpose"):
        return c
    return c.reshape(len(c), 4, *((2, -1) if tail == "split" else (-1,)))


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


def _x(model, n=8, seed=1):
    return np.random.default_rng(seed).standard_normal((n, *model.input_shape[1:])).astype(
        "float32")


@pytest.mark.parametrize(("tail", "fmt", "channel", "n"), [
    ("same", "float", 2, 8), ("c_hw", "float", 2, 8), ("c_hw", "float", 2, 1),
    ("flatten", "float", 2, 8), ("split", "float", 2, 8), ("concat", "float", 2, 8),
    ("cl", "float", 2, 8), ("ops_reshape", "float", 2, 8), ("cl_transpose", "float", 2, 8),
    ("same", "fp16", 3, 8), ("c_hw", "fp16", 3, 8)])
def test_small_channel_behind_a_reshape_is_refused(tmp_path, monkeypatch, request, tail, fmt,
                                                   channel, n):
    """The 1e-6 channel (float) / 1e-3 channel (fp16) off by its whole range: the output's
    relative error passes, the channel's own range does not (written before)."""
    if not tail.startswith("cl"):
        request.getfixturevalue("cf_runs")
    model = _model(tail)
    x = _x(model, n)
    ref = _numpy(model, tail, x)
    assert np.allclose(model.predict(x, verbose=0), ref, rtol=0, atol=1e-5)
    own, whole = np.max(np.abs(ref[:, channel])), np.max(np.abs(ref))
    tol = {"float": 1e-5, "fp16": 2e-2}[fmt]
    assert own / whole < 0.5 * tol  # the output's relative error passes on its own
    bad = _mutant(model, channel, own)
    err = np.abs(bad.predict(x, verbose=0) - ref)
    assert np.max(err[:, channel]) > 0.5 * own  # the channel is wrong
    with monkeypatch.context() as mp:
        _convert_instead(mp, bad)
        with pytest.raises(verify.ExportVerificationError,
                           match=rf"output 0 unit {channel} of axis 1: max \|keras\| "):
            to_tflite(model, tmp_path / "bad.tflite", fmt, sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(model, tmp_path / "ok.tflite", fmt, sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)
    assert unit_axes(model, [ref]) == [(1, -1)]


@pytest.mark.usefixtures("cf_runs")
@pytest.mark.parametrize("tail", ["c_hw", "flatten"])
def test_palettized_small_channel_behind_a_reshape_is_refused(tmp_path, monkeypatch, tail):
    model = _model(tail)
    x = _x(model)
    ref = _numpy(model, tail, x)
    own, whole = np.max(np.abs(ref[:, 3])), np.max(np.abs(ref))
    assert 0.05 * own / whole < 0.5e-4  # 5 % of the 1e-3 channel: under palettized's 1e-4
    clustered, palettes, _ = dkm_tf.share_weights(model, 16, seed=0)
    bad, bad_palettes, _ = dkm_tf.share_weights(_mutant(model, 3, 0.05 * own), 16, seed=0)
    assert all(np.array_equal(p.codebook, q.codebook) for p, q in zip(palettes, bad_palettes))
    with monkeypatch.context() as mp:
        _convert_instead(mp, bad)
        with pytest.raises(verify.ExportVerificationError, match=r"output 0 unit 3 of axis 1"):
            to_tflite(clustered, tmp_path / "bad.tflite", "palettized", palettes,
                      sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(clustered, tmp_path / "ok.tflite", "palettized", palettes,
                       sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)


@pytest.mark.usefixtures("cf_runs")
@pytest.mark.parametrize(("tail", "seed", "size", "n"), [
    ("c_hw", 1, (10, 12), 1), ("split", 2, (6, 12), 4), ("concat", 3, (8, 8), 4),
    ("flatten", 4, (12, 8), 1)])
def test_correct_files_behind_reshapes_are_written(tmp_path, tail, seed, size, n):
    """Guard: correct float / fp16 / palettized files, both axes checked, none refused and
    far from their allowances (largest measured: see CHANGELOG)."""
    model = _model(tail, seed, size)
    x = _x(model, n, seed)
    clustered, palettes, _ = dkm_tf.share_weights(model, 16, seed=0)
    for fmt, m, p in (("float", model, None), ("fp16", model, None),
                      ("palettized", clustered, palettes)):
        report = to_tflite(m, tmp_path / f"{fmt}.tflite", fmt, p, sample_inputs=x)
        assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons), fmt
    assert unit_axes(model, [_numpy(model, tail, x)]) == [(1, -1)]  # both axes were checked


def test_unit_axes_through_reshapes_keep_only_provable_channels():
    i = keras.Input((3, 8, 10))
    cf = L.Conv2D(4, 3, data_format=CF)(i)  # (N, 4, 6, 8)
    cl = L.Conv2D(4, 3)(L.Permute((2, 3, 1))(i))  # (N, 6, 8, 4)
    outs = {  # name: (output, its axes)
        "same shape": (L.Reshape((4, 6, 8))(cf), (1, -1)),
        "(C, H*W)": (L.Reshape((4, 48))(cf), (1, -1)),
        "(C, -1) after a Flatten": (L.Reshape((4, -1))(L.Flatten()(cf)), (1, -1)),
        "(C, 3, 16)": (L.Reshape((4, 3, 16))(cf), (1, -1)),
        "Dense on (C, H*W)": (L.Dense(5)(L.Reshape((4, 48))(cf)), (1, -1)),
        "concatenate axis 1": (L.Concatenate(axis=1)([cf, cf]), (1, -1)),
        "concatenate last": (L.Concatenate()([cf, L.ReLU()(cf)]), (1, -1)),
        "ops.concatenate": (keras.ops.concatenate([cf, cf], axis=2), (1, -1)),
        "cl (H*W, C) permuted": (L.Permute((2, 1))(L.Reshape((48, 4))(cl)), (1, -1)),
        "ops.reshape (-1, C, H*W)": (keras.ops.reshape(cf, (-1, 4, 48)), (1, -1)),
        "ops.transpose cl to first": (keras.ops.transpose(cl, (0, 3, 1, 2)), (1, -1)),
        "ops.transpose negative axes": (keras.ops.transpose(cl, (-4, -1, 1, 2)), (1, -1)),
        # axis 1 not provably the channels: the last axis only
        "(H, C*W)": (L.Reshape((6, 32))(cf), (-1,)),
        "(C*H, W)": (L.Reshape((24, 8))(cf), (-1,)),
        "(2, 2, 48)": (L.Reshape((2, 2, 48))(cf), (-1,)),
        "transposing Flatten": (L.Reshape((4, 48))(L.Flatten(data_format=CF)(cf)), (-1,)),
        "Flatten": (L.Flatten()(cf), (-1,)),
        "input reshaped": (L.Reshape((3, 80))(i), (-1,)),
        "cl (H*W, C)": (L.Reshape((48, 4))(cl), (-1,)),
        "cl (C, H*W) permuted": (L.Permute((2, 1))(L.Reshape((4, 48))(cl)), (-1,)),
        "concatenate mixed": (L.Concatenate(axis=1)([cf, L.Reshape((4, 6, 8))(cl)]), (-1,)),
        "ops.concatenate batch": (keras.ops.concatenate([cf, cf], axis=0), (-1,)),
        "ops.reshape (-1, H, C*W)": (keras.ops.reshape(cf, (-1, 6, 32)), (-1,)),
        "ops.reshape merging the batch": (keras.ops.reshape(cf, (-1, 4, 24)), (-1,)),
        "ops.transpose to last": (keras.ops.transpose(cf, (0, 2, 3, 1)), (-1,)),
        "ops.transpose moving the batch": (keras.ops.transpose(cl, (3, 0, 1, 2)), (-1,)),
        "ops.transpose reversed": (keras.ops.transpose(cf), (-1,)),
    }
    model = keras.Model(i, [t for t, _ in outs.values()])
    ref = [np.zeros((1, *[d or 2 for d in t.shape[1:]])) for t in model.outputs]
    assert dict(zip(outs, unit_axes(model, ref))) == {k: a for k, (_, a) in outs.items()}
