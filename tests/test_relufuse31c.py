"""A ReLU with a slope and a cap on a Dense, in a `keras.layers.Pipeline` (h31).

As `tests/test_relufuse31b.py` where the Dense or the ReLU is a layer of a Pipeline: the
converter traces the Pipeline's layers into the graph, so the NEG reads the plain
FULLY_CONNECTED and the RELU (RELU6) of the input is fused into a copy of it
(`dense_copies.sloped_copy`). Measured before the fix (Keras / file hierarchy):
`Pipeline([Dense(8), ReLU(negative_slope=0.1, max_value=3.0)])` 0.6649 (paper 0.5627), with
a `Dropout` between and capped at 6 0.6289; the Pipeline called twice on one input (the
converter merges the calls) 0.6833; the Dense ending a Pipeline or the ReLU alone in one,
0.6649 (fixed with `tests/test_relufuse31b.py`'s `copied_kind`).
"""

import keras
import pytest

from tests._energy_file25 import BATCHES
from tests.test_relufuse31 import _on, _sloped, check_case
from tests.test_relufuse31b import _CAP3

L = keras.layers


def _twice(batch):
    """One Pipeline called twice on one input, both calls added."""
    pipe = L.Pipeline([L.Dense(8), _sloped()])
    return _on(lambda x: L.Add()([pipe(x), pipe(x)]))(batch)


# name: (builder, FULLY_CONNECTED ops, the file's element-wise ops as priced, its ops after
# its TANH), as in `tests/test_relufuse31b.py`
CASES = {
    "pipeline_dense_sloped_relu3": (_on(lambda x: L.Pipeline([L.Dense(8), _sloped()])(x)), 2,
                                    ["relu", "mul", "max", "relu", "add"],
                                    ["FULLY_CONNECTED"] + _CAP3),
    "pipeline_dense_dropout_sloped_relu6": (_on(lambda x: L.Pipeline([
        L.Dense(8), L.Dropout(0.1), _sloped(6.0)])(x)), 2, ["relu", "mul", "add"],
        ["FULLY_CONNECTED", "NEG", "RELU", "MUL", "FULLY_CONNECTED", "SUB"]),
    "pipeline_called_twice": (_twice, 2, ["relu", "mul", "max", "relu", "add", "add"],
                              ["FULLY_CONNECTED"] + _CAP3 + ["ADD"]),
    "pipeline_dense_then_sloped_relu3": (_on(lambda x: _sloped()(L.Pipeline([L.Dense(8)])(
        x))), 2, ["relu", "mul", "max", "relu", "add"], ["FULLY_CONNECTED"] + _CAP3),
    "pipeline_sloped_relu3_on_dense": (_on(lambda x: L.Pipeline([_sloped()])(L.Dense(8)(x))),
                                       2, ["relu", "mul", "max", "relu", "add"],
                                       ["FULLY_CONNECTED"] + _CAP3),
    # kept: a conv before it in the Pipeline (computed once, its RELU kept)
    "pipeline_conv_sloped_relu3": (_on(lambda x: L.Pipeline([L.Conv2D(4, 3), _sloped()])(x),
                                       (8, 8, 3)), 0,
                                   ["relu", "mul", "relu", "max", "relu", "add"],
                                   ["CONV_2D", "NEG", "RELU", "MUL", "RELU", "MINIMUM", "RELU",
                                    "SUB"]),
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_keras_estimate_equals_its_file(case, batch, tmp_path):
    check_case(CASES[case], batch, tmp_path)
