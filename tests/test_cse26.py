"""The Keras reader charges once what the converter computes once (`energy.keras_cse`).

The converter eliminates common subexpressions: a layer called twice on one tensor, two
layers of one config and equal weights, a nested model called twice on one tensor are one
op in the float file. Found by probing `energy.estimate(keras_model)` against its float
file on 8x8x4 inputs (hierarchy totals Keras / file before the fix, paper in brackets): a
shared `Conv2D(4, 3, "same")` on `tanh(x)` twice 1.5369 [1.9765], also on two `Dropout`s of
`x`; a nested `Model(j, Conv2D(4, 1)(tanh(j)))` twice on one conv's output 1.2486 [1.0976],
2.6416 [1.1882] with a batch norm first in it (folded into the conv once it has one reader);
`keras.ops.relu(x)` twice 1.4000 [1.3354]. Calls on other tensors, of other weights, or of
a `Lambda` / custom layer (which may draw random numbers) stay charged once each.
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, op_records, randomize, same_totals

L = keras.layers
S = (8, 8, 4)
E = 8 * 8 * 4  # outputs of an 8x8x4 tensor
C3, C1 = E * 4 * 9, E * 4  # MACs of a 3x3 and a 1x1 Conv2D(4), "same", on 8x8x4


def _macs(report):
    return sum(x.shape.macs for x in report.layers)


def _shared_conv():
    i = keras.Input(S)
    t, c = L.Activation("tanh")(i), L.Conv2D(4, 3, padding="same", name="c")
    return keras.Model(i, L.Add()([c(t), c(t)])), C3


def _shared_conv_after_dropouts():
    i = keras.Input(S)
    d, c = L.Dropout(0.5), L.Conv2D(4, 3, padding="same", name="c")
    return keras.Model(i, L.Add()([c(d(i)), c(d(i, training=True))])), C3


def _equal_weights():
    i = keras.Input(S)
    t = L.Activation("tanh")(i)
    c1, c2 = L.Conv2D(4, 3, padding="same", name="c"), L.Conv2D(4, 3, padding="same")
    model = keras.Model(i, L.Add()([c1(t), c2(t)]))
    c2.set_weights(c1.get_weights())
    return model, C3


def _nested(bn=False):
    j = keras.Input(S)
    y = _bn()(j) if bn else j
    inner = keras.Model(j, L.Conv2D(4, 1, name="c1")(L.Activation("tanh")(y)), name="inner")
    i = keras.Input(S)
    c = L.Conv2D(4, 3, padding="same", name="c")(i)
    return keras.Model(i, L.Add()([inner(c), inner(c)])), C3 + C1


def _bn():
    bn = L.BatchNormalization(name="bn")
    bn.build((None,) + S)
    randomize(bn)  # not an identity
    return bn


def _ops_relu():
    i = keras.Input(S)
    return keras.Model(i, L.Add()([keras.ops.relu(i), keras.ops.relu(i)])), 0


def _shared_dense_after_flattens():
    i = keras.Input(S)
    t, d = L.Activation("tanh")(i), L.Dense(5, name="c")
    return keras.Model(i, L.Add()([d(L.Flatten()(t)), d(L.Flatten()(t))])), E * 5


def _nested_partly():
    """A nested model of two inputs called on `(t, t)` and `(t, u)`: its conv `a` on `t` is
    one op in the file, its conv `b` two (on `t` and on `u`)."""
    j1, j2 = keras.Input(S), keras.Input(S)
    inner = keras.Model([j1, j2], L.Add()([L.Conv2D(4, 1, name="a")(j1),
                                           L.Conv2D(4, 1, name="b")(j2)]), name="inner")
    i = keras.Input(S)
    t, u = L.Activation("tanh")(i), L.Activation("sigmoid")(i)
    return keras.Model(i, L.Add()([inner([t, t]), inner([t, u])])), 3 * C1


ONCE = {"nested_partly": _nested_partly, "shared_conv": _shared_conv,
        "after_dropouts": _shared_conv_after_dropouts, "equal_weights": _equal_weights,
        "nested": _nested, "nested_bn": lambda: _nested(True),
        "ops_relu": _ops_relu, "flatten_dense": _shared_dense_after_flattens}


@pytest.mark.parametrize("case", sorted(ONCE))
def test_repeated_computation_charged_once(case, tmp_path):
    """Keras and file totals agree; the MACs are one conv's / dense's, as in the file."""
    keras.utils.set_random_seed(0)
    model, macs = ONCE[case]()
    k, f = both(model, tmp_path)
    assert _macs(k) == _macs(f) == macs
    assert any("common subexpressions" in why for _, why in k.skipped)
    same_totals(k, f)


def test_nested_batch_norm_folds_once_its_conv_has_one_reader(tmp_path):
    """The batch norm first in the nested model is folded into `c` (no MUL / ADD record)."""
    keras.utils.set_random_seed(0)
    k, _ = both(_nested(True)[0], tmp_path)
    assert op_records(k, "bn") == []
    assert "folded into c" in dict(k.skipped)["bn"]
    assert "computes what inner computes" in dict(k.skipped)["inner#2"]


def test_relu_twice_is_one_relu(tmp_path):
    """`keras.ops.relu(x)` twice: one RELU of E elements and the ADD (1.40 before)."""
    keras.utils.set_random_seed(0)
    k, f = both(_ops_relu()[0], tmp_path)
    ops = sorted(x.shape.eltwise_op for x in k.layers)
    assert ops == sorted(x.shape.eltwise_op for x in f.layers) == ["add", "relu"]


class _Twice(L.Layer):
    """A custom layer: computing `2x + 1` (pure, but the reader cannot know it)."""

    def call(self, x):
        return x * 2.0 + 1.0


def _other_tensors():
    i = keras.Input(S)
    c = L.Conv2D(4, 3, padding="same", name="c")
    return keras.Model(i, L.Add()([c(i), c(L.Activation("tanh")(i))])), 2 * C3, 2 * C3


def _other_weights():
    i = keras.Input(S)
    t = L.Activation("tanh")(i)
    c1, c2 = L.Conv2D(4, 3, padding="same", name="c"), L.Conv2D(4, 3, padding="same")
    model = keras.Model(i, L.Add()([c1(t), c2(t)]))
    w = c1.get_weights()
    c2.set_weights([w[0] + np.float32(1e-3), w[1]])  # one weight apart: two convs
    return model, 2 * C3, 2 * C3


def _custom_layer():
    """The converter merges the pure custom layer's calls (one conv); the reader does not
    know it is pure and keeps both (an upper bound, as before)."""
    i = keras.Input(S)
    n, c = _Twice(), L.Conv2D(4, 3, padding="same", name="c")
    return keras.Model(i, L.Add()([c(n(i)), c(n(i))])), 2 * C3, C3


def _lambda():
    i = keras.Input(S)
    n, c = L.Lambda(lambda x: x * 2.0 + 1.0), L.Conv2D(4, 3, padding="same", name="c")
    return keras.Model(i, L.Add()([c(n(i)), c(n(i))])), 2 * C3, C3


def _pipeline_lambda():
    """A `Pipeline` holding a `Lambda`, called twice on one tensor: not merged either."""
    i = keras.Input(S)
    p = L.Pipeline([L.Lambda(lambda x: x * 2.0 + 1.0), L.Conv2D(4, 3, padding="same")])
    return keras.Model(i, L.Add()([p(i), p(i)])), 2 * C3, C3


KEPT = {"other_tensors": _other_tensors, "other_weights": _other_weights,
        "custom_layer": _custom_layer, "lambda": _lambda, "pipeline_lambda": _pipeline_lambda}


@pytest.mark.parametrize("case", sorted(KEPT))
def test_calls_not_merged(case, tmp_path):
    """Calls on other tensors / of other weights: two convs in the file and in the Keras
    estimate; behind a custom layer or a `Lambda`: two in the estimate (not merged)."""
    keras.utils.set_random_seed(0)
    model, keras_macs, file_macs = KEPT[case]()
    k, f = both(model, tmp_path)
    assert (_macs(k), _macs(f)) == (keras_macs, file_macs)
    assert not any("common subexpressions" in why for _, why in k.skipped)
