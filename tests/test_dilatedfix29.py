"""Session 29, review of the dilated-conv readers: only TensorFlow's own lowering of a dilated
conv (SpaceToBatchND / BatchToSpaceND in the conv op's name scope, a VALID inner conv) is read
as the Keras conv it was; a `tf.space_to_batch` written by hand around a conv is charged for
all the blocks its conv computes, and its ops stay listed as unsupported in a trace. A ReLU
layer after a conv with the same relu activation is merged by the converter into the conv's
RELU: the Keras reader charges it once, as the file does."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from _energy_file25 import both, chain, convs, eltwise, same_totals
from keras import layers as L

from dkm_tf import energy


def _hand_written(padding):
    """space_to_batch (block 2, pad 1 at the end) -> Conv2D(4, 3) -> batch_to_space (crop 1)
    on 9x9x3, written by hand: 4 blocks of 5x5 through a conv of `padding`."""
    return chain(lambda: L.Lambda(lambda t: tf.space_to_batch(t, [2, 2], [[0, 1], [0, 1]])),
                 lambda: L.Conv2D(4, 3, padding=padding),
                 lambda: L.Lambda(lambda t: tf.batch_to_space(t, [2, 2], [[0, 1], [0, 1]])),
                 shape=(9, 9, 3))


@pytest.mark.parametrize("padding,out", [("same", 5), ("valid", 3)])
def test_hand_written_space_to_batch_is_not_read_as_a_dilated_conv(padding, out, tmp_path):
    """The file's conv computes 4 blocks of `out` x `out` (by hand 4 * out^2 * 4 * 27 MACs:
    10,800 "same", 3,888 valid); read as a dilated conv on fd5c9d6 (8,748 / 2,700)."""
    keras.utils.set_random_seed(0)
    f = both(_hand_written(padding)(), tmp_path)[1]
    assert f.macs == 4 * out * out * 4 * 27
    assert convs(f) == [(5, 5, 3, out, out, 4)]


class HandWritten(keras.Model):
    """A subclassed model: `tf.space_to_batch` -> Conv2D(4, 3) -> `tf.batch_to_space`
    (without bias the conv's output is read by BatchToSpaceND alone)."""

    def __init__(self, use_bias):
        super().__init__()
        self.conv = L.Conv2D(4, 3, use_bias=use_bias)

    def call(self, x):
        y = tf.space_to_batch(x, [2, 2], [[0, 1], [0, 1]])
        return tf.batch_to_space(self.conv(y), [2, 2], [[0, 1], [0, 1]])


@pytest.mark.parametrize("use_bias", [False, True])
def test_traced_hand_written_space_to_batch_is_charged_per_block_and_listed(use_bias):
    """Traced, the same pair around a valid conv: 4 blocks of 3x3 (3,888 MACs by hand). The
    traced reader charges one image's row of the batch axis the blocks are on: one block, 972
    (read as a dilated conv on fd5c9d6, 2,700), and SpaceToBatchND / BatchToSpaceND stay
    listed as unsupported ops, so the under-count is not silent (fd5c9d6: "no compute"; with
    a bias, 972 MACs there too)."""
    keras.utils.set_random_seed(0)
    model = HandWritten(use_bias)
    x = np.random.default_rng(0).standard_normal((1, 9, 9, 3)).astype("float32")
    y = model(x)
    assert y.shape == (1, 5, 5, 4)  # the blocks' 3x3 outputs, put back and cropped
    report = energy.estimate(model, input_shape=(9, 9, 3))
    assert report.macs == 3 * 3 * 4 * 27  # one block of 4: listed below
    why = sorted(w for name, w in report.skipped if "ToSpace" in name or "ToBatch" in name)
    assert why == ["unsupported TensorFlow op BatchToSpaceND",
                   "unsupported TensorFlow op SpaceToBatchND"]


def test_traced_dilated_conv_still_lists_its_blocks_as_no_compute():
    """TensorFlow's own lowering of `Conv2D(4, 3, dilation_rate=2)` (9x9x3, 2,700 MACs)."""
    class Wrapper(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(4, 3, dilation_rate=2)

        def call(self, x):
            return self.conv(x)

    keras.utils.set_random_seed(0)
    model = Wrapper()
    model(np.zeros((1, 9, 9, 3), "float32"))
    report = energy.estimate(model, input_shape=(9, 9, 3))
    assert report.macs == 5 * 5 * 4 * 27
    why = [w for name, w in report.skipped if "ToSpace" in name or "ToBatch" in name]
    assert why == ["no compute", "no compute"]


MERGED = {  # conv kwargs, the ReLU layer, output side: one RELU op in the file, fused
    "dilated_relu_ReLU": ({"dilation_rate": 2, "activation": "relu"}, L.ReLU, 5),
    "dilated_relu_Activation": ({"dilation_rate": 2, "activation": "relu"},
                                lambda: L.Activation("relu"), 5),
    "dilated_relu6_ReLU6": ({"dilation_rate": 2, "activation": "relu6"},
                            lambda: L.ReLU(6.0), 5),
    "dilated_same_relu_ReLU": ({"dilation_rate": 2, "activation": "relu", "padding": "same"},
                               L.ReLU, 9),
    "relu_ReLU": ({"activation": "relu"}, L.ReLU, 7),
    "relu6_Activation_relu6": ({"activation": "relu6"}, lambda: L.Activation("relu6"), 7),
}


@pytest.mark.parametrize("case", list(MERGED))
def test_relu_layer_after_a_convs_own_relu_is_charged_once(case, tmp_path):
    """Conv2D(4, 3, activation="relu") -> ReLU() -> Conv2D(2, 1) on 9x9x3: the converter
    merges both relus into the conv's one RELU (fused, or after a dilated conv's
    BATCH_TO_SPACE_ND), so no element-wise record in either estimate (fd5c9d6: the Keras
    reader charged the ReLU layer, Keras / file hierarchy 1.2933 dilated, 1.3954 not)."""
    kwargs, relu, o = MERGED[case]
    keras.utils.set_random_seed(0)
    k, f = both(chain(lambda: L.Conv2D(4, 3, **kwargs), relu, lambda: L.Conv2D(2, 1),
                      shape=(9, 9, 3))(), tmp_path)
    assert k.macs == f.macs == o * o * (4 * 27 + 2 * 4)
    for report in (k, f):
        assert [x for x in report.layers if x.shape.kind == "eltwise"] == []
    same_totals(k, f)


def test_relu6_layer_after_a_relu_conv_stays_charged(tmp_path):
    """A ReLU(6) after a conv's relu is another op (RELU6 of 7 * 7 * 4 values) in both."""
    keras.utils.set_random_seed(0)
    k, f = both(chain(lambda: L.Conv2D(4, 3, activation="relu"), lambda: L.ReLU(6.0),
                      lambda: L.Conv2D(2, 1), shape=(9, 9, 3))(), tmp_path)
    for report in (k, f):
        assert [x.shape.output_size for x in report.layers
                if x.shape.kind == "eltwise"] == [7 * 7 * 4]
    same_totals(k, f)


@pytest.mark.parametrize("d", [1, 2])
def test_relu_layer_merged_where_the_convs_output_has_two_readers(d, tmp_path):
    """Conv2D(4, 3, dilation_rate=d, activation="relu") read by a ReLU -> Conv2D(2, 1) and by a
    Conv2D(2, 1), added: the converter still drops the second RELU (fd5c9d6: Keras / file
    hierarchy 1.2458 undilated, 1.2013 dilated)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((9, 9, 3))
    c = L.Conv2D(4, 3, dilation_rate=d, activation="relu")(x)
    model = keras.Model(x, L.Add()([L.Conv2D(2, 1)(L.ReLU()(c)), L.Conv2D(2, 1)(c)]))
    o = 9 - 2 * d
    k, f = both(model, tmp_path)
    assert k.macs == f.macs == o * o * (4 * 27 + 2 * 2 * 4)
    for report in (k, f):
        assert [x.shape.eltwise_op for x in report.layers
                if x.shape.kind == "eltwise"] == ["add"]
    same_totals(k, f)


def test_relu_layer_after_a_relu_dense_is_charged_once(tmp_path):
    """Dense(8, "relu") -> ReLU() -> Dense(2) on 16 features: one fused RELU (fd5c9d6:
    Keras / file hierarchy 1.0887)."""
    keras.utils.set_random_seed(0)
    k, f = both(chain(lambda: L.Dense(8, activation="relu"), L.ReLU, lambda: L.Dense(2),
                      shape=(16,))(), tmp_path)
    assert k.macs == f.macs == 16 * 8 + 8 * 2
    for report in (k, f):
        assert [x for x in report.layers if x.shape.kind == "eltwise"] == []
    same_totals(k, f)


@pytest.mark.parametrize("wrapped, shape, tail", [
    (lambda: L.Conv2D(4, 3, activation="relu"), (3, 9, 9, 3), None),
    (lambda: L.Dense(8, activation="relu"), (3, 5, 16), lambda: L.Dense(2)),
])
def test_relu_layer_after_a_time_distributed_relu_layer_stays_charged(wrapped, shape, tail,
                                                                      tmp_path):
    """A ReLU after a TimeDistributed relu conv / Dense is not merged: the converter runs the
    wrapped layer per step, joins the steps with PACK and keeps a RELU after it (review R12:
    reported fused, Keras / file hierarchy 0.6350 conv, 0.7993 Dense)."""
    keras.utils.set_random_seed(0)
    x = keras.Input(shape)
    y = L.ReLU()(L.TimeDistributed(wrapped())(x))
    k, f = both(keras.Model(x, tail()(y) if tail else y), tmp_path)
    for report in (k, f):
        assert eltwise(report) == ["relu"]
    same_totals(k, f)
