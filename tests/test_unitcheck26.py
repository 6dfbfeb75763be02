"""Float-exact files (float, palettized, fp16) are checked unit by unit (unit_check).

Before, only each output's ``max |tflite - keras| / max |keras|`` was held to the tolerance:
a regressor's target 1e-6 of the output's scale could be off by its whole range (relative
1e-6 < 1e-5) and the file was written. Each wrong file here is the conversion of a mutated
copy of the model; the guards are correct files whose small or cancelling units read float32
rounding far beyond the tolerance on their own range and must still be written.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import to_tflite, verify
from dkm_tf.export.unit_check import UNIT_SLACK, unit_floors
from dkm_tf.export.unit_errors import INT8_UNIT_FLOOR

pytest.importorskip("ai_edge_litert")

SCALES = (1.0, 1e-3, 1e-6)


def _regressor(seed=0):
    """16 -> Dense(64, relu) -> Dense(3) "out", unit j scaled by SCALES[j]."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((16,))
    h = keras.layers.Dense(64, activation="relu", name="h")(i)
    model = keras.Model(i, keras.layers.Dense(3, name="out")(h))
    k, b = model.get_layer("out").get_weights()
    model.get_layer("out").set_weights([k * np.float32(SCALES), b * np.float32(SCALES)])
    return model


def _numpy(model, x):
    """The regressor's outputs from its weights, in float64."""
    w1, b1 = model.get_layer("h").get_weights()
    w2, b2 = model.get_layer("out").get_weights()
    return np.maximum(x.astype(np.float64) @ w1 + b1, 0) @ w2 + b2


def _mutant(model, unit, shift):
    """A copy of ``model`` whose output ``unit``'s bias is ``shift`` larger."""
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    k, b = m.get_layer("out").get_weights()
    b[unit] += np.float32(shift)
    m.get_layer("out").set_weights([k, b])
    return m


def _convert_instead(monkeypatch, mutant):
    real = convert_lib.convert

    def fake(model, specs, quantization="none", representative_data=None):
        return real(mutant, specs, quantization, representative_data)

    monkeypatch.setattr(convert_lib, "convert", fake)


def _x(n=8, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype("float32")


@pytest.mark.parametrize(("fmt", "unit", "off"), [
    ("float", 2, 1.0),    # 1e-6 unit off by its whole range: relative 1e-6 < 1e-5
    ("float", 1, 0.005),  # 1e-3 unit off by 0.5 % of its range: 5e-6 < 1e-5
    ("fp16", 2, 100.0),   # off by 100x its range: 1e-4 < 2e-2
])
def test_small_unit_off_within_the_output_tolerance_is_refused(tmp_path, monkeypatch, fmt,
                                                               unit, off):
    model, x = _regressor(), _x()
    ref = _numpy(model, x)
    assert np.allclose(model.predict(x, verbose=0), ref, rtol=0, atol=1e-5)
    own, whole = np.max(np.abs(ref[:, unit])), np.max(np.abs(ref))
    tol = {"float": 1e-5, "fp16": 2e-2}[fmt]
    assert off * own / whole < 0.5 * tol  # the output's relative error: the old check passed
    with monkeypatch.context() as mp:
        _convert_instead(mp, _mutant(model, unit, off * own))
        with pytest.raises(verify.ExportVerificationError,
                           match=rf"output 0 unit {unit}: max \|keras\| .*max abs error .*of "
                                 r"what it is allowed.*the unit's share of its rounding"):
            to_tflite(model, tmp_path / "bad.tflite", fmt, sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(model, tmp_path / "ok.tflite", fmt, sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)


def test_palettized_small_unit_off_is_refused(tmp_path, monkeypatch):
    model, x = _regressor(), _x()
    ref = _numpy(model, x)
    own, whole = np.max(np.abs(ref[:, 1])), np.max(np.abs(ref))
    assert 0.05 * own / whole < 0.5e-4  # 5 % of the 1e-3 unit: under palettized's 1e-4
    clustered, palettes, _ = dkm_tf.share_weights(model, 16, seed=0)
    bad, bad_palettes, _ = dkm_tf.share_weights(_mutant(model, 1, 0.05 * own), 16, seed=0)
    assert all(np.array_equal(p.codebook, q.codebook)
               for p, q in zip(palettes, bad_palettes))  # the bias only: same palettes
    with monkeypatch.context() as mp:
        _convert_instead(mp, bad)
        with pytest.raises(verify.ExportVerificationError, match=r"output 0 unit 1: "):
            to_tflite(clustered, tmp_path / "bad.tflite", "palettized", palettes,
                      sample_inputs=x)
    assert not (tmp_path / "bad.tflite").exists()
    report = to_tflite(clustered, tmp_path / "ok.tflite", "palettized", palettes,
                       sample_inputs=x)
    assert all(c.ok for c in report.comparisons)


def _cancelling(seed=0):
    """Unit 1 sums +A h_i and -A h_i over duplicated hidden units (0 in exact arithmetic
    but for a 1e-3 term); unit 2 is ~20 x 0.2 x 16 near-constant terms minus a cancelling
    bias; unit 3 is 1e-3 of unit 0's scale."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    i = keras.Input((16,))
    hidden = keras.layers.Dense(64, activation="relu", name="h")
    h = hidden(i)
    model = keras.Model(i, keras.layers.Dense(4, name="out")(h))
    w, b = hidden.get_weights()
    w[:, 32:], b[32:] = w[:, :32], b[:32]
    b[16:32] += 20.0
    b[48:] += 20.0
    hidden.set_weights([w, b])
    x = rng.standard_normal((8, 16)).astype("float32")
    hv = np.maximum(x.astype(np.float64) @ w + b, 0)
    k = rng.standard_normal((64, 4)).astype("float32") * 0.3
    a = rng.standard_normal(32).astype("float32")
    k[:, 1] = np.concatenate([a, -a])
    k[:16, 1] += 1e-3 * rng.standard_normal(16).astype("float32")
    k[:, 2] = 0
    k[16:32, 2] = 0.2 * rng.standard_normal(16).astype("float32")
    k[:, 3] *= 1e-3
    bias = np.zeros(4, "float32")
    bias[2] = -np.mean(hv @ k[:, 2])
    model.get_layer("out").set_weights([k, bias])
    return model, x


@pytest.mark.parametrize("fmt", ["float", "palettized", "fp16"])
def test_cancelling_and_tiny_units_of_a_correct_file_are_written(tmp_path, fmt):
    from ai_edge_litert.interpreter import Interpreter

    model, x = _cancelling()
    palettes = None
    if fmt == "palettized":
        model, palettes, _ = dkm_tf.share_weights(model, 16, seed=0)
    report = to_tflite(model, tmp_path / "m.tflite", fmt, palettes, sample_inputs=x)
    assert all(c.ok for c in report.comparisons)
    runner = Interpreter(str(tmp_path / "m.tflite")).get_signature_runner()
    (name,) = runner.get_input_details()  # the Keras input's name
    got = np.concatenate([runner(**{name: x[i:i + 1]})["output_0"] for i in range(len(x))])
    ref = model.predict(x, verbose=0).astype(np.float64)
    own = np.max(np.abs(got - ref), axis=0) / np.max(np.abs(ref), axis=0)
    tol = {"float": 1e-5, "palettized": 1e-4, "fp16": 2e-2}[fmt]
    if fmt != "palettized":  # clustering breaks the exact +A / -A pairs
        assert own[1] > 3 * tol  # a rule on the unit's own range alone would refuse it


def test_wide_dense_small_unit_is_written(tmp_path):
    """Dense(10) on 196,608 pixels, unit 3 at 1e-3 of the others: float32 rounding of the
    sum (sum-length tolerance ~4e-5) does not refuse the small unit."""
    keras.utils.set_random_seed(0)
    i = keras.Input((256, 256, 3))
    model = keras.Model(i, keras.layers.Dense(10, name="out")(keras.layers.Flatten()(i)))
    k, b = model.get_layer("out").get_weights()
    k[:, 3] *= 1e-3
    b[3] *= 1e-3
    model.get_layer("out").set_weights([k, b])
    x = np.random.default_rng(0).random((4, 256, 256, 3)).astype("float32")
    report = to_tflite(model, tmp_path / "w.tflite", "float", sample_inputs=x)
    assert all(c.ok and c.unit_excess < 0.5 for c in report.comparisons)


def test_unit_floors_follow_the_units_terms():
    """A linear Dense whose unit 1 has 1e-3 of unit 0's weights: unit 0 gets the whole
    tolerance, unit 1 about 10 x 1e-3 of it (+ UNIT_SLACK); an output of 1 unit none."""
    keras.utils.set_random_seed(0)
    i = keras.Input((32,))
    model = keras.Model(i, [keras.layers.Dense(2, name="a")(i), keras.layers.Dense(1)(i)])
    k, b = model.get_layer("a").get_weights()
    model.get_layer("a").set_weights([k * np.float32([1.0, 1e-3]), b])
    x = np.random.default_rng(0).standard_normal((8, 32)).astype("float32")
    ref = [np.asarray(r) for r in model(x)]
    floors = unit_floors(model, [x], ref, (1e-5, 2e-5))
    assert floors[0][0] == pytest.approx(1e-5)
    assert 1e-5 * UNIT_SLACK < floors[0][1] < 1e-5 * (10 * 5e-3 + UNIT_SLACK)
    assert floors[1] == pytest.approx(2e-5)  # one unit: not checked, the whole tolerance


def test_unit_floors_without_stateless_call_fall_back_with_a_note(monkeypatch):
    model, x = _regressor(), _x()
    ref = [np.asarray(model(x))]

    def broken(*args, **kwargs):
        raise NotImplementedError("no stateless call")

    monkeypatch.setattr(model, "stateless_call", broken)
    notes = []
    assert unit_floors(model, [x], ref, 1e-5, notes) == (1e-5,)
    assert notes == ["output units: Keras could not run the model with other weight values "
                     "(stateless_call), so each unit was held to the output's tolerance only"]
    assert unit_floors(model, [x], ref, 0.5, notes, "int8") == INT8_UNIT_FLOOR
