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

pytestmark = tf_backend_only()


def _chain(x, n):
    for _ in range(n):
        x = keras.layers.Dense(6, activation="tanh")(x)
    return x


def _reads_input_b():
    """A nested model with a 20-deep output from input a and a 1-deep one from input b; the
    outer model feeds a a 20-deep chain and reads the output of b: 2 deep."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,)), keras.Input((6,))
    two = keras.Model([a, b], [_chain(a, 20), keras.layers.Dense(6)(b)])
    j = keras.Input((6,))
    out = two([_chain(j, 20), j])
    return keras.Model(j, keras.layers.Dense(3, name="head")(out[1]))


def test_nested_output_is_charged_only_for_the_inputs_that_reach_it():
    # the parent counted 22: the chain feeding input a added to the output of input b
    assert weighted_depth(_reads_input_b()) == 2
    a, b = keras.Input((6,)), keras.Input((6,))
    two = keras.Model([a, b], [_chain(a, 3), keras.layers.Add()([_chain(a, 2), _chain(b, 4)])])
    x = keras.Input((6,))
    outer = keras.Model(x, list(two([_chain(x, 5), x])))
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
