"""Second round of the Keras reader charging element-wise layers as its float `.tflite`'s ops.

Found by review R3 probing `energy.estimate(keras_model)` against `energy.estimate(<its float
file>)` (hierarchy totals Keras / file before the fix): a broadcasting merge of 3 inputs,
smaller first, charged each op at the output size (1.19); a ReLU after an identity batch norm
listed as fused into it while the file keeps its RELU (0.63); a batch norm or ReLU behind a
`Dropout` (or another layer an inference graph drops) not folded / fused into the conv before
(2.73 / 1.58); a ReLU after a `Rescaling`, `Normalization`, `a + b`, `a * b` charged where
the file fuses it into their ADD / MUL (1.21 / 1.20); a merge of one input charged one op
(1.86); `Normalization(invert=True)` not charged (0.37); `ReLU(negative_slope=1)` one RELU
where the file has nothing (1.58); `keras.ops.divide(x, 3.0)` not charged (0.85).
"""

import keras
import pytest

from tests._energy_file25 import both, op_records, randomize, same_totals

L = keras.layers
E = 8 * 8 * 4  # outputs of the 8x8x4 tensors below


def _conv(x, name="c"):
    return L.Conv2D(4, 3, padding="same", name=name)(x)


@pytest.mark.parametrize("klass,order,ops", [
    (L.Add, "ssb", [("add", 4), ("add", E)]),
    (L.Multiply, "ssb", [("mul", 4), ("mul", E)]),
    (L.Average, "ssb", [("add", 4), ("add", E), ("mul", E)]),
    (L.Add, "sbs", [("add", E), ("add", E)]),
    (L.Minimum, "sssb", [("max", 4), ("max", 4), ("max", E)]),
])
def test_merge_op_j_runs_at_the_broadcast_of_inputs_0_to_j(klass, order, ops, tmp_path):
    """Keras folds a merge left: `Add([g, g2, c])` (g, g2 of 1x1x4) is add(g, g2) on 4
    outputs, then add(., c) on 256, as in the file; both were charged at 256 (1.19)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    big = _conv(inp)
    small = [L.Reshape((1, 1, 4))(L.GlobalAveragePooling2D()(_conv(inp, f"s{j}")))
             for j in range(3)]
    ins = [big if ch == "b" else small.pop() for ch in order]
    k, f = both(keras.Model(inp, L.Flatten()(klass(name="m")(ins))), tmp_path)
    assert op_records(k, "m") == [(op, 2, n) for op, n in ops]
    same_totals(k, f)


@pytest.mark.parametrize("klass", [L.Add, L.Multiply, L.Average, L.Maximum])
def test_merge_of_one_input_is_an_identity(klass, tmp_path):
    """`Add()([x])` returns x: the file has no op for it (one ADD was charged: 1.86)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    k, f = both(keras.Model(inp, L.Flatten()(klass(name="m")([_conv(inp)]))), tmp_path)
    assert op_records(k, "m") == [] and "identity" in dict(k.skipped)["m"]
    same_totals(k, f)


def _tanh(inp):
    return L.Activation("tanh")(_conv(inp))


def test_relu_after_an_identity_batch_norm_keeps_its_relu(tmp_path):
    """An untrained batch norm of epsilon 0 is removed by the converter; the RELU after it
    stays (it was listed as fused into the batch norm: 0.63)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = L.BatchNormalization(epsilon=0.0, name="bn")(_tanh(inp))
    k, f = both(keras.Model(inp, L.Flatten()(L.ReLU(name="r")(x))), tmp_path)
    assert op_records(k, "bn") == [] and op_records(k, "r") == [("relu", 1, E)]
    same_totals(k, f)


def _nested_dropout(x):
    inner_in = keras.Input((8, 8, 4))
    return keras.Model(inner_in, L.Dropout(0.3)(inner_in), name="nested")(x)


_IDENTITIES = {
    "dropout": lambda x: L.Dropout(0.5)(x),
    "spatial_dropout": lambda x: L.SpatialDropout2D(0.5)(x),
    "gaussian_noise": lambda x: L.GaussianNoise(0.1)(x),
    "gaussian_dropout": lambda x: L.GaussianDropout(0.1)(x),
    "alpha_dropout": lambda x: L.AlphaDropout(0.1)(x),
    "activity_reg": lambda x: L.ActivityRegularization(l1=0.01)(x),
    "identity_then_dropout": lambda x: L.Dropout(0.2)(L.Identity()(x)),
    "nested_dropout": _nested_dropout,
}


@pytest.mark.parametrize("between", list(_IDENTITIES), ids=list(_IDENTITIES))
def test_batch_norm_behind_an_inference_identity_folds_into_the_conv(between, tmp_path):
    """Conv -> Dropout -> BN: the converter drops the Dropout and folds the batch norm into
    the conv (its MUL and ADD were charged: 2.73)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    bn = L.BatchNormalization(name="bn")
    x = bn(_IDENTITIES[between](_conv(inp)))
    randomize(bn)
    k, f = both(keras.Model(inp, L.Flatten()(x)), tmp_path)
    assert op_records(k, "bn") == [] and dict(k.skipped)["bn"].startswith("folded into c")
    same_totals(k, f)


@pytest.mark.parametrize("between", ["dropout", "gaussian_noise", "nested_dropout"])
@pytest.mark.parametrize("cap,ops", [(None, []), (3.0, [("max", 2, E), ("relu", 1, E)])])
def test_relu_behind_an_inference_identity_is_fused_into_the_conv(between, cap, ops,
                                                                   tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = L.ReLU(max_value=cap, name="r")(_IDENTITIES[between](_conv(inp)))
    k, f = both(keras.Model(inp, L.Flatten()(x)), tmp_path)
    assert op_records(k, "r") == ops and "fused into c" in dict(k.skipped)["r"]
    same_totals(k, f)


def test_identity_read_twice_keeps_the_batch_norm(tmp_path):
    """The conv's output read by the Dropout and by an Add: the batch norm is not folded."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    c = _conv(inp)
    bn = L.BatchNormalization(name="bn")
    x = L.Add()([bn(L.Dropout(0.5)(c)), c])
    randomize(bn)
    k, f = both(keras.Model(inp, L.Flatten()(x)), tmp_path)
    assert op_records(k, "bn") == [("mul", 2, E), ("add", 2, E)]
    same_totals(k, f)


_PRODUCERS = {
    "rescaling": (lambda t, u: L.Rescaling(0.5, offset=1.0)(t), "rescaling"),
    "rescaling_mul": (lambda t, u: L.Rescaling(0.5)(t), "rescaling"),
    "normalization": (lambda t, u: L.Normalization(mean=[1, 2, 3, 4],
                                                   variance=[1, 2, 3, 4])(t), "normalization"),
    "ops_add": (lambda t, u: keras.ops.add(t, u), "add"),
    "plus": (lambda t, u: t + u, "add"),
    "minus": (lambda t, u: t - u, "subtract"),
    "times": (lambda t, u: t * u, "multiply"),
    "over": (lambda t, u: t / u, "true_divide"),
    "divide_const": (lambda t, u: keras.ops.divide(t, 3.0), "divide"),
}


@pytest.mark.parametrize("producer", list(_PRODUCERS), ids=list(_PRODUCERS))
@pytest.mark.parametrize("cap,ops", [(None, []), (3.0, [("max", 2, E), ("relu", 1, E)])])
def test_relu_after_a_scaling_or_functional_op_is_fused_into_it(producer, cap, ops,
                                                                 tmp_path):
    """The file fuses the leading RELU into the last ADD / MUL / DIV of these (it was
    charged: tanh -> `Rescaling(0.5, offset=1)` -> ReLU 1.21, `ReLU()(a + b)` 1.20)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    make, prefix = _PRODUCERS[producer]
    x = L.ReLU(max_value=cap, name="r")(make(_tanh(inp), L.Activation("tanh")(_conv(inp,
                                                                                    "d"))))
    k, f = both(keras.Model(inp, L.Flatten()(x)), tmp_path)
    assert op_records(k, "r") == ops and f"fused into {prefix}" in dict(k.skipped)["r"]
    same_totals(k, f)


def test_divide_by_a_constant_is_a_mul(tmp_path):
    """`keras.ops.divide(x, 3.0)` is a MUL by 1 / 3 in the file (it was not charged: 0.85)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    k, f = both(keras.Model(inp, L.Flatten()(keras.ops.divide(_tanh(inp), 3.0))), tmp_path)
    assert [(x.shape.eltwise_op, x.shape.output_size) for x in k.layers[1:]] == [("mul", E)]
    same_totals(k, f)


@pytest.mark.parametrize("mean,variance,ops", [
    ([1, 2, 3, 4], [1, 2, 3, 4], ["mul", "add"]),  # x * sqrt(variance) + mean
    ([1, 2, 3, 4], [1, 1, 1, 1], ["add"]),
    ([0, 0, 0, 0], [1, 2, 3, 4], ["mul"]),
])
def test_inverted_normalization_is_a_mul_and_an_add(mean, variance, ops, tmp_path):
    """It was "not modelled, not charged" (0.37)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = L.Normalization(mean=mean, variance=variance, invert=True, name="n")(_tanh(inp))
    k, f = both(keras.Model(inp, L.Flatten()(x)), tmp_path)
    assert op_records(k, "n") == [(op, 2, E) for op in ops]
    same_totals(k, f)


@pytest.mark.parametrize("make,ops", [
    (lambda: L.ReLU(negative_slope=1.0, name="r"), []),  # an identity, removed
    (lambda: L.LeakyReLU(negative_slope=1.0, name="r"), []),
    (lambda: L.ReLU(negative_slope=1.0, max_value=3.0, name="r"),
     ["relu", "relu", "max", "relu", "add"]),            # no MUL by the slope 1
    (lambda: L.ReLU(negative_slope=1.0, threshold=0.5, name="r"), ["add", "add"]),
])
def test_relu_of_slope_1(make, ops, tmp_path):
    """`ReLU(negative_slope=1)` is x: one RELU was charged (1.58)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    k, f = both(keras.Model(inp, L.Flatten()(make()(_conv(inp)))), tmp_path)
    assert [(op, n) for op, n, _ in op_records(k, "r")] == [(op, 1 if op == "relu" else 2)
                                                       for op in ops]
    same_totals(k, f)


@pytest.mark.parametrize("last,ops", [
    (lambda: L.BatchNormalization(name="x"), []),  # folded into c
    (lambda: L.ReLU(max_value=3.0, name="x"), [("max", 2, E), ("relu", 1, E)]),
])
def test_pipeline_layer_behind_a_dropout_folds_into_the_conv(last, ops, tmp_path):
    """`Pipeline([Conv2D, Dropout, BN])`: the batch norm's MUL and ADD were charged (2.73)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    pipe = L.Pipeline([L.Conv2D(4, 3, padding="same", name="c"), L.Dropout(0.5),
                       L.GaussianNoise(0.1), last()])
    model = keras.Model(inp, L.Flatten()(pipe(inp)))
    randomize(pipe.layers[3])
    k, f = both(model, tmp_path)
    assert op_records(k, "x") == ops and " into c" in dict(k.skipped)["x"]
    same_totals(k, f)
