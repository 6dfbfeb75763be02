"""A ReLU after a `Lambda` or after a ReLU with a slope: the Keras reader against the file (h31).

The TFLite converter (TF 2.21) traces a `Lambda`'s function into the graph, so a ReLU after
it is fused into (or, after a RELU, dropped behind) the op ending it; a ReLU with a slope (and
a cap or a threshold) ends with a SUB / ADD, which takes a following ReLU's RELU as its fused
activation.

Each case is on `tanh(Input(16))` (or `Input((8, 8, 3))`), at batch None and 2; the Keras
model's estimate equals the estimate of its float `.tflite` (hierarchy and paper), both count
the FULLY_CONNECTED ops counted by hand (16 x 8 MACs each) and the same element-wise ops,
the file's ops are those listed, in any order (read with `FlatModel`, apart from the energy
readers). Measured before the fix (Keras / file hierarchy):
`ReLU()(Lambda(keras.activations.relu)(t))` 2.0000, read by a sigmoid too 1.4000;
`ReLU(6)(keras.activations.relu(t, negative_slope=0.1, max_value=6))` 1.1999 (in a `Lambda`
too); `ReLU()(ReLU(negative_slope=0.1, threshold=0.5)(t))` 1.2221;
`ReLU(3)(ReLU(negative_slope=0.1, max_value=3)(t))` 1.1000; `ReLU()(Lambda(lambda t: t *
2.0)(t))` 1.6658 (read by a sigmoid too, the MUL keeps a RELU: 1.0000 already).
"""

import keras
import pytest

from tests._energy_file25 import BATCHES, both, eltwise, same_totals
from tests.test_densebn30 import _fc_macs, _sig, _tanh
from tests.test_reluchain30 import _ops

L = keras.layers
A = keras.activations
FC = 16 * 8


def _on(f, shape=(16,)):
    def build(batch):
        i, x = _tanh(batch, shape)
        return keras.Model(i, f(x))
    return build


def _lam(**kw):
    return L.Lambda(lambda t: A.relu(t, **kw))


def _sloped(cap=3.0, slope=0.1, **kw):
    return L.ReLU(negative_slope=slope, max_value=cap, **kw)


def _with(first, second):
    """`Add()([first(y), second(y)])` on `y`."""
    return lambda y: L.Add()([first(y), second(y)])


def _nested_lambda(batch):
    """A `Lambda(keras.activations.relu)` ending a nested model, a ReLU after it outside."""
    i, x = _tanh(batch)
    j = keras.Input((16,), batch_size=batch)
    inner = keras.Model(j, _lam()(j))
    return keras.Model(i, L.ReLU()(inner(x)))


# name: (builder, FULLY_CONNECTED ops, the file's element-wise ops as priced (a RELU6 is a
# "relu", a MINIMUM a "max", a SUB an "add"), the file's ops after its TANH)
CASES = {
    "relu_of_lambda_relu": (_on(lambda x: L.ReLU()(_lam()(x))), 0, ["relu"], ["RELU"]),
    "relu_of_lambda_relu_and_sigmoid": (_on(lambda x: _with(L.ReLU(), _sig)(_lam()(x))), 0,
                                        ["relu", "add"], ["RELU", "LOGISTIC", "ADD"]),
    "relu_of_nested_lambda_relu": (_nested_lambda, 0, ["relu"], ["RELU"]),
    "relu6_of_lambda_sloped_relu6": (_on(lambda x: L.ReLU(6.0)(_lam(
        negative_slope=0.1, max_value=6.0)(x))), 0, ["relu", "mul", "relu", "add"],
        ["NEG", "RELU", "MUL", "RELU6", "SUB"]),
    "relu6_of_sloped_relu6_op": (_on(lambda x: L.ReLU(6.0)(A.relu(
        x, negative_slope=0.1, max_value=6.0))), 0, ["relu", "mul", "relu", "add"],
        ["NEG", "RELU", "MUL", "RELU6", "SUB"]),
    "relu_of_sloped_threshold": (_on(lambda x: L.ReLU()(L.ReLU(negative_slope=0.1,
                                                               threshold=0.5)(x))), 0,
                                 ["add", "mul", "add"], ["GREATER", "SELECT_V2", "SUB", "MUL",
                                                         "SUB"]),
    "relu3_of_sloped_relu3": (_on(lambda x: L.ReLU(3.0)(_sloped()(x))), 0,
                              ["relu", "mul", "relu", "max", "relu", "add", "max", "relu"],
                              ["NEG", "RELU", "MUL", "RELU", "MINIMUM", "RELU", "SUB",
                               "MINIMUM", "RELU"]),
    "relu_of_lambda_mul": (_on(lambda x: L.ReLU()(L.Lambda(lambda t: t * 2.0)(x))), 0,
                           ["mul"], ["MUL"]),
    "relu_of_lambda_mul_and_sigmoid": (_on(lambda x: _with(L.ReLU(), _sig)(L.Lambda(
        lambda t: t * 2.0)(x))), 0, ["mul", "relu", "add"], ["MUL", "LOGISTIC", "RELU", "ADD"]),
    # kept: a LEAKY_RELU takes no fused activation
    "relu_of_lambda_leaky_relu": (_on(lambda x: L.ReLU()(_lam(negative_slope=0.1)(x))), 0,
                                  ["relu", "relu"], ["LEAKY_RELU", "RELU"]),
}


def check_case(entry, batch, tmp_path):
    """One case ``(build, n_fc, others, file_ops)``: the file holds TANH + ``file_ops``, both
    estimates charge ``n_fc`` FULLY_CONNECTED of ``FC`` MACs and the element-wise ops
    ``others``, and their totals agree (the relufuse31* files share it)."""
    build, n_fc, others, file_ops = entry
    k, f = both(build(batch), tmp_path)
    assert sorted(_ops(tmp_path)) == sorted(["TANH"] + file_ops)
    assert _fc_macs(k) == _fc_macs(f) == n_fc * FC
    assert sorted(eltwise(k)) == sorted(eltwise(f)) == sorted(others)
    same_totals(k, f)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_estimate_equals_its_file(case, batch, tmp_path):
    check_case(CASES[case], batch, tmp_path)
