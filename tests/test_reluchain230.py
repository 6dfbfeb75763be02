"""Session 30 (review R4 of the reluchain round): a ReLU reading a relu op through an
identity `BatchNormalization(epsilon=0.0)` / `Normalization(mean=0, variance=1)` keeps its
RELU in the file (the converter removes the MUL by 1 / ADD of 0 only after deciding to keep
the RELU), while a Dropout, an Identity, a GaussianNoise, a `Rescaling(1.0)` or a `+ 0.0`
between are gone before and the RELU of a RELU is dropped. The Keras reader stepped over
both alike (Keras / file hierarchy 0.8027 with the conv read twice, 0.7167 with one reader,
in a Pipeline too). Also a `Dense(8, "relu")` called twice on one input, one call read by a
ReLU: one FULLY_CONNECTED in the file, two in the Keras estimate (1.8546). The file's ops
are read with `FlatModel`, apart from the energy readers."""

import keras
import pytest
from _energy_file25 import both, eltwise, same_totals
from keras import layers as L

from tests.test_reluchain30 import _ops

CONV_OUT = 7 * 7 * 4  # Conv2D(4, 3) on 9x9x3


def _relus(report):
    """`output_size` of every relu record of `report`."""
    return [x.shape.output_size for x in report.layers
            if x.shape.kind == "eltwise" and x.shape.eltwise_op == "relu"]


KEPT = {  # identities the converter removes after keeping the RELU of a RELU
    "batch_norm": lambda: L.BatchNormalization(epsilon=0.0),
    "normalization": lambda: L.Normalization(mean=0.0, variance=1.0),
}
GONE = {  # removed before: the RELU of a RELU dropped
    "dropout": lambda: L.Dropout(0.5),
    "identity": L.Identity,
    "gaussian_noise": lambda: L.GaussianNoise(0.1),
    "rescaling_1": lambda: L.Rescaling(1.0),
    "plus_0": lambda: lambda t: t + 0.0,
}


def _read_twice(mid):
    """relu Conv2D(4, 3) -> `mid` -> ReLU -> Conv2D(2, 1), added to Conv2D(2, 1) of the
    relu conv (the conv's output has two readers)."""
    x = keras.Input((9, 9, 3))
    c = L.Conv2D(4, 3, activation="relu")(x)
    b = mid()(c)
    return keras.Model(x, L.Add()([L.Conv2D(2, 1)(L.ReLU()(b)), L.Conv2D(2, 1)(c)]))


@pytest.mark.parametrize("mid", list(KEPT) + list(GONE))
def test_relu_through_an_identity_after_a_relu_conv_read_twice(mid, tmp_path):
    """The RELU stays after an identity batch norm / Normalization (f84e5ff..main: Keras /
    file hierarchy 0.8027, paper 0.9863: not charged), is dropped after the others (1.0000
    before and after)."""
    keras.utils.set_random_seed(0)
    k, f = both(_read_twice({**KEPT, **GONE}[mid]), tmp_path)
    kept = mid in KEPT
    assert [o for o in _ops(tmp_path) if o != "CONV_2D"] == ["RELU"] * kept + ["ADD"]
    assert eltwise(k) == eltwise(f) == ["relu"] * kept + ["add"]
    assert _relus(k) == _relus(f) == [CONV_OUT] * kept
    same_totals(k, f)


@pytest.mark.parametrize("mid", list(KEPT))
@pytest.mark.parametrize("linear", [False, True])
def test_relu_through_an_identity_norm_one_reader(mid, linear, tmp_path):
    """Conv2D(4, 3[, "relu"]) -> identity norm -> ReLU -> Conv2D(2, 1): after a relu conv
    the file keeps a RELU (charged now; 0.7167 before), after a linear one the ReLU is fused
    into the conv (not charged, as before)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    c = L.Conv2D(4, 3, activation=None if linear else "relu")(x)
    k, f = both(keras.Model(x, L.Conv2D(2, 1)(L.ReLU()(KEPT[mid]()(c)))), tmp_path)
    assert _ops(tmp_path) == ["CONV_2D"] + ["RELU"] * (not linear) + ["CONV_2D"]
    assert _relus(k) == _relus(f) == [CONV_OUT] * (not linear)
    same_totals(k, f)


def test_relu_through_an_identity_batch_norm_in_a_nested_model(tmp_path):
    """The conv's output read by a nested `Model(i, ReLU()(BatchNormalization(epsilon=0)(i)))`
    and by a Conv2D(2, 1): the RELU stays (0.8027 before)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    c = L.Conv2D(4, 3, activation="relu")(x)
    i = keras.Input(c.shape[1:])
    inner = keras.Model(i, L.ReLU()(L.BatchNormalization(epsilon=0.0)(i)))
    k, f = both(keras.Model(x, L.Add()([L.Conv2D(2, 1)(inner(c)), L.Conv2D(2, 1)(c)])),
                tmp_path)
    assert [o for o in _ops(tmp_path) if o != "CONV_2D"] == ["RELU", "ADD"]
    assert _relus(k) == _relus(f) == [CONV_OUT]
    same_totals(k, f)


def test_relu_bn_relu_after_a_concatenate(tmp_path):
    """Concatenate -> ReLU -> BatchNormalization(epsilon=0) -> ReLU: two RELUs in the file
    and in both estimates (0.7547 before: the second not charged)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    y = L.Concatenate()([L.Conv2D(2, 1)(x), L.Conv2D(2, 1)(x)])
    y = L.ReLU()(L.BatchNormalization(epsilon=0.0)(L.ReLU()(y)))
    k, f = both(keras.Model(x, L.Conv2D(2, 1)(y)), tmp_path)
    assert _ops(tmp_path) == ["CONV_2D", "CONV_2D", "CONCATENATION", "RELU", "RELU", "CONV_2D"]
    assert _relus(k) == _relus(f) == [9 * 9 * 4] * 2
    same_totals(k, f)


def test_identity_batch_norm_read_twice(tmp_path):
    """relu conv -> BatchNormalization(epsilon=0) read by a ReLU -> Conv2D(2, 1) and by a
    Conv2D(2, 1), added: the RELU stays (0.8027 before)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    b = L.BatchNormalization(epsilon=0.0)(L.Conv2D(4, 3, activation="relu")(x))
    k, f = both(keras.Model(x, L.Add()([L.Conv2D(2, 1)(L.ReLU()(b)), L.Conv2D(2, 1)(b)])),
                tmp_path)
    assert [o for o in _ops(tmp_path) if o != "CONV_2D"] == ["RELU", "ADD"]
    assert _relus(k) == _relus(f) == [CONV_OUT]
    same_totals(k, f)


def test_relu_dense_identity_batch_norm_relu(tmp_path):
    """Dense(8, "relu") -> BatchNormalization(epsilon=0) -> ReLU -> Dense(2) on 16 features:
    FULLY_CONNECTED, RELU, FULLY_CONNECTED (0.9186 before)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((16,))
    y = L.BatchNormalization(epsilon=0.0)(L.Dense(8, activation="relu")(x))
    k, f = both(keras.Model(x, L.Dense(2)(L.ReLU()(y))), tmp_path)
    assert _ops(tmp_path) == ["FULLY_CONNECTED", "RELU", "FULLY_CONNECTED"]
    assert _relus(k) == _relus(f) == [8]
    same_totals(k, f)


def _pipeline_model(where, linear=False):
    x = keras.Input((9, 9, 3))
    conv = L.Conv2D(4, 3, activation=None if linear else "relu")
    bn = L.BatchNormalization(epsilon=0.0)
    if where == "inside":
        y = L.Pipeline([conv, bn, L.ReLU()])(x)
    elif where == "end":
        y = L.ReLU()(L.Pipeline([conv, bn])(x))
    else:  # "first": the Pipeline starts with the batch norm
        y = L.Pipeline([bn, L.ReLU()])(conv(x))
    return keras.Model(x, L.Conv2D(2, 1)(y))


@pytest.mark.parametrize("where", ["inside", "end", "first"])
@pytest.mark.parametrize("linear", [False, True])
def test_pipeline_identity_batch_norm_before_a_relu(where, linear, tmp_path):
    """A `keras.layers.Pipeline` with an identity batch norm between a relu conv and a ReLU
    (in it, at its end, first in it after the conv): the RELU stays (0.7167 before); after
    a linear conv it is fused (not charged, as before)."""
    keras.utils.set_random_seed(0)
    k, f = both(_pipeline_model(where, linear), tmp_path)
    assert _ops(tmp_path) == ["CONV_2D"] + ["RELU"] * (not linear) + ["CONV_2D"]
    assert _relus(k) == _relus(f) == [CONV_OUT] * (not linear)
    same_totals(k, f)


READERS = {  # (Dense activation, reader of its first call, element-wise ops in the file)
    "relu_ReLU": ("relu", L.ReLU, []),
    "relu_ReLU6": ("relu", lambda: L.ReLU(6.0), ["RELU6"]),
    "relu_ReLU3": ("relu", lambda: L.ReLU(3.0), ["MINIMUM", "RELU"]),
    "relu6_ReLU6": ("relu6", lambda: L.ReLU(6.0), []),
    "tanh_ReLU": ("tanh", L.ReLU, ["TANH", "RELU"]),
}


@pytest.mark.parametrize("case", list(READERS))
def test_dense_with_activation_called_twice(case, tmp_path):
    """`d = Dense(8, act)` called twice on one 16-feature input, `d(x)` read by a ReLU and
    `d(x)` by a Dense(2): the converter merges the two calls into one FULLY_CONNECTED (its
    activation its own, nothing fused from the reader). The Keras reader charged both
    (hierarchy 1.8546 / 1.7850 / 1.6996 / 1.8546 / 1.7850)."""
    act, reader, eltwise_ops = READERS[case]
    keras.utils.set_random_seed(0)
    x = keras.Input((16,))
    d = L.Dense(8, activation=act)
    k, f = both(keras.Model(x, [reader()(d(x)), L.Dense(2)(d(x))]), tmp_path)
    ops = _ops(tmp_path)
    assert ops.count("FULLY_CONNECTED") == 2
    assert [o for o in ops if o != "FULLY_CONNECTED"] == eltwise_ops
    assert k.macs == f.macs == 16 * 8 + 8 * 2
    same_totals(k, f)
