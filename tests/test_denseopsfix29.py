"""A rank-2 `Dense` read by ReLUs, the Keras reader against the converter's file (h29 fix).

1. A `Dense` called twice on one tensor (twin calls `keras_cse` merges), one call read by a
   `Lambda(ops.relu)` and the other by a ReLU of the same kind, is one FULLY_CONNECTED with
   the RELU fused; the Keras reader charged a copy for each twin's ReLU (Keras / file
   hierarchy 1.8654: `keras_cse` fused no ReLU into the Dense a `Lambda` reads, so the twins
   were not merged; one `Lambda` on both twins, 1.1795 before h29 denseops, 1.8654 after).
2. `Pipeline([Dense(8), Reshape((8,))])` read by `ops.relu` and a sigmoid, a Dense read by
   `Pipeline([Reshape((8,)), ReLU()])` and a sigmoid: two FULLY_CONNECTED in the file (the
   same-shape reshape removed), one charged (0.5842).
Each case: the estimate of the Keras model equals the estimate of its float `.tflite`; MACs
counted by hand (16 x 8 per FULLY_CONNECTED of `Dense(8)` on 16 features).
"""

import keras
import pytest

from tests._energy_file25 import both, eltwise, same_totals

L = keras.layers
FC = 16 * 8
relu, relu6 = keras.ops.relu, keras.ops.relu6


def _macs(report):
    return sum(x.shape.macs for x in report.layers)


def _tanh(batch):
    keras.utils.set_random_seed(0)
    i = keras.Input((16,), batch_size=batch)
    return i, L.Activation("tanh")(i)


def _twins(first, second, batch=None):
    """`Dense(8)` called twice on `tanh(Input(16))`: `first` on one call, `second` on the
    other, summed."""
    i, x = _tanh(batch)
    d = L.Dense(8, name="d")
    return keras.Model(i, L.Add()([first(d(x)), second(d(x))]))


def _lam(fn):
    return lambda y: L.Lambda(fn)(y)


def _one_lambda_on_both(batch):
    lam = L.Lambda(relu)
    return _twins(lam, lam, batch=batch)


TWINS_ONE = {  # every reader a ReLU of one kind: one FULLY_CONNECTED, the RELU fused
    "lambda_relu_and_lambda_relu": lambda b: _twins(_lam(relu), _lam(relu), batch=b),
    "lambda_relu_and_relu_layer": lambda b: _twins(_lam(relu), lambda y: L.ReLU()(y), batch=b),
    "lambda_relu_and_ops_relu": lambda b: _twins(_lam(relu), relu, batch=b),
    "one_lambda_on_both": _one_lambda_on_both,
    "lambda_relu6_and_relu6_layer": lambda b: _twins(
        _lam(relu6), lambda y: L.ReLU(6.0)(y), batch=b),
}


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("case", sorted(TWINS_ONE))
def test_twin_dense_calls_read_by_relus_of_one_kind(case, batch, tmp_path):
    k, f = both(TWINS_ONE[case](batch), tmp_path)
    assert _macs(k) == _macs(f) == FC
    assert "relu" not in eltwise(k) and "relu" not in eltwise(f)
    same_totals(k, f)


def _sigmoid(y):
    return L.Activation("sigmoid")(y)


def _dense_reshape_pipeline(batch):
    i, x = _tanh(batch)
    y = L.Pipeline([L.Dense(8, name="d"), L.Reshape((8,))])(x)
    return keras.Model(i, L.Add()([relu(y), _sigmoid(y)]))


def _reshape_relu_pipeline(batch):
    i, x = _tanh(batch)
    y = L.Dense(8, name="d")(x)
    return keras.Model(i, L.Add()([L.Pipeline([L.Reshape((8,)), L.ReLU()])(y), _sigmoid(y)]))


@pytest.mark.parametrize("batch", [None, 1])
@pytest.mark.parametrize("build", [_dense_reshape_pipeline, _reshape_relu_pipeline],
                         ids=["dense_reshape_pipeline", "reshape_relu_pipeline"])
def test_same_shape_reshape_in_a_pipeline(build, batch, tmp_path):
    """Two FULLY_CONNECTED (the ReLU's, a plain one for the sigmoid): 0.5842 before."""
    k, f = both(build(batch), tmp_path)
    assert _macs(k) == _macs(f) == 2 * FC
    same_totals(k, f)
