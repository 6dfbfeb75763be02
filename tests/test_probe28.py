"""Probe of session 28: `energy.estimate(input_shape=...)` read what it was given loosely.

`input_shape` went through `tuple(int(d) for d in input_shape)`: a string was read digit by
digit (`"883"` as (8, 8, 3), `"64"` as (6, 4)), a float dim truncated (8.7 as 8) and True
taken as 1, all without a word; a Sequential that is not built took it unchecked (`12` gave
"'int' object is not iterable", a 1-D array "The truth value of an array ... is ambiguous").
Now one check refuses all of those naming `input_shape`, and takes a list, tuple or 1-D
array of positive integers. Reference figures: a 3x3 conv of 4 filters over 3 channels,
valid padding, on an 8x8 input makes 6·6·(3·3·3)·4 = 3,888 MACs; Dense 5 -> 4 -> 2 on a
(7, 5) input makes 7·(5·4 + 4·2) = 196.
"""

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

from dkm_tf import energy  # noqa: E402

L = keras.layers
CONV_MACS = 6 * 6 * (3 * 3 * 3) * 4
DENSE_MACS = 7 * (5 * 4 + 4 * 2)


def _open_conv():
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    return keras.Model(inp, L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(inp)))


def _lazy_sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([L.Dense(4), L.Dense(2)])


BAD = ["883", "8,8,3", b"883", 12, 8.0, (8.7, 8, 3), (8.0, 8.0, 3.0), (True, 8, 3),
       (8, 8, -3), (0, 8, 3), (), np.array([[8, 8, 3]]), {"h": 8}]


@tf_backend_only()
@pytest.mark.parametrize("shape", BAD, ids=repr)
def test_an_open_model_refuses_an_input_shape_that_is_not_positive_integers(shape):
    with pytest.raises(ValueError, match=r"argument `input_shape`.*positive integers"):
        energy.estimate(_open_conv(), input_shape=shape)


@pytest.mark.parametrize("shape", BAD, ids=repr)
def test_an_unbuilt_sequential_refuses_it_too_and_stays_unbuilt(shape):
    model = _lazy_sequential()
    with pytest.raises(ValueError, match=r"argument `input_shape`.*positive integers"):
        energy.estimate(model, input_shape=shape)
    assert not model.built


@tf_backend_only()
@pytest.mark.parametrize("shape", [(8, 8, 3), [8, 8, 3], np.array([8, 8, 3]),
                                   (np.int64(8), np.int32(8), 3)], ids=repr)
def test_integer_sequences_and_arrays_give_the_counted_macs(shape):
    """A TensorShape (`x.shape[1:]` of a tf.Tensor) is taken too (see the next test)."""
    assert energy.estimate(_open_conv(), input_shape=shape).macs == CONV_MACS


@pytest.mark.parametrize("shape", [(7, 5), [7, 5], np.array([7, 5]), "tensor_shape"], ids=repr)
def test_an_unbuilt_sequential_is_read_at_the_given_size(shape):
    if isinstance(shape, str):
        shape = pytest.importorskip("tensorflow").zeros((2, 7, 5)).shape[1:]
    assert energy.estimate(_lazy_sequential(), input_shape=shape).macs == DENSE_MACS


def test_a_fixed_size_model_takes_its_own_size_as_an_array():
    """`_check_fixed_size` compared an array with a tuple: "truth value ... ambiguous"."""
    inp = keras.Input((7, 5))
    model = keras.Model(inp, L.Dense(2)(L.Dense(4)(inp)))
    assert energy.estimate(model, input_shape=np.array([7, 5])).macs == DENSE_MACS
    with pytest.raises(ValueError, match="input_shape"):
        energy.estimate(model, input_shape="75")


def _two_dense():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(3, name="b")(L.Dense(8, name="a")(inp)))


@pytest.mark.parametrize("frac", [np.float32(0.5), np.float16(0.5), 0.5, np.float64(0.5)],
                         ids=repr)
def test_a_numpy_kept_fraction_is_taken_as_a_python_one(frac):
    """`pruning={"a": np.float32(0.5)}` was refused as "Expected a kept fraction in (0, 1]"
    (only int / float passed, np.float64 being a float); the fraction is the same number."""
    model = _two_dense()
    want = energy.estimate(model, pruning={"a": 0.5})
    got = energy.estimate(model, pruning={"a": frac})
    assert got.paper_total == pytest.approx(want.paper_total, rel=1e-12)
    assert got.paper_total < energy.estimate(model).paper_total  # pruning was applied


@pytest.mark.parametrize("frac", [True, "0.5", np.float32(0.0), 1.5, float("nan")], ids=repr)
def test_other_kept_fractions_are_still_refused(frac):
    with pytest.raises(ValueError, match=r"pruning\['a'\].*kept fraction"):
        energy.estimate(_two_dense(), pruning={"a": frac})


@pytest.mark.parametrize("build", ["digits_cnn", "lenet5_caffe"])
def test_reference_models_take_a_numpy_class_count(build):
    """`digits_cnn(num_classes=y.max() + 1)`: Keras refused the numpy int ("expected a
    positive integer. Received: units=3"); True built a one-logit model without a word."""
    from dkm_tf import models

    y = np.array([0, 2, 1, 2])
    model = getattr(models, build)(num_classes=y.max() + 1)
    assert model.output_shape == (None, 3)
    for bad in (True, 0, 2.0):
        with pytest.raises((TypeError, ValueError), match="num_classes"):
            getattr(models, build)(num_classes=bad)
    with pytest.raises(ValueError, match="input_shape"):
        getattr(models, build)(input_shape="881")
