"""A ReLU with a slope and a cap on a Dense, a batch norm between in a Pipeline (h31, review).

`Pipeline([Dense(8), BatchNormalization(), ReLU(negative_slope=0.1, max_value=3.0)])`: the
converter folds the batch norm into the Dense, the NEG reads the plain FULLY_CONNECTED and
the RELU of the input is fused into a copy of it (`dense_copies.sloped_copy`, given the Dense
the batch norm is folded into). Measured before the fix (Keras / file hierarchy): 0.6649
(paper 0.5627), the RELU charged and no copy; the same with the ReLU capped at 6. So too
through a `Lambda` of an identity or a constant MUL between the Dense and the ReLU: 0.6649
(`Dense(8)` -> `Lambda(lambda t: t)` -> the sloped ReLU; `t * 2.0` too), and a plain ReLU
after `Lambda(lambda t: t)` on a Dense a sigmoid reads too, 0.5842 (paper 0.5265).
"""

import keras
import pytest

from tests._energy_file25 import BATCHES
from tests.test_relufuse31 import _on, _sloped, check_case
from tests.test_relufuse31b import _CAP3

L = keras.layers


def _nested(batch):
    """A nested model of `Dense(8)` -> `Lambda(lambda t: t)` -> the sloped ReLU."""
    j = keras.Input((16,))
    inner = keras.Model(j, _sloped()(L.Lambda(lambda t: t)(L.Dense(8)(j))))
    return _on(inner)(batch)

# name: (builder, FULLY_CONNECTED ops, the file's element-wise ops as priced, its ops after
# its TANH), as in `tests/test_relufuse31c.py`
CASES = {
    "pipeline_dense_bn_sloped_relu3": (_on(lambda x: L.Pipeline([
        L.Dense(8), L.BatchNormalization(), _sloped()])(x)), 2,
        ["relu", "mul", "max", "relu", "add"], ["FULLY_CONNECTED"] + _CAP3),
    "pipeline_dense_bn_dropout_sloped_relu6": (_on(lambda x: L.Pipeline([
        L.Dense(8), L.BatchNormalization(), L.Dropout(0.1), _sloped(6.0)])(x)), 2,
        ["relu", "mul", "add"],
        ["FULLY_CONNECTED", "NEG", "RELU", "MUL", "FULLY_CONNECTED", "SUB"]),
    # a `Lambda` between the Dense and the ReLU: `dense_copies.dense_copy` walks its traced
    # function (an identity, a constant MUL folded into both FULLY_CONNECTED)
    "dense_lambda_mul_sloped_relu3": (_on(lambda x: _sloped()(L.Lambda(lambda t: t * 2.0)(
        L.Dense(8)(x)))), 2, ["relu", "mul", "max", "relu", "add"],
        ["FULLY_CONNECTED"] + _CAP3),
    "dense_lambda_identity_sloped_relu3": (_on(lambda x: _sloped()(L.Lambda(lambda t: t)(
        L.Dense(8)(x)))), 2, ["relu", "mul", "max", "relu", "add"],
        ["FULLY_CONNECTED"] + _CAP3),
    "dense_sigmoid_and_lambda_identity_relu": (_on(lambda x: (lambda d: L.Add()([L.ReLU()(
        L.Lambda(lambda t: t)(d)), L.Activation("sigmoid")(d)]))(L.Dense(8)(x))), 2,
        ["add"], ["FULLY_CONNECTED", "FULLY_CONNECTED", "LOGISTIC", "ADD"]),
    "nested_dense_lambda_identity_sloped_relu3": (_nested, 2,
                                                  ["relu", "mul", "max", "relu", "add"],
                                                  ["FULLY_CONNECTED"] + _CAP3),
    "pipeline_dense_bn_sloped_relu3_read_by_sigmoid": (_on(lambda x: (lambda p: L.Add()([
        p, L.Activation("sigmoid")(p)]))(L.Pipeline([L.Dense(8), L.BatchNormalization(),
                                                      _sloped()])(x))), 2,
        ["relu", "mul", "max", "relu", "add", "add"],
        ["FULLY_CONNECTED"] + _CAP3 + ["LOGISTIC", "ADD"]),
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_estimate_equals_its_file(case, batch, tmp_path):
    check_case(CASES[case], batch, tmp_path)
