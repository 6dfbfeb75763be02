"""A layer inside a `keras.layers.Pipeline` that is also called elsewhere on the same tensor
(review R7 of the Pipeline folds): the converter computes the twin calls once, so the conv's
output has two readers and a batch norm / ReLU after the Pipeline is not folded / fused.
Reading into the Pipeline folded it anyway: an under-count (Keras / file hierarchy 0.7533 for
a backbone called directly and through a Pipeline, 0.2605 for `Pipeline([Model(c)])` beside
`c(x)`, 0.3460 with a ReLU). Session 28 kept the Pipeline as the source where a layer in it
was also called outside (an over-count: 1.2605 for `Pipeline([c])` beside `c(x)`); since
session 29 `keras_cse` merges the Pipeline's calls with their twins (`pipeline_cse`), and
each estimate equals its file's (`tests/test_csepipe29.py`)."""

import keras
import pytest
from _energy_file25 import both, randomize, same_totals
from keras import layers as L


def _backbone():
    j = keras.Input((16, 16, 3))
    y = L.Conv2D(16, 3, padding="same", activation="relu")(j)
    backbone = keras.Model(j, L.Conv2D(16, 3, padding="same")(y))
    x = keras.Input((16, 16, 3))
    bn = L.BatchNormalization()
    model = keras.Model(x, [L.GlobalAveragePooling2D()(backbone(x)),
                            L.ReLU()(bn(L.Pipeline([backbone])(x)))])
    randomize(bn)
    return model


def _nested_beside_conv(after):
    c = L.Conv2D(32, 1)
    j = keras.Input((8, 8, 1))
    inner = keras.Model(j, c(j))
    x = keras.Input((8, 8, 1))
    reader = after()
    model = keras.Model(x, [reader(L.Pipeline([inner])(x)), c(x)])
    if reader.weights:
        randomize(reader)
    return model


def _nested_beside_model():
    c = L.Conv2D(32, 1)
    j = keras.Input((8, 8, 1))
    inner = keras.Model(j, c(j))
    x = keras.Input((8, 8, 1))
    bn = L.BatchNormalization()
    model = keras.Model(x, [bn(L.Pipeline([inner])(x)), inner(x)])
    randomize(bn)
    return model


def _conv_beside():
    c = L.Conv2D(32, 1)
    x = keras.Input((8, 8, 1))
    bn = L.BatchNormalization()
    model = keras.Model(x, [bn(L.Pipeline([c])(x)), c(x)])
    randomize(bn)
    return model


CASES = {
    "backbone_direct_and_in_pipeline": _backbone,
    "nested_in_pipeline_beside_its_conv_bn": lambda: _nested_beside_conv(
        L.BatchNormalization),
    "nested_in_pipeline_beside_its_conv_relu": lambda: _nested_beside_conv(L.ReLU),
    "nested_in_pipeline_beside_itself": _nested_beside_model,
    "conv_in_pipeline_beside_itself": _conv_beside,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pipeline_layer_called_elsewhere_merges_as_the_file(case, tmp_path):
    k, f = both(CASES[case](), tmp_path)
    same_totals(k, f)
