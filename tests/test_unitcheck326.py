"""The unit check's input noise and cost (review R7 of session 26).

F1: the input noise perturbed whole-number float inputs (category ids in a float32 input, the
Keras default): an Embedding truncated 4.999 to 4, the id-fed unit looked exposed and kept the
whole allowance, and a file with that unit 1 % off (17.8x its allowance with int32 ids) was
written. F2: a `Masking(mask_value=-1.0)` value perturbed unmasked the padding. F3: models
with no output of >= 2 units ran 14 Keras passes for nothing. F5: an int8 file left float got
int8's "output unit nearest its allowance" note (F4, a unit dead on the samples keeping the
whole allowance, is left: weight-free units on whole-number inputs need it).
"""

import keras
import numpy as np
import pytest

from dkm_tf.export import convert as convert_lib
from dkm_tf.export import to_tflite, unit_check, verify

pytest.importorskip("ai_edge_litert")


def _ids_model(ids_dtype):
    keras.utils.set_random_seed(0)
    f, ids = keras.Input((16,), name="f"), keras.Input((4,), dtype=ids_dtype, name="ids")
    big = keras.layers.Dense(3, name="big")(f)
    emb = keras.layers.Flatten()(keras.layers.Embedding(20, 2, name="e")(ids))
    model = keras.Model([f, ids], keras.layers.Concatenate()([big, keras.layers.Dense(
        1, name="a")(emb)]))
    k, b = model.get_layer("a").get_weights()
    model.get_layer("a").set_weights([k * 1e-3, (b + 0.01) * 1e-3])
    rng = np.random.default_rng(1)
    return model, [rng.standard_normal((8, 16)).astype("float32"),
                   rng.integers(1, 20, (8, 4)).astype(ids_dtype)]


@pytest.mark.parametrize("ids_dtype", ["float32", "int32"])
def test_a_small_unit_fed_by_float_ids_is_checked_as_with_int_ids(ids_dtype, tmp_path,
                                                                  monkeypatch):
    """Unit 3 (2.2e-5 of the output) 1 % off its own range: refused with int32 ids, and now
    with the same ids in a float32 input (written before, at 0.127 of its allowance)."""
    model, xs = _ids_model(ids_dtype)
    ref = np.asarray(model(xs), np.float64)
    own = np.max(np.abs(ref[:, 3]))
    assert own / np.max(np.abs(ref)) < 1e-4
    bad = keras.models.clone_model(model)
    bad.set_weights(model.get_weights())
    k, b = bad.get_layer("a").get_weights()
    bad.get_layer("a").set_weights([k, b + np.float32(0.01 * own)])
    real = convert_lib.convert
    monkeypatch.setattr(convert_lib, "convert", lambda m, s, quantization="none",
                        representative_data=None: real(bad, s, quantization,
                                                       representative_data))
    with pytest.raises(verify.ExportVerificationError, match=r"output 0 unit 3: .*allowed"):
        to_tflite(model, str(tmp_path / "m.tflite"), "float", sample_inputs=xs)


def _masked(mask_value):
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 4))
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Masking(mask_value=mask_value)(i))
    d = keras.layers.Dense(3, name="d")
    model = keras.Model(i, d(h))
    k, b = d.get_weights()
    d.set_weights([k * np.float32([1, 1e-3, 1e-3]), b])
    x = np.random.default_rng(0).standard_normal((4, 6, 4)).astype("float32")
    x[:, 4:] = mask_value
    return model, x


def test_a_masking_value_is_not_perturbed():
    """Padding of -1 under `Masking(-1.0)` gives the allowances padding of 0 under
    `Masking(0.0)` gives (0 x (1 + e) stays 0; -1 x (1 + e) was read as a real step)."""
    floors = []
    for value in (0.0, -1.0):
        model, x = _masked(value)
        floors.append(unit_check.unit_floors(model, [x], [np.asarray(model(x))], 1e-5)[0])
    np.testing.assert_allclose(floors[1], floors[0], rtol=1e-6)
    assert floors[0][0] == 1e-5 and np.all(floors[0][1:] < 1e-5 / 10)


def _counting(monkeypatch):
    calls = []
    real = keras.Model.stateless_call

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "stateless_call", counted)
    return calls


def test_no_keras_pass_without_an_output_of_two_units(monkeypatch):
    """An output of one unit is checked at the output's scale: no sensitivity run (hed's
    (1, 64, 64, 1) map ran 14 passes for nothing); two units run them (guard)."""
    calls = _counting(monkeypatch)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype("float32")
    for units, runs in ((1, 0), (2, 2 * unit_check.DRAWS)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(units)])
        del calls[:]
        floors = unit_check.unit_floors(model, [x], [np.asarray(model(x))], 2e-5)
        assert len(calls) == runs, (units, len(calls))
        if units == 1:
            assert floors == (2e-5,)


def test_no_input_noise_run_for_whole_number_inputs(monkeypatch):
    """Float inputs holding whole numbers only (ids) are not perturbed: the weight-noise
    draws run, the input-noise ones do not."""
    calls = _counting(monkeypatch)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Embedding(20, 2),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(0).integers(0, 20, (8, 4)).astype("float32")
    unit_check.unit_floors(model, [x], [np.asarray(model(x))], 1e-5)
    assert len(calls) == unit_check.DRAWS


def test_an_int8_file_left_float_gets_no_int8_unit_note(tmp_path):
    """The converter quantizes no tensor of a small Dense: the file is verified as float, and
    the int8-only "output unit nearest its allowance" note is not added (a guard: this
    model's parent revision adds none either)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(loss="mse")
    x = np.random.default_rng(0).standard_normal((8, 6)).astype("float32")
    report = to_tflite(model, str(tmp_path / "m.tflite"), "int8", sample_inputs=x)
    assert any("quantized no tensor" in n for n in report.notes), report.notes
    assert not any("output unit nearest its allowance" in n for n in report.notes)
