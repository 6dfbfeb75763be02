"""ReLU ops (not layers) and the readers of a rank-2 `Dense` the converter copies (h29).

1. `keras.ops.relu` / `keras.ops.relu6` were charged as RELU ops where the converter fuses
   them into the op before, as it fuses a ReLU layer (after a 3x3 conv Keras / file
   hierarchy 1.5297, after a Dense 1.1037); a same-shape `Reshape` between the op and the
   ReLU is removed by the converter, the ReLU fused (1.1037 after a Dense, 1.5297 after a
   conv).
2. A rank-2 linear `Dense` read by a ReLU and by another op is two FULLY_CONNECTED in the
   file (the ReLU's fused, a plain one); the Keras reader charged one and a RELU where the
   ReLU was `keras.ops.relu` / `relu6` / `clip(y, 0, 6)`, sat behind a same-shape reshape or
   a `Dropout` read twice, in a nested model passing the Dense through, in a `Lambda`, or the
   Dense in a `keras.layers.Pipeline` (Keras / file hierarchy 0.5842, 0.6323 for `ops.relu`
   beside `ops.relu6`); a ReLU layer beside `ops.relu`, `Pipeline([ReLU()])` or a
   `Lambda(ops.relu)` on one Dense was charged two FULLY_CONNECTED where the file has one
   (1.9551, 1.8654); `Pipeline([Dense])` read by a ReLU and a ReLU6 only charged no
   FULLY_CONNECTED (0.1684).
3. A rank-2 `Dense` called twice on one tensor, one call read by a ReLU6 inside a `Lambda`,
   is two FULLY_CONNECTED in the file; the calls were merged (0.5488).
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


def _dense_read_by(a, b, batch=None):
    """`Dense(8)` on `tanh(Input(16))`, read by `a` and `b` (functions of its output)."""
    i, x = _tanh(batch)
    y = L.Dense(8, name="d")(x)
    return keras.Model(i, L.Add()([a(y), b(y)]))


def _lam(fn):
    return lambda y: L.Lambda(fn)(y)


def _sigmoid(y):
    return L.Activation("sigmoid")(y)


def _pass_through(batch):
    """A nested model returning its input beside a ReLU of it, on the Dense's output."""
    i, x = _tanh(batch)
    j = keras.Input((8,), batch_size=batch)
    a, r = keras.Model(j, [j, L.ReLU()(j)], name="n")(L.Dense(8, name="d")(x))
    return keras.Model(i, L.Add()([r, _sigmoid(a)]))


def _pass_through_relu6(batch):
    """As `_pass_through`, the passed Dense read by a ReLU6 only: no plain one."""
    i, x = _tanh(batch)
    j = keras.Input((8,), batch_size=batch)
    a, r = keras.Model(j, [j, L.ReLU()(j)], name="n")(L.Dense(8, name="d")(x))
    return keras.Model(i, L.Add()([r, L.ReLU(6.0)(a)]))


def _behind(layer, batch, relus=True):
    """`Dense(8)`, then `layer` (read by a ReLU and a ReLU6 only, where `relus`)."""
    i, x = _tanh(batch)
    y = layer(L.Dense(8, name="d")(x))
    return keras.Model(i, L.Add()([L.ReLU()(y), L.ReLU(6.0)(y)]) if relus else y)


def _relus_model(batch):
    j = keras.Input((8,), batch_size=batch)
    return keras.Model(j, L.Add()([L.ReLU()(j), L.ReLU(6.0)(j)]), name="n")


def _in_pipeline(reader):
    def build(batch):
        i, x = _tanh(batch)
        y = L.Pipeline([L.Dense(8, name="d")])(x)
        return keras.Model(i, L.Add()([L.ReLU()(y), reader(y)]))
    return build


def _dropout_twice(batch):
    i, x = _tanh(batch)
    y = L.Dropout(0.3)(L.Dense(8, name="d")(x))
    return keras.Model(i, L.Add()([L.ReLU()(y), _sigmoid(y)]))


def _nested_relu_op(batch):
    j = keras.Input((8,), batch_size=batch)
    n = keras.Model(j, relu(j), name="n")
    return _dense_read_by(n, _sigmoid, batch)


TWO = {  # read by a ReLU and another op: two FULLY_CONNECTED
    "ops_relu": lambda b: _dense_read_by(relu, _sigmoid, b),
    "ops_relu6": lambda b: _dense_read_by(relu6, _sigmoid, b),
    "clip_0_6": lambda b: _dense_read_by(lambda y: keras.ops.clip(y, 0.0, 6.0), _sigmoid, b),
    "clip_n1_1": lambda b: _dense_read_by(lambda y: keras.ops.clip(y, -1.0, 1.0), _sigmoid, b),
    "ops_relu_and_ops_relu6": lambda b: _dense_read_by(relu, relu6, b),
    "relu_through_reshape": lambda b: _dense_read_by(
        lambda y: L.ReLU()(L.Reshape((8,))(y)), _sigmoid, b),
    "ops_relu_through_ops_reshape": lambda b: _dense_read_by(
        lambda y: relu(keras.ops.reshape(y, (-1, 8))), _sigmoid, b),
    "dropout_read_twice": _dropout_twice,
    "nested_pass_through": _pass_through,
    "ops_relu_in_nested_model": _nested_relu_op,
    "pipeline_relu_and_sigmoid": _in_pipeline(_sigmoid),
    "pipeline_relu_and_relu6": _in_pipeline(lambda y: L.ReLU(6.0)(y)),
    "lambda_relu_and_sigmoid": lambda b: _dense_read_by(_lam(relu), _sigmoid, b),
    "lambda_relu_twice_and_relu6": lambda b: _dense_read_by(
        _lam(lambda t: relu(t) * 2.0), lambda y: L.ReLU(6.0)(y), b),
    "two_lambdas_relu_relu6": lambda b: _dense_read_by(_lam(relu), _lam(relu6), b),
    "relu_relu6_behind_dropout": lambda b: _behind(L.Dropout(0.3), b),  # no plain one
    "relu_relu6_behind_reshape": lambda b: _behind(L.Reshape((8,)), b),
    "relu_relu6_in_nested_model": lambda b: _behind(_relus_model(b), b, relus=False),
    "relu_relu6_nested_pass_through": _pass_through_relu6,
}
ONE = {  # read by ReLUs of one kind only: one FULLY_CONNECTED, the RELU fused
    "relu_and_ops_relu": lambda b: _dense_read_by(lambda y: L.ReLU()(y), relu, b),
    "relu_and_pipeline_relu": lambda b: _dense_read_by(
        lambda y: L.ReLU()(y), lambda y: L.Pipeline([L.ReLU()])(y), b),
    "relu_and_lambda_relu": lambda b: _dense_read_by(lambda y: L.ReLU()(y), _lam(relu), b),
    "two_lambdas_relu": lambda b: _dense_read_by(_lam(relu), _lam(lambda t: relu(t) * 2.0), b),
}


@pytest.mark.parametrize("batch", [None, 1, 3])
@pytest.mark.parametrize("case", sorted(TWO))
def test_relu_beside_another_reader_is_a_second_fully_connected(case, batch, tmp_path):
    k, f = both(TWO[case](batch), tmp_path)
    assert _macs(k) == _macs(f) == 2 * FC
    same_totals(k, f)


@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("case", sorted(ONE))
def test_relus_of_one_kind_are_one_fully_connected(case, batch, tmp_path):
    k, f = both(ONE[case](batch), tmp_path)
    assert _macs(k) == _macs(f) == FC
    assert "relu" not in eltwise(k) and "relu" not in eltwise(f)  # fused into it
    same_totals(k, f)


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


@pytest.mark.parametrize("reader", ["lambda_relu6", "lambda_clip", "ops_relu", "ops_relu6"])
def test_relu_on_one_of_two_shared_dense_calls(reader, tmp_path):
    """Two FULLY_CONNECTED of `Dense(5)` on 16 features (one with the activation fused)."""
    fn = {"lambda_relu6": _lam(relu6), "lambda_clip": _lam(lambda t: keras.ops.clip(
        t, 0.0, 6.0)), "ops_relu": relu, "ops_relu6": relu6}[reader]
    i, x = _tanh(None)
    d = L.Dense(5)
    k, f = both(keras.Model(i, [fn(d(x)), d(x)]), tmp_path)
    assert _macs(k) == _macs(f) == 2 * 16 * 5
    assert "relu" not in eltwise(k) and "relu" not in eltwise(f)
    same_totals(k, f)


def test_ops_relu_in_each_step_of_a_time_distributed_model(tmp_path):
    """Each of 3 steps (walked apart) has its two FULLY_CONNECTED (0.5842 before)."""
    keras.utils.set_random_seed(0)
    i, j = keras.Input((3, 16)), keras.Input((16,))
    y = L.Dense(8, name="d")(j)
    n = keras.Model(j, L.Add()([relu(y), _sigmoid(y)]), name="n")
    k, f = both(keras.Model(i, L.TimeDistributed(n)(L.Activation("tanh")(i))), tmp_path)
    assert _macs(k) == _macs(f) == 3 * 2 * FC
    same_totals(k, f)


@pytest.mark.parametrize("layers, macs", [
    (lambda: [L.Dense(12), L.Dense(8)], 16 * 12 + 2 * 12 * 8),  # 0.7894 before
    (lambda: [L.Dense(8), L.Dropout(0.1)], 2 * FC),  # 0.5842 before
], ids=["dense_dense", "dense_dropout"])
def test_last_dense_of_a_pipeline_read_by_a_relu_and_a_sigmoid(layers, macs, tmp_path):
    """Only the Pipeline's last Dense is copied (the layers before it run once)."""
    i, x = _tanh(None)
    y = L.Pipeline(layers())(x)
    k, f = both(keras.Model(i, L.Add()([relu(y), _sigmoid(y)])), tmp_path)
    assert _macs(k) == _macs(f) == macs
    same_totals(k, f)
