"""Session 27: padding merges and constant folds the converter makes that the Keras reader
missed: a pad, then a folded scale, then a conv (`energy.pad_merging.scalar_ops`); a
`keras.layers.Pipeline` looked into (`energy.pipeline_folds`); a nested model passing a
tensor out to a conv outside (`energy.following_folds`). Each Keras estimate is checked
beside its float file's (hierarchy and paper totals, rtol 1e-6) and the conv shapes the file
runs."""

import keras
import pytest
from _energy_file25 import both, same_totals
from _energy_file25 import chain as _chain
from _energy_file25 import convs as _convs
from _energy_file25 import eltwise as _eltwise
from keras import layers as L

from dkm_tf import energy


def _pad():
    return L.ZeroPadding2D(1)


def _conv():
    return L.Conv2D(4, 3)


def _half():
    return L.Rescaling(0.5)


def _pad_scale_conv_and_pool():
    x = keras.Input((8, 8, 3))
    r = L.Rescaling(0.5)(L.ZeroPadding2D(1)(x))
    return keras.Model(x, [L.Conv2D(4, 3)(r), L.MaxPooling2D(2)(r)])


def _pad_times_const_conv():
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.Conv2D(4, 3)(L.ZeroPadding2D(1)(x) * 0.5 + 0.25))


# model -> (conv shapes the file runs, its element-wise ops): a pad, then one-element scales /
# shifts (each folded into the conv), then a valid conv: the pad is merged, the conv reads the
# unpadded input (before: charged on the padded input, Keras / file hierarchy 1.1473)
SCALE_BETWEEN = {
    "rescaling": (_chain(_pad, _half, _conv), [(8, 8, 3, 8, 8, 4)], []),
    "rescaling_offset": (_chain(_pad, lambda: L.Rescaling(0.5, 0.1), _conv),
                         [(8, 8, 3, 8, 8, 4)], []),
    "two_rescalings_dropout": (_chain(_pad, _half, lambda: L.Dropout(0.1), _half, _conv),
                               [(8, 8, 3, 8, 8, 4)], []),
    "const_ops": (_pad_times_const_conv, [(8, 8, 3, 8, 8, 4)], []),
    # the MUL stays for the pooling (on the padded tensor), the conv still reads 8x8 (1.0537)
    "also_pooled": (_pad_scale_conv_and_pool, [(8, 8, 3, 8, 8, 4)], ["mul"]),
}


@pytest.mark.parametrize("case", list(SCALE_BETWEEN))
def test_pad_then_folded_scale_then_conv_is_merged(case, tmp_path):
    build, convs, ops = SCALE_BETWEEN[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


# guards (passed before): the pad stays where the scale is not folded (per channel) or the
# conv's amounts are not "same"'s (stride 2 on an even size)
SCALE_KEPT = {
    "per_channel": (_chain(_pad, lambda: L.Rescaling([0.5, 0.2, 0.1]), _conv),
                    [(10, 10, 3, 8, 8, 4)], ["mul"]),
    "stride2_even": (_chain(_pad, _half, lambda: L.Conv2D(4, 3, strides=2)),
                     [(10, 10, 3, 4, 4, 4)], []),
}


@pytest.mark.parametrize("case", list(SCALE_KEPT))
def test_pad_before_a_kept_scale_or_other_amounts_stays(case, tmp_path):
    build, convs, ops = SCALE_KEPT[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


def _pass_through(reader):
    """A `Rescaling(0.5)` before a nested model returning a conv of its input and the input
    itself, which `reader` reads outside."""
    def build():
        j = keras.Input((8, 8, 3))
        inner = keras.Model(j, [L.Conv2D(4, 3)(j), j])
        x = keras.Input((8, 8, 3))
        p, q = inner(L.Rescaling(0.5)(x))
        return keras.Model(x, [p, reader()(q)])
    return build


def _returned_twice(reader):
    """A nested model returning one `Rescaling(0.5)` tensor twice, each read by `reader`."""
    def build():
        j = keras.Input((8, 8, 3))
        r = L.Rescaling(0.5)(j)
        inner = keras.Model(j, [r, r])
        x = keras.Input((8, 8, 3))
        p, q = inner(x)
        return keras.Model(x, [_conv()(p), reader()(q)])
    return build


def _returned_twice_one_read(second_out):
    """As `_returned_twice`, the second place unread (the converter prunes it) or a model
    output (where the MUL stays)."""
    def build():
        j = keras.Input((8, 8, 3))
        r = L.Rescaling(0.5)(j)
        inner = keras.Model(j, [r, r])
        x = keras.Input((8, 8, 3))
        p, q = inner(x)
        return keras.Model(x, [_conv()(p), q] if second_out else _conv()(p))
    return build


# model -> (conv shapes, element-wise ops) of the file: the scale folded into every conv
# (before: its MUL charged, Keras / file hierarchy 1.5304 each), or kept for a pooling reader
def _two_levels(inner_conv):
    """A Rescaling returned at two places of a model nested in a model nested in the model,
    the second place read by nothing (review R5: the middle model's tensor kept no place and
    the scale was charged, Keras / file hierarchy 2.0609; with a conv first in the inner model
    2.5651)."""
    def build():
        a = keras.Input((8, 8, 3))
        r = L.Rescaling(0.5)(a)
        inner = keras.Model(a, [L.Conv2D(2, 3)(r) if inner_conv else r, r])
        j = keras.Input((8, 8, 3))
        mid = keras.Model(j, list(inner(j)))
        x = keras.Input((8, 8, 3))
        p, _ = mid(x)
        return keras.Model(x, p if inner_conv else L.Conv2D(4, 3)(p))
    return build


NESTED_OUT = {
    "pass_through_conv": (_pass_through(_conv), [(8, 8, 3, 6, 6, 4)] * 2, []),
    "returned_twice_convs": (_returned_twice(_conv), [(8, 8, 3, 6, 6, 4)] * 2, []),
    "pass_through_pool": (_pass_through(lambda: L.MaxPooling2D(2)), [(8, 8, 3, 6, 6, 4)],
                          ["mul"]),
    "returned_twice_one_read": (_returned_twice_one_read(False), [(8, 8, 3, 6, 6, 4)], []),
    "returned_twice_one_output": (_returned_twice_one_read(True), [(8, 8, 3, 6, 6, 4)],
                                  ["mul"]),
    "returned_twice_pool": (_returned_twice(lambda: L.MaxPooling2D(2)), [(8, 8, 3, 6, 6, 4)],
                            ["mul"]),
    "two_levels_one_read": (_two_levels(False), [(8, 8, 3, 6, 6, 4)], []),
    "two_levels_inner_conv": (_two_levels(True), [(8, 8, 3, 6, 6, 2)], []),
}


@pytest.mark.parametrize("case", list(NESTED_OUT))
def test_scale_read_through_nested_model_outputs(case, tmp_path):
    build, convs, ops = NESTED_OUT[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


def _pipe(*layers):
    return lambda: L.Pipeline([layer() for layer in layers])


def _dropout():
    return L.Dropout(0.2)


def _in_nested_model():
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.Pipeline([L.Dropout(0.1), L.Conv2D(4, 3)])(j))
    x = keras.Input((8, 8, 3))
    return keras.Model(x, inner(L.Rescaling(0.5)(x)))


def _two_readers(*first):
    def build():
        x = keras.Input((8, 8, 3))
        r = L.Pipeline([layer() for layer in first])(x)
        return keras.Model(x, [L.Conv2D(4, 3)(r), L.MaxPooling2D(2)(r)])
    return build


# model -> (conv shapes the file runs, its element-wise ops): pads merged and scales folded
# across a Pipeline's layers and its boundary (before: Keras / file hierarchy in brackets)
PIPELINE = {
    "pad_conv": (_chain(_pipe(_pad, _conv)), [(8, 8, 3, 8, 8, 4)], []),  # 1.1473
    "scale_before_dropout_conv": (_chain(lambda: L.Rescaling(1 / 255), _pipe(_dropout, _conv)),
                                  [(8, 8, 3, 6, 6, 4)], []),  # 2.0609
    "scale_conv": (_chain(_pipe(_half, _conv)), [(8, 8, 3, 6, 6, 4)], []),  # 2.0609
    "pad_last_conv_after": (_chain(_pipe(_pad), _conv), [(8, 8, 3, 8, 8, 4)], []),  # 1.1473
    "pad_dropout_conv": (_chain(_pipe(_pad, _dropout, _conv)), [(8, 8, 3, 8, 8, 4)], []),
    "scale_last_conv_after": (_chain(_pipe(_half), _conv), [(8, 8, 3, 6, 6, 4)], []),  # 2.0609
    "scale_before_pad_conv": (_chain(_half, _pipe(_pad, _conv)), [(8, 8, 3, 8, 8, 4)], []),
    "nested_pipeline_pad": (_chain(_pipe(_pipe(_pad), _conv)), [(8, 8, 3, 8, 8, 4)], []),
    "pad_scale_conv": (_chain(_pipe(_pad, _half, _conv)), [(8, 8, 3, 8, 8, 4)], []),  # 2.3785
    "scale_before_nested_dropout": (_chain(_half, _pipe(_pipe(_dropout), _conv)),
                                    [(8, 8, 3, 6, 6, 4)], []),
    "in_nested_model": (_in_nested_model, [(8, 8, 3, 6, 6, 4)], []),
    "conv_bn_scale_pad_conv": (_chain(_pipe(_conv, L.BatchNormalization, _half, _pad, _conv)),
                               [(8, 8, 3, 6, 6, 4), (6, 6, 4, 6, 6, 4)], []),
    "scale_before_dense": (_chain(_half, _pipe(lambda: L.Dense(4)), shape=(6,)), [], []),
    # the pad stays for the pooling, the conv reads the unpadded input
    "pad_also_pooled": (_two_readers(_pad), [(8, 8, 3, 8, 8, 4)], []),
    # a scale, then a pad ending it, then a conv after it: merged and folded (1.7879)
    "scale_pad_last_conv_after": (_chain(_pipe(_half, _pad), _conv), [(8, 8, 3, 8, 8, 4)], []),
    "scale_before_pad_last_conv_after": (_chain(_half, _pipe(_pad, _dropout), _conv),
                                         [(8, 8, 3, 8, 8, 4)], []),  # 1.7879
    # the same also pooled: the scale stays (a MUL for the pooling), the pad is merged (1.0537)
    "scale_pad_last_also_pooled": (_two_readers(_half, _pad), [(8, 8, 3, 8, 8, 4)], ["mul"]),
    "pad_scale_last_conv_after": (_chain(_pipe(_pad, _half), _conv), [(8, 8, 3, 8, 8, 4)],
                                  []),  # 2.3785
    "dense_scale_dense": (_chain(_pipe(lambda: L.Dense(4), _half, lambda: L.Dense(3)),
                                 shape=(6,)), [], []),  # 1.2244
    # a per-channel scale with an offset before a valid conv: its ADD folded, its MUL kept
    "channel_scale_shift_conv": (_chain(_pipe(lambda: L.Rescaling([0.5, 0.2, 0.1], 0.1),
                                              _conv)), [(8, 8, 3, 6, 6, 4)], ["mul"]),  # 1.5141
    # a scale after a linear conv / Dense in it, folded into that layer (1.7956, 1.6987, 2.5902)
    "conv_then_scale": (_chain(_pipe(_conv, _half)), [(8, 8, 3, 6, 6, 4)], []),
    "dense_then_channel_scale": (_chain(_pipe(lambda: L.Dense(4), lambda: L.Rescaling(
        [1.0, 2.0, 3.0, 4.0], 0.5)), shape=(6,)), [], []),
    "conv_dropout_shift": (_chain(_pipe(_conv, _dropout, lambda: L.Rescaling(0.5, 0.1))),
                           [(8, 8, 3, 6, 6, 4)], []),
}


@pytest.mark.parametrize("case", list(PIPELINE))
def test_pipeline_pads_merged_and_scales_folded(case, tmp_path):
    build, convs, ops = PIPELINE[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


# guards (passed before): what the converter keeps in a Pipeline stays charged
PIPELINE_KEPT = {
    "stride2_even": (_chain(_pipe(_pad, lambda: L.Conv2D(4, 3, strides=2))),
                     [(10, 10, 3, 4, 4, 4)], []),
    "shift_before_same_conv": (_chain(_pipe(lambda: L.Rescaling(0.5, 0.1),
                                            lambda: L.Conv2D(4, 3, padding="same"))),
                               [(8, 8, 3, 8, 8, 4)], ["mul", "add"]),
    "per_channel_scale": (_chain(_pipe(lambda: L.Rescaling([0.5, 0.2, 0.1]), _conv)),
                          [(8, 8, 3, 6, 6, 4)], ["mul"]),
    "relu_between": (_chain(_pipe(_pad, L.ReLU, _conv)), [(10, 10, 3, 8, 8, 4)], ["relu"]),
    "scale_before_pool": (_chain(_half, _pipe(lambda: L.MaxPooling2D(2), _conv)),
                          [(4, 4, 3, 2, 2, 4)], ["mul"]),
    "scale_also_pooled": (_two_readers(_half), [(8, 8, 3, 6, 6, 4)], ["mul"]),
    "scale_pad_last_stride2": (_chain(_pipe(_half, _pad), lambda: L.Conv2D(4, 3, strides=2)),
                               [(10, 10, 3, 4, 4, 4)], ["mul"]),
    "relu_conv_then_scale": (_chain(_pipe(lambda: L.Conv2D(4, 3, activation="relu"), _half)),
                             [(8, 8, 3, 6, 6, 4)], ["mul"]),
}


@pytest.mark.parametrize("case", list(PIPELINE_KEPT))
def test_pipeline_layers_the_converter_keeps_stay(case, tmp_path):
    build, convs, ops = PIPELINE_KEPT[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and _eltwise(f) == ops
    assert _convs(k) == convs and _eltwise(k) == ops
    same_totals(k, f)


def test_scale_folded_into_a_pipeline_names_its_conv():
    """The note of a scale folded into a Pipeline's conv names that conv, not the Pipeline
    (before, the scale was charged, with no note)."""
    x = keras.Input((8, 8, 3))
    conv = L.Conv2D(4, 3, name="pconv")
    y = L.Pipeline([L.Dropout(0.1), conv])(L.Rescaling(0.5, name="scale")(x))
    notes = dict(energy.estimate(keras.Model(x, y)).skipped)
    assert notes["scale"] == "its MUL folded into pconv after it (as a .tflite folds it)"
