"""Review R1 of the session-25 export fixes: the depth walk per input of a nested model,
wrappers and layers holding layers; one float tolerance per output; the refusal's "a larger
tolerance" hint only where it is plausible; the script's same-file check after ``~``;
``mark_calibrated`` and -0.0."""

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.export import convert as convert_lib  # noqa: E402
from dkm_tf.export import verify  # noqa: E402
from dkm_tf.export.unit_errors import output_depths, weighted_depth  # noqa: E402
from tests._depth26 import dense_chain  # noqa: E402

pytestmark = tf_backend_only()


def _reads_input_b():
    """A nested model with a 20-deep output from input a and a 1-deep one from input b; the
    outer model feeds a a 20-deep chain and reads the output of b: 2 deep."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,)), keras.Input((6,))
    two = keras.Model([a, b], [dense_chain(a, 20), keras.layers.Dense(6)(b)])
    j = keras.Input((6,))
    out = two([dense_chain(j, 20), j])
    return keras.Model(j, keras.layers.Dense(3, name="head")(out[1]))


def test_nested_output_is_charged_only_for_the_inputs_that_reach_it():
    # the parent counted 22: the chain feeding input a added to the output of input b
    assert weighted_depth(_reads_input_b()) == 2
    a, b = keras.Input((6,)), keras.Input((6,))
    two = keras.Model([a, b], [dense_chain(a, 3),
                               keras.layers.Add()([dense_chain(a, 2), dense_chain(b, 4)])])
    x = keras.Input((6,))
    outer = keras.Model(x, list(two([dense_chain(x, 5), x])))
    assert output_depths(outer) == [8, 7]  # 5 + 3; max(5 + 2, 0 + 4)


def _shifted_file(model, x, name, frac, k=0):
    """The model's float file with layer ``name``'s bias shifted by ``frac`` of the range
    of output ``k``, which it feeds."""
    ref = [np.asarray(r, np.float64) for r in verify.keras_outputs(model, [x])]
    wrong = keras.models.clone_model(model)
    wrong.set_weights(model.get_weights())
    layer = wrong.get_layer(name)
    layer.bias.assign(layer.bias.numpy() + frac * float(np.max(np.abs(ref[k]))))
    content = convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none")
    got = verify.run_tflite(content, [x], "litert")[k]
    assert np.max(np.abs(got - ref[k])) / np.max(np.abs(ref[k])) == pytest.approx(frac, rel=0.1)
    return content


def test_a_head_off_behind_a_nested_two_input_model_is_refused(tmp_path):
    """The parent verified it at 4.4e-5 (22 deep) and wrote a file whose head was 2.5e-5 off."""
    model = _reads_input_b()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    content = _shifted_file(model, x, "head", 2.5e-5)
    path = tmp_path / "m.tflite"
    with pytest.raises(verify.ExportVerificationError, match=r"tolerance 1e-05"):
        dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x, float_content=content)
    assert not path.exists()


def test_wrappers_and_layers_holding_layers_are_counted():
    """The parent counted each 1: TimeDistributed(Sequential of 8 Dense), TimeDistributed(
    MobileNetV2) (105 unwrapped), a custom layer holding 6 Dense, MultiHeadAttention."""
    keras.utils.set_random_seed(0)
    t = keras.Input((4, 6))
    seq = keras.Sequential([keras.layers.Dense(6) for _ in range(8)])
    assert weighted_depth(keras.Model(t, keras.layers.TimeDistributed(seq)(t))) == 8
    mob = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))
    v = keras.Input((2, 32, 32, 3))
    assert weighted_depth(keras.Model(v, keras.layers.TimeDistributed(mob)(v))) == 105

    class Six(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.ds = [keras.layers.Dense(6) for _ in range(6)]

        def call(self, h):
            for d in self.ds:
                h = d(h)
            return h

    x = keras.Input((6,))
    assert weighted_depth(keras.Model(x, Six()(x))) == 6
    mha = keras.layers.MultiHeadAttention(2, 3)  # 4 EinsumDense: an upper bound of its 2
    assert weighted_depth(keras.Model(t, mha(t, t))) == 4
    bidi = keras.layers.Bidirectional(keras.layers.LSTM(3))  # the two directions side by side
    assert weighted_depth(keras.Model(t, bidi(t))) == 1
    deep = keras.Sequential([keras.Input((4, 6)), keras.layers.LSTM(3, return_sequences=True),
                             keras.layers.LSTM(3, return_sequences=True)])
    assert weighted_depth(keras.Model(t, keras.layers.TimeDistributed(
        keras.layers.Dense(2))(deep(t)))) == 3


def _head_beside_deep():
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    return keras.Model(i, [keras.layers.Dense(3, name="head")(i), dense_chain(i, 20)])


def test_each_output_gets_the_tolerance_of_its_own_depth(tmp_path):
    """The parent verified every output at the deepest one's 4e-5: a 1-deep head 2.5e-5 off
    was written (alone it is refused at 1e-5)."""
    model = _head_beside_deep()
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    content = _shifted_file(model, x, "head", 2.5e-5)
    path = tmp_path / "m.tflite"
    with pytest.raises(verify.ExportVerificationError) as info:
        dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x, float_content=content)
    assert not path.exists()
    text = str(info.value)
    assert "(tolerance 1e-05 to 4e-05 per output); output 0: relative 2.5" in text, text
    assert "(its tolerance 1e-05, from its own depth or sum length)" in text
    report = dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x)  # its own file
    assert path.exists() and all(c.output_tolerances == pytest.approx((1e-5, 4e-5))
                                 and c.tolerance == pytest.approx(4e-5) and c.ok
                                 for c in report.comparisons)
    assert len(report.comparisons[0].output_rel_errors) == 2
    [note] = [n for n in report.notes if n.startswith("float tolerance")]
    assert note.startswith("float tolerance per output, from its own longest chain: 1e-05 for "
                           "output 0 (1 layers with weights); 4e-05 for output 1 (20 layers")
    assert "(tolerance 1e-05 to 4e-05 per output)" in report.summary()


def test_many_outputs_get_one_grouped_note():
    from dkm_tf.export.depth import output_tolerances

    i = keras.Input((6,))
    outs = [keras.layers.Dense(2)(i) for _ in range(40)] + [dense_chain(i, 20), dense_chain(i, 10)]
    notes = []
    tols = output_tolerances(keras.Model(i, outs), 1e-5, 1e-4, notes)
    assert tols == pytest.approx((1e-5,) * 40 + (4e-5, 2e-5))
    assert notes == ["float tolerance per output, from its own longest chain: 1e-05 for 40 "
                     "outputs (1 layers with weights); 2e-05 for output 41 (10 layers with "
                     "weights); 4e-05 for output 40 (20 layers with weights) (1e-05 per 5 "
                     "layers with weights, at most 0.0001): float32 rounding grows with depth"]


def _regressor():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(3, name="out")])
    m.compile(loss="mse")  # a regressor: no top-1 check
    return m


HINT = "a larger tolerance writes it"


def test_a_larger_tolerance_is_advised_only_where_it_may_be_the_fix(tmp_path):
    """The parent advised it for a float file with two output units swapped (relative ~1
    against 1e-5), for a tolerance the caller chose, and for a badly calibrated int8 file."""
    model = _regressor()
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    wrong = keras.models.clone_model(model)
    wrong.set_weights(model.get_weights())
    out = wrong.get_layer("out")
    out.kernel.assign(out.kernel.numpy()[:, [1, 0, 2]])
    out.bias.assign(out.bias.numpy()[[1, 0, 2]])
    swapped = convert_lib.convert(wrong, convert_lib.input_specs(wrong, [x]), "none")
    with pytest.raises(verify.ExportVerificationError) as info:
        dkm_tf.export.to_tflite(model, tmp_path / "s.tflite", "float", sample_inputs=x,
                                float_content=swapped)
    assert "(tolerance 1e-05)" in str(info.value) and HINT not in str(info.value)
    near = _shifted_file(model, x, "out", 2.5e-5)  # 2.5x the tolerance: advised by default
    with pytest.raises(verify.ExportVerificationError, match=HINT):
        dkm_tf.export.to_tflite(model, tmp_path / "n.tflite", "float", sample_inputs=x,
                                float_content=near)
    with pytest.raises(verify.ExportVerificationError) as info:  # the caller chose 2e-5
        dkm_tf.export.to_tflite(model, tmp_path / "n.tflite", "float", sample_inputs=x,
                                float_content=near, tolerance=2e-5)
    assert "(tolerance 2e-05)" in str(info.value) and HINT not in str(info.value)
    assert str(info.value).endswith("(tolerance 2e-05)")
    with pytest.raises(verify.ExportVerificationError) as info:  # calibrated on x / 100
        dkm_tf.export.to_tflite(model, tmp_path / "i.tflite", "int8", sample_inputs=x,
                                int8_mode="full", representative_data=x * 0.01)
    text = str(info.value)
    assert HINT not in text and text.endswith(
        "(full int8 takes its activation ranges from its calibration samples: pass "
        "representative_data drawn from the data the model will run on)"), text
    assert not any((tmp_path / f).exists() for f in ("s.tflite", "n.tflite", "i.tflite"))


def test_the_margin_sentence_follows_the_advice():
    c2 = verify.Comparison("litert", 0.9, 0.6, 0.5, 8)  # int8 by default: no tolerance advice
    with pytest.raises(verify.ExportVerificationError) as info:
        verify.refuse_if_bad("f.tflite", "int8", [c2])
    assert str(info.value).endswith("(tolerance 0.5)")
    c4 = verify.Comparison("litert", 0.9, 5.1, 0.5, 8)  # 10.2x: a wrong file, not advised
    with pytest.raises(verify.ExportVerificationError) as info:
        verify.refuse_if_bad("f.tflite", "float", [c4])
    assert str(info.value).endswith("(tolerance 0.5)")
    c3 = verify.Comparison("litert", 0.9, 4.9, 0.5, 8)  # 9.8x: advised
    with pytest.raises(verify.ExportVerificationError, match=r"to_tflite\(tolerance=...\)\)$"):
        verify.refuse_if_bad("f.tflite", "float", [c3])
    from dkm_tf.export.refusal import refusal_message

    c = verify.Comparison("litert", 0.9, 0.6, 0.5, 8, top1_agreement=0.25, min_top1=0.7,
                          top1_margin=0.01)
    text = refusal_message("f.tflite", "int8", [c], "representative_data")
    assert text.endswith("from the data the model will run on). Keras' own top-1 margin "
                         "(median 0.01) is below the error (0.9): the samples do not separate "
                         "the classes (an untrained model, or inputs far from the data); pass "
                         "real sample_inputs."), text


def test_script_sees_one_file_behind_a_tilde(tmp_path, monkeypatch):
    """``--samples=~/x.npy --representative_data=$HOME/x.npy`` was compared before the ``~``
    was expanded: the script went on and failed with exit 1 in Python's words."""
    import os
    import pathlib
    import subprocess
    import sys

    from dkm_tf.export import cli

    home = tmp_path / "home"
    home.mkdir()
    np.save(home / "x.npy", np.zeros((8, 8), "f4"))
    _regressor().save(tmp_path / "m.keras")
    monkeypatch.setenv("HOME", str(home))
    [line] = cli.path_flag_errors(samples="~/x.npy", representative_data=str(home / "x.npy"))
    assert line.startswith("Invalid value for flag `--representative_data`. Expected a file "
                           "other than --samples")
    script = pathlib.Path(__file__).resolve().parent.parent / "export" / "to_tflite.py"
    res = subprocess.run([sys.executable, str(script), f"--model={tmp_path / 'm.keras'}",
                          "--format=int8", "--int8_mode=full", "--samples=~/x.npy",
                          f"--representative_data={home / 'x.npy'}",
                          f"--output={tmp_path / 'o.tflite'}"], capture_output=True, text=True,
                         timeout=300, check=False, env={**os.environ, "HOME": str(home),
                                                        "PYTHONPATH": str(script.parent.parent)})
    assert res.returncode == 2, res.stderr[-2000:]
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("to_tflite.py: error: Invalid value for flag "
                           "`--representative_data`. Expected a file other than --samples"), line
    assert not (tmp_path / "o.tflite").exists()


def test_minus_zero_samples_match_their_calibration_copy():
    """Byte-equal matching missed a sample whose -0.0 is 0.0 in representative_data."""
    from dkm_tf.export.held_out import calibration_overlap, mark_calibrated

    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    x[:, 0] = -0.0
    y = np.concatenate([np.ones((3, 5), "float32"), x + np.float32(0.0)])
    assert np.signbit(x[:, 0]).all() and not np.signbit(y[3:, 0]).any()
    assert calibration_overlap([x], [y]) == 4
    notes = []
    comps = mark_calibrated([verify.Comparison("litert", 0.0, 0.0, 0.5, 4)], [x], [y], notes)
    assert comps[0].measured_on == "calibration samples" and len(notes) == 1
    ints = np.arange(8, dtype="int32").reshape(4, 2)
    assert calibration_overlap([ints], [ints[::-1].copy()]) == 4
    assert calibration_overlap([x], [x.astype("float64")]) == 0  # another dtype: no match
