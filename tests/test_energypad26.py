"""Session 26: a `ZeroPadding2D` the converter merges into the conv after it
(`energy.pad_merging`), and a constant scale folded into a conv first in a nested model
(`energy.following_folds`), in a Keras model's estimate beside its float file's."""

import keras
import pytest
from _energy_file25 import both, chain, same_totals
from keras import layers as L


def _convs(report):
    """`(in_h, in_w, in_c, out_h, out_w, out_c)` of every conv record, in order."""
    return [(s.in_h, s.in_w, s.in_c, s.out_h, s.out_w, s.out_c) for s in
            (x.shape for x in report.layers) if s.kind == "conv"]


def _eltwise(report):
    return [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size) for x in report.layers
            if x.shape.kind == "eltwise"]


def _seq(shape, *layers):
    return chain(*layers, shape=shape)


def _two_convs():
    x = keras.Input((8, 8, 3))
    p = L.ZeroPadding2D(1)(x)
    return keras.Model(x, L.Add()([L.Conv2D(4, 3)(p), L.Conv2D(4, 3)(p)]))


def _conv_and_pool():
    x = keras.Input((8, 8, 3))
    p = L.ZeroPadding2D(1)(x)
    return keras.Model(x, [L.Conv2D(4, 3)(p), L.MaxPooling2D(2)(p)])


def _pad_also_output():
    x = keras.Input((8, 8, 3))
    p = L.ZeroPadding2D(1)(x)
    return keras.Model(x, [L.Conv2D(4, 3)(p), p])


def _conv_in_nested():
    j = keras.Input((10, 10, 3))
    inner = keras.Model(j, L.Conv2D(4, 3)(j))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, inner(L.ZeroPadding2D(1)(x)))


def _pad_in_nested():
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.ZeroPadding2D(1)(j))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.Conv2D(4, 3)(inner(x)))


def _ops_pad(widths, conv, value=0):
    def build():
        x = keras.Input((8, 8, 3))
        return keras.Model(x, conv()(keras.ops.pad(x, [[0, 0], *widths, [0, 0]],
                                                   constant_values=value)))
    return build


# model -> the (in_h, in_w, in_c, out_h, out_w, out_c) of each conv the file runs: each reads
# the unpadded input (the pad is what padding="same" gives the conv: one "same" conv)
MERGED = {
    "sym_stride1": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1), lambda: L.Conv2D(4, 3)),
                    [(8, 8, 3, 8, 8, 4)]),
    "stem_stride2": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(((0, 1), (0, 1))),
                          lambda: L.Conv2D(4, 3, strides=2)), [(8, 8, 3, 4, 4, 4)]),
    "sym_stride2_odd": (_seq((9, 9, 3), lambda: L.ZeroPadding2D(1),
                             lambda: L.Conv2D(4, 3, strides=2)), [(9, 9, 3, 5, 5, 4)]),
    "rectangular": (_seq((8, 7, 3), lambda: L.ZeroPadding2D(((1, 1), (2, 2))),
                         lambda: L.Conv2D(4, (3, 5))), [(8, 7, 3, 8, 7, 4)]),
    "grouped_relu": (_seq((8, 8, 4), lambda: L.ZeroPadding2D(1),
                          lambda: L.Conv2D(4, 3, groups=2, activation="relu")),
                     [(8, 8, 4, 8, 8, 4)]),
    "depthwise_stride2": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(((0, 1), (0, 1))),
                               lambda: L.DepthwiseConv2D(3, strides=2)), [(8, 8, 3, 4, 4, 3)]),
    "depthwise_5x5": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(2), lambda: L.DepthwiseConv2D(5)),
                      [(8, 8, 3, 8, 8, 3)]),
    "depthwise_multiplier": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1),
                                  lambda: L.DepthwiseConv2D(3, depth_multiplier=2)),
                             [(8, 8, 3, 8, 8, 6)]),
    "separable": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1), lambda: L.SeparableConv2D(4, 3)),
                  [(8, 8, 3, 8, 8, 3), (8, 8, 3, 8, 8, 4)]),
    "through_dropout": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1), lambda: L.Dropout(0.2),
                             lambda: L.Conv2D(4, 3)), [(8, 8, 3, 8, 8, 4)]),
    "two_convs": (_two_convs, [(8, 8, 3, 8, 8, 4)] * 2),
    "conv_and_pool": (_conv_and_pool, [(8, 8, 3, 8, 8, 4)]),
    "pad_also_output": (_pad_also_output, [(8, 8, 3, 8, 8, 4)]),
    "conv_in_nested": (_conv_in_nested, [(8, 8, 3, 8, 8, 4)]),
    "pad_in_nested": (_pad_in_nested, [(8, 8, 3, 8, 8, 4)]),
    "ops_pad": (_ops_pad([[1, 1], [1, 1]], lambda: L.Conv2D(4, 3)), [(8, 8, 3, 8, 8, 4)]),
    "ops_pad_depthwise_stride2": (_ops_pad([[0, 1], [0, 1]],
                                           lambda: L.DepthwiseConv2D(3, strides=2)),
                                  [(8, 8, 3, 4, 4, 3)]),
}


@pytest.mark.parametrize("case", list(MERGED))
def test_zero_padding_merged_into_the_conv_after_it(case, tmp_path):
    """The converter runs a valid conv after a `ZeroPadding2D` of "same"'s amounts as one
    "same" conv on the unpadded input; the Keras reader charged the conv on the padded input
    (Keras / file hierarchy 1.1473 for `ZeroPadding2D(1)` -> 3x3 conv on 8x8x3, 1.1240 for
    the stride-2 stem, 1.4091 for a 5x5 depthwise conv)."""
    build, convs = MERGED[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs
    assert _convs(k) == convs
    same_totals(k, f)


# guards (passed before the fix): pads the converter keeps, the conv reading the padded input
KEPT = {
    "stride2_even_sym": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1),
                              lambda: L.Conv2D(4, 3, strides=2)), [(10, 10, 3, 4, 4, 4)]),
    "wider_than_same": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(2), lambda: L.Conv2D(4, 3)),
                        [(12, 12, 3, 10, 10, 4)]),
    "lopsided_stride2": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(((1, 0), (1, 0))),
                              lambda: L.Conv2D(4, 3, strides=2)), [(9, 9, 3, 4, 4, 4)]),
    "relu_between": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1), lambda: L.ReLU(),
                          lambda: L.Conv2D(4, 3)), [(10, 10, 3, 8, 8, 4)]),
    "same_conv_after": (_seq((8, 8, 3), lambda: L.ZeroPadding2D(1),
                             lambda: L.Conv2D(4, 3, padding="same")), [(10, 10, 3, 10, 10, 4)]),
    "conv1d": (_seq((8, 3), lambda: L.ZeroPadding1D(1), lambda: L.Conv1D(4, 3)),
               [(1, 10, 3, 1, 8, 4)]),
    "ops_pad_of_ones": (_ops_pad([[1, 1], [1, 1]], lambda: L.Conv2D(4, 3), 1.0),
                        [(10, 10, 3, 8, 8, 4)]),
}


@pytest.mark.parametrize("case", list(KEPT))
def test_zero_padding_the_converter_keeps_is_read_as_before(case, tmp_path):
    """Amounts other than "same"'s, an op between the converter keeps, a conv that is
    already "same", a Conv1D (EXPAND_DIMS between): the conv reads the padded input (guards:
    passed before the fix)."""
    build, convs = KEPT[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs
    assert _convs(k) == convs
    same_totals(k, f)


def test_dilated_conv_after_zero_padding_keeps_the_pad(tmp_path):
    """A dilated conv is not merged with the pad before it (SPACE_TO_BATCH_ND between): the
    Keras conv still reads the padded input (guard: passed before the fix)."""
    keras.utils.set_random_seed(0)
    k, _ = both(_seq((8, 8, 3), lambda: L.ZeroPadding2D(1),
                     lambda: L.Conv2D(4, 3, dilation_rate=2))(), tmp_path)
    assert _convs(k) == [(10, 10, 3, 6, 6, 4)]


def _nested(pre, inner_layers, shape=(8, 8, 3), outputs=None):
    def build():
        j = keras.Input(shape)
        y = j
        for layer in inner_layers:
            y = layer()(y)
        inner = keras.Model(j, y if outputs is None else outputs(j, y))
        x = keras.Input(shape)
        return keras.Model(x, inner(pre(x)))
    return build


def _two_deep():
    k = keras.Input((8, 8, 3))
    a = keras.Model(k, L.Conv2D(4, 3)(k))
    j = keras.Input((8, 8, 3))
    b = keras.Model(j, a(L.Dropout(0.1)(j)))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, b(L.Rescaling(0.5)(x)))


def _sequential_inner():
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Dropout(0.2), L.Conv2D(4, 3)])
    x = keras.Input((8, 8, 3))
    return keras.Model(x, inner(L.Rescaling(1 / 255)(x)))


def _shared_twice():
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.Conv2D(4, 3)(j))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.Add()([inner(L.Rescaling(0.5)(x)), inner(x)]))


def _two_inputs():
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    inner = keras.Model([a, b], L.Add()([L.Conv2D(4, 3)(a), L.Conv2D(4, 3)(b)]))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, inner([L.Rescaling(0.5)(x), x]))


_N = 8 * 8 * 3
# model -> the element-wise ops the file keeps: a one-element scale (and a shift, before a
# valid conv) folds into the conv or Dense first in the nested model reading it
NESTED = {
    "dropout_then_conv": (_nested(lambda x: L.Rescaling(1 / 255)(x),
                                  [lambda: L.Dropout(0.2), lambda: L.Conv2D(4, 3)]), []),
    "conv": (_nested(lambda x: L.Rescaling(0.5, 0.1)(x), [lambda: L.Conv2D(4, 3)]), []),
    "functional_mul": (_nested(lambda x: x * 0.5, [lambda: L.Dropout(0.2),
                                                    lambda: L.Conv2D(4, 3)]), []),
    "dense": (_nested(lambda x: L.Rescaling(0.5)(x), [lambda: L.Dense(4)], shape=(6,)), []),
    "sequential": (_sequential_inner, []),
    "two_deep": (_two_deep, []),
    "shared_nested_once_scaled": (_shared_twice, [("add", 2, 6 * 6 * 4)]),
    "first_of_two_inputs": (_two_inputs, [("add", 2, 6 * 6 * 4)]),
    "then_padded_conv": (_nested(lambda x: L.Rescaling(1 / 255)(x),
                                 [lambda: L.ZeroPadding2D(1), lambda: L.Conv2D(4, 3)]), []),
    # guards (passed before): another reader inside, the input also an output, a same conv
    "also_pooled": (_nested(lambda x: L.Rescaling(0.5)(x), [lambda: L.Conv2D(4, 3)],
                            outputs=lambda j, y: [y, L.MaxPooling2D(2)(j)]), [("mul", 2, _N)]),
    "input_also_output": (_nested(lambda x: L.Rescaling(0.5)(x), [lambda: L.Conv2D(4, 3)],
                                  outputs=lambda j, y: [y, j]), [("mul", 2, _N)]),
    "offset_same_conv": (_nested(lambda x: L.Rescaling(0.5, 0.1)(x),
                                 [lambda: L.Conv2D(4, 3, padding="same")]),
                         [("mul", 2, _N), ("add", 2, _N)]),
}


@pytest.mark.parametrize("case", list(NESTED))
def test_scale_folded_into_the_first_conv_of_a_nested_model(case, tmp_path):
    """The converter inlines the nested model and folds the scale into its first conv /
    Dense (through a `Dropout`); the Keras reader charged it (`Rescaling(1 / 255)` before a
    nested Dropout -> 3x3 conv: Keras / file hierarchy 2.0609)."""
    build, kept = NESTED[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _eltwise(f) == kept
    assert _eltwise(k) == kept
    same_totals(k, f)


def _ending(after, inner_layers=(lambda: L.ReLU(),), deep=False):
    """A nested model ending in `Rescaling(0.5)` (after `inner_layers`), its output read by
    `after(x, y)` outside (`deep`: that model nested once more)."""
    def build():
        j = keras.Input((8, 8, 3))
        y = j
        for layer in inner_layers:
            y = layer()(y)
        inner = keras.Model(j, L.Rescaling(0.5)(y))
        if deep:
            k = keras.Input((8, 8, 3))
            inner = keras.Model(k, inner(k))
        x = keras.Input((8, 8, 3))
        return keras.Model(x, after(x, inner(x)))
    return build


_R = ("relu", 1, _N)
ENDING = {
    "conv_outside": (_ending(lambda x, y: L.Conv2D(4, 3)(y)), [_R]),
    "two_deep": (_ending(lambda x, y: L.Conv2D(4, 3)(y), deep=True), [_R]),
    "dropout_then_dense": (_ending(lambda x, y: L.Dense(4)(L.Dropout(0.1)(y)),
                                   (lambda: L.Flatten(),)), []),
    # guards (passed before): another reader outside, the output also the model's
    "also_pooled": (_ending(lambda x, y: [L.Conv2D(4, 3)(y), L.MaxPooling2D(2)(y)]),
                    [_R, ("mul", 2, _N)]),
    "also_an_output": (_ending(lambda x, y: [L.Conv2D(4, 3)(y), y]), [_R, ("mul", 2, _N)]),
}


@pytest.mark.parametrize("case", list(ENDING))
def test_scale_ending_a_nested_model_folded_into_the_conv_after_it(case, tmp_path):
    """A `Rescaling` last in a nested model, read by a conv / Dense outside only: the
    converter inlines the model and folds it; the Keras reader charged it (ReLU ->
    `Rescaling(0.5)` nested before a 3x3 conv: Keras / file hierarchy 1.6217)."""
    build, kept = ENDING[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _eltwise(f) == kept
    assert _eltwise(k) == kept
    same_totals(k, f)
