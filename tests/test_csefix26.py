"""Calls `energy.keras_cse` must not merge, and readers it must pass on (review R6).

1. The converter fuses a ReLU / ReLU6 into a `Dense` on a rank-2 tensor (FULLY_CONNECTED)
   before it looks for repeats: a shared Dense whose one call feeds a ReLU is two
   FULLY_CONNECTED ops in the file. `keras_cse` merged them: Keras / file hierarchy 0.5842
   (paper 0.5265) with a ReLU, also with a ReLU(6.); 0.5470 with two model outputs; 0.5361
   with the Dense at two nesting depths. A conv / depthwise conv / Dense on a 3-D tensor is
   merged first (one op, its RELU kept) and stays merged.
2. A call merged into one of another graph (the outer graph, a sibling nested model) left
   its readers behind: a batch norm after it was folded into an op that the file's conv,
   read twice, does not fold (hierarchy 0.3668, paper 0.9511).
"""

import keras
import pytest

from dkm_tf import energy
from tests._energy_file25 import both, randomize, same_totals

L = keras.layers
S = (8, 8, 4)


def _macs(report):
    return sum(x.shape.macs for x in report.layers)


def _dense_relu(relu, shape=(16,)):
    i = keras.Input(shape)
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    return keras.Model(i, L.Add()([d(x), relu(d(x))]))


def _dense_two_outputs():
    i = keras.Input((16,))
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    return keras.Model(i, [d(x), L.ReLU(name="r")(d(x))])


def _dense_two_depths():
    i = keras.Input((16,))
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    j = keras.Input((16,))
    d2 = L.Dense(8, name="d2")
    n = keras.Model(j, L.ReLU(name="r")(d2(j)), name="n")
    model = keras.Model(i, L.Add()([d(x), n(x)]))
    randomize(d)
    d2.set_weights(d.get_weights())
    return model


def _dense_into_nested_relu():
    """The Dense's second call is read by a nested model whose first op is a ReLU: the
    converter inlines it and fuses the ReLU into that FULLY_CONNECTED (four FCs in all)."""
    j = keras.Input((8,))
    n = keras.Model(j, L.Dense(3, name="e")(L.ReLU(name="r")(j)), name="n")
    i = keras.Input((16,))
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    return keras.Model(i, L.Add()([d(x), L.Dense(8, name="f")(n(d(x)))]))


def _nested_dense_outer_relu():
    """A nested model ending in the Dense, called twice; one call's output read by a ReLU."""
    j = keras.Input((16,))
    n = keras.Model(j, L.Dense(8, name="d")(j), name="n")
    i = keras.Input((16,))
    x = L.Activation("tanh")(i)
    return keras.Model(i, L.Add()([n(x), L.ReLU(name="r")(n(x))]))


def _dense_relus_both():
    """Both calls feed a ReLU: each FULLY_CONNECTED fused, the two equal: one op."""
    i = keras.Input((16,))
    x, d, r = L.Activation("tanh")(i), L.Dense(8, name="d"), L.ReLU(name="r")
    return keras.Model(i, L.Add()([r(d(x)), r(d(x))]))


def _conv_relu(conv, shape=S):
    i = keras.Input(shape)
    x = L.Activation("tanh")(i)
    return keras.Model(i, L.Add()([conv(x), L.ReLU(name="r")(conv(x))]))


TWO = {"relu": lambda: _dense_relu(L.ReLU(name="r")),
       "relu6": lambda: _dense_relu(L.ReLU(6.0, name="r")),
       "relu_activation": lambda: _dense_relu(L.Activation("relu", name="r")),
       "relu_after_dropout": lambda: _dense_relu(lambda t: L.ReLU(name="r")(L.Dropout(0.3)(t))),
       "two_outputs": _dense_two_outputs, "two_depths": _dense_two_depths,
       "nested_outer_relu": _nested_dense_outer_relu,
       "pipeline": lambda: _dense_relu(L.Pipeline([L.ReLU(), L.Dense(8, name="p")]))}


@pytest.mark.parametrize("case", sorted(TWO))
def test_dense_with_fused_relu_is_not_merged(case, tmp_path):
    """Two FULLY_CONNECTED (16 x 8 MACs each) in the file and in the Keras estimate."""
    keras.utils.set_random_seed(0)
    k, f = both(TWO[case](), tmp_path)
    assert _macs(k) == _macs(f) == 2 * 16 * 8 + (8 * 8 if case == "pipeline" else 0)
    same_totals(k, f)


def test_dense_with_fused_ops_relu_is_not_merged(tmp_path):
    """`keras.ops.relu` reading one call: two FULLY_CONNECTED here too (the reader does not
    fuse an `ops.relu`, a separate over-count: totals not compared)."""
    keras.utils.set_random_seed(0)
    k, f = both(_dense_relu(keras.ops.relu), tmp_path)
    assert _macs(k) == _macs(f) == 2 * 16 * 8


def test_dense_read_by_nested_model_starting_with_relu(tmp_path):
    """Two FULLY_CONNECTED of `d` (16 x 8 MACs each), `e` and `f`, in the file and here."""
    keras.utils.set_random_seed(0)
    k, f = both(_dense_into_nested_relu(), tmp_path)
    assert _macs(k) == _macs(f) == 2 * 16 * 8 + 8 * 3 + 3 * 8
    same_totals(k, f)


ONCE = {"dense_relus_both": (_dense_relus_both, 16 * 8),
        "dense_3d": (lambda: _dense_relu(L.ReLU(name="r"), (5, 16)), 5 * 16 * 8),
        "conv2d": (lambda: _conv_relu(L.Conv2D(4, 3, padding="same", name="c")), 8 * 8 * 4 * 36),
        "conv1d": (lambda: _conv_relu(L.Conv1D(4, 3, padding="same", name="c"), (8, 4)),
                   8 * 4 * 12),
        "depthwise": (lambda: _conv_relu(L.DepthwiseConv2D(3, padding="same", name="c")),
                      8 * 8 * 4 * 9)}


@pytest.mark.parametrize("case", sorted(ONCE))
def test_merged_before_fusion_stays_merged(case, tmp_path):
    """One op in the file (the converter merges it before fusing), one in the estimate."""
    keras.utils.set_random_seed(0)
    build, macs = ONCE[case]
    k, f = both(build(), tmp_path)
    assert _macs(k) == _macs(f) == macs
    assert any("common subexpressions" in why for _, why in k.skipped)
    same_totals(k, f)


def _conv(name):
    return L.Conv2D(4, 3, padding="same", name=name)


def _bn(name="bn"):
    return L.BatchNormalization(name=name)


def _outer_and_nested():
    """The outer conv and the nested model's conv of equal weights on one tensor: one conv
    in the file, read by the output and by the nested batch norm (not folded)."""
    i, j = keras.Input(S), keras.Input(S)
    x, c, c2, bn = L.Activation("tanh")(i), _conv("c"), _conv("c2"), _bn()
    model = keras.Model(i, [c(x), keras.Model(j, bn(c2(j)), name="n")(x)])
    return model, (c, bn), (c, c2)


def _outer_and_nested_relu():
    i, j = keras.Input(S), keras.Input(S)
    x, c, c2 = L.Activation("tanh")(i), _conv("c"), _conv("c2")
    model = keras.Model(i, [c(x), keras.Model(j, L.ReLU(name="r")(c2(j)), name="n")(x)])
    return model, (c,), (c, c2)


def _siblings():
    """Sibling nested models N1 = bn(conv), N2 = conv' (equal weights), both on one tensor."""
    i, j, j2 = keras.Input(S), keras.Input(S), keras.Input(S)
    x, c, c2, bn = L.Activation("tanh")(i), _conv("c"), _conv("c2"), _bn()
    n1, n2 = keras.Model(j, bn(c(j)), name="n1"), keras.Model(j2, c2(j2), name="n2")
    return keras.Model(i, [n1(x), n2(x)]), (c, bn), (c, c2)


def _outer_bn_and_nested():
    """The outer conv, read by a batch norm, has its twin in a nested model (kept: it adds
    its input): one conv in the file, read twice, the batch norm not folded."""
    i, j = keras.Input(S), keras.Input(S)
    x, c, c2, bn = L.Activation("tanh")(i), _conv("c"), _conv("c2"), _bn()
    nested = keras.Model(j, L.Add()([c2(j), j]), name="n")
    model = keras.Model(i, [bn(c(x)), nested(x)])
    return model, (c, bn), (c, c2)


def _outer_bn_and_pruned_twin():
    """The nested model's twin conv reaches no used output (pruned): the outer batch norm
    folds into the conv, as in the file."""
    i, j = keras.Input(S), keras.Input(S)
    x, c, c2, bn = L.Activation("tanh")(i), _conv("c"), _conv("c2"), _bn()
    nested = keras.Model(j, [c2(j), L.Activation("sigmoid")(j)], name="n")
    model = keras.Model(i, [bn(c(x)), L.Conv2D(4, 1, name="e")(nested(x)[1])])
    return model, (c, bn), (c, c2)


ACROSS = {"outer_and_nested": _outer_and_nested, "outer_and_nested_relu":
          _outer_and_nested_relu, "siblings": _siblings, "outer_bn": _outer_bn_and_nested}


def test_pruned_twin_passes_nothing_on(tmp_path):
    """One 3x3 conv and the 1x1 conv `e`; the batch norm folded (no MUL / ADD records)."""
    keras.utils.set_random_seed(0)
    model, randomized, (c, c2) = _outer_bn_and_pruned_twin()
    for layer in randomized:
        randomize(layer)
    c2.set_weights(c.get_weights())
    k, f = both(model, tmp_path)
    assert _macs(k) == _macs(f) == 8 * 8 * 4 * 36 + 8 * 8 * 4 * 4
    assert not [x for x in k.layers if x.shape.layer == "bn"]
    same_totals(k, f)


@pytest.mark.parametrize("case", sorted(ACROSS))
def test_merge_across_graphs_passes_readers_on(case, tmp_path):
    """One conv in both; the batch norm / ReLU after it keeps its ops, as in the file."""
    keras.utils.set_random_seed(0)
    model, randomized, (c, c2) = ACROSS[case]()
    for layer in randomized:
        randomize(layer)
    c2.set_weights(c.get_weights())
    k, f = both(model, tmp_path)
    assert _macs(k) == _macs(f) == 8 * 8 * 4 * 36
    assert any("common subexpressions" in why for _, why in k.skipped)
    same_totals(k, f)


def test_int_and_float_constants_are_not_merged():
    """`ops.add(i, 1)` and `ops.add(i, 1.0)` of an int32 input are two ADDs in the file
    (int32, and float32 after a CAST): not common subexpressions (1, 1.0 and True were keyed
    alike). The totals are not compared: the file reader does not price the int32 ADD."""
    i = keras.Input((16,), dtype="int32")
    a = keras.ops.cast(keras.ops.add(i, 1), "float32")
    b = keras.ops.add(i, 1.0)
    model = keras.Model(i, L.Add()([L.Dense(4, name="d")(a), L.Dense(4, name="e")(b)]))
    k = energy.estimate(model)
    assert not any("common subexpressions" in why for _, why in k.skipped)


@pytest.mark.parametrize("op", [keras.ops.add, keras.ops.multiply])
def test_int_and_float_scalars_on_a_float_input_stay_merged(op, tmp_path):
    """Review R9: keyed by the scalar's Python type, `x + 1` and `x + 1.0` of a float `x`
    (one op in the file) were charged twice (Keras / file hierarchy 1.4997; 1.5003 for a
    multiply); the call's output dtype tells them apart where it must."""
    i = keras.Input((8, 8, 4))
    x = L.Activation("tanh")(i)
    model = keras.Model(i, L.Multiply()([op(x, 2), op(x, 2.0)]))
    k, f = both(model, tmp_path)
    same_totals(k, f)
