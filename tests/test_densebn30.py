"""A rank-2 `Dense` read by ReLUs the converter fuses: the Keras reader against the file (h30).

The TFLite converter (TF 2.21) fuses a ReLU into a FULLY_CONNECTED, writing a copy of it
where the Dense has other readers. Each case below is a `Dense(8)` (or a `Conv2D(4, 3)`) on
`tanh(Input(...))`; the Keras model's estimate equals the estimate of its float `.tflite`,
and both count the FULLY_CONNECTED ops counted by hand (16 x 8 MACs each), at batch None and
2. Measured before the fix (Keras / file hierarchy):

1. `keras.activations.relu(y)` (its own op, not a layer) beside a sigmoid 0.5361, on a conv
   0.7721; `ops.maximum(y, 0)` beside a sigmoid 0.6083, alone 1.1556;
2. a batch norm between the Dense and a ReLU and a sigmoid (a layer, or ending a
   `Pipeline`) 0.5842; read by a ReLU and a ReLU6 only 0.6323; a batch norm beside the ReLU
   1.0723;
3. twin calls of the Dense, one read by a ReLU (a layer or a `Lambda(ops.relu)`) and a
   sigmoid, the other by a ReLU: 1.4327;
4. a ReLU behind a `Reshape((2, 4))` layer (the file keeps a dead FULLY_CONNECTED) 0.5519;
   behind `ops.expand_dims` then `ops.squeeze`, or `ops.reshape` (fused, none dead) 1.1037;
   the Dense read by a sigmoid too 0.5842.
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, eltwise, same_totals

L = keras.layers
ops = keras.ops
FC = 16 * 8


def _tanh(batch, shape=(16,)):
    keras.utils.set_random_seed(0)
    i = keras.Input(shape, batch_size=batch)
    return i, L.Activation("tanh")(i)


def _sig(y):
    return L.Activation("sigmoid")(y)


def _on_dense(f):
    def build(batch):
        i, x = _tanh(batch)
        return keras.Model(i, f(L.Dense(8, name="d")(x)))
    return build


def _twins(first, second):
    def build(batch):
        i, x = _tanh(batch)
        d = L.Dense(8, name="d")
        y1, y2 = d(x), d(x)
        return keras.Model(i, L.Add()(first(y1) + second(y2)))
    return build


def _bn():
    layer = L.BatchNormalization()
    layer.build((None, 8))
    rng = np.random.default_rng(0)  # not an identity: folded, not removed
    layer.set_weights([rng.uniform(0.5, 1.5, 8).astype("float32") for _ in range(4)])
    return layer


def _bn_pipeline(batch):
    i, x = _tanh(batch)
    y = L.Pipeline([L.Dense(8, name="d"), _bn()])(x)
    return keras.Model(i, L.Add()([ops.relu(y), _sig(y)]))


def _conv_relu(batch):
    i, x = _tanh(batch, (8, 8, 3))
    y = L.Conv2D(4, 3)(x)
    return keras.Model(i, L.Add()([L.Lambda(lambda t: keras.activations.relu(t))(y), _sig(y)]))


# name: (builder, FULLY_CONNECTED ops, the element-wise ops other than the ADDs)
CASES = {
    "activations_relu_in_lambda": (_on_dense(lambda y: L.Add()([
        L.Lambda(lambda t: keras.activations.relu(t))(y), _sig(y)])), 2, []),
    "activations_relu_on_tensor": (_on_dense(lambda y: L.Add()([
        keras.activations.relu(y), _sig(y)])), 2, []),
    "activations_relu_capped_3": (_on_dense(lambda y: L.Add()([
        keras.activations.relu(y, max_value=3.0), _sig(y)])), 2, ["max", "relu"]),
    "activations_relu6_alone": (_on_dense(lambda y: keras.activations.relu(
        y, max_value=6.0)), 1, []),
    "activations_relu_on_conv": (_conv_relu, 0, ["relu"]),
    "maximum_zero_beside_sigmoid": (_on_dense(lambda y: L.Add()([
        ops.maximum(y, 0), _sig(y)])), 2, []),
    "maximum_zero_first_in_lambda": (_on_dense(lambda y: L.Add()([
        L.Lambda(lambda t: ops.maximum(0.0, t))(y), _sig(y)])), 2, []),
    "maximum_zero_alone": (_on_dense(lambda y: ops.maximum(y, np.zeros(8, "float32"))), 1, []),
    "maximum_minus_zero_stays": (_on_dense(lambda y: ops.maximum(y, -0.0)), 1, ["max"]),
    "bn_between": (_on_dense(lambda y: (lambda z: L.Add()([L.ReLU()(z), _sig(z)]))(
        _bn()(y))), 2, []),
    "bn_between_relu_relu6": (_on_dense(lambda y: (lambda z: L.Add()([
        L.ReLU()(z), L.ReLU(6.0)(z)]))(_bn()(y))), 2, []),
    "bn_ending_pipeline": (_bn_pipeline, 2, []),
    "bn_beside_relu": (_on_dense(lambda y: L.Add()([L.ReLU()(y), _bn()(y)])), 2, []),
    "bn_beside_relu_and_sigmoid": (_on_dense(lambda y: L.Add()([
        L.ReLU()(y), _bn()(y), _sig(y)])), 2, ["mul", "add"]),
    "twins_lambda_relu_and_relu": (_twins(lambda y: [L.Lambda(ops.relu)(y), _sig(y)],
                                          lambda y: [L.ReLU()(y)]), 2, []),
    "twins_relu_and_relu": (_twins(lambda y: [L.ReLU()(y), _sig(y)],
                                   lambda y: [L.ReLU()(y)]), 2, []),
    "reshape_layer_then_relu": (_on_dense(lambda y: L.ReLU()(L.Reshape((2, 4))(y))), 2, []),
    "reshape_layer_then_relu6": (_on_dense(lambda y: ops.relu6(L.Reshape((2, 4))(y))), 2, []),
    "reshape_layer_then_relu_capped_3": (_on_dense(lambda y: L.ReLU(3.0)(L.Reshape((2, 4))(
        y))), 2, ["max", "relu"]),
    "ops_reshape_then_relu": (_on_dense(lambda y: L.ReLU()(ops.reshape(y, (-1, 2, 4)))), 1, []),
    "expand_squeeze_then_relu": (_on_dense(lambda y: ops.relu(ops.squeeze(
        ops.expand_dims(y, 1), 1))), 1, []),
    "reshape_layer_relu_beside_sigmoid": (_on_dense(lambda y: L.Add()([L.Flatten()(L.ReLU()(
        L.Reshape((2, 4))(y))), _sig(y)])), 2, []),
    "expand_relu_beside_sigmoid": (_on_dense(lambda y: L.Add()([ops.squeeze(L.ReLU()(
        ops.expand_dims(y, 1)), 1), _sig(y)])), 2, []),
    "reshape_read_twice_keeps_relu": (_on_dense(lambda y: (lambda z: L.Add()([L.Flatten()(
        L.ReLU()(z)), L.Flatten()(_sig(z))]))(L.Reshape((2, 4))(y))), 1, ["relu"]),
    "expand_then_flatten_keeps_relu": (_on_dense(lambda y: L.ReLU()(L.Flatten()(
        ops.expand_dims(y, 1)))), 1, ["relu"]),
}


def _fc_macs(report):
    return sum(x.shape.macs for x in report.layers if x.shape.kind == "dense")


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_estimate_equals_its_file(case, batch, tmp_path):
    build, n_fc, others = CASES[case]
    k, f = both(build(batch), tmp_path)
    assert _fc_macs(k) == _fc_macs(f) == n_fc * FC
    assert [e for e in eltwise(k) if e != "add"] == [e for e in eltwise(f) if e != "add"] == [
        e for e in others if e != "add"]
    same_totals(k, f)


def test_relu_like_ops_are_recognised_by_their_constants():
    from dkm_tf.energy.relu_like import activation_relu, relu_like, zero_maximum

    x = keras.Input((8,))

    def op(t):
        return t._keras_history[0]

    assert activation_relu(op(keras.activations.relu(x)), keras)
    assert not activation_relu(op(L.ReLU()(x)), keras)  # a layer: read as one
    assert zero_maximum(op(ops.maximum(x, 0)), keras)
    assert zero_maximum(op(ops.maximum(np.zeros((1, 8), "float32"), x)), keras)
    assert not zero_maximum(op(ops.maximum(x, -0.0)), keras)  # a MAXIMUM in the file
    assert not zero_maximum(op(ops.maximum(x, 0.5)), keras)
    assert not zero_maximum(op(ops.maximum(x, np.zeros((2, 8), "float32"))), keras)  # broadcast
    assert not zero_maximum(op(ops.maximum(x, x)), keras)
    assert not relu_like(op(ops.minimum(x, 0)), keras)
