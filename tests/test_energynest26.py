"""The Keras reader reads a nested model in the context of its call, as the converter inlines it.

Found by probing `energy.estimate(keras_model)` against `energy.estimate(<its float file>)`
on 8x8x4 inputs (hierarchy totals Keras / file before the fix, paper in brackets): a batch
norm first in a nested model, reading that model's input, called on an outer conv's output,
was charged a MUL and an ADD where the converter folds it into the conv (2.07 [1.05]; after a
DepthwiseConv2D 2.33 [1.14], a Dense 1.52 [1.23]; three models deep or in a nested
Sequential alike); a ReLU / ReLU6 there was charged where the file fuses it into the conv
(1.36 [1.01]); a conv feeding only an input the nested model never reads, or only an output
of it the outer model never reads, was charged where the converter prunes it (1.62 [1.90],
1.47 [1.51]).
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, op_records, randomize, same_totals

L = keras.layers
S = (8, 8, 4)
E = 8 * 8 * 4  # outputs of the 8x8x4 tensors below
C3, C1 = E * 4 * 9, E * 4  # MACs of a 3x3 and of a 1x1 Conv2D(4) on 8x8x4, "same"


def _bn(shape=(None, 8, 8, 4), name="bn"):
    bn = L.BatchNormalization(name=name)
    bn.build(shape)
    randomize(bn)  # not an identity
    return bn


def _conv(x, name="c", activation=None):
    return L.Conv2D(4, 3, padding="same", name=name, activation=activation)(x)


def _nested(first, name="inner", dropout=False):
    """`Model(j, Conv2D(4, 1)(first(j)))`, a `Dropout` before `first` if `dropout`."""
    j = keras.Input(S)
    y = L.Dropout(0.2)(j) if dropout else j
    return keras.Model(j, L.Conv2D(4, 1, name=name + "_c")(first(y)), name=name)


def _wrap(model, depth):
    """`model` called in `depth - 1` more Functional models of one input."""
    for d in range(depth - 1):
        j = keras.Input(S)
        model = keras.Model(j, model(j), name=f"wrap{d}")
    return model


def _outer(inner, before=_conv):
    i = keras.Input(S)
    return keras.Model(i, L.Flatten()(inner(before(i))))


FIRST = {"bn": lambda y: _bn()(y), "relu": lambda y: L.ReLU(name="r")(y),
         "relu6": lambda y: L.ReLU(6.0, name="r")(y),
         "act_relu": lambda y: L.Activation("relu", name="r")(y),
         "rescaling": lambda y: L.Rescaling(np.array([0.5, 1.5, 2.0, 0.7], "float32"),
                                            name="r")(y)}


@pytest.mark.parametrize("first", sorted(FIRST))
@pytest.mark.parametrize("depth,dropout", [(1, False), (1, True), (3, False)])
def test_first_op_of_nested_model_folds_into_outer_conv(first, depth, dropout, tmp_path):
    """`Model(j, Conv2D(4, 1)(first(j)))(conv(i))`, optionally behind a `Dropout` or three
    models deep: the converter folds a batch norm / per-channel `Rescaling` into `c` and fuses
    a ReLU / ReLU6 into it; the Keras reader charged them (2.07 / 1.36 / 1.53 before)."""
    keras.utils.set_random_seed(0)
    model = _outer(_wrap(_nested(FIRST[first], dropout=dropout), depth))
    k, f = both(model, tmp_path)
    layer = "bn" if first == "bn" else "r"
    assert op_records(k, layer) == []  # was [("mul", 2, E), ("add", 2, E)], [("relu", 1, E)]
    assert dict(k.skipped)[layer].endswith("into c (as a .tflite folds it)") or \
        dict(k.skipped)[layer].endswith("into c (as a .tflite fuses it)")
    assert sum(x.shape.macs for x in k.layers) == C3 + C1
    same_totals(k, f)


@pytest.mark.parametrize("before", ["dw", "dense"])
@pytest.mark.parametrize("first", ["bn", "relu"])
def test_first_op_of_nested_model_after_depthwise_or_dense(before, first, tmp_path):
    """After an outer DepthwiseConv2D (2.33 / 1.44 before) or Dense (1.52 / 1.17 before)."""
    keras.utils.set_random_seed(0)
    if before == "dw":
        model = _outer(_nested(FIRST[first]),
                       lambda x: L.DepthwiseConv2D(3, padding="same", name="c")(x))
    else:
        j = keras.Input((6,))
        y = _bn((None, 6))(j) if first == "bn" else L.ReLU(name="r")(j)
        inner = keras.Model(j, L.Dense(3, name="d2")(y))
        i = keras.Input((5,))
        model = keras.Model(i, inner(L.Dense(6, name="c")(i)))
    k, f = both(model, tmp_path)
    assert op_records(k, "bn" if first == "bn" else "r") == []
    same_totals(k, f)


def test_nested_sequential_batch_norm_then_relu(tmp_path):
    """`Sequential([BN, ReLU, Conv2D])(conv(i))`: BN folded and ReLU fused into `c` (2.07)."""
    keras.utils.set_random_seed(0)
    seq = keras.Sequential([keras.Input(S), _bn(), L.ReLU(name="r"), L.Conv2D(4, 1)])
    k, f = both(_outer(_wrap(seq, 2)), tmp_path)
    assert op_records(k, "bn") == [] and op_records(k, "r") == []
    assert "fused into c " in dict(k.skipped)["r"]
    same_totals(k, f)


def test_capped_relu_first_in_nested_model_keeps_min_and_relu(tmp_path):
    """`ReLU(3.0)` first in a nested model after a conv: its first RELU fused into `c`, the
    MINIMUM and the last RELU run (1.19 before: the three ops charged)."""
    keras.utils.set_random_seed(0)
    k, f = both(_outer(_nested(lambda y: L.ReLU(3.0, name="r")(y))), tmp_path)
    assert op_records(k, "r") == [("max", 2, E), ("relu", 1, E)]
    same_totals(k, f)


@pytest.mark.parametrize("case", ["add_first", "relu_second", "shared_bn", "shared_relu",
                                  "relu_then_bn", "two_outputs"])
def test_multi_input_and_shared_nested_models(case, tmp_path):
    """Multi-input nested models (1.60 / 1.31 before), one called twice on two tensors
    (1.84 / 1.16), a ReLU then a batch norm after the ReLU (1.17), a batch norm before two
    outputs (1.56)."""
    keras.utils.set_random_seed(0)
    i = keras.Input(S)
    j1, j2 = keras.Input(S), keras.Input(S)
    if case == "add_first":
        m = keras.Model([j1, j2], L.Add()([_bn()(j1), j2]))
        y = m([_conv(i), L.Activation("tanh")(_conv(i, "c2"))])
    elif case == "relu_second":
        m = keras.Model([j1, j2], L.Add()([j1, L.ReLU(name="r")(j2)]))
        y = m([L.Activation("tanh")(i), _conv(i)])
    elif case in ("shared_bn", "shared_relu"):
        m = _nested(FIRST[case[7:]])
        y = L.Add()([m(_conv(i)), m(_conv(i, "c2"))])
    elif case == "relu_then_bn":  # the BN after a ReLU is kept: a MUL and an ADD
        y = _nested(lambda t: _bn()(L.ReLU(name="r")(t)))(_conv(i))
    else:
        t = _bn()(j1)
        m = keras.Model(j1, [L.Conv2D(4, 1)(t), L.Conv2D(4, 1)(t)])
        y = L.Add()(m(_conv(i)))
    k, f = both(keras.Model(i, L.Flatten()(y)), tmp_path)
    want = {"relu_then_bn": {"r": [], "bn": [("mul", 2, E), ("add", 2, E)]},
            "relu_second": {"r": []}, "shared_relu": {"r": []}}.get(case, {"bn": []})
    assert {layer: op_records(k, layer) for layer in want} == want
    same_totals(k, f)


@pytest.mark.parametrize("case", ["input_bn", "input_relu", "relu_conv_bn"])
def test_nothing_to_fold_into_is_still_charged(case, tmp_path):
    """A batch norm / ReLU first in a nested model reading the outer `Input` (or after a conv
    with its own ReLU) has nothing to fold into: charged, as the file runs it."""
    keras.utils.set_random_seed(0)
    before = {"relu_conv_bn": lambda x: _conv(x, activation="relu")}.get(case, lambda x: x)
    model = _outer(_nested(FIRST["relu" if case == "input_relu" else "bn"]), before)
    k, f = both(model, tmp_path)
    want = [("relu", 1, E)] if case == "input_relu" else [("mul", 2, E), ("add", 2, E)]
    assert op_records(k, "r" if case == "input_relu" else "bn") == want
    same_totals(k, f)


@pytest.mark.parametrize("case", ["dead_input", "dead_chain", "dead_depth2", "dead_output",
                                  "dead_beside_bn"])
def test_ops_no_output_uses_are_not_charged(case, tmp_path):
    """A conv feeding only an input the nested model never reads (1.62 before; behind a conv,
    a BN and a ReLU 2.24; two models deep 2.24), or only an output of it the outer model
    never reads (1.47): the converter prunes it. A conv read by a BN and by an unused input:
    the BN is folded into it (2.07)."""
    keras.utils.set_random_seed(0)
    i, j1, j2 = keras.Input(S), keras.Input(S), keras.Input(S)
    unused = keras.Model([j1, j2], L.Conv2D(4, 1, name="ic")(j1))
    if case == "dead_input":
        y, macs = unused([_conv(i), _conv(i, "c2")]), C3 + C1
    elif case == "dead_chain":
        dead = L.ReLU()(_bn(name="bn2")(_conv(_conv(i, "c0"), "c2")))
        y, macs = unused([_conv(i), dead]), C3 + C1
    elif case == "dead_depth2":
        k1, k2 = keras.Input(S), keras.Input(S)
        m2 = keras.Model([k1, k2], unused([k1, _conv(k2, "kc")]))
        y, macs = m2([_conv(i), _conv(i, "c2")]), C3 + C1
    elif case == "dead_output":
        m = keras.Model(j1, [L.Conv2D(4, 1, name="o1")(j1), L.Conv2D(4, 3, name="o2")(j1)])
        y, macs = m(_conv(i))[0], C3 + C1
    else:
        c = _conv(i)
        y, macs = unused([_bn()(c), c]), C3 + C1
    k, f = both(keras.Model(i, L.Flatten()(y)), tmp_path)
    assert sum(x.shape.macs for x in k.layers) == macs
    if case != "dead_beside_bn":
        dead = {"dead_output": "o2", "dead_depth2": "kc"}.get(case, "c2")
        assert op_records(k, dead) == [] and "prunes it" in dict(k.skipped)[dead]
    else:
        assert op_records(k, "bn") == []
    same_totals(k, f)


@pytest.mark.parametrize("case", ["bn_after_nested_conv", "relu_after_nested_conv",
                                  "pipeline_first", "dead_beside_input_relu"])
def test_nested_model_after_nested_model_and_pipeline(case, tmp_path):
    """A batch norm / ReLU first in a nested model called on another nested model's last conv
    (2.07 / 1.36 before), a `Pipeline([BN, ReLU, Conv2D])` first in a nested model (2.07),
    a ReLU of an outer `Input` feeding only an unused nested input (1.36): folded into /
    fused into the inner conv `ic`, or pruned."""
    keras.utils.set_random_seed(0)
    i, j = keras.Input(S), keras.Input(S)
    first = _conv(L.Activation("tanh")(j), "ic")
    if case in ("bn_after_nested_conv", "relu_after_nested_conv"):
        m1 = keras.Model(j, first)
        y = _nested(FIRST[case[:case.index("_")]])(m1(i))
        model, layer, into = keras.Model(i, L.Flatten()(y)), case[:case.index("_")], "ic"
        layer = "r" if layer == "relu" else layer
    elif case == "pipeline_first":
        pipe = L.Pipeline([_bn(), L.ReLU(name="r"), L.Conv2D(4, 1)])
        model, layer, into = _outer(keras.Model(j, pipe(j))), "bn", "c"
    else:
        i2, j2 = keras.Input(S), keras.Input(S)
        unused = keras.Model([j, j2], L.Conv2D(4, 1)(j))
        y = unused([_conv(i), L.ReLU(name="r")(i2)])
        model, layer, into = keras.Model([i, i2], L.Flatten()(y)), "r", None
    k, f = both(model, tmp_path)
    assert op_records(k, layer) == []
    reason = dict(k.skipped)[layer]
    assert (f"into {into} " in reason) if into else ("prunes it" in reason)
    same_totals(k, f)
