"""Full int8 calibrated on its own verification samples (no ``representative_data``): the
report says the verified error is that of the calibration samples, a second file calibrated
on half of them judges the other half (``report.held_out``), and a file failing that check
is refused. References: the converter's own file calibrated on the even half, run in LiteRT
on the odd half, against Keras."""

import numpy as np
import pytest

import dkm_tf.export as ex
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import verify


@pytest.fixture(scope="module")
def regressor():
    """Dense(8 -> 32 relu -> 3) compiled with mse (no top-1 check), seeded; N(0, 1) samples
    scaled by exp(N(0, 1)) per sample: 8 to export, 200 held out; 4 N(0, 1) samples."""
    import keras

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("adam", "mse")
    r = np.random.default_rng(3)
    x, held = (r.normal(size=(n, 8)) * np.exp(r.normal(size=(n, 1))) for n in (8, 200))
    plain = np.random.default_rng(0).normal(size=(4, 8))
    return m, x.astype("float32"), held.astype("float32"), plain.astype("float32")


@pytest.fixture(scope="module")
def digits():
    """The digits CNN trained 3 epochs on sklearn digits; 8 test digits."""
    import keras

    from dkm_tf import data
    from dkm_tf.models import digits_cnn

    (xt, yt), (xe, _) = data.load_digits()
    m = digits_cnn()
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(xt, yt, epochs=3, verbose=0)
    return m, xe[:8].astype("float32"), xe[8:40].astype("float32")


def _rel(content, model, x):
    ref = verify.keras_outputs(model, [x])[0]
    got = verify.run_tflite(content, [x], "litert")[0]
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def test_refuses_file_right_on_its_calibration_samples_only(regressor, tmp_path):
    m, x, held, _ = regressor
    path = tmp_path / "r.tflite"
    with pytest.raises(ex.ExportVerificationError) as e:
        ex.to_tflite(m, path, "int8", sample_inputs=x, int8_mode="full")
    msg = str(e.value)
    assert "calibrated on half of them it disagrees on the other 4" in msg
    assert "representative_data" in msg and "(tolerance 0.5)" in msg
    assert not path.exists()
    # the reference: the file HEAD wrote (calibrated on the 8 samples) is < 0.05 off on them,
    # and > 0.7 (tolerance 0.5) on 200 held-out samples of the same distribution
    specs = convert_lib.input_specs(m, [x])
    content = convert_lib.convert(m, specs, "full", [x])
    assert _rel(content, m, x) < 0.05
    assert _rel(content, m, held) > 0.7
    half = convert_lib.convert(m, specs, "full", [x[0::2]])
    assert f"relative {_rel(half, m, x[1::2]):.3g} (tolerance 0.5)" in msg


def test_failed_check_on_few_samples_is_noted(regressor, tmp_path):
    m, _, _, plain = regressor
    with pytest.warns(UserWarning, match="held-out check failed"):
        rep = ex.to_tflite(m, tmp_path / "r.tflite", "int8", sample_inputs=plain,
                           int8_mode="full")
    h = rep.held_out
    assert h.n_samples == 2 and h.rel_error > h.tolerance and not h.ok
    specs = convert_lib.input_specs(m, [plain])
    half = convert_lib.convert(m, specs, "full", [plain[0::2]])
    assert h.rel_error == pytest.approx(_rel(half, m, plain[1::2]), rel=1e-5)
    assert any(f"held-out check failed (relative {h.rel_error:.3g}, tolerance 0.5" in n
               and ") on 2 samples" in n and "not refused" in n for n in rep.notes)
    assert "(tolerance 0.5) over the other 2" in rep.summary()
    assert rep.summary().count(": failed, not refused") == 1


def test_held_out_comparison_reported(digits, tmp_path):
    m, x, _ = digits
    rep = ex.to_tflite(m, tmp_path / "d.tflite", "int8", sample_inputs=x, int8_mode="full")
    assert [c.measured_on for c in rep.comparisons] == ["calibration samples"] * len(
        rep.comparisons)
    h = rep.held_out
    assert h.measured_on == "held-out samples" and h.n_samples == 4 and h.ok
    specs = convert_lib.input_specs(m, [x])
    half = convert_lib.convert(m, specs, "full", [x[0::2]])
    assert h.rel_error == pytest.approx(_rel(half, m, x[1::2]), rel=1e-5, abs=1e-7)
    # the written file is still calibrated on all 8 samples (not on the half)
    assert (tmp_path / "d.tflite").read_bytes() == convert_lib.convert(m, specs, "full", [x])
    text = rep.summary()
    assert "over 8 calibration samples" in text
    assert (f"held out: calibrated on half the samples, rel {h.rel_error:.3g} (tolerance "
            f"{h.tolerance:g}) over the other 4, top-1 agreement {h.top1_agreement:.3g}: "
            "passed") in text
    assert any("held-out check" in n and "samples 1, 3" in n for n in rep.notes)
    assert rep.to_dict()["held_out"]["measured_on"] == "held-out samples"


def test_representative_data_and_few_samples(digits, tmp_path):
    m, x, more = digits
    rep = ex.to_tflite(m, tmp_path / "r.tflite", "int8", sample_inputs=x, int8_mode="full",
                       representative_data=more)
    assert rep.held_out is None
    assert {c.measured_on for c in rep.comparisons} == {"samples"}
    assert not any("held-out check" in n for n in rep.notes)
    rep = ex.to_tflite(m, tmp_path / "two.tflite", "int8", sample_inputs=x[:2],
                       int8_mode="full")
    assert rep.held_out is None
    assert {c.measured_on for c in rep.comparisons} == {"calibration samples"}
    assert any("no held-out check (it needs 4+ samples)" in n for n in rep.notes)
    rep = ex.to_tflite(m, tmp_path / "dyn.tflite", "int8", sample_inputs=x)
    assert rep.held_out is None and {c.measured_on for c in rep.comparisons} == {"samples"}


def test_export_all_reports_held_out_refusal(regressor, tmp_path):
    m, x, _, _ = regressor
    with pytest.warns(UserWarning, match="int8_full"):
        reports = ex.export_all(m, [], tmp_path, x, targets=("float", "int8_full"))
    assert "float" in reports and "int8_full" not in reports
    assert "calibrated on half of them" in reports.refused["int8_full"]
    assert not (tmp_path / "model.int8_full.tflite").exists()
