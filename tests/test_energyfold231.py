"""A `Normalization`'s MUL by 1 after its SUB in a fixed-batch file (h31, fix round).

The TFLite converter (TF 2.21) keeps the MUL by a standard deviation of ones after a
`Normalization`'s SUB (>= 8 elements) in a dynamic-batch file but drops it at a fixed batch;
`export.convert` writes a recurrent model (a loop: TensorList ops) at batch 1. The Keras
reader charged the MUL there too: `LSTM(16)` -> `Dense(8)` -> `Normalization(mean=1..8,
variance=1)` through `to_tflite(format="float")`, Keras / file hierarchy 1.0052 before (1.0000
with the fix); a `Bidirectional(SimpleRNN(8))` the same way.
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, eltwise, op_records, same_totals

L = keras.layers


def _norm(c):
    mean = np.arange(1, c + 1, dtype=np.float32)
    return L.Normalization(name="n", mean=mean, variance=np.ones(c))


RECURRENT = {  # name: the recurrent layer before the Dense(8)
    "lstm": lambda: L.LSTM(16),
    "bidirectional_simple_rnn": lambda: L.Bidirectional(L.SimpleRNN(8)),
}


@pytest.mark.parametrize("case", sorted(RECURRENT))
def test_recurrent_models_file_at_batch_1_drops_the_mul_by_one(case, tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input((4, 16))
    k, f = both(keras.Model(i, _norm(8)(L.Dense(8, name="d")(RECURRENT[case]()(i)))), tmp_path)
    assert eltwise(f)[-1] == "add"  # the SUB only: the file is at batch 1
    assert [r[0] for r in op_records(k, "n")] == ["add"]  # before: the SUB and a MUL by 1
    assert k.macs == f.macs
    same_totals(k, f)  # before: LSTM 1.0052


def test_a_dynamic_batch_model_keeps_the_mul_by_one(tmp_path):
    """No recurrent layer: `to_tflite` writes a dynamic batch, which keeps the MUL."""
    keras.utils.set_random_seed(0)
    i = keras.Input((16,))
    k, f = both(keras.Model(i, _norm(8)(L.Dense(8)(L.Activation("tanh")(i)))), tmp_path)
    assert eltwise(f) == eltwise(k) == ["add", "mul"]
    same_totals(k, f)


def test_an_unrolled_recurrent_layer_is_not_a_fixed_batch(tmp_path):
    """An unrolled GRU converts at a dynamic batch: the MUL by 1 stays, charged."""
    keras.utils.set_random_seed(0)
    i = keras.Input((4, 16))
    k, f = both(keras.Model(i, _norm(8)(L.Dense(8)(L.GRU(16, unroll=True)(i)))), tmp_path)
    assert eltwise(f)[-2:] == ["add", "mul"]
    assert op_records(k, "n") == [("add", 2, 8), ("mul", 2, 8)]  # the SUB and the MUL
