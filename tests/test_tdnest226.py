"""A chain of constant scales / shifts and batch norms after a conv, folded by the converter.

Found while reading `Lambda`s (`tests/test_tdnest26.py`): `conv(x) * 0.5 + 1.0` was charged
its ADD where the float file folds the MUL into the conv's weights and the ADD into its bias
(raw ops or in a Lambda: Keras / file hierarchy 1.8627, paper 1.0240); a batch norm after a
folded batch norm, Rescaling or MUL 2.7265 / 1.0514; after a DepthwiseConv2D 2.2586.
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, randomize, same_totals

L = keras.layers
S = (8, 8, 4)


def _bn(name):
    bn = L.BatchNormalization(name=name)
    bn.build((None, *S))
    randomize(bn)  # not an identity
    return bn


def _conv(x):
    return L.Conv2D(4, 3, padding="same", name="c")(x)


CHAINS = {
    "mul_add": lambda x: _conv(x) * 0.5 + 1.0,
    "add_mul": lambda x: (_conv(x) + 1.0) * 3.0,
    "four_ops": lambda x: ((_conv(x) * 2.0 + 1.0) - 0.5) / 4.0,
    "bn_bn": lambda x: _bn("b2")(_bn("b1")(_conv(x))),
    "rescaling_bn": lambda x: _bn("b1")(L.Rescaling(0.5, 0.1)(_conv(x))),
    "per_channel": lambda x: _conv(x) * np.array([1, 2, 3, 4], "float32") + np.array(
        [1, 0, 1, 0], "float32"),
    "depthwise": lambda x: L.DepthwiseConv2D(3, padding="same", name="c")(x) * 2.0 + 1.0,
    "lambda": lambda x: L.Lambda(lambda t: t * 0.5 + 1.0, name="lam")(_conv(x)),
}


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_a_chain_after_a_conv_folds_into_it(chain, batch, tmp_path):
    keras.utils.set_random_seed(0)
    i = keras.Input(S, batch_size=batch)
    k, f = both(keras.Model(i, L.Flatten()(CHAINS[chain](i))), tmp_path)
    assert [x.name for x in k.layers] == ["c"]  # every op after it folded
    assert [x.shape.kind for x in f.layers] == ["conv"]
    assert k.macs == f.macs == 8 * 8 * 4 * (9 if chain == "depthwise" else 36)
    same_totals(k, f)


def test_a_chain_after_a_conv_with_relu_is_charged(tmp_path):
    """Nothing folds into a conv with a fused ReLU (a guard: passed before too)."""
    keras.utils.set_random_seed(0)
    i = keras.Input(S)
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="c")(i) * 2.0 + 1.0
    k, f = both(keras.Model(i, L.Flatten()(y)), tmp_path)
    assert [x.shape.eltwise_op for x in k.layers if x.shape.kind == "eltwise"] == ["mul", "add"]
    same_totals(k, f)
