"""A ReLU with a slope and a cap on a Dense: the Keras reader against the file (h31).

The TFLite converter (TF 2.21) lowers a ReLU with a slope and a cap on a linear rank-2 `Dense`
to a NEG reading the plain FULLY_CONNECTED and the RELU (RELU6) of its input fused into a
FULLY_CONNECTED copy (`dense_copies.copied_kind`), as for a ReLU reading a Dense read by
others. Cases and checks as in `tests/test_relufuse31.py`. Measured before the fix (Keras /
file hierarchy): `ReLU(negative_slope=0.1, max_value=3.0)(Dense(8)(t))` 0.6649 (paper
0.5627; also as `keras.activations.relu`, in a `Lambda` or a nested model, after a
`Dropout`), capped at 6 0.6289, of slope 1 0.6442; beside a sigmoid 0.6833, beside a
`ReLU()` 1.0367 (the copy charged for the ReLU, the sloped one's RELU too), capped at 6
beside a `ReLU(6.0)` 1.0404.
"""

import keras
import pytest

from tests._energy_file25 import BATCHES
from tests.test_densebn30 import _bn, _sig, _twins
from tests.test_relufuse31 import _lam, _on, _sloped, _with, check_case

L = keras.layers
A = keras.activations


def _dense(f):
    return _on(lambda x: f(L.Dense(8)(x)))


def _nested(layer):
    """A nested Functional model of `layer` on its input (8 features)."""
    j = keras.Input((8,))
    return keras.Model(j, layer(j))


_CAP3 = ["NEG", "RELU", "MUL", "FULLY_CONNECTED", "MINIMUM", "RELU", "SUB"]
# name: (builder, FULLY_CONNECTED ops, the file's element-wise ops as priced (a RELU6 is a
# "relu", a MINIMUM a "max", a SUB an "add"), the file's ops after its TANH)
CASES = {
    # a sloped, capped ReLU on a Dense: the RELU of its input fused into a copy
    "dense_sloped_relu3": (_dense(_sloped()), 2, ["relu", "mul", "max", "relu", "add"],
                           ["FULLY_CONNECTED"] + _CAP3),
    "dense_sloped_relu6": (_dense(_sloped(6.0)), 2, ["relu", "mul", "add"],
                           ["FULLY_CONNECTED", "NEG", "RELU", "MUL", "FULLY_CONNECTED", "SUB"]),
    "dense_slope_one_relu3": (_dense(_sloped(slope=1.0)), 2, ["relu", "max", "relu", "add"],
                              ["FULLY_CONNECTED", "NEG", "RELU", "FULLY_CONNECTED", "MINIMUM",
                               "RELU", "SUB"]),
    "dense_sloped_relu3_op": (_dense(lambda y: A.relu(y, negative_slope=0.1, max_value=3.0)),
                              2, ["relu", "mul", "max", "relu", "add"],
                              ["FULLY_CONNECTED"] + _CAP3),
    "dense_sloped_relu3_in_lambda": (_dense(_lam(negative_slope=0.1, max_value=3.0)), 2,
                                     ["relu", "mul", "max", "relu", "add"],
                                     ["FULLY_CONNECTED"] + _CAP3),
    "dense_dropout_sloped_relu3": (_dense(lambda y: _sloped()(L.Dropout(0.2)(y))), 2,
                                   ["relu", "mul", "max", "relu", "add"],
                                   ["FULLY_CONNECTED"] + _CAP3),
    "dense_sloped_relu3_and_relu": (_dense(_with(_sloped(), L.ReLU())), 2,
                                    ["relu", "mul", "max", "relu", "add", "add"],
                                    ["FULLY_CONNECTED"] + _CAP3 + ["ADD"]),
    "dense_sloped_relu3_and_sigmoid": (_dense(_with(_sloped(), _sig)), 2,
                                       ["relu", "mul", "max", "relu", "add", "add"],
                                       ["FULLY_CONNECTED", "LOGISTIC"] + _CAP3 + ["ADD"]),
    "dense_sloped_relu6_and_relu6": (_dense(_with(_sloped(6.0), L.ReLU(6.0))), 2,
                                     ["relu", "mul", "add", "add"],
                                     ["FULLY_CONNECTED", "FULLY_CONNECTED", "NEG", "RELU",
                                      "MUL", "SUB", "ADD"]),
    "dense_nested_sloped_relu3": (_dense(lambda y: _nested(_sloped())(y)), 2,
                                  ["relu", "mul", "max", "relu", "add"],
                                  ["FULLY_CONNECTED"] + _CAP3),
    "dense_bn_sloped_relu3": (_dense(lambda y: _sloped()(_bn()(y))), 2,
                              ["relu", "mul", "max", "relu", "add"],
                              ["FULLY_CONNECTED"] + _CAP3),
    "dense_mul_sloped_relu3": (_dense(lambda y: _sloped()(y * 2.0)), 2,
                               ["relu", "mul", "max", "relu", "add"],
                               ["FULLY_CONNECTED"] + _CAP3),
    "dense_same_reshape_sloped_relu3": (_dense(lambda y: _sloped()(L.Reshape((8,))(y))), 2,
                                        ["relu", "mul", "max", "relu", "add"],
                                        ["FULLY_CONNECTED"] + _CAP3),
    "twin_dense_sloped_relu3_and_sigmoid": (_twins(lambda y: [_sloped()(y)], lambda y: [
        _sig(y)]), 2, ["relu", "mul", "max", "relu", "add", "add"],
        ["FULLY_CONNECTED", "LOGISTIC"] + _CAP3 + ["ADD"]),
    # kept: a threshold (no RELU of the input), a conv (computed once, its RELU kept), a
    # reshape to another shape between (the RELU stays after it)
    "dense_reshape_sloped_relu3": (_dense(lambda y: _sloped()(L.Reshape((2, 4))(y))), 1,
                                   ["relu", "mul", "relu", "max", "relu", "add"],
                                   ["FULLY_CONNECTED", "RESHAPE", "NEG", "RELU", "MUL", "RELU",
                                    "MINIMUM", "RELU", "SUB"]),
    "dense_sloped_threshold_relu3": (_dense(_sloped(threshold=0.5)), 1,
                                     ["max", "relu", "add", "mul", "add"],
                                     ["FULLY_CONNECTED", "GREATER", "SELECT_V2", "MINIMUM",
                                      "RELU", "SUB", "MUL", "SUB"]),
    "conv_sloped_relu3": (_on(lambda x: _sloped()(L.Conv2D(4, 3)(x)), (8, 8, 3)), 0,
                          ["relu", "mul", "relu", "max", "relu", "add"],
                          ["CONV_2D", "NEG", "RELU", "MUL", "RELU", "MINIMUM", "RELU", "SUB"]),
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_estimate_equals_its_file(case, batch, tmp_path):
    check_case(CASES[case], batch, tmp_path)
