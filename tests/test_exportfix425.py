"""Review R8 of the session-25 export fixes: the sum length K behind a float output's
tolerance (1.5 x 2^-24 x sqrt(K)) read per output of a nested model, only for the layer
kinds it was measured on (no recurrent term), a strided transposed conv's taps, and the
refusal's wording of whose tolerance it is."""

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.export import convert as convert_lib  # noqa: E402
from dkm_tf.export import verify  # noqa: E402

pytestmark = tf_backend_only()
layers = keras.layers
K = 196608  # the flattened pixels of a 256 x 256 x 3 image


def _nested(shift=0.0):
    """An outer model reading only output 1 of a nested [Dense(10)(a), Dense(4)(b)] model, a
    of K inputs, b of 16; the narrow bias's unit 2 shifted by ``shift`` (absolute), seeded."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((K,)), keras.Input((16,))
    inner = keras.Model([a, b], [layers.Dense(10)(a), layers.Dense(4, name="narrow")(b)])
    if shift:
        narrow = inner.get_layer("narrow")
        bias = narrow.bias.numpy()
        bias[2] += shift
        narrow.bias.assign(bias)
    outer_a, outer_b = keras.Input((K,)), keras.Input((16,))
    return keras.Model([outer_a, outer_b], inner([outer_a, outer_b])[1])


def _two_inputs():
    r = np.random.default_rng(0)
    return [r.uniform(0, 1, (8, K)).astype("float32"), r.normal(size=(8, 16)).astype("float32")]


def test_nested_models_narrow_output_is_not_charged_for_its_wide_branch():
    from dkm_tf.export.depth import output_fan_ins, output_tolerances

    m = _nested()
    assert output_fan_ins(m) == [16]  # the parent: 196608, the nested model's every layer
    assert output_tolerances(m, 1e-5, 1e-4, []) == (1e-5,)  # the parent: 3.96e-5
    inner = m.layers[-1]
    assert output_fan_ins(inner) == [K, 16]


def test_nested_models_narrow_output_off_by_3e_5_is_refused(tmp_path):
    # the parent verified it at 3.96e-5 (a sum over 196608 terms, on the other branch) and
    # wrote a file whose narrow output was 3e-5 of its range off; the flat graph refused it
    m, x = _nested(), _two_inputs()
    ref = np.asarray(m.predict(x, verbose=0), np.float64)
    wrong = _nested(3e-5 * float(np.max(np.abs(ref))))
    content = convert_lib.convert(wrong, convert_lib.input_specs(wrong, x), "none")
    got = verify.run_tflite(content, x, "litert")[0]
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) == pytest.approx(3e-5, rel=0.1)
    path = tmp_path / "n.tflite"
    with pytest.raises(verify.ExportVerificationError, match=r"tolerance 1e-05"):
        dkm_tf.export.to_tflite(m, str(path), "float", sample_inputs=x, float_content=content)
    assert not path.exists()


def test_fan_in_counts_only_measured_layer_kinds():
    from dkm_tf.export.depth import fan_in

    cell = layers.StackedRNNCells([layers.LSTMCell(5), layers.LSTMCell(6)])
    cases = [(layers.Conv2DTranspose(8, 3, strides=2), (10, 10, 4), 2 * 2 * 4),
             (layers.Conv2DTranspose(8, 3), (10, 10, 4), 3 * 3 * 4),
             (layers.Conv2DTranspose(8, (5, 3), strides=(2, 3)), (10, 10, 4), 3 * 1 * 4),
             (layers.Conv1DTranspose(8, 4, strides=4), (10, 4), 1 * 4),
             (layers.SeparableConv2D(8, 3), (10, 10, 4), 9),  # max(3 x 3, 4)
             (layers.SeparableConv2D(8, 3, depth_multiplier=4), (10, 10, 4), 16),
             (layers.Conv2D(8, 3, groups=2), (10, 10, 4), 3 * 3 * 2),
             (layers.Conv3D(2, 2), (4, 4, 4, 3), 24), (layers.Conv1D(2, 3), (6, 5), 15),
             (layers.TimeDistributed(layers.Dense(3)), (4, 7), 7),
             (layers.LSTM(5), (7, 4), 0), (layers.GRU(5), (7, 4), 0),
             (layers.SimpleRNN(5), (7, 4), 0), (layers.RNN(cell), (7, 4), 0),
             (layers.Bidirectional(layers.GRU(5)), (7, 4), 0),
             (layers.ConvLSTM2D(4, 3), (2, 6, 6, 9), 0)]
    for layer, shape, want in cases:
        layer(keras.Input(shape))
        assert fan_in(layer) == want, type(layer).__name__
    mha = layers.MultiHeadAttention(2, 8)
    q = keras.Input((5, 300))
    mha(q, q)
    assert fan_in(mha) == 0  # not measured: no term


def test_recurrent_output_gets_the_depth_tolerance_only():
    # the parent charged LSTM(8) on 200,000 input features K = 200,008 (tolerance 4e-5; its
    # clean file reads 2.15e-6, and a head bias 3.7e-5 of the range off was written)
    from dkm_tf.export.depth import output_fan_ins, output_tolerances

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((3, 20000)), layers.LSTM(8), layers.Dense(3)])
    assert output_fan_ins(m) == [8]
    assert output_tolerances(m, 1e-5, 1e-4, []) == (1e-5,)  # the parent: 1.26e-5


def test_worst_output_names_the_default_float_tolerances_only():
    from dkm_tf.export.held_out import held_out_refusal
    from dkm_tf.export.refusal import refusal_message, worst_output

    comp = verify.Comparison("litert", 0.9, 0.9, 0.5, 4, output_tolerances=(0.5, 0.2),
                             output_rel_errors=(0.1, 0.9))
    own = "from its own depth or sum length"
    assert worst_output(comp) == "; output 1: relative 0.9 (its tolerance 0.2)"
    assert own in worst_output(comp, own=True)
    assert own in refusal_message("f.tflite", "float", [comp], "tolerance")
    for hint in (None, "representative_data"):  # the caller's, or int8's
        assert own not in refusal_message("f.tflite", "int8", [comp], hint)
    assert own not in held_out_refusal("f.tflite", comp, 0.05, chosen=True)
    assert "output 1: relative 0.9 (its tolerance 0.2)" in held_out_refusal("f", comp, 0.05)


def test_nested_output_reads_only_the_outer_chains_feeding_the_inputs_that_reach_it():
    from dkm_tf.export.depth import output_fan_ins

    a, b = keras.Input((300,)), keras.Input((4,))
    inner = keras.Model([a, b], [layers.Dense(2)(a), layers.Dense(2)(b)])
    outer_a, outer_b = keras.Input((30,)), keras.Input((20,))
    out = inner([layers.Dense(300)(outer_a), layers.Dense(4)(outer_b)])
    # output 1 reads b, fed by a Dense on 20; the 30-row Dense feeds a only
    assert output_fan_ins(keras.Model([outer_a, outer_b], out)) == [300, 20]
