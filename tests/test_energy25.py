"""The Keras reader charges element-wise layers as the ops of the model's own float `.tflite`.

Found by probing `energy.estimate(keras_model)` against `energy.estimate(<its float file>)`
(hierarchy totals Keras / file, before the fix in brackets): a merge of n inputs is n - 1
two-input ops in the file (Add of 3: 0.839, of 4: 0.772; Average of 2: 0.708); an unfolded
batch norm, `Rescaling` and `Normalization` a MUL and an ADD / SUB of constants, each left out
where it is an identity (0.34-0.85 as one "affine" record); a `ReLU(max_value=3)` a MINIMUM
and a RELU after a RELU the conv before absorbs (0.646), a threshold a GREATER and a SELECT
(not priced; 1.58), a slope with a cap a RELU, a MUL and a SUB more (0.30-0.44); a batch norm
or ReLU after a nested model ending in a conv is folded / fused into that conv (1.29), and one
after a `TimeDistributed` conv is not folded (0.33).
"""

import keras
import numpy as np
import pytest

from tests._energy_file25 import both, op_records, randomize, same_totals

L = keras.layers
E = 8 * 8 * 4  # outputs of the 8x8x4 tensors below


@pytest.mark.parametrize("klass,n,ops", [
    (L.Add, 3, ["add"] * 2), (L.Add, 4, ["add"] * 3), (L.Multiply, 3, ["mul"] * 2),
    (L.Maximum, 3, ["max"] * 2), (L.Minimum, 4, ["max"] * 3), (L.Average, 2, ["add", "mul"]),
    (L.Average, 3, ["add", "add", "mul"]), (L.Subtract, 2, ["add"]),
])
def test_merge_of_n_inputs_is_n_minus_1_two_input_ops(klass, n, ops, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    merged = klass(name="m")([L.Conv2D(4, 1, name=f"c{j}")(inp) for j in range(n)])
    k, f = both(keras.Model(inp, L.Flatten()(merged)), tmp_path)
    assert op_records(k, "m") == [(op, 2, E) for op in ops]  # hand count; was [(op, n, E)]
    same_totals(k, f)


def _after_tanh(layer):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    return keras.Model(inp, L.Flatten()(layer(L.Activation("tanh")(inp))))


def _bn(**kwargs):
    return L.BatchNormalization(name="bn", **kwargs)


@pytest.mark.parametrize("make,ops", [
    (lambda: _bn(), ["mul", "add"]),                         # trained: x * a + b
    (lambda: _bn(center=False, scale=False), ["mul", "add"]),
    (lambda: L.Rescaling(0.5, offset=1.0, name="bn"), ["mul", "add"]),
    (lambda: L.Rescaling(1.0, offset=0.5, name="bn"), ["add"]),  # a MUL by 1 is dropped
    (lambda: L.Rescaling(0.5, name="bn"), ["mul"]),
    (lambda: L.Normalization(mean=0.5, variance=4.0, name="bn"), ["add", "mul"]),  # SUB, MUL
    (lambda: L.Normalization(mean=0.0, variance=4.0, name="bn"), ["mul"]),
    (lambda: L.Normalization(mean=0.5, variance=1.0, name="bn"), ["add"]),
], ids=["bn", "bn_no_params", "rescale", "rescale_offset", "rescale_scale", "norm",
        "norm_mean0", "norm_var1"])
def test_unfolded_scale_and_shift_is_the_files_mul_and_add(make, ops, tmp_path):
    layer = make()
    model = _after_tanh(layer)
    if isinstance(layer, L.BatchNormalization):
        randomize(layer)
    k, f = both(model, tmp_path)
    assert op_records(k, "bn") == [(op, 2, E) for op in ops]  # was [("affine", 1, E)]
    same_totals(k, f)


def test_untrained_batch_norm_is_a_mul_only_and_an_identity_nothing(tmp_path):
    """An untrained batch norm's offset is 0 (the converter drops its ADD); with epsilon 0 its
    scale is 1 too, and the file has no op for it."""
    k, f = both(_after_tanh(_bn()), tmp_path)
    assert op_records(k, "bn") == [("mul", 2, E)]
    same_totals(k, f)
    k, f = both(_after_tanh(_bn(epsilon=0.0)), tmp_path)
    assert op_records(k, "bn") == [] and "identity" in dict(k.skipped)["bn"]
    assert k.layers == f.layers == ()


@pytest.mark.parametrize("kwargs,ops", [
    (dict(max_value=3.0), ["max", "relu"]),  # RELU fused into the conv, MINIMUM, RELU
    (dict(max_value=1.0), ["max", "relu"]),
    (dict(max_value=6.0), []),               # RELU6 fused
    (dict(threshold=0.5), []),               # GREATER, SELECT_V2: not priced
    (dict(max_value=3.0, threshold=0.5), ["max", "relu"]),
    (dict(max_value=6.0, threshold=0.5), ["relu"]),
    (dict(negative_slope=0.1), ["relu"]),    # LEAKY_RELU
    (dict(negative_slope=0.1, max_value=3.0), ["relu", "relu", "max", "relu", "mul", "add"]),
    (dict(negative_slope=0.1, max_value=6.0), ["relu", "relu", "mul", "add"]),
    (dict(negative_slope=0.1, threshold=0.5), ["add", "mul", "add"]),
    (dict(negative_slope=0.1, max_value=3.0, threshold=0.5),
     ["add", "max", "relu", "mul", "add"]),
])
def test_relu_layer_is_charged_as_its_converted_ops(kwargs, ops, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    out = L.ReLU(name="r", **kwargs)(L.Conv2D(4, 3, padding="same", name="c")(inp))
    k, f = both(keras.Model(inp, L.Flatten()(out)), tmp_path)
    assert [op for op, _, _ in op_records(k, "r")] == ops  # was ["relu"] (or [] for a cap of 6)
    same_totals(k, f)


def test_capped_relu_not_after_a_fusing_op_keeps_its_first_relu(tmp_path):
    k, f = both(_after_tanh(L.ReLU(max_value=3.0, name="r")), tmp_path)
    assert op_records(k, "r") == [("relu", 1, E), ("max", 2, E), ("relu", 1, E)]
    same_totals(k, f)


def test_capped_relu_in_a_pipeline_has_its_first_relu_fused(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    pipe = L.Pipeline([L.Conv2D(4, 3, padding="same", name="c"), L.ReLU(max_value=3.0, name="r"),
                       L.BatchNormalization(name="bn")])
    model = keras.Model(inp, L.Flatten()(pipe(inp)))
    randomize(pipe.layers[2])
    k, f = both(model, tmp_path)
    assert [op for op, _, _ in op_records(k, "r")] == ["max", "relu"]
    assert "fused into c" in dict(k.skipped)["r"]
    same_totals(k, f)


def _nested(two_outputs=False):
    inp = keras.Input((8, 8, 4))
    c = L.Conv2D(4, 3, padding="same", name="nc")(L.Conv2D(4, 1, name="n0")(inp))
    return keras.Model(inp, [c, L.MaxPooling2D(name="np")(c)] if two_outputs else c)


@pytest.mark.parametrize("after", ["bn", "relu", "relu3", "bn_relu"])
def test_batch_norm_and_relu_after_a_nested_model_fold_into_its_conv(after, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = _nested()(inp)
    bn = L.BatchNormalization(name="bn")
    if "bn" in after:
        x = bn(x)
    if "relu" in after:
        x = L.ReLU(max_value=3.0 if after == "relu3" else None, name="r")(x)
    model = keras.Model(inp, L.Flatten()(x))
    randomize(bn)
    k, f = both(model, tmp_path)
    skipped = dict(k.skipped)
    assert skipped.get("bn", "folded into nc").startswith("folded into nc")
    assert "fused into nc" in skipped.get("r", "fused into nc")
    assert [op for op, _, _ in op_records(k, "r")] == (["max", "relu"] if after == "relu3" else [])
    same_totals(k, f)


def test_batch_norm_after_a_nested_conv_read_twice_inside_is_charged(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    a, b = _nested(two_outputs=True)(inp)
    bn = L.BatchNormalization(name="bn")
    model = keras.Model(inp, [L.Flatten()(bn(a)), L.Flatten()(b)])
    randomize(bn)
    k, f = both(model, tmp_path)
    assert op_records(k, "bn") == [("mul", 2, E), ("add", 2, E)]
    same_totals(k, f)


@pytest.mark.parametrize("wrapped,shape", [
    (lambda: L.TimeDistributed(L.Conv2D(4, 3, padding="same"), name="p"), (3, 8, 8, 4)),
    (lambda: L.Bidirectional(L.LSTM(4, return_sequences=True), name="p"), (6, 5)),
], ids=["time_distributed_conv", "bidirectional"])
def test_batch_norm_after_a_wrapped_layer_is_not_folded(wrapped, shape, tmp_path):
    """The converter unrolls them per step (PACK / concatenation), then runs a MUL and an ADD;
    the Keras reader listed the batch norm after a TimeDistributed conv folded (0.33)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    bn = L.BatchNormalization(name="bn")
    model = keras.Model(inp, L.Flatten()(bn(wrapped()(inp))))
    randomize(bn)
    k, f = both(model, tmp_path)
    n = int(np.prod(model.outputs[0].shape[1:]))
    assert op_records(k, "bn") == [("mul", 2, n), ("add", 2, n)]
    file_bn = [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size) for x in f.layers
               if x.shape.kind == "eltwise" and x.name.startswith("bn")]
    assert file_bn == op_records(k, "bn")


def test_records_of_a_shared_layer_called_twice_have_unique_names(tmp_path):
    """Each call's ops are `name`, `name/2`, ... and `name#2`, `name#2/2`, ... (a first
    version named them `a#2` for the first call's second op and for the second call)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    add, bn = L.Add(name="a"), L.BatchNormalization(name="bn")
    cs = [L.Conv2D(4, 1)(inp) for _ in range(3)]
    x = bn(L.Activation("tanh")(add(cs)))
    model = keras.Model(inp, L.Flatten()(bn(add([x, cs[0], cs[1]]))))
    randomize(bn)
    k, f = both(model, tmp_path)
    names = [x.name for x in k.layers if x.shape.layer in ("a", "bn")]
    assert names == ["a", "a/2", "a#2", "a#2/2", "bn", "bn/2", "bn#2", "bn#2/2"]
    same_totals(k, f)
