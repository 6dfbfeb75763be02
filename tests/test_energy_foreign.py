"""`.tflite` files dkm_tf did not write (plain `tf.lite.TFLiteConverter`): the energy reader
charges every op at its run-time shape or lists it, with the reason."""

import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from dkm_tf import energy  # noqa: E402
from dkm_tf.energy.keras_reader import InputShapeError  # noqa: E402

L = keras.layers


def _convert(converter, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(converter.convert())
    return str(path)


def _from_keras(model, path, **attrs):
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    for k, v in attrs.items():
        setattr(c, k, v)
    return _convert(c, path)


def _macs(report):
    return sum(x.macs for x in report.layers)


def test_sizes_the_converter_leaves_open_are_read_by_running_the_file(tmp_path):
    """UpSampling2D of a dynamic-batch model stores the next conv's input as [1, 1, 16, 8]:
    charged at [1, 16, 16, 8], as Keras (was 1/16 of it, without a word)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 8))
    x = L.UpSampling2D(2)(inp)
    x = L.Conv2D(4, 1, name="c1x1")(x)
    model = keras.Model(inp, L.GlobalMaxPooling2D()(x))
    report = energy.estimate(_from_keras(model, tmp_path / "up.tflite"))
    assert report.layer("c1x1_1").macs == 16 * 16 * 8 * 4 == energy.estimate(model).macs
    assert any(name == "shapes" and "running the file once" in why
               for name, why in report.skipped)


def test_an_open_input_size_needs_input_shape(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(8, 3, name="c1")(inp)
    model = keras.Model(inp, L.Dense(5, name="fc")(L.GlobalAveragePooling2D()(x)))
    path = _from_keras(model, tmp_path / "open.tflite")
    with pytest.raises(InputShapeError, match=r"open beyond the batch .*\[-1, -1, -1, 3\]"):
        energy.estimate(path)
    report = energy.estimate(path, input_shape=(12, 12, 3))
    assert report.layer("c1_1").macs == 10 * 10 * 8 * 27
    assert _macs(report) == _macs(energy.estimate(model, input_shape=(12, 12, 3)))
    with pytest.raises(InputShapeError, match="does not fit"):
        energy.estimate(path, input_shape=(12, 12, 4))


def test_attention_products_of_two_activations_are_charged(tmp_path):
    """BATCH_MATMUL of Q and K (and of the scores and V): G = heads grouped products, as the
    Keras reader's `mha/scores` and `mha/context` (was "unsupported", 15 % of the MACs)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 16))
    model = keras.Model(inp, L.MultiHeadAttention(2, 8, name="mha")(inp, inp))
    report = energy.estimate(_from_keras(model, tmp_path / "mha.tflite"))
    products = [x for x in report.layers if x.shape.op == "BATCH_MATMUL"]
    assert [(x.macs, x.shape.groups) for x in products] == [(2 * 6 * 6 * 8, 2)] * 2
    assert _macs(report) == _macs(energy.estimate(model))
    assert not any("BATCH_MATMUL" in why for _, why in report.skipped)


def test_if_charges_the_costlier_branch_and_names_the_other(tmp_path):
    w = tf.constant(np.ones((8, 16), np.float32))

    @tf.function(input_signature=[tf.TensorSpec((1, 8)), tf.TensorSpec((), tf.bool)])
    def f(x, flag):
        return tf.cond(flag, lambda: tf.matmul(x, w), lambda: x[:, :1] * 2.0)

    c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    report = energy.estimate(_convert(c, tmp_path / "cond.tflite"))
    assert _macs(report) == 8 * 16
    assert any(why.startswith("IF: one branch runs per invoke; charged the costlier")
               for _, why in report.skipped)


def test_other_signatures_and_loop_control_are_listed(tmp_path):
    class Two(tf.Module):
        w = tf.constant(np.ones((8, 16), np.float32))

        @tf.function(input_signature=[tf.TensorSpec((1, 8))])
        def small(self, x):
            return tf.matmul(x, self.w)

        @tf.function(input_signature=[tf.TensorSpec((1, 4))])
        def tiny(self, x):
            return x * 3.0

    mod = Two()
    c = tf.lite.TFLiteConverter.from_concrete_functions(
        [mod.small.get_concrete_function(), mod.tiny.get_concrete_function()], mod)
    report = energy.estimate(_convert(c, tmp_path / "sigs.tflite"))
    assert len(report.layers) == 1
    assert any("signature" in why and "not charged" in why for _, why in report.skipped)

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 3), batch_size=1)
    model = keras.Model(inp, L.GRU(4, name="rnn")(inp))
    report = energy.estimate(_from_keras(model, tmp_path / "gru.tflite"))
    reasons = dict(report.skipped)
    assert "loop control" in reasons["while_1/cond"]
    assert any("loop counter" in why for why in reasons.values())
    keras_report = energy.estimate(model)
    assert report.hierarchy_total == pytest.approx(keras_report.hierarchy_total)


def test_custom_and_int16_activations_are_named(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec((1, 8))])
    def f(x):
        return tf.math.bessel_i0e(x)

    c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    c.allow_custom_ops = True
    report = energy.estimate(_convert(c, tmp_path / "custom.tflite"))
    assert any("CUSTOM:BesselI0e" in why for _, why in report.skipped)

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    model = keras.Model(inp, L.Conv2D(4, 3)(inp))
    rng = np.random.default_rng(0)
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([rng.random((1, 6, 6, 2), np.float32)]
                                        for _ in range(2))
    c.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    note = " ".join(energy.estimate(_convert(c, tmp_path / "a16x8.tflite")).notes)
    assert "int16 activations" in note and "bits_x=16" in note and "bits_x=8" not in note
