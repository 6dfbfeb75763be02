"""Session 28: what the converter fuses / folds around a `keras.layers.Pipeline` that the
Keras reader charged (review R5): a ReLU, a batch norm or a `Rescaling` after a Pipeline
ending in a conv / Dense (`energy.bn_folding.source_at` looks into it), a scale then a pad
before a conv with a `Dropout`, a Pipeline or a nested model's boundary between
(`energy.following_folds.conv_after`), a scale before a nested model in a Pipeline
(`energy.pipeline_folds`). Each Keras estimate is checked beside its float file's
(hierarchy and paper totals, rtol 1e-6), and the conv shapes and element-wise ops the file
runs are given."""

import keras
import pytest
from _energy_file25 import both, same_totals
from _energy_file25 import chain as _chain
from _energy_file25 import convs as _convs
from _energy_file25 import eltwise as _eltwise
from keras import layers as L

from dkm_tf import energy


def _pipe(*layers):
    return lambda: L.Pipeline([layer() for layer in layers])


def _nest(*layers, shape=(8, 8, 3)):
    """A nested Functional model of `layers` in a chain."""
    return lambda: _chain(*layers, shape=shape)()


def _two(first, *readers):
    """`first` read by each of `readers`, each an output."""
    def build():
        x = keras.Input((8, 8, 3))
        r = first()(x)
        return keras.Model(x, [reader()(r) for reader in readers])
    return build


def _conv():
    return L.Conv2D(4, 3)


def _half():
    return L.Rescaling(0.5)


def _pad():
    return L.ZeroPadding2D(1)


def _drop():
    return L.Dropout(0.2)


def _pool():
    return L.MaxPooling2D(2)


def _dense():
    return L.Dense(4)


def _returns_scale_pad():
    """A nested model returning `Pipeline([Rescaling(0.5), ZeroPadding2D(1)])`'s output,
    read by a conv outside."""
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.Pipeline([_half(), _pad()])(j))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, _conv()(inner(x)))


def _pipeline_in_nested_then_relu():
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.Pipeline([_conv()])(j))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.ReLU()(inner(x)))


def _branches(first, second, merge=L.Add):
    """A nested model merging `first()` and `second()` of its input."""
    def build():
        j = keras.Input((8, 8, 3))
        return keras.Model(j, merge()([first()(j), second()(j)]))
    return build


def _relu3():
    return L.ReLU(3.0)


def _channel_shift():
    return L.Rescaling([0.5, 1.0, 2.0, 3.0], 0.1)


def _shift():
    return L.Rescaling(0.5, 0.1)


def _dw():
    return L.DepthwiseConv2D(3)


_C = [(8, 8, 3, 6, 6, 4)]  # a 3x3 valid conv on 8x8x3
_SAME = [(8, 8, 3, 8, 8, 4)]  # the same, reading the input of a pad it merges

# model -> (conv shapes the file runs, its element-wise ops); before: Keras / file hierarchy
FIXED = {
    # a ReLU after a Pipeline ending in a linear conv / Dense: fused (each 1.5297 before)
    "relu_after_conv": (_chain(_pipe(_conv), L.ReLU), _C, []),
    "relu6_after_conv": (_chain(_pipe(_conv), lambda: L.ReLU(6.0)), _C, []),
    "relu_activation_after_conv": (_chain(_pipe(_conv), lambda: L.Activation("relu")), _C,
                                   []),
    "relu3_after_conv": (_chain(_pipe(_conv), _relu3), _C, ["max", "relu"]),  # 1.2279
    "relu_after_conv_folded_scale": (_chain(_pipe(_conv, _half), L.ReLU), _C, []),
    "relu_after_conv_dropout": (_chain(_pipe(_conv, _drop), L.ReLU), _C, []),
    "relu_after_conv_pool": (_chain(_pipe(_conv, _pool), L.ReLU), _C, []),  # 1.0995
    "relu_after_dropout_pipeline": (_chain(_conv, _pipe(_drop), L.ReLU), _C, []),
    "relu_after_dense_3d": (_chain(_pipe(_dense), L.ReLU), [], []),  # 2.0809
    "relu_after_nested_model_conv": (_chain(_pipe(_nest(_conv)), L.ReLU), _C, []),
    "relu_after_nested_pipeline": (_pipeline_in_nested_then_relu, _C, []),
    # a batch norm / a scale after it: folded (1.7956 before)
    "scale_after_conv": (_chain(_pipe(_conv), _half), _C, []),
    "bn_after_conv": (_chain(_pipe(_conv), L.BatchNormalization), _C, []),
    "channel_scale_after_conv": (_chain(_pipe(_conv), _channel_shift), _C, []),  # 2.5902
    "bn_relu_pipeline_after_conv": (_chain(_pipe(_conv), _pipe(L.BatchNormalization, L.ReLU)),
                                    _C, []),
    "bn_after_dense": (_chain(_pipe(_dense), L.BatchNormalization, shape=(6,)), [], []),
    "bn_after_nested_model_conv": (_chain(_pipe(_nest(_conv)), L.BatchNormalization), _C, []),
    # a scale, a pad, then a conv, with a removed layer, a Pipeline or a nested model's
    # boundary between: the MUL folded (1.7879 before; the depthwise conv 2.2603)
    "scale_pad_dropout_conv": (_chain(_pipe(_half, _pad), _drop, _conv), _SAME, []),
    "scale_pad_pipeline_conv": (_chain(_pipe(_half, _pad), _pipe(_conv)), _SAME, []),
    "plain_scale_pad_dropout_conv": (_chain(_half, _pad, _drop, _conv), _SAME, []),
    "returned_by_nested_model": (_returns_scale_pad, _SAME, []),
    "scale_pad_nested_model_conv": (_chain(_pipe(_half, _pad), _nest(_drop, _conv, shape=(
        10, 10, 3))), _SAME, []),
    "plain_scale_pad_nested_conv": (_chain(_half, _pad, _nest(_conv, shape=(10, 10, 3))),
                                    _SAME, []),
    "scale_pad_dropout_depthwise": (_chain(_pipe(_half, _pad), _drop, _dw),
                                    [(8, 8, 3, 8, 8, 3)], []),
    "scale_pad_pipeline_of_model": (_chain(_half, _pad, _pipe(_nest(_conv, shape=(
        10, 10, 3)))), _SAME, []),
    # a scale before a nested model in a Pipeline: folded into its conv (2.0609 before)
    "scale_nested_model_conv": (_chain(_pipe(_half, _nest(_conv))), _C, []),
    "shift_nested_model_conv": (_chain(_pipe(_shift, _nest(_conv))), _C, []),  # 3.1203
    "scale_nested_model_two_convs": (_chain(_pipe(_half, _nest(_conv, _conv))),
                                     _C + [(6, 6, 4, 4, 4, 4)], []),  # 1.6038
    "scale_nested_model_pad_conv": (_chain(_pipe(_half, _nest(_pad, _conv))), _SAME, []),
    "scale_before_pipeline_of_model": (_chain(_half, _pipe(_nest(_conv))), _C, []),
    "scale_nested_model_two_branches": (_chain(_pipe(_half, _branches(_conv, _conv))),
                                        _C * 2, ["add"]),  # 1.3796
}


@pytest.mark.parametrize("case", list(FIXED))
def test_fused_and_folded_around_a_pipeline(case, tmp_path):
    build, convs, ops = FIXED[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


# guards (passed before): what the converter keeps stays charged
KEPT = {
    "relu_also_pooled": (_two(_pipe(_conv), L.ReLU, _pool), _C, ["relu"]),
    "bn_after_relu_conv": (_chain(_pipe(lambda: L.Conv2D(4, 3, activation="relu")),
                                  L.BatchNormalization), _C, ["mul"]),
    "bn_after_relu_layer": (_chain(_pipe(_conv, L.ReLU), L.BatchNormalization), _C, ["mul"]),
    "relu_after_transposed": (_chain(_pipe(lambda: L.Conv2DTranspose(4, 3)), L.ReLU),
                              [(8, 8, 3, 8, 8, 36)], ["relu"]),
    "bn_after_dense_3d": (_chain(_pipe(_dense), L.BatchNormalization), [], ["mul"]),
    "bn_after_nested_relu_conv": (_chain(_pipe(_nest(_conv, L.ReLU)), L.BatchNormalization),
                                  _C, ["mul"]),
    "scale_pad_conv_also_pooled": (_two(_pipe(_half, _pad, _drop), _conv, _pool), _SAME,
                                   ["mul"]),
    "scale_pad_dropout_stride2": (_chain(_pipe(_half, _pad), _drop, lambda: L.Conv2D(
        4, 3, strides=2)), [(10, 10, 3, 4, 4, 4)], ["mul"]),
    "scale_pad_dropout_relu_conv": (_chain(_half, _pad, _drop, L.ReLU, _conv),
                                    [(10, 10, 3, 8, 8, 4)], ["mul", "relu"]),
    "scale_pad_pipeline_relu_conv": (_chain(_pipe(_half, _pad), _pipe(L.ReLU, _conv)),
                                     [(10, 10, 3, 8, 8, 4)], ["mul", "relu"]),
    "scale_pad_pipeline_of_model_pool": (_chain(_half, _pad, _pipe(_nest(_pool, _conv, shape=(
        10, 10, 3)))), [(5, 5, 3, 3, 3, 4)], ["mul"]),
    "scale_nested_model_pool": (_chain(_pipe(_half, _nest(_pool, _conv))),
                                [(4, 4, 3, 2, 2, 4)], ["mul"]),
    "shift_nested_model_same_conv": (_chain(_pipe(_shift, _nest(lambda: L.Conv2D(
        4, 3, padding="same")))), _SAME, ["mul", "add"]),
    "scale_nested_branches_conv_pool": (_chain(_pipe(_half, _branches(
        _conv, lambda: L.MaxPooling2D(3, 1), L.Concatenate))), _C, ["mul"]),
    "shift_nested_branches_same_conv": (_chain(_pipe(_shift, _branches(lambda: L.Conv2D(
        4, 3, padding="same"), lambda: L.Conv2D(4, 1)))), _SAME + [(8, 8, 3, 8, 8, 4)],
                                        ["mul", "add", "add"]),
    "channel_scale_nested_model_conv": (_chain(_pipe(lambda: L.Rescaling([0.5, 0.2, 0.1]),
                                                     _nest(_conv))), _C, ["mul"]),
}


@pytest.mark.parametrize("case", list(KEPT))
def test_kept_around_a_pipeline_stays(case, tmp_path):
    build, convs, ops = KEPT[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


def test_notes_name_the_conv_inside():
    """The ReLU after a Pipeline's conv is noted fused into that conv; a scale before a
    nested model in a Pipeline folded into the conv in it (not "the conv after" the
    Pipeline)."""
    x = keras.Input((8, 8, 3))
    y = L.ReLU(name="act")(L.Pipeline([L.Conv2D(4, 3, name="pconv")])(x))
    notes = dict(energy.estimate(keras.Model(x, y)).skipped)
    assert notes["act"] == "fused into pconv (as a .tflite fuses it)"
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.Conv2D(4, 3, name="inner_conv")(j))
    x = keras.Input((8, 8, 3))
    y = L.Pipeline([L.Rescaling(0.5, name="scale"), inner])(x)
    notes = dict(energy.estimate(keras.Model(x, y)).skipped)
    assert notes["scale"] == "folded into inner_conv (as a .tflite folds it)"
