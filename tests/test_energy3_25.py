"""Third round of the Keras reader charging a model as its float `.tflite` runs it.

Found by review R7 (hierarchy totals Keras / file before the fix): a batch norm or ReLU in a
`keras.layers.Pipeline` after only layers the converter removes (a `Dropout`, a nested model
of a `Dropout`), after an outer conv, not folded / fused into that conv (2.73 / 1.58); an
`x * 1.0`, `x + 0.0`, `x / 1.0` the converter drops charged, a ReLU after `tanh(.) * 1.0`
listed as fused into it (1.18) and a batch norm after `conv * 1.0` not folded (2.73).
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, same_totals

L = keras.layers


def _bn():
    """A built batch norm of 4 channels, not an identity (scale and offset from a seed)."""
    bn = L.BatchNormalization(name="bn")
    bn.build((None, 8, 8, 4))
    rng = np.random.default_rng(0)
    for w in bn.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    return bn


def _conv(x, name="c"):
    return L.Conv2D(4, 3, padding="same", name=name)(x)


def _dropout_model():
    j = keras.Input((8, 8, 4))
    return keras.Model(j, L.Dropout(0.2)(j), name="drop_model")


@pytest.mark.parametrize("case", ["drop_bn", "drop_relu", "drop_drop_bn",
                                  "conv_model_bn", "model_bn"])
def test_pipeline_layer_after_removed_ones_reads_the_pipeline_input(case, tmp_path):
    """`Pipeline([Dropout(0.2), bn])(conv(i))`: the converter folds bn into the outer conv
    (Keras / file 2.73 before the fix: a MUL and an ADD charged); a ReLU there is fused
    into it (1.58); `Pipeline([Conv2D, Model(j, Dropout(0.2)(j)), bn])` folds it into the
    Pipeline's conv (2.73)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    layers = {"drop_bn": [L.Dropout(0.2), _bn()],
              "drop_relu": [L.Dropout(0.2), L.ReLU(name="r")],
              "drop_drop_bn": [L.Dropout(0.2), L.GaussianNoise(0.1), _bn()],
              "conv_model_bn": [L.Conv2D(4, 3, padding="same", name="pc"), _dropout_model(),
                                _bn()],
              "model_bn": [_dropout_model(), _bn()]}[case]
    model = keras.Model(inp, L.Flatten()(L.Pipeline(layers)(_conv(inp))))
    k, f = both(model, tmp_path)
    last = "r" if case == "drop_relu" else "bn"
    assert [x for x in k.layers if x.shape.layer == last] == []
    into = "pc" if case == "conv_model_bn" else "c"
    assert into in dict(k.skipped)[last]
    same_totals(k, f)


_IDENTITIES = {"mul1": lambda x: x * 1.0, "rmul1": lambda x: 1.0 * x,
               "add0": lambda x: x + 0.0, "sub0": lambda x: x - 0.0,
               "div1": lambda x: x / 1.0, "ops_div1": lambda x: keras.ops.divide(x, 1.0),
               "mul_ones": lambda x: x * np.ones(4, "float32")}


@pytest.mark.parametrize("op", sorted(_IDENTITIES))
@pytest.mark.parametrize("after", ["relu_after_tanh", "bn_after_conv", "alone"])
def test_constant_identity_op_is_dropped_and_stepped_over(op, after, tmp_path):
    """The converter drops `x * 1.0`, `x + 0.0`, `x / 1.0`: a ReLU after `tanh(.) * 1.0`
    keeps its RELU (it was listed fused into the MUL: 1.18), a batch norm after
    `conv * 1.0` folds into the conv (it was charged: 2.73)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    if after == "relu_after_tanh":
        y = L.ReLU(name="r")(_IDENTITIES[op](L.Activation("tanh")(_conv(inp))))
    elif after == "bn_after_conv":
        y = _bn()(_IDENTITIES[op](_conv(inp)))
    else:
        y = _IDENTITIES[op](L.Activation("tanh")(_conv(inp)))
    k, f = both(keras.Model(inp, L.Flatten()(y)), tmp_path)
    assert not any(x.shape.eltwise_op in ("add", "mul") for x in k.layers)
    if after == "relu_after_tanh":
        assert [x.shape.eltwise_op for x in k.layers if x.shape.layer == "r"] == ["relu"]
    if after == "bn_after_conv":
        assert "c" in dict(k.skipped)["bn"]
    same_totals(k, f)


@pytest.mark.parametrize("op,charged", [
    ("mul2", "mul"), ("add_broadcast", "add"), ("zero_minus", "add")])
def test_constant_op_that_is_not_an_identity_stays_charged(op, charged, tmp_path):
    """`x * 2`, `x + zeros` broadcasting a 1x1x4 tensor to 8x8x4, `0 - x` are not
    identities: charged as their MUL / ADD / SUB, as in the file."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    t = L.Activation("tanh")(_conv(inp))
    if op == "add_broadcast":
        g = L.Reshape((1, 1, 4))(L.GlobalAveragePooling2D()(t))
        y = g + np.zeros((8, 8, 4), "float32")
    else:
        y = t * 2.0 if op == "mul2" else 0.0 - t
    k, f = both(keras.Model(inp, L.Flatten()(y)), tmp_path)
    assert [x.shape.eltwise_op for x in k.layers if x.shape.eltwise_op in ("add", "mul")] \
        == [charged]
    same_totals(k, f)
