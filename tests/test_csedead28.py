"""Readers `energy.keras_cse` counts for a merged call (review R9).

1. A reader the converter prunes (in a nested model, behind an output of it the outer model
   does not use) was counted: a shared rank-2 `Dense` whose live reader is a ReLU (fused into
   FULLY_CONNECTED, two ops in the file) was merged, Keras / file hierarchy 0.5842 (paper
   0.5265). So was a Dense two nesting levels down whose output a ReLU outside reads (the
   reader looked one level out).
2. A call merged into a twin in another graph was charged one reader more, also where that
   twin's readers merge too: a batch norm after both was not folded (shared conv + batch norm
   outside and in a nested model, hierarchy 1.9269; in two sibling nested models 1.9269;
   outside and in a nested model called twice 1.6335), nor a ReLU fused (shared `Dense(8)` +
   ReLU, 1.0898). The file has one op with the readers of all twins merged.
Each case: the estimate of the Keras model equals the estimate of its float `.tflite`.
"""

import keras
import pytest

from tests._energy_file25 import both, randomize, same_totals

L = keras.layers
S = (8, 8, 4)


def _macs(report):
    return sum(x.shape.macs for x in report.layers)


def _pruned_reader_one_input():
    """`n(d(x))[1]` = ReLU: the nested Dense `e` reading `d(x)` feeds an unused output."""
    i, j = keras.Input((16,)), keras.Input((8,))
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    n = keras.Model(j, [L.Dense(3, name="e")(j), L.ReLU(name="r")(j)], name="n")
    return keras.Model(i, L.Add()([d(x), n(d(x))[1]]))


def _pruned_reader_two_inputs():
    """`d(x)` is read by a ReLU and by the nested `e`, which feeds an unused output."""
    i, j, k = keras.Input((16,)), keras.Input((8,)), keras.Input((16,))
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    n = keras.Model([j, k], [L.Dense(3, name="e")(j), L.Activation("sigmoid")(k)], name="n")
    y = d(x)
    return keras.Model(i, [L.Add()([d(x), L.ReLU(name="r")(y)]), n([y, x])[1]])


def _relu_two_levels_out():
    """`d` inside `n2` inside `n1`; a ReLU outside reads `n1`'s output; `d(x)` an Add."""
    i, j, j2 = keras.Input((16,)), keras.Input((16,)), keras.Input((16,))
    x, d = L.Activation("tanh")(i), L.Dense(8, name="d")
    n1 = keras.Model(j, keras.Model(j2, d(j2), name="n2")(j), name="n1")
    return keras.Model(i, L.Add()([d(x), L.ReLU(name="r")(n1(x))]))


PRUNED = {"one_input": _pruned_reader_one_input, "two_inputs": _pruned_reader_two_inputs,
          "two_levels": _relu_two_levels_out}


@pytest.mark.parametrize("case", sorted(PRUNED))
def test_dense_with_one_live_relu_reader_is_not_merged(case, tmp_path):
    """Two FULLY_CONNECTED of `d` (16 x 8 MACs each) in the file and in the estimate."""
    keras.utils.set_random_seed(0)
    k, f = both(PRUNED[case](), tmp_path)
    assert _macs(k) == _macs(f) == 2 * 16 * 8
    same_totals(k, f)


def _conv_bn():
    return L.Conv2D(4, 3, padding="same", name="c"), L.BatchNormalization(name="bn")


def _conv_bn_outside_and_nested(add=True):
    i, j = keras.Input(S), keras.Input(S)
    x, (c, bn) = L.Activation("tanh")(i), _conv_bn()
    outs = [bn(c(x)), keras.Model(j, bn(c(j)), name="n")(x)]
    return keras.Model(i, L.Add()(outs) if add else outs), bn


def _conv_bn_nested_twice():
    i, j = keras.Input(S), keras.Input(S)
    x, (c, bn) = L.Activation("tanh")(i), _conv_bn()
    n = keras.Model(j, bn(c(j)), name="n")
    return keras.Model(i, L.Add()([bn(c(x)), n(x), n(x)])), bn


def _conv_bn_siblings():
    i, j, j2 = keras.Input(S), keras.Input(S), keras.Input(S)
    x, (c, bn) = L.Activation("tanh")(i), _conv_bn()
    n1, n2 = keras.Model(j, bn(c(j)), name="n1"), keras.Model(j2, bn(c(j2)), name="n2")
    return keras.Model(i, L.Add()([n1(x), n2(x)])), bn


FOLDED = {"outside_and_nested": _conv_bn_outside_and_nested,
          "two_outputs": lambda: _conv_bn_outside_and_nested(False),
          "nested_twice": _conv_bn_nested_twice, "siblings": _conv_bn_siblings}


@pytest.mark.parametrize("case", sorted(FOLDED))
def test_batch_norm_after_merged_twins_is_folded(case, tmp_path):
    """One conv (8x8x4 x 36 MACs), the batch norm folded into it: no batch norm record."""
    keras.utils.set_random_seed(0)
    model, bn = FOLDED[case]()
    randomize(bn)
    k, f = both(model, tmp_path)
    assert _macs(k) == _macs(f) == 8 * 8 * 4 * 36
    assert not [x for x in k.layers if x.shape.layer == "bn"]
    assert any("common subexpressions" in why for _, why in k.skipped)
    same_totals(k, f)


def test_relu_after_merged_dense_twins_is_fused(tmp_path):
    """A shared `Dense(8)` + ReLU outside and in a nested model: one FULLY_CONNECTED with
    the ReLU fused, no ReLU record."""
    keras.utils.set_random_seed(0)
    i, j = keras.Input((16,)), keras.Input((16,))
    x, d, r = L.Activation("tanh")(i), L.Dense(8, name="d"), L.ReLU(name="r")
    model = keras.Model(i, L.Add()([r(d(x)), keras.Model(j, r(d(j)), name="n")(x)]))
    k, f = both(model, tmp_path)
    assert _macs(k) == _macs(f) == 16 * 8
    assert not [x for x in k.layers if x.shape.layer == "r"]
    same_totals(k, f)


def test_distinct_readers_of_twins_still_count(tmp_path):
    """The outer conv read by a batch norm, its nested twin by a ReLU: one conv read twice,
    the batch norm not folded (a record of it), in the file and here."""
    keras.utils.set_random_seed(0)
    i, j = keras.Input(S), keras.Input(S)
    x, (c, bn) = L.Activation("tanh")(i), _conv_bn()
    n = keras.Model(j, L.ReLU(name="r")(c(j)), name="n")
    model = keras.Model(i, L.Add()([bn(c(x)), n(x)]))
    randomize(bn)
    k, f = both(model, tmp_path)
    assert _macs(k) == _macs(f) == 8 * 8 * 4 * 36
    assert [x for x in k.layers if x.shape.layer == "bn"]
    same_totals(k, f)
