"""Session 30 (review R10 of the reluchain round): `Pipeline([BatchNormalization(epsilon=0.0),
ReLU()])` reading a linear rank-2 `Dense(8)` that another op reads too. The converter writes a
FULLY_CONNECTED copy with the RELU fused for the Pipeline (no RELU op), as for a ReLU layer on
that Dense (`dense_copies`). The reader walked the Pipeline's ReLU on an input stripped of its
Keras history (so as not to merge its RELU into a RELU before the batch norm), which hid the
Dense: the copy was not charged (Keras / file hierarchy 0.7343, k.macs 80 of the file's 128).
The file's ops are read with `FlatModel`, apart from the energy readers."""

import keras
import pytest
from _energy_file25 import both, same_totals
from keras import layers as L

from tests.test_reluchain30 import _ops
from tests.test_reluchain230 import _relus

MACS = 6 * 8 * 2 + 16 * 2  # the Dense(8) and its copy on 6 features, Dense(2) on 16


def _pipe():
    return L.Pipeline([L.BatchNormalization(epsilon=0.0), L.ReLU()])


def _plain(batch):
    x = keras.Input((6,), batch_size=batch)
    c = L.Dense(8)(x)
    return keras.Model(x, L.Dense(2)(L.Concatenate()([_pipe()(c), c])))


def _twin(batch):
    """One Dense(8) called twice on one input (the converter merges the calls), one call
    read by the Pipeline, the other by the Concatenate."""
    x = keras.Input((6,), batch_size=batch)
    d = L.Dense(8)
    return keras.Model(x, L.Dense(2)(L.Concatenate()([_pipe()(d(x)), d(x)])))


def _nested_pipeline(batch):
    """The Pipeline in a nested Functional model, reading the Dense outside through its
    input."""
    x = keras.Input((6,), batch_size=batch)
    c = L.Dense(8)(x)
    i = keras.Input((8,), batch_size=batch)
    inner = keras.Model(i, _pipe()(i))
    return keras.Model(x, L.Dense(2)(L.Concatenate()([inner(c), c])))


def _nested_all(batch):
    """The Dense, the Pipeline and the Concatenate in a nested Functional model."""
    x = keras.Input((6,), batch_size=batch)
    i = keras.Input((6,), batch_size=batch)
    c = L.Dense(8)(i)
    inner = keras.Model(i, L.Concatenate()([_pipe()(c), c]))
    return keras.Model(x, L.Dense(2)(inner(x)))


MODELS = {"plain": _plain, "twin": _twin, "nested_pipeline": _nested_pipeline,
          "nested_all": _nested_all}


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("case", list(MODELS))
def test_identity_bn_relu_pipeline_on_a_dense_read_twice(case, batch, tmp_path):
    """FULLY_CONNECTED, its copy with the RELU fused, CONCATENATION, FULLY_CONNECTED: the
    copy is charged and no RELU (k.macs 80 and no copy before, hierarchy 0.7343)."""
    keras.utils.set_random_seed(0)
    k, f = both(MODELS[case](batch), tmp_path)
    assert _ops(tmp_path) == ["FULLY_CONNECTED"] * 2 + ["CONCATENATION", "FULLY_CONNECTED"]
    assert k.macs == f.macs == MACS
    assert _relus(k) == _relus(f) == []
    same_totals(k, f)


@pytest.mark.parametrize("relu_dense", [False, True])
def test_identity_bn_relu_pipeline_on_a_dense_read_once(relu_dense, tmp_path):
    """Read by the Pipeline only: its RELU is fused into a linear Dense (one
    FULLY_CONNECTED) and stays after a relu one (the identity batch norm between), as
    before."""
    keras.utils.set_random_seed(0)
    x = keras.Input((6,))
    c = L.Dense(8, activation="relu" if relu_dense else None)(x)
    k, f = both(keras.Model(x, L.Dense(2)(_pipe()(c))), tmp_path)
    assert _ops(tmp_path) == ["FULLY_CONNECTED"] + ["RELU"] * relu_dense + ["FULLY_CONNECTED"]
    assert k.macs == f.macs == 6 * 8 + 8 * 2
    assert _relus(k) == _relus(f) == [8] * relu_dense
    same_totals(k, f)
