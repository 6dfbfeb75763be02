"""Third review of session 22's fixes (label widths, output activations, multi-input data).

- ``class_weight`` refused one-hot labels of a ``tf.data`` dataset whose label width is open
  (``TensorSpec((None,))``): Keras fixes it to C under a categorical loss.
- Reading back through a ``Flatten`` / ``Reshape`` after a softmax called a per-position
  softmax ``(N, T, C) -> (N, T*C)`` a softmax over all T*C columns (an arg-max over them read
  as a class); a reshape that changes the last axis now ends the softmax.
- A 3-input model given ``(x1, x2, x3, y)`` to the Fisher weighting failed inside Keras; a
  two-output model compiled ``loss={"reg": "mse"}`` was read by output 0's softmax.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
import dkm_tf  # noqa: E402
from dkm_tf.core.loss_kind import non_class_loss, output_activation  # noqa: E402
from dkm_tf.training.class_weights import check_class_weight  # noqa: E402


def test_class_weight_takes_one_hot_labels_of_open_width():
    i = keras.Input((4,))
    m = keras.Model(i, keras.layers.Dense(3, activation="softmax")(i))
    eye = np.eye(3, dtype="float32")

    def gen():
        for k in range(8):
            yield np.full(4, k, "float32"), eye[k % 3]
    ds = tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((4,)), tf.TensorSpec((None,)))).batch(4)
    table = check_class_weight({0: 1.0, 1: 2.0}, m, "categorical_crossentropy", ds)
    np.testing.assert_array_equal(table, [1.0, 2.0, 1.0])


def test_a_flattened_per_position_softmax_is_no_softmax_over_its_columns():
    i = keras.Input((5, 3))
    p = keras.layers.Softmax()(keras.layers.Dense(4)(i))
    assert output_activation(keras.Model(i, keras.layers.Flatten()(p))) == ""
    q = keras.layers.Dense(6, activation="softmax")(keras.Input((6,)))
    assert output_activation(keras.Model(q._keras_history[0].input,
                                         keras.layers.Reshape((3, 2))(q))) == ""
    j = keras.Input((1, 4))
    r = keras.layers.Dense(10, activation="softmax")(j)  # (N, 1, 10) -> (N, 10): same rows
    assert output_activation(keras.Model(j, keras.layers.Reshape((10,))(r))) == "softmax"
    s = keras.layers.Dense(4, activation="sigmoid")(i)  # per element: a flatten keeps it
    assert output_activation(keras.Model(i, keras.layers.Flatten()(s))) == "sigmoid"


def test_fisher_of_a_three_input_model_refuses_four_loose_arrays():
    ins = [keras.Input((2,)) for _ in range(3)]
    h = keras.layers.Concatenate()(ins)
    m = keras.Model(ins, keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(4, name="fc")(h)))
    m.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(6, 2)).astype("float32") for _ in range(3)]
    y = rng.integers(0, 3, 6)
    with pytest.raises(ValueError, match=r"`data`.*3 inputs.*a sequence of 4 arrays"):
        dkm_tf.fisher_importance(m, (*xs, y), labels="data")
    dkm_tf.fisher_importance(m, (xs, y), labels="data")  # the list form still works


def test_a_one_entry_loss_dict_of_a_two_output_model_is_not_its_only_loss():
    i = keras.Input((4,))
    probs = keras.layers.Dense(3, activation="softmax", name="cls")(i)
    reg = keras.layers.Dense(2, name="reg")(i)
    m = keras.Model(i, [reg, probs])  # was: "mse" read as the whole model's: a regressor
    m.compile("adam", loss={"reg": "mse"})
    assert non_class_loss(m) is None  # several outputs: no single reading
