"""Session 30: the converter drops a RELU (RELU6) of a RELU (RELU6), whatever else reads the
first: a second or third ReLU layer in a row after a relu conv / Dense, the leading RELU of a
`ReLU(max_value=3)` after one, a ReLU in a nested model reading a relu conv read outside too.
The Keras reader charged each of them (Keras / file hierarchy 1.3954 undilated, 1.2933
dilated, 1.0887 Dense, 1.1988 / 1.1692 capped, 1.2458 nested); now it agrees with the file's
estimate. The file's ops are read with `FlatModel`, apart from the energy readers."""

import pathlib

import keras
import pytest
from _energy_file25 import both, chain, eltwise, same_totals
from keras import layers as L

from dkm_tf.export.rewrite import FlatModel


def _ops(tmp_path):
    """The op names of the `.tflite` `both` wrote under `tmp_path`, in order."""
    fm = FlatModel.from_bytes(pathlib.Path(tmp_path / "m.tflite").read_bytes())
    return [fm.op_name(op) for op in fm.operators]


def _blocks(d):
    """The ops of a `Conv2D(4, 3, dilation_rate=d, activation="relu")` in the file."""
    return ["CONV_2D"] if d == 1 else ["SPACE_TO_BATCH_ND", "CONV_2D", "BATCH_TO_SPACE_ND",
                                       "RELU"]


def _relu_conv(d):
    return lambda: L.Conv2D(4, 3, dilation_rate=d, activation="relu")


def _chain(*layers, batch=None, shape=(9, 9, 3)):
    def build():
        x = keras.Input(shape, batch_size=batch)
        y = x
        for layer in layers:
            y = layer()(y)
        return keras.Model(x, y)
    return build


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("n", [2, 3])
def test_relu_layers_in_a_row_after_a_relu_conv_are_charged_once(n, d, batch, tmp_path):
    """Conv2D(4, 3, dilation_rate=d, activation="relu") -> `n` ReLU layers -> Conv2D(2, 1) on
    9x9x3: one RELU in the file (fused, or after BATCH_TO_SPACE_ND), no element-wise record
    in either estimate (f84e5ff: the Keras reader charged n - 1 of them, hierarchy 1.3954 /
    1.7907 undilated, 1.2933 / 1.5866 dilated). Both estimates are per image at batch 2."""
    keras.utils.set_random_seed(0)
    k, f = both(_chain(_relu_conv(d), *[L.ReLU] * n, lambda: L.Conv2D(2, 1), batch=batch)(),
                tmp_path)
    assert _ops(tmp_path) == _blocks(d) + ["CONV_2D"]
    o = 9 - 2 * d
    assert k.macs == f.macs == o * o * (4 * 27 + 2 * 4)
    assert eltwise(k) == eltwise(f) == []
    same_totals(k, f)


@pytest.mark.parametrize("batch", [None, 2])
def test_two_relu_activations_after_a_relu_dense_are_charged_once(batch, tmp_path):
    """Dense(8, "relu") -> Activation("relu") x 2 -> Dense(2) on 16 features: one fused RELU
    (f84e5ff: Keras / file hierarchy 1.0887)."""
    keras.utils.set_random_seed(0)
    k, f = both(_chain(lambda: L.Dense(8, activation="relu"), lambda: L.Activation("relu"),
                       lambda: L.Activation("relu"), lambda: L.Dense(2), batch=batch,
                       shape=(16,))(), tmp_path)
    assert _ops(tmp_path) == ["FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert k.macs == f.macs == (16 * 8 + 8 * 2)
    assert eltwise(k) == eltwise(f) == []
    same_totals(k, f)


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("between", [0, 1])
def test_capped_relu_after_a_relu_conv_keeps_its_minimum_and_last_relu(between, d, batch,
                                                                        tmp_path):
    """Conv2D(4, 3, dilation_rate=d, activation="relu") -> (`between` ReLU) ->
    ReLU(max_value=3) -> Conv2D(2, 1): the file merges the capped ReLU's first RELU into the
    conv's and runs MINIMUM, RELU on 7x7x4 (5x5x4 dilated) values; so does the Keras
    reader now (f84e5ff: its first RELU charged too, hierarchy 1.1988 undilated, 1.1692
    dilated)."""
    keras.utils.set_random_seed(0)
    k, f = both(_chain(_relu_conv(d), *[L.ReLU] * between, lambda: L.ReLU(max_value=3.0),
                       lambda: L.Conv2D(2, 1), batch=batch)(), tmp_path)
    assert _ops(tmp_path) == _blocks(d) + ["MINIMUM", "RELU", "CONV_2D"]
    o = 9 - 2 * d
    for report in (k, f):
        assert [(x.shape.eltwise_op, x.shape.output_size) for x in report.layers
                if x.shape.kind == "eltwise"] == [("max", o * o * 4),
                                                  ("relu", o * o * 4)]
    same_totals(k, f)


def test_capped_relu_after_a_relu_dense(tmp_path):
    """Dense(8, "relu") -> ReLU(max_value=3) -> Dense(2): FULLY_CONNECTED, MINIMUM, RELU
    (f84e5ff: Keras / file hierarchy 1.0726)."""
    keras.utils.set_random_seed(0)
    k, f = both(chain(lambda: L.Dense(8, activation="relu"), lambda: L.ReLU(max_value=3.0),
                      lambda: L.Dense(2), shape=(16,))(), tmp_path)
    assert _ops(tmp_path) == ["FULLY_CONNECTED", "MINIMUM", "RELU", "FULLY_CONNECTED"]
    assert eltwise(k) == eltwise(f) == ["max", "relu"]
    same_totals(k, f)


def _nested(d, batch, dropout=False):
    """A relu conv read by a nested model ([Dropout ->] ReLU) -> Conv2D(2, 1) and by a
    Conv2D(2, 1), added."""
    x = keras.Input((9, 9, 3), batch_size=batch)
    c = _relu_conv(d)()(x)
    i = keras.Input(c.shape[1:])
    inner = keras.Model(i, L.ReLU()(L.Dropout(0.5)(i) if dropout else i))
    return keras.Model(x, L.Add()([L.Conv2D(2, 1)(inner(c)), L.Conv2D(2, 1)(c)]))


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("d", [1, 2])
@pytest.mark.parametrize("dropout", [False, True])
def test_relu_in_a_nested_model_reading_a_relu_conv_read_outside_too(dropout, d, batch,
                                                                     tmp_path):
    """The nested model's ReLU is merged into the conv's RELU though the conv's output has
    another reader outside (f84e5ff: charged, Keras / file hierarchy 1.2458 undilated,
    1.2013 dilated)."""
    keras.utils.set_random_seed(0)
    k, f = both(_nested(d, batch, dropout), tmp_path)
    assert _ops(tmp_path) == _blocks(d) + ["CONV_2D", "CONV_2D", "ADD"]
    o = 9 - 2 * d
    assert k.macs == f.macs == o * o * (4 * 27 + 2 * 2 * 4)
    assert eltwise(k) == eltwise(f) == ["add"]
    same_totals(k, f)


def _cat():
    """Two Conv2D(2, 1) of the input, concatenated: a CONCATENATION keeps no RELU."""
    def build(x):
        return L.Concatenate()([L.Conv2D(2, 1)(x), L.Conv2D(2, 1)(x)])
    return build


RUNS = {  # ops after the CONCATENATION of the file, relus (eltwise records) in both
    "ReLU_ReLU": ([L.ReLU, L.ReLU], ["RELU"], ["relu"]),
    "ReLU6_ReLU6": ([lambda: L.ReLU(6.0), lambda: L.ReLU(6.0)], ["RELU6"], ["relu"]),
    "ReLU6_Activation_relu6": ([lambda: L.ReLU(6.0), lambda: L.Activation("relu6")],
                               ["RELU6"], ["relu"]),
    "ops_relu_ReLU": ([lambda: keras.ops.relu, L.ReLU], ["RELU"], ["relu"]),
    "clip_0_6_ReLU6": ([lambda: lambda t: keras.ops.clip(t, 0.0, 6.0), lambda: L.ReLU(6.0)],
                       ["RELU6"], ["relu"]),
    "ReLU3_ReLU": ([lambda: L.ReLU(3.0), L.ReLU], ["RELU", "MINIMUM", "RELU"],
                   ["relu", "max", "relu"]),
    "ReLU3_ReLU3": ([lambda: L.ReLU(3.0), lambda: L.ReLU(3.0)],
                    ["RELU", "MINIMUM", "RELU", "MINIMUM", "RELU"],
                    ["relu", "max", "relu", "max", "relu"]),
    "ReLU6_ReLU_kept": ([lambda: L.ReLU(6.0), L.ReLU], ["RELU6", "RELU"], ["relu", "relu"]),
    "ReLU_ReLU6_kept": ([L.ReLU, lambda: L.ReLU(6.0)], ["RELU", "RELU6"], ["relu", "relu"]),
}


@pytest.mark.parametrize("case", list(RUNS))
def test_relu_of_a_relu_after_an_op_keeping_its_relu(case, tmp_path):
    """After a Concatenate (which keeps a RELU op): a ReLU of the same kind as the one
    before it is dropped by the converter, whatever the op ending the first is (a ReLU
    layer, `keras.ops.relu`, `ops.clip(x, 0, 6)`, a capped ReLU's last RELU); a RELU after
    a RELU6 or a RELU6 after a RELU stays (f84e5ff: the Keras reader charged every one,
    hierarchy 1.2407 for two ReLUs)."""
    relus, ops, kept = RUNS[case]
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    y = _cat()(x)
    for relu in relus:
        y = relu()(y)
    k, f = both(keras.Model(x, L.Conv2D(2, 1)(y)), tmp_path)
    assert _ops(tmp_path) == ["CONV_2D", "CONV_2D", "CONCATENATION", *ops, "CONV_2D"]
    assert eltwise(k) == eltwise(f) == kept
    same_totals(k, f)


@pytest.mark.parametrize("d", [1, 2])
def test_relu_after_a_relu_read_twice(d, tmp_path):
    """Conv2D(4, 3, dilation_rate=d) -> ReLU read by a ReLU -> Conv2D(2, 1) and by a
    Conv2D(2, 1), added: the second RELU is dropped though the first has two readers (its
    own RELU op dilated, fused undilated: the conv's output is read by the ReLU alone)
    (f84e5ff: dilated Keras / file hierarchy 1.1676)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    r = L.ReLU()(L.Conv2D(4, 3, dilation_rate=d)(x))
    model = keras.Model(x, L.Add()([L.Conv2D(2, 1)(L.ReLU()(r)), L.Conv2D(2, 1)(r)]))
    k, f = both(model, tmp_path)
    assert _ops(tmp_path) == _blocks(d) + ["CONV_2D", "CONV_2D", "ADD"]
    assert eltwise(k) == eltwise(f) == ["relu"] * (d == 2) + ["add"]
    same_totals(k, f)


def test_pipeline_relu_after_a_relu_layer(tmp_path):
    """`keras.layers.Pipeline([Conv2D(4, 3, activation="relu"), ReLU(), ReLU(max_value=3)])`:
    the ReLU and the capped ReLU's first RELU merged into the conv's fused RELU, its MINIMUM
    and last RELU run (f84e5ff: both RELUs charged)."""
    keras.utils.set_random_seed(0)
    k, f = both(chain(lambda: L.Pipeline([L.Conv2D(4, 3, activation="relu"), L.ReLU(),
                                          L.ReLU(max_value=3.0)]),
                      lambda: L.Conv2D(2, 1), shape=(9, 9, 3))(), tmp_path)
    assert _ops(tmp_path) == ["CONV_2D", "MINIMUM", "RELU", "CONV_2D"]
    assert eltwise(k) == eltwise(f) == ["max", "relu"]
    same_totals(k, f)
