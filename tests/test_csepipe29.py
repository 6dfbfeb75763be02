"""Session 29: a layer of a `keras.layers.Pipeline` merged with an equal call outside it
(`energy.pipeline_cse`). The converter traces a Pipeline's layers into the graph and computes
a conv called in a Pipeline and outside it on one tensor once; a batch norm / ReLU after
either is then not folded / fused (the conv has two readers). Before, `keras_cse` keyed a
Pipeline as one op: two convs and a folded batch norm (Keras / file hierarchy 0.6452 for
`Conv2D(4, 3, "same")` on `tanh(x)`, 8x8x3), a ReLU fused (0.8159), a batch norm after a
Pipeline's conv also called on another tensor charged (the stopgap keeping the Pipeline as
the source: 2.0499), a Pipeline ending in a nested model of two outputs was not read (its
convs charged nothing). Each Keras estimate is checked beside its float file's (hierarchy and
paper totals, rtol 1e-6), with the conv shapes and element-wise ops the file runs."""

import keras
import numpy as np
import pytest
from _energy_file25 import both, same_totals
from _energy_file25 import convs as _convs
from _energy_file25 import eltwise as _eltwise
from keras import layers as L

_C = [(8, 8, 3, 8, 8, 4)]  # Conv2D(4, 3, "same") on 8x8x3


def _conv():
    return L.Conv2D(4, 3, padding="same")


def _bn(seed):
    """A batch norm built on 4 channels, its weights from U(0.5, 1.5) (seed `seed`)."""
    bn = L.BatchNormalization()
    bn.build((None, 8, 8, 4))
    rng = np.random.default_rng(seed)
    for w in bn.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    return bn


def _model(outputs):
    """`keras.Model(x, outputs(tanh(x)))` on an 8x8x3 input."""
    x = keras.Input((8, 8, 3))
    return keras.Model(x, outputs(keras.ops.tanh(x)))


def _nested(body):
    """A Functional model `body(j)` of an 8x8x3 input `j`."""
    j = keras.Input((8, 8, 3))
    return keras.Model(j, body(j))


def _two_pipelines():  # 0.6452 before
    c, bn = _conv(), _bn(1)
    return _model(lambda t: [bn(L.Pipeline([c])(t)), L.Pipeline([c, L.Dropout(0.2)])(t)])


def _bn_beside_pipeline():  # 0.6452
    c, bn = _conv(), _bn(1)
    return _model(lambda t: [bn(c(t)), L.Pipeline([c])(t)])


def _bn_beside_pipeline_bn():  # 0.3846
    c, bn, bn2 = _conv(), _bn(1), _bn(2)
    return _model(lambda t: [bn(c(t)), L.Pipeline([c, bn2])(t)])


def _pipeline_bn_beside_relu():  # the Pipeline's batch norm after its merged conv: 0.5264
    c, bn = _conv(), _bn(3)
    return _model(lambda t: [L.ReLU()(c(t)), L.Pipeline([c, L.Dropout(0.1), bn])(t)])


def _pipeline_relu_beside_bn():  # 0.5264
    c, bn = _conv(), _bn(4)
    return _model(lambda t: [bn(c(t)), L.Pipeline([c, L.ReLU()])(t)])


def _pipeline_first_then_conv():  # 1.3226 (the outer call not merged, the norm kept)
    c, bn = _conv(), _bn(5)
    return _model(lambda t: [bn(L.Pipeline([c])(t)), c(t)])


def _dropout_first():  # 0.6452
    c, bn = _conv(), _bn(6)
    return _model(lambda t: [bn(c(t)), L.Pipeline([L.Dropout(0.2), c])(t)])


def _nested_bn_beside_relu():  # 0.8159: the ReLU outside fused
    c, bn = _conv(), _bn(7)
    inner = _nested(lambda j: bn(c(j)))
    return _model(lambda t: [L.ReLU()(c(t)), L.Pipeline([inner])(t)])


def _nested_relu_sigmoid_beside_bn():  # 0.5669: the batch norm outside folded
    c, bn = _conv(), _bn(8)

    def body(j):
        y = c(j)
        return L.Add()([L.ReLU()(y), L.Activation("sigmoid")(y)])
    inner = _nested(body)
    return _model(lambda t: [bn(c(t)), L.Pipeline([inner])(t)])


def _pipeline_in_nested_beside_relu():  # 0.5264
    c, bn = _conv(), _bn(9)
    inner = _nested(lambda j: L.Pipeline([c, bn])(j))
    return _model(lambda t: [L.ReLU()(c(t)), inner(t)])


def _conv_on_another_tensor():  # 2.0499: folded by the file, charged by the stopgap
    c, bn = _conv(), _bn(10)
    x = keras.Input((8, 8, 3))
    return keras.Model(x, [bn(L.Pipeline([c])(keras.ops.tanh(x))), c(keras.ops.sigmoid(x))])


def _nested_on_another_tensor():  # 2.0499 before
    c, bn = _conv(), _bn(11)
    inner = _nested(c)
    x = keras.Input((8, 8, 3))
    return keras.Model(x, [bn(L.Pipeline([inner])(keras.ops.tanh(x))),
                           inner(keras.ops.sigmoid(x))])


def _two_outputs(second):
    """A nested model of an 8x8x3 input `j`: `[Conv2D(4, 3)(j), second()(j)]`."""
    return _nested(lambda j: [L.Conv2D(4, 3)(j), second()(j)])


def _scale_then_two_outputs():  # not read before (listed in `skipped`): Keras total 0
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.Pipeline([L.Rescaling(0.5), _two_outputs(
        lambda: L.Conv2D(4, 3))])(x))


def _scale_then_conv_and_pool():  # the pool keeps the scale's MUL (Keras total 0 before)
    x = keras.Input((8, 8, 3))
    return keras.Model(x, L.Pipeline([L.Rescaling(0.5), _two_outputs(
        lambda: L.MaxPooling2D(3, 1))])(x))


def _two_outputs_relu_and_bn():  # a ReLU fused, a batch norm folded: paper 0.0424
    bn = _bn(12)
    x = keras.Input((8, 8, 3))
    a, c = L.Pipeline([L.Dropout(0.1), _two_outputs(lambda: L.Conv2D(4, 3))])(x)
    return keras.Model(x, [L.ReLU()(a), bn(c)])


def _two_outputs_twin_outside():  # called directly too: its conv read twice, 0.7215
    bn, inner = _bn(13), _two_outputs(lambda: L.Conv2D(4, 3))
    x = keras.Input((8, 8, 3))
    t = keras.ops.tanh(x)
    a, c = L.Pipeline([inner])(t)
    return keras.Model(x, [bn(a), inner(t)[0], c])


_V = [(8, 8, 3, 6, 6, 4)]  # Conv2D(4, 3) on 8x8x3
CASES = {  # build, the file's convs, its element-wise ops
    "conv_shared_by_two_pipelines": (_two_pipelines, _C, ["mul", "add"]),
    "bn_after_conv_beside_pipeline": (_bn_beside_pipeline, _C, ["mul", "add"]),
    "bn_after_conv_beside_pipeline_bn": (_bn_beside_pipeline_bn, _C,
                                         ["mul", "add", "mul", "add"]),
    "pipeline_bn_beside_relu": (_pipeline_bn_beside_relu, _C, ["mul", "add", "relu"]),
    "pipeline_relu_beside_bn": (_pipeline_relu_beside_bn, _C, ["mul", "add", "relu"]),
    "pipeline_first_then_conv": (_pipeline_first_then_conv, _C, ["mul", "add"]),
    "dropout_first_in_pipeline": (_dropout_first, _C, ["mul", "add"]),
    "nested_bn_beside_relu": (_nested_bn_beside_relu, _C, ["relu", "mul", "add"]),
    "nested_relu_sigmoid_beside_bn": (_nested_relu_sigmoid_beside_bn, _C,
                                      ["mul", "add", "relu", "add"]),
    "pipeline_in_nested_beside_relu": (_pipeline_in_nested_beside_relu, _C,
                                       ["relu", "mul", "add"]),
    "conv_on_another_tensor": (_conv_on_another_tensor, _C * 2, []),
    "nested_on_another_tensor": (_nested_on_another_tensor, _C * 2, []),
    "scale_then_two_outputs": (_scale_then_two_outputs, _V * 2, []),
    "scale_then_conv_and_pool": (_scale_then_conv_and_pool, _V, ["mul"]),
    "two_outputs_relu_and_bn": (_two_outputs_relu_and_bn, _V * 2, []),
    "two_outputs_twin_outside": (_two_outputs_twin_outside, _V * 2, ["mul", "add"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_calls_merge_with_their_twins(case, tmp_path):
    build, convs, ops = CASES[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and sorted(_eltwise(f)) == sorted(ops)
    assert _convs(k) == convs and sorted(_eltwise(k)) == sorted(ops)
    same_totals(k, f)


def _dense_model(outputs):
    """`keras.Model(x, outputs(tanh(x)))` on a 16-feature input."""
    x = keras.Input((16,))
    return keras.Model(x, outputs(keras.ops.tanh(x)))


def _dense_relu_pipeline_beside_sigmoid():  # guard: two FULLY_CONNECTED, the ReLU's fused
    d = L.Dense(8)
    return _dense_model(lambda t: [L.Pipeline([d, L.ReLU()])(t),
                                   L.Activation("sigmoid")(d(t))])


def _dense_relu_pipeline_beside_relu():  # one FULLY_CONNECTED: 2.0000 before
    d = L.Dense(8)
    return _dense_model(lambda t: [L.Pipeline([d, L.ReLU()])(t), L.ReLU()(d(t))])


def _relu_beside_relu_pipeline():  # one FULLY_CONNECTED, its ReLU fused: 2.0000 before
    def outputs(t):
        y = L.Dense(8)(t)
        return [L.ReLU()(y), L.Pipeline([L.ReLU()])(y)]
    return _dense_model(outputs)


def _dense_relu_dense_pipeline():  # guard: the Pipeline's Dense keeps its ReLU fused
    d = L.Dense(8)
    return _dense_model(lambda t: [L.Pipeline([d, L.ReLU(), L.Dense(4)])(t),
                                   L.Activation("sigmoid")(d(t))])


DENSE = {  # build, the file's FULLY_CONNECTED (units), its priced element-wise ops
    "dense_relu_pipeline_beside_sigmoid": (_dense_relu_pipeline_beside_sigmoid, [8, 8], []),
    "dense_relu_pipeline_beside_relu": (_dense_relu_pipeline_beside_relu, [8], []),
    "relu_beside_relu_pipeline": (_relu_beside_relu_pipeline, [8], []),
    "dense_relu_dense_pipeline": (_dense_relu_dense_pipeline, [4, 8, 8], []),
}


def _units(report):
    return sorted(x.shape.out_c for x in report.layers if x.shape.kind == "dense")


@pytest.mark.parametrize("case", list(DENSE))
def test_pipeline_dense_calls_merge_as_the_file(case, tmp_path):
    build, units, ops = DENSE[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _units(f) == units and _eltwise(f) == ops
    assert _units(k) == units and _eltwise(k) == ops
    same_totals(k, f)


def _after_pipeline(last, after, twin=False):
    """`after()` reading `Pipeline([c, last()])(t)` (c a `Conv2D(4, 3, "same")`), beside a
    ReLU of `c(t)` where `twin`."""
    c, a = _conv(), after()
    if isinstance(a, L.BatchNormalization):
        a = _bn(14)
    return _model(lambda t: [a(L.Pipeline([c, last()])(t))] + (
        [L.ReLU()(c(t))] if twin else []))


FOLDED = {  # the norm / scale ending the Pipeline folded into its conv, then the one after
    "bn_after_pipeline_conv_bn": (lambda: _after_pipeline(lambda: _bn(15), L.BatchNormalization),
                                  _C, []),  # 3.0998 / 1.0686 (hierarchy / paper) before
    "bn_after_pipeline_conv_scale": (lambda: _after_pipeline(
        lambda: L.Rescaling(0.5), L.BatchNormalization), _C, []),  # 3.0998 / 1.0686
    "relu_after_pipeline_conv_bn": (lambda: _after_pipeline(lambda: _bn(16), L.ReLU), _C, []),
    "bn_after_pipeline_conv_bn_twin": (lambda: _after_pipeline(
        lambda: _bn(17), L.BatchNormalization, True), _C, ["mul", "add", "mul", "add", "relu"]),
}


@pytest.mark.parametrize("case", list(FOLDED))
def test_after_a_pipeline_folded_into_its_conv(case, tmp_path):
    build, convs, ops = FOLDED[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(), tmp_path)
    assert _convs(f) == convs and sorted(_eltwise(f)) == sorted(ops)
    assert _convs(k) == convs and sorted(_eltwise(k)) == sorted(ops)
    same_totals(k, f)
