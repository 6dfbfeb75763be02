"""A `TimeDistributed` `Lambda`'s step graph in a Keras model's energy estimate (review R5).

The Keras reader kept a TimeDistributed Lambda's step graph on the Lambda, keyed by the step
shape: a Lambda under two TimeDistributed layers at one step shape, int32 then float32, had
its float call read with the int graph (its ops "of integers", charged nothing: 0 of the
file's 310.7); Keras' saver walks a layer's dict attributes holding models, so after an
estimate `save_weights` wrote the graphs' weights and `load_weights` of weights saved before
raised "A total of 1 objects could not be loaded" (a Lambda closing over a Dense of its own);
a function taking `mask` or `training` was walked with neither and charged (1,250.1 of the
file's 1,716.8), where a plain such Lambda is listed. A function swapped after an estimate
was read as the old one (a plain Lambda's so too).
"""

import warnings

import h5py
import keras
import numpy as np
import pytest

from dkm_tf import energy
from tests._energy_file25 import both, same_totals

L = keras.layers
TD = L.TimeDistributed


@pytest.mark.parametrize("int_first", [True, False])
def test_one_lambda_under_int_and_float_time_distributed_is_read_per_dtype(int_first,
                                                                            tmp_path):
    """The float call's MUL and ADD, 3 steps of 8; the int call's are index arithmetic."""
    keras.utils.set_random_seed(0)
    lam = L.Lambda(lambda t: t * 3 + 1, name="lam")
    a = keras.Input((3, 8), dtype="int32", batch_size=2)
    b = keras.Input((3, 8), batch_size=2)
    if int_first:
        ya, yb = TD(lam, name="td_int")(a), TD(lam, name="td_float")(b)
    else:
        yb, ya = TD(lam, name="td_float")(b), TD(lam, name="td_int")(a)
    model = keras.Model([a, b], L.Concatenate()([keras.ops.cast(ya, "float32"), yb]))
    k, f = both(model, tmp_path)
    ops = [(x.shape.eltwise_op, x.shape.output_size) for x in k.layers
           if x.shape.kind == "eltwise"]
    assert ops == [("mul", 8), ("add", 8)] * 3 == [
        (x.shape.eltwise_op, x.shape.output_size) for x in f.layers
        if x.shape.kind == "eltwise"]
    same_totals(k, f)  # 310.7 each
    integer = [n for n, why in k.skipped if "of integers" in why]
    assert len(integer) == 6  # the int call's MUL and ADD, 3 steps


def _closing_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    dense = L.Dense(4, name="closed")  # not tracked by the model: called only in the function
    lam = L.Lambda(lambda t: dense(t) * 2.0, name="lam", output_shape=(4,))
    return keras.Model(inp, L.Dense(2, name="head")(TD(lam, name="td")(inp)))


def _entries(path):
    out = []
    with h5py.File(path) as h:
        h.visit(out.append)
    return sorted(out)


def test_estimate_leaves_what_keras_saves_unchanged(tmp_path):
    """save_weights -> estimate -> save_weights / load_weights: the same entries, no error."""
    model = _closing_model()
    before = tmp_path / "before.weights.h5"
    model.save_weights(before)
    saved = [w.numpy() for w in model.weights]
    report = energy.estimate(model)
    assert report.macs == 3 * 8 * 4 + 3 * 4 * 2  # the closed Dense per step, then the head
    for w in model.weights:
        w.assign(np.zeros(w.shape, "float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_weights(before)  # raised "A total of 1 objects could not be loaded"
    for w, v in zip(model.weights, saved):
        np.testing.assert_array_equal(w.numpy(), v)
    after = tmp_path / "after.weights.h5"
    model.save_weights(after)
    assert _entries(after) == _entries(before)  # had the kept graph's layers and weights


def _with_mask(t, mask=None):
    scaled = t * 2.0
    if mask is None:
        return scaled
    return scaled + keras.ops.expand_dims(keras.ops.cast(mask, t.dtype), -1) * 3.0


def _with_training(t, training=None):
    return t * 5.0 + 1.0 if training else t * 2.0


@pytest.mark.parametrize("fn", [_with_mask, _with_training])
def test_time_distributed_lambda_taking_mask_or_training_is_listed(fn):
    """As a plain Lambda with such a function: its graph depends on what the reader does not
    see, so it is listed, charging nothing (it was charged as the graph without them)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 5), dtype="int32", batch_size=2)
    h = L.Embedding(20, 4, mask_zero=fn is _with_mask)(inp)
    y = TD(L.Lambda(fn, output_shape=(5, 4), name="lam"), name="td")(h)
    k = energy.estimate(keras.Model(inp, L.Dense(2, name="head")(y)))
    assert [why.split(";")[0] for n, why in k.skipped if n == "td"] == [
        "unsupported layer type Lambda"]
    assert {x.shape.layer for x in k.layers} == {"head"}


@pytest.mark.parametrize("td", [True, False])
def test_lambda_function_swapped_after_an_estimate_is_read_anew(td, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    lam = L.Lambda(lambda t: keras.ops.relu(t) * 2.0, name="lam")
    model = keras.Model(inp, TD(lam, name="td")(inp) if td else lam(inp))
    assert len(energy.estimate(model).layers) == (6 if td else 2)  # RELU, MUL (per step)
    lam.function = lambda t: keras.ops.relu(t) * 2.0 + 1.0 - t * 3.0
    k, f = both(model, tmp_path)
    assert [x.shape.eltwise_op for x in k.layers] == [
        x.shape.eltwise_op for x in f.layers]
    assert len(k.layers) == (15 if td else 5)
    same_totals(k, f)


@pytest.mark.parametrize("inner, first", [
    (lambda: L.LSTM(4, name="r"), ["td/cell.kernel", "td/cell.recurrent_kernel"]),
    (lambda: L.EinsumDense("ab,bc->ac", output_shape=4, name="r"), ["td/kernel"]),
])
def test_every_step_of_a_time_distributed_is_named_after_it(inner, first):
    """The first step's records were named after the inner layer (`r/cell.kernel`), the
    later ones after the TimeDistributed (`td#2/cell.kernel`); the `layer` field stays the
    inner layer's (compression info)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 5, 4) if len(first) > 1 else (3, 8))
    k = energy.estimate(keras.Model(inp, TD(inner(), name="td")(inp)))
    names = [x.name for x in k.layers]
    per_step = len(names) // 3
    assert names[:len(first)] == first
    assert [n.split("/")[0] for n in names] == ["td"] * per_step + ["td#2"] * per_step + [
        "td#3"] * per_step
    assert [n.split("/", 1)[1] for n in names[:per_step]] == [
        n.split("/", 1)[1] for n in names[per_step:2 * per_step]]
    assert {x.shape.layer for x in k.layers} == {"r"}
    assert k.layer(first[0]).shape.layer == "r"
