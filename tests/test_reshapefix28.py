"""More reshapes and transposes keep a channels_first map's channels on axis 1 (review R3 of
h28-reshapecf), and a recurrent layer's sequence of maps is not channels_first.

Before, ``ops.reshape`` to numpy integer sizes, ``ops.squeeze`` / ``ops.expand_dims``,
``ops.swapaxes`` / ``ops.moveaxis`` and a Reshape chain split across a nested model's boundary
left the map of unknown layout: a channel at 1e-6 of the others' scale off by its whole range
was written (0.0648, 0.0592, 0.0528, 0.0555 of its column's allowance; behind expand_dims to
(..., 1) with no unit check at all). A ConvLSTM2D(channels_first, return_sequences) map (N, T,
C, H, W) was called channels_first: its axis 1 is time steps. A user's class that shares a
Keras op's name is read as unknown. Each wrong file here is the conversion of a mutated copy.
"""

import keras
import numpy as np
import pytest
from test_reshapecf28 import SCALES, _conv, _convert_instead, _x

from dkm_tf.export import to_tflite, verify
from dkm_tf.export.unit_check import unit_axes

pytest.importorskip("ai_edge_litert")

CF = "channels_first"
L = keras.layers


def _nested_tail(o):
    """Reshape((C*H, W)) here, Reshape((C, H*W)) in a nested Sequential."""
    r = L.Reshape((o.shape[1] * o.shape[2], o.shape[3]))(o)
    return keras.Sequential([keras.Input(r.shape[1:]), L.Reshape((o.shape[1], -1))])(r)


TAILS = {  # the channels_first conv map o (N, 4, h, w) -> the output, and its numpy version
    "ops_reshape_int64": (lambda o: keras.ops.reshape(o, (-1, 4, np.prod(o.shape[2:]))),
                          lambda c: c.reshape(len(c), 4, -1)),
    "squeeze": (lambda o: keras.ops.squeeze(o, axis=-1), lambda c: c[..., 0]),
    "expand_dims": (lambda o: keras.ops.expand_dims(o, axis=-1), lambda c: c[..., None]),
    "swapaxes": (lambda o: keras.ops.swapaxes(L.Permute((2, 3, 1))(o), 1, 3),
                 lambda c: c.transpose(0, 1, 3, 2)),
    "moveaxis": (lambda o: keras.ops.moveaxis(L.Permute((2, 3, 1))(o), 3, 1), lambda c: c),
    "nested_reshape": (_nested_tail, lambda c: c.reshape(len(c), 4, -1)),
}


def _model(tail, size=(8, 10)):
    """(3, *size) -> Conv2D(6, 3, relu) "h" -> Conv2D(4, 3) "out" (channels_first), channel c
    of "out" scaled by SCALES[c], then the tail."""
    keras.utils.set_random_seed(0)
    i = keras.Input((3, *size))
    h = L.Conv2D(6, 3, activation="relu", data_format=CF, name="h")(i)
    model = keras.Model(i, TAILS[tail][0](L.Conv2D(4, 3, data_format=CF, name="out")(h)))
    k, b = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([k * SCALES, (b + 0.1) * SCALES])
    return model


def _mutant(tail, size, model, channel, shift):
    """The model built again (clone_model cannot copy np.int64 sizes), channel shifted."""
    m = _model(tail, size)
    m.set_weights(model.get_weights())
    k, b = m.get_layer("out").get_weights()
    b[channel] += np.float32(shift)
    m.get_layer("out").set_weights([k, b])
    return m


def _numpy(model, tail, x):
    """The model's output in float64 (numpy), the map's channels on axis 1."""
    h = np.maximum(_conv(x.astype(np.float64), *model.get_layer("h").get_weights()), 0)
    return TAILS[tail][1](_conv(h, *model.get_layer("out").get_weights()))


@pytest.mark.usefixtures("cf_runs")
@pytest.mark.parametrize("tail", list(TAILS))
def test_small_channel_behind_more_reshapes_is_refused(tmp_path, monkeypatch, tail):
    """The 1e-6 channel off by its whole range: the output's relative error passes, the
    channel's own range does not (written before); the correct file is written."""
    size = (8, 5) if tail == "squeeze" else (8, 10)
    model = _model(tail, size)
    x = _x(model, 8)
    ref = _numpy(model, tail, x)
    assert np.allclose(model.predict(x, verbose=0), ref, rtol=0, atol=1e-5)
    own, whole = np.max(np.abs(ref[:, 2])), np.max(np.abs(ref))
    assert own / whole < 0.5e-5  # the output's relative error passes on its own
    bad = _mutant(tail, size, model, 2, own)
    assert np.max(np.abs(bad.predict(x, verbose=0) - ref)[:, 2]) > 0.5 * own
    with monkeypatch.context() as mp:
        _convert_instead(mp, bad)
        with pytest.raises(verify.ExportVerificationError,
                           match=r"output 0 unit 2 of axis 1: max \|keras\| "):
            to_tflite(model, tmp_path / "bad.tflite", "float", sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(model, tmp_path / "ok.tflite", "float", sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)
    assert unit_axes(model, [ref]) == [(1, -1)]


class Concatenate(L.Layer):
    """A user's layer sharing Keras' name: joins, then swaps H and W (review R5)."""

    def call(self, xs):
        return keras.ops.transpose(keras.ops.concatenate(xs, axis=1), (0, 3, 2, 1))


class Reshape(L.Layer):
    """A user's layer sharing Keras' name: (C, H, W) -> (H, C, W) -> (C, H*W) sizes."""

    def call(self, x):
        t = keras.ops.transpose(x, (0, 2, 1, 3))
        return keras.ops.reshape(t, (-1, x.shape[1], x.shape[2] * x.shape[3]))


class Transpose(L.Layer):
    """A user's layer sharing Keras' name (and an ``axes`` that is not what it does)."""

    axes = (0, 1, 2, 3)

    def call(self, x):
        return keras.ops.transpose(x, (0, 2, 1, 3))


class _UserOp(keras.Operation):
    """A user's op (no layer) sharing a Keras op's name and attributes, doing something else:
    (C, H, W) -> (H, C, W), reshaped to ``out``."""

    def __init__(self, out, **attrs):
        super().__init__()
        self.out = out
        self.__dict__.update(attrs)

    def call(self, x):
        return keras.ops.reshape(keras.ops.transpose(x, (0, 2, 1, 3)), (-1, *self.out))

    def compute_output_spec(self, x):
        return keras.KerasTensor((x.shape[0], *self.out), x.dtype)


ReshapeOp = type("Reshape", (_UserOp,), {})
TransposeOp = type("Transpose", (_UserOp,), {})


def test_unit_axes_follows_more_reshapes_transposes_and_not_sequences():
    i = keras.Input((3, 8, 10))
    cf = L.Conv2D(4, 3, data_format=CF)(i)  # (N, 4, 6, 8)
    cl = L.Permute((2, 3, 1))(cf)  # (N, 6, 8, 4)
    s = keras.Input((5, 2, 6, 6))
    lstm = L.ConvLSTM2D(3, 3, data_format=CF, return_sequences=True, return_state=True)(s)
    seq_model = keras.Sequential([keras.Input((24, 8)), L.Reshape((4, 48))])
    outs = {  # name: (output, its axes)
        "ops.reshape np.int64": (keras.ops.reshape(cf, (-1, 4, np.int64(48))), (1, -1)),
        "ops.reshape list np.prod": (keras.ops.reshape(cf, [-1, 4, np.prod((6, 8))]), (1, -1)),
        "Reshape np.int64": (L.Reshape((np.int64(4), -1))(cf), (1, -1)),
        "squeeze last": (keras.ops.squeeze(L.Reshape((4, 6, 8, 1))(cf), axis=-1), (1, -1)),
        "squeeze tuple": (keras.ops.squeeze(L.Reshape((4, 1, 48, 1))(cf), (2, 4)), (1, -1)),
        "expand_dims last": (keras.ops.expand_dims(cf, -1), (1, -1)),
        "expand_dims 2": (keras.ops.expand_dims(cf, 2), (1, -1)),
        "swapaxes cl to first": (keras.ops.swapaxes(cl, 1, 3), (1, -1)),
        "moveaxis cl to first": (keras.ops.moveaxis(cl, 3, 1), (1, -1)),
        "moveaxis two axes": (keras.ops.moveaxis(cl, [3, 1], [1, 3]), (1, -1)),
        "nested Reshape((4, 48)) of (24, 8)": (seq_model(L.Reshape((24, 8))(cf)), (1, -1)),
        "Reshape((4, 48)) of nested (24, 8)": (L.Reshape((4, 48))(keras.Sequential(
            [keras.Input((4, 6, 8)), L.Reshape((24, 8))])(cf)), (1, -1)),
        "ConvLSTM2D state": (lstm[1], (1, -1)),
        "LSTM sequence permuted": (L.Permute((2, 1))(L.LSTM(3, return_sequences=True)(
            L.Reshape((5, 72))(s))), (1, -1)),
        # axis 1 not provably the channels: the last axis only
        "squeeze every size-1 axis": (keras.ops.squeeze(L.Reshape((4, 6, 8, 1))(cf)), (-1,)),
        "expand_dims 1": (keras.ops.expand_dims(cf, 1), (-1,)),
        "swapaxes to last": (keras.ops.swapaxes(cf, 1, 3), (-1,)),
        "moveaxis to last": (keras.ops.moveaxis(cf, 1, -1), (-1,)),
        "nested Reshape((6, 32)) of (24, 8)": (keras.Sequential(
            [keras.Input((24, 8)), L.Reshape((6, 32))])(L.Reshape((24, 8))(cf)), (-1,)),
        "ConvLSTM2D sequence": (lstm[0], (-1,)),
        "ConvLSTM2D sequence reshaped": (L.Reshape((5, 48))(lstm[0]), (-1,)),
        "ConvLSTM1D sequence": (L.ConvLSTM1D(3, 3, data_format=CF, return_sequences=True)(
            L.Reshape((5, 2, 36))(s)), (-1,)),
        "Bidirectional ConvLSTM2D": (L.Bidirectional(L.ConvLSTM2D(
            3, 3, data_format=CF, return_sequences=True))(s), (-1,)),
        "user Concatenate": (Concatenate()([cf, cf]), (-1,)),
        "user Reshape layer": (Reshape()(cf), (-1,)),
        "user Transpose layer": (Transpose()(cf), (-1,)),
        "user Reshape op": (ReshapeOp((4, 48), newshape=(-1, 4, 48))(cf), (-1,)),
        "user Transpose op": (TransposeOp((6, 4, 8), axes=(0, 1, 2, 3))(cf), (-1,)),
    }
    model = keras.Model([i, s], [t for t, _ in outs.values()])
    ref = [np.zeros((1, *[d or 2 for d in t.shape[1:]])) for t in model.outputs]
    assert dict(zip(outs, unit_axes(model, ref))) == {k: a for k, (_, a) in outs.items()}
