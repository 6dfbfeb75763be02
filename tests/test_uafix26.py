"""A Dense after a channels_first map keeps its channels on axis 1; unknown layouts keep the
last axis (unit_check.unit_axes, review R3 F1 / F2).

F1: a Dense / EinsumDense on a rank >= 3 map acts on its last axis only, so axis 1 is still the
map's channels; the walk called its output channels_last, and a 1e-6 channel off by its whole
range was written (0.064-0.089 of its column's allowance). F2: a map of unknown layout (a
Reshape at the end) was checked per step of axis 1; a step near 0 from a weight-free
``x - mean(x)`` on whole-number inputs got a cut allowance, and a correct file was refused
(5.3x). Each wrong file here is the conversion of a mutated copy of the model.
"""

import keras
import numpy as np
import pytest

from dkm_tf.export import convert as convert_lib
from dkm_tf.export import to_tflite, verify
from dkm_tf.export.unit_check import unit_axes

pytest.importorskip("ai_edge_litert")

CF = "channels_first"
L = keras.layers
SCALES = np.float32((1.0, 1.0, 1e-6, 1e-3))


def _dense_tail(h):
    return L.Dense(5, use_bias=False, name="tail")(h)


def _nested_tail(h):
    j = keras.Input(h.shape[1:])
    return keras.Model(j, L.Dense(5, use_bias=False, name="tail")(j), name="inner")(h)


TAILS = {
    "dense": _dense_tail,
    "einsum": lambda h: L.EinsumDense("abcd,de->abce", (None, None, 5), name="tail")(h),
    "nested": _nested_tail,
}


def _model(tail, cf=True, seed=0):
    """A conv map (N, 4, 6, 6) with its channels on axis 1 (a channels_first conv, or a
    channels_last conv then Permute((3, 1, 2))), channel c scaled by SCALES[c], then ``tail``
    (a layer on the last axis: axis 1 stays the channels)."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((3, 10, 10) if cf else (10, 10, 3))
    fmt = CF if cf else "channels_last"
    h = L.Conv2D(6, 3, activation="relu", data_format=fmt)(i)
    o = L.Conv2D(4, 3, data_format=fmt, name="out")(h)
    o = o if cf else L.Permute((3, 1, 2))(o)
    model = keras.Model(i, TAILS[tail](o))
    k, b = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([k * SCALES, (b + 0.1) * SCALES])
    return model, keras.Model(i, o)


def _tail_kernel(model):
    layer = model.get_layer("inner").get_layer("tail") if any(
        x.name == "inner" for x in model.layers) else model.get_layer("tail")
    return layer.get_weights()[0].astype(np.float64)


def _mutant(model, shift):
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    k, b = m.get_layer("out").get_weights()
    b[2] += np.float32(shift)
    m.get_layer("out").set_weights([k, b])
    return m


@pytest.mark.parametrize(("tail", "cf", "n"), [
    ("dense", True, 8), ("dense", True, 1), ("einsum", True, 8), ("nested", True, 8),
    ("dense", False, 8), ("nested", False, 1)])
def test_small_channel_under_a_dense_is_refused(tmp_path, monkeypatch, request, tail, cf, n):
    if cf:
        request.getfixturevalue("cf_runs")
    model, conv = _model(tail, cf)
    x = np.random.default_rng(1).standard_normal((n, *model.input_shape[1:])).astype("float32")
    c = conv.predict(x, verbose=0).astype(np.float64)  # (N, C, H, W): channels on axis 1
    ref = np.einsum("nchw,wk->nchk", c, _tail_kernel(model))  # the Dense on the last axis
    assert np.allclose(model.predict(x, verbose=0), ref, rtol=0, atol=1e-5)
    assert unit_axes(model, [ref]) == [(1, -1)]
    own = np.max(np.abs(c[:, 2]))
    bad = _mutant(model, own)  # channel 2 of the map off by its whole range
    err = np.abs(bad.predict(x, verbose=0) - ref)
    assert np.max(err) / np.max(np.abs(ref)) < 0.5e-5  # the output's relative error passes
    assert np.max(err[:, 2]) > 0.5 * np.max(np.abs(ref[:, 2]))  # channel 2 is wrong
    real = convert_lib.convert
    with monkeypatch.context() as mp:
        mp.setattr(convert_lib, "convert", lambda m, s, quantization="none",
                   representative_data=None: real(bad, s, quantization, representative_data))
        with pytest.raises(verify.ExportVerificationError, match=r"output 0 unit 2 of axis 1"):
            to_tflite(model, tmp_path / "bad.tflite", "float", sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(model, tmp_path / "ok.tflite", "float", sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)


def _cancelling(t=15, c=4):
    """(t, c) -> x - mean(x) over the steps -> Dense(8) -> Reshape: layout unknown."""
    keras.utils.set_random_seed(0)
    i = keras.Input((t, c))
    h = L.Subtract()([i, keras.ops.mean(i, axis=1, keepdims=True) * keras.ops.ones_like(i)])
    return keras.Model(i, L.Reshape((t, 8))(L.Dense(8, use_bias=False)(h)))


@pytest.mark.parametrize("n", [1, 4])
def test_unknown_layout_cancelling_step_is_written(tmp_path, n):
    """Whole-number inputs ~3000 whose mean is exactly 3000: step 7 of ``x - mean(x)`` is
    (1, 0, 0, 0), its Dense output ~1e-2 of the others, its float32 rounding that of terms at
    3000 (no input noise on whole numbers). Refused at 5.3x / 5.0x when each step was a unit."""
    model = _cancelling()
    rng = np.random.default_rng(0)
    x = 3000 + rng.integers(-50, 51, (4, 15, 4)).astype("float32")
    x[:, 7, :] = 3000
    x[:, 7, 0] = 3001
    x[:, 0, :] = 0
    x[:, 0, :] = 15 * 3000 - x.sum(axis=1)  # every channel's mean exactly 3000
    assert np.all(x == np.round(x)) and np.all(x.mean(axis=1, dtype=np.float64) == 3000)
    w = model.layers[-2].get_weights()[0].astype(np.float64)
    ref = (x - x.mean(axis=1, keepdims=True, dtype=np.float64)) @ w
    assert np.allclose(model.predict(x, verbose=0), ref, rtol=0, atol=1e-3)
    assert np.max(np.abs(ref[:, 7])) < 0.02 * np.max(np.abs(ref))  # the small step
    assert unit_axes(model, [ref]) == [(-1,)]
    report = to_tflite(model, tmp_path / "ok.tflite", "float", sample_inputs=x[:n])
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)


def test_unit_axes_follow_permute_dense_and_nested_models():
    i = keras.Input((3, 8, 10))
    cf = L.Conv2D(4, 3, data_format=CF)(i)  # (N, 4, 6, 8)
    cl = L.Conv2D(4, 3)(L.Permute((2, 3, 1))(i))  # (N, 8, 10, 4) channels last
    j = keras.Input((4, 6, 8))
    seq = keras.Sequential([keras.Input((4, 6, 8)), L.Dense(3), L.ReLU()])
    outs = {
        "dense on cf": L.Dense(5)(cf),
        "einsum on cf": L.EinsumDense("abcd,de->abce", (4, 6, 5))(cf),
        "attention on cf": L.MultiHeadAttention(2, 3)(cf, cf),
        "einsum moving axes": L.EinsumDense("abcd,de->acbe", (6, 4, 5))(cf),
        "lstm": L.LSTM(3, return_sequences=True)(L.Reshape((6, 32))(cf)),
        "cf to last": L.Permute((2, 3, 1))(cf),
        "cf to axis 2": L.Permute((2, 1, 3))(cf),
        "cl to first": L.Permute((3, 1, 2))(cl),
        "dense on cl to first": L.Dense(2)(L.Permute((3, 1, 2))(cl)),
        "dense on cl": L.Dense(2)(cl),
        "nested model": keras.Model(j, L.Dense(2)(L.ReLU()(j)))(cf),
        "nested sequential": seq(cf),
        "reshape": L.Dense(5)(L.Reshape((6, 40))(i)),
        "dense on input": L.Dense(5)(i),
        "rank 2": L.Dense(2)(L.Flatten()(cf)),
    }
    model = keras.Model(i, list(outs.values()))
    ref = [np.zeros((1, *t.shape[1:])) for t in model.outputs]
    want = {"dense on cf": (1, -1), "einsum on cf": (1, -1), "attention on cf": (1, -1),
            "cl to first": (1, -1),
            "dense on cl to first": (1, -1), "nested model": (1, -1),
            "nested sequential": (1, -1)}
    assert dict(zip(outs, unit_axes(model, ref))) == {k: want.get(k, (-1,)) for k in outs}
