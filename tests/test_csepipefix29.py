"""Session 29, review R9 of the Pipeline merge (`energy.pipeline_cse`): a Pipeline in a nested
model called on two tensors was keyed by the nested graph's tensors, shared by both calls (the
second call's keys read for the first: a conv on `sigmoid(x)` left out as a twin of one on
`tanh(x)`, Keras / file hierarchy 0.7916, paper 0.5203; 1.0000 in the other call order); a
batch norm in a Pipeline never merged with the same batch norm outside it (Keras records
`mask=None` in the outer call's arguments: `[b(c(t)), Pipeline([c, b])(t)]` 5.1996 / 1.1371).
Each Keras estimate is checked beside its float file's (hierarchy and paper totals, rtol 1e-6),
with the conv shapes and element-wise ops the file runs."""

import keras
import numpy as np
import pytest
from _energy_file25 import both, same_totals
from _energy_file25 import convs as _convs
from _energy_file25 import eltwise as _eltwise
from keras import layers as L
from test_csepipe29 import _bn, _conv

_C = [(8, 8, 3, 8, 8, 4)]  # Conv2D(4, 3, "same") on 8x8x3


def _model(outputs):
    """`keras.Model(x, outputs(x))` on an 8x8x3 input."""
    x = keras.Input((8, 8, 3))
    return keras.Model(x, outputs(x))


def _nested_twice(order, body=lambda c, b: [c, b]):
    """`Model(j, Pipeline(body)(j))` called on `tanh(x)` and `sigmoid(x)` beside `ReLU(c(tanh
    x))`; `order`: the outputs' order (indices into those three)."""
    c, b = _conv(), _bn(3)
    j = keras.Input((8, 8, 3))
    inner = keras.Model(j, L.Pipeline(body(c, b))(j))

    def outputs(x):
        t, s = keras.ops.tanh(x), keras.ops.sigmoid(x)
        made = {"relu": lambda: L.ReLU()(c(t)), "t": lambda: inner(t), "s": lambda: inner(s)}
        return [made[n]() for n in order]
    return _model(outputs)


def _same_bn(after=None, training=None):
    """`[b(c(t)), after(Pipeline([c, b])(t, training=...))]`: one batch norm object."""
    c, b = _conv(), _bn(8)
    kw = {} if training is None else {"training": training}

    def outputs(x):
        t = keras.ops.tanh(x)
        y = L.Pipeline([c, b])(t, **kw)
        return [b(c(t)), y if after is None else after()(y)]
    return _model(outputs)


NESTED = {  # the file: two convs, the batch norm of the call on tanh(x) kept (conv read twice)
    "nested_twice_relu_first": (lambda: _nested_twice(["relu", "t", "s"]), _C * 2,
                                ["add", "mul", "relu"]),  # 0.7916 / 0.5203 before
    "nested_twice_sigmoid_first": (lambda: _nested_twice(["s", "relu", "t"]), _C * 2,
                                   ["add", "mul", "relu"]),  # 1.0000 before
    "nested_twice_tanh_last": (lambda: _nested_twice(["s", "t", "relu"]), _C * 2,
                               ["add", "mul", "relu"]),
    "nested_twice_conv_only": (lambda: _nested_twice(["relu", "t", "s"], lambda c, b: [c]),
                               _C * 2, ["relu"]),
}


@pytest.mark.parametrize("case", list(NESTED))
def test_pipeline_in_a_nested_model_called_twice(case, tmp_path):
    build, convs, ops = NESTED[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and sorted(_eltwise(f)) == sorted(ops)
    assert _convs(k) == convs and sorted(_eltwise(k)) == sorted(ops)
    same_totals(k, f)


SAME_BN = {  # one conv and one batch norm folded into it in the file (5.1996 / 1.1371 before)
    "same_bn_inside_and_outside": (lambda: _same_bn(), []),
    "same_bn_relu_after": (lambda: _same_bn(L.ReLU), ["relu"]),  # 3.0595 / 1.1190 before
    "same_bn_bn_after": (lambda: _same_bn(lambda: _bn(9)), ["add", "mul"]),  # 2.3548 before
    "same_bn_training_true": (lambda: _same_bn(training=True), []),
}


@pytest.mark.parametrize("case", list(SAME_BN))
def test_batch_norm_in_a_pipeline_merges_with_its_call_outside(case, tmp_path):
    build, ops = SAME_BN[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == _C and sorted(_eltwise(f)) == sorted(ops)
    assert _convs(k) == _C and sorted(_eltwise(k)) == sorted(ops)
    same_totals(k, f)


def _palettized(build, tmp_path):
    """`(Keras estimate with palettes, palettized file's estimate)` of `build()` shared to 4
    clusters in place (seed 0)."""
    from dkm_tf import energy, share_weights
    from dkm_tf.export import to_tflite

    keras.utils.set_random_seed(0)
    model = build()
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
    res = share_weights(model, n_clusters=4, inplace=True)
    path = str(tmp_path / f"{build.__name__}.tflite")
    to_tflite(res.model, path, format="palettized", palettes=res.palettes, sample_inputs=x)
    return energy.estimate(res.model, palettes=res.palettes), energy.estimate(path)


def _direct(x):  # the control: `c(t)` called directly beside `b(c(t))`
    c, b = _conv(), _bn(1)
    t = keras.ops.tanh(x)
    return [b(c(t)), c(t)]


def _in_pipeline(x):  # the same conv called in a Pipeline: one CONV_2D in both files
    c, b = _conv(), _bn(1)
    t = keras.ops.tanh(x)
    return [b(c(t)), L.Pipeline([c])(t)]


def _relu_in_pipeline(x):
    c, b = _conv(), _bn(1)
    t = keras.ops.tanh(x)
    return [b(c(t)), L.Pipeline([c, L.ReLU()])(t)]


def _direct_relu(x):
    c, b = _conv(), _bn(1)
    t = keras.ops.tanh(x)
    return [b(c(t)), L.ReLU()(c(t))]


@pytest.mark.parametrize("case,control", [(_in_pipeline, _direct),
                                          (_relu_in_pipeline, _direct_relu)])
def test_palettized_conv_in_a_pipeline_and_outside_is_one_conv(case, control, tmp_path):
    """The palettized export folded the batch norm after the outer call into a copy of the
    conv (`fold_batch_norm` did not see the Pipeline's call): two CONV_2D where the float
    file has one and the Keras estimate one (Keras / file hierarchy 1.4890 and 1.8387 here,
    0.9607 / 0.9679 for the controls calling the conv directly). Now the file is the
    control's: one conv, the batch norm kept, and the estimates agree with the control's."""
    k, f = _palettized(lambda: _model(case), tmp_path)
    k0, f0 = _palettized(lambda: _model(control), tmp_path)
    assert _convs(f) == _convs(k) == _C
    assert sorted(_eltwise(f)) == sorted(_eltwise(k)) == sorted(_eltwise(f0))
    assert "add" in _eltwise(f) and "mul" in _eltwise(f)  # the batch norm, not folded
    np.testing.assert_allclose(f.hierarchy_total, f0.hierarchy_total, rtol=1e-6)
    np.testing.assert_allclose(k.hierarchy_total, k0.hierarchy_total, rtol=1e-6)
    np.testing.assert_allclose(k.paper_total, k0.paper_total, rtol=1e-6)


def test_fold_batch_norm_counts_a_call_inside_a_pipeline():
    """`fold_batch_norm` leaves a batch norm after a conv also called in a Pipeline (the
    converter computes the two calls once and keeps it), and the function is unchanged."""
    from dkm_tf.graph.batchnorm import fold_batch_norm

    keras.utils.set_random_seed(0)
    model = _model(_in_pipeline)
    result = fold_batch_norm(model)
    assert result.folded == []
    assert any("called 2 times" in why for _, why in result.skipped)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)).astype("float32")
    for a, b in zip(model(x, training=False), result.model(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
