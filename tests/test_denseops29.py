"""ReLU ops (not layers) and the readers of a rank-2 `Dense` the converter copies (h29).

1. `keras.ops.relu` / `keras.ops.relu6` were charged as RELU ops where the converter fuses
   them into the op before, as it fuses a ReLU layer (after a 3x3 conv Keras / file
   hierarchy 1.5297, after a Dense 1.1037); a same-shape `Reshape` between the op and the
   ReLU is removed by the converter, the ReLU fused (1.1037 after a Dense, 1.5297 after a
   conv); one call of a shared `Dense` read by `ops.relu` 1.0519.
Each case: the estimate of the Keras model equals the estimate of its float `.tflite`; MACs
counted by hand (16 x 8 per FULLY_CONNECTED of `Dense(8)` on 16 features).
"""

import keras
import pytest

from tests._energy_file25 import both, eltwise, same_totals

L = keras.layers
FC = 16 * 8  # MACs of one FULLY_CONNECTED of Dense(8) on 16 features
relu, relu6 = keras.ops.relu, keras.ops.relu6


def _macs(report):
    return sum(x.shape.macs for x in report.layers)


def _tanh(batch, shape=(16,)):
    keras.utils.set_random_seed(0)
    i = keras.Input(shape, batch_size=batch)
    return i, L.Activation("tanh")(i)


def _conv(batch):
    i = keras.Input((8, 8, 3), batch_size=batch)
    return i, L.Conv2D(4, 3, name="c")(i)  # 6x6x4 of 3x3x3 taps: 3,888 MACs


def _bn_conv(batch):
    i, c = _conv(batch)
    bn = L.BatchNormalization()
    y = bn(c)
    bn.set_weights([w + 0.5 for w in bn.get_weights()])  # not an identity
    return i, y


FUSED = {  # (model builder, MACs by hand)
    "conv_ops_relu": (lambda b: keras.Model(*(lambda i, c: (i, relu(c)))(*_conv(b))), 3888),
    "conv_bn_ops_relu": (lambda b: keras.Model(*(lambda i, y: (i, relu(y)))(*_bn_conv(b))),
                         3888),
    "conv_reshape_relu": (lambda b: keras.Model(*(lambda i, c: (i, L.ReLU()(L.Reshape(
        (6, 6, 4))(c))))(*_conv(b))), 3888),
    "dense_ops_relu6": (lambda b: keras.Model(*(lambda i, x: (i, relu6(L.Dense(8)(x))))(
        *_tanh(b))), FC),
    "dense_reshape_relu": (lambda b: keras.Model(*(lambda i, x: (i, L.ReLU()(L.Reshape(
        (8,))(L.Dense(8)(x)))))(*_tanh(b))), FC),
    "rank3_dense_ops_relu": (lambda b: keras.Model(*(lambda i, x: (i, relu(L.Dense(8)(x))))(
        *_tanh(b, (4, 16)))), 4 * FC),
    "lambda_ops_relu6": (lambda b: keras.Model(*(lambda i, x: (i, L.Lambda(relu6)(L.Dense(8)(
        x))))(*_tanh(b))), FC),
}


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("case", sorted(FUSED))
def test_relu_op_is_fused_into_the_op_before(case, batch, tmp_path):
    build, macs = FUSED[case]
    k, f = both(build(batch), tmp_path)
    assert _macs(k) == _macs(f) == macs
    assert "relu" not in eltwise(k) and "relu" not in eltwise(f)
    same_totals(k, f)


@pytest.mark.parametrize("reader", ["ops_relu", "ops_relu6"])
def test_relu_on_one_of_two_shared_dense_calls(reader, tmp_path):
    """Two FULLY_CONNECTED of `Dense(5)` on 16 features (one with the activation fused)."""
    fn = {"ops_relu": relu, "ops_relu6": relu6}[reader]
    i, x = _tanh(None)
    d = L.Dense(5)
    k, f = both(keras.Model(i, [fn(d(x)), d(x)]), tmp_path)
    assert _macs(k) == _macs(f) == 2 * 16 * 5
    assert "relu" not in eltwise(k) and "relu" not in eltwise(f)
    same_totals(k, f)
