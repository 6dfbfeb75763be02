"""The unit check of float-exact files, second review (R5 of session 26).

F1: with one sample, the batch check's variants (mirrored, scaled) were held to unit
allowances measured on the sample only. F2: a unit no weight reaches got 1e-3 of the output's
allowance. F3: an int8 file quantizing nothing was verified as float but its units held to
int8's floor. F4: a unit refusal named no allowance and no remedy.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dkm_tf.export import convert as convert_lib
from dkm_tf.export import to_tflite, verify
from dkm_tf.export.verify import ExportVerificationError

pytest.importorskip("ai_edge_litert")


def _run(path, x):
    with open(path, "rb") as f:
        return verify.run_tflite(f.read(), [x])[0].astype(np.float64)


def test_one_sample_cancelling_unit_on_the_mirrored_variant_is_written(tmp_path):
    # unit 1 sums 128 terms of ~1000 that cancel to ~0 on the mirrored variant only
    rng = np.random.default_rng(0)
    n, h = 256, 128
    x = np.zeros((1, n), "float32")
    x[0, h:] = rng.uniform(0.5, 1.5, h)
    c, v = rng.standard_normal(h), x[0, ::-1][:h].astype(np.float64)
    c -= v * (c @ v) / (v @ v)
    keras.utils.set_random_seed(0)
    i = keras.Input((n,))
    d = keras.layers.Dense(2)
    model = keras.Model(i, d(i))
    k = np.zeros((n, 2), "float32")
    k[:, 0], k[:h, 1] = 1.0, 1000 * c
    d.set_weights([k, np.float32([0.0, 1e-3])])
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, "float", sample_inputs=x)
    b = verify.batch_inputs([x])[0]
    ref = b.astype(np.float64) @ k.astype(np.float64) + np.float64([0.0, 1e-3])
    got = _run(path, b)
    # float32 rounding of the cancelling sum: ~1e-5 absolute, far beyond 1e-5 x its range
    assert np.max(np.abs(got - ref)) < 1e-5 * np.max(np.abs(ref)) * 10


def test_weight_free_unit_beside_a_dense_is_written(tmp_path):
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    i = keras.Input((16,))
    dl = keras.layers.Dense(4)
    s = keras.layers.Lambda(lambda t: tf.sigmoid(t[:, :4]) - 0.5)(i)
    model = keras.Model(i, keras.layers.Concatenate()([dl(i), s]))
    k, b = dl.get_weights()
    dl.set_weights([k * 300, b])
    x = (1e-3 * rng.standard_normal((8, 16))).astype("float32")
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, "float", sample_inputs=x)
    x64 = x.astype(np.float64)
    exact = 1 / (1 + np.exp(-x64[:, :4])) - 0.5
    got = _run(path, x)[:, 4:]
    assert np.max(np.abs(got - exact)) < 2.0 ** -23  # rounding of sigmoid ~0.5 only


@pytest.mark.parametrize("weights", [False, True])
def test_layer_norm_at_a_large_offset_is_written(tmp_path, weights):
    """Without weights, LiteRT rounds x - mean(x) of x ~ 1e4 to 2^-10, 6.4x the unit's old
    1e-3 share; with gamma and beta (S_j > 0) the rounding still comes from x - mean(x),
    measured by noise on the inputs (refused at 4.4x with weight noise only)."""
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    i = keras.Input((16,))
    d = keras.layers.Dense(4)(i)
    ln = keras.layers.LayerNormalization(center=weights, scale=weights)(i)
    model = keras.Model(i, keras.layers.Concatenate()([d, ln]))
    x = (1e4 + rng.standard_normal((8, 16))).astype("float32")
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, "float", sample_inputs=x)
    x64 = x.astype(np.float64)
    m = x64 - x64.mean(1, keepdims=True)
    exact = m / np.sqrt(m.var(1, keepdims=True) + 1e-3)  # gamma 1, beta 0
    assert np.max(np.abs(_run(path, x)[:, 4:] - exact)) < 1e-2  # float32 of x ~1e4: 1e-3


def _regressor_mutant(shift_unit=2):
    keras.utils.set_random_seed(0)
    i = keras.Input((16,))
    d = keras.layers.Dense(3, name="out")
    model = keras.Model(i, d(i))
    k, b = d.get_weights()
    s = np.float32([1, 1e-3, 1e-6])
    d.set_weights([k * s, (b + 0.1) * s])
    x = np.random.default_rng(1).standard_normal((8, 16)).astype("float32")
    ref = x.astype(np.float64) @ (k * s).astype(np.float64) + ((b + 0.1) * s)
    mut = keras.models.clone_model(model)
    mut.set_weights(model.get_weights())
    k2, b2 = mut.get_layer("out").get_weights()
    b2[shift_unit] += np.max(np.abs(ref[:, shift_unit]))  # off by its whole range
    mut.get_layer("out").set_weights([k2, b2])
    return model, mut, x


def _convert_instead(monkeypatch, mutant):
    real = convert_lib.convert

    def fake(model, specs, quantization="none", representative_data=None):
        return real(mutant, specs, quantization, representative_data)

    monkeypatch.setattr(convert_lib, "convert", fake)


def test_int8_file_quantizing_nothing_holds_units_to_the_float_allowance(tmp_path,
                                                                          monkeypatch):
    model, mut, x = _regressor_mutant()
    _convert_instead(monkeypatch, mut)
    for fmt in ("float", "int8"):
        with pytest.raises(ExportVerificationError, match="output 0 unit 2"):
            to_tflite(model, str(tmp_path / f"{fmt}.tflite"), fmt, sample_inputs=x)
    assert not (tmp_path / "int8.tflite").exists()


def test_unit_refusal_gives_the_allowance_and_the_remedy(tmp_path, monkeypatch):
    model, mut, x = _regressor_mutant()
    _convert_instead(monkeypatch, mut)
    with pytest.raises(ExportVerificationError) as e:
        to_tflite(model, str(tmp_path / "m.tflite"), "float", sample_inputs=x)
    msg = str(e.value)
    assert "unit_check" not in msg
    assert "if the outputs are right on your data, to_tflite(tolerance=...) writes it" in msg
    allowed = float(msg.split("output 0 unit 2:")[1].split(", allowed ")[1].split(" ")[0])
    own = float(msg.split("output 0 unit 2: max |keras| ")[1].split(" ")[0])
    err = float(msg.split("output 0 unit 2:")[1].split("max abs error ")[1].split(",")[0])
    assert 1e-5 * own <= allowed < err  # at least its own tolerance, less than its error
