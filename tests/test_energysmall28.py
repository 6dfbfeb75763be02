"""A `TimeDistributed` of a plain layer and `keras.ops.clip` in a Keras model's energy estimate.

Found by probing `energy.estimate(keras_model)` against `energy.estimate(<its float file>)`:
the converter unrolls a TimeDistributed layer of T known steps into T ops, each fetching the
layer's weights, where the Keras reader charged one record of all steps (a TimeDistributed
Conv1D(4, 3) of 3 steps of 8x4: Keras / file hierarchy 0.7220; a Dense(4) 0.5231; a PReLU
0.7795; a TimeDistributed Conv1D then a TimeDistributed model of a batch norm and a Conv1D
0.9224; MACs and paper metric equal). A `keras.ops.clip` was an "unsupported operation Clip"
charged nothing (after a 3x3 conv, [-1, 2]: hierarchy 0.3862, paper 0.9397).
"""

import keras
import numpy as np
import pytest

from dkm_tf import energy
from tests._energy_file25 import both, randomize, same_totals

L = keras.layers
T = 3  # steps


def _td(layer, step_shape, batch):
    inp = keras.Input((T, *step_shape), batch_size=batch)
    return keras.Model(inp, L.TimeDistributed(layer, name="td")(inp))


# (layer, step input shape, MACs of one step by hand, records of one step)
_PLAIN = {
    "conv1d": (lambda: L.Conv1D(4, 3, name="c"), (8, 4), 6 * 4 * 12, 1),
    "dense": (lambda: L.Dense(4, name="c"), (8,), 8 * 4, 1),
    "dense_rank3": (lambda: L.Dense(4, name="c"), (5, 8), 5 * 8 * 4, 1),
    "conv2d": (lambda: L.Conv2D(4, 3, name="c"), (8, 8, 3), 6 * 6 * 4 * 27, 1),
    "separable": (lambda: L.SeparableConv2D(4, 3, name="c"), (8, 8, 3),
                  6 * 6 * 3 * 9 + 6 * 6 * 3 * 4, 2),
    "prelu": (lambda: L.PReLU(name="c"), (8, 4), 0, 1),
}


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("case", list(_PLAIN))
def test_time_distributed_plain_layer_is_charged_every_step(case, batch, tmp_path):
    keras.utils.set_random_seed(0)
    build, step_shape, macs, per_step = _PLAIN[case]
    model = _td(build(), step_shape, batch)
    if case == "prelu":
        randomize(model.get_layer("td").layer)  # slopes not 0
    k, f = both(model, tmp_path)
    assert k.macs == f.macs == T * macs  # by hand
    same_totals(k, f)
    assert len(k.layers) == len(f.layers) == T * per_step
    names = [x.name.split("/")[0] for x in k.layers]
    assert names == [n for n in ["td", "td#2", "td#3"] for _ in range(per_step)]
    assert {x.shape.layer for x in k.layers} == {"c"}  # compression info still matches


def test_time_distributed_conv_then_a_time_distributed_model(tmp_path):
    """The listed case: a TimeDistributed Conv1D, then a TimeDistributed model of a batch norm
    and a Conv1D (0.9224 before)."""
    keras.utils.set_random_seed(0)
    j = keras.Input((8, 4))
    bn = L.BatchNormalization(name="ibn")
    inner = keras.Model(j, L.Conv1D(4, 1, name="tc")(bn(j)))
    randomize(bn)
    i = keras.Input((T, 8, 4))
    x = L.TimeDistributed(L.Conv1D(4, 3, padding="same", name="c"), name="td")(i)
    model = keras.Model(i, L.Flatten()(L.TimeDistributed(inner)(x)))
    k, f = both(model, tmp_path)
    assert k.macs == f.macs == T * (8 * 4 * 12 + 8 * 4 * 4)
    same_totals(k, f)


def test_time_distributed_layer_called_twice_names_each_step(tmp_path):
    """A second call's steps take the next names (`td#4` ...), as the file unrolls it too."""
    keras.utils.set_random_seed(0)
    i = keras.Input((T, 8, 4))
    td = L.TimeDistributed(L.Conv1D(4, 3, padding="same", name="c"), name="td")
    model = keras.Model(i, L.Flatten()(td(td(i))))
    k, f = both(model, tmp_path)
    assert [x.name for x in k.layers] == ["td"] + [f"td#{n}" for n in range(2, 2 * T + 1)]
    same_totals(k, f)


def _clipped(lo, hi, before=None, direct=False):
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.Activation(before)(x) if before else x
    clip = lambda t: keras.ops.clip(t, lo, hi)  # noqa: E731
    return keras.Model(inp, clip(x) if direct else L.Lambda(clip, name="lam")(x))


E = 6 * 6 * 4  # elements after the conv


@pytest.mark.parametrize("lo,hi,before,direct,ops", [
    (-1.0, 2.0, None, False, [("max", 2, E), ("max", 2, E)]),  # MINIMUM, MAXIMUM
    (-1.0, 2.0, None, True, [("max", 2, E), ("max", 2, E)]),
    (0.0, 1.0, "tanh", False, [("max", 2, E), ("relu", 1, E)]),  # MINIMUM, RELU
    (0.0, 6.0, None, False, []),  # a RELU6 fused into the conv
    (-1.0, 1.0, None, True, []),  # a RELU_N1_TO_1 fused into the conv
    (0.0, 6.0, "tanh", False, [("relu", 1, E)]),  # a RELU6 of its own
    (-1.0, 1.0, "tanh", False, [("relu", 1, E)]),  # a RELU_N1_TO_1 of its own
])
def test_clip_is_charged_as_the_file_runs_it(lo, hi, before, direct, ops, tmp_path):
    keras.utils.set_random_seed(0)
    k, f = both(_clipped(lo, hi, before, direct), tmp_path)
    got = [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size) for x in k.layers
           if x.shape.kind == "eltwise"]
    assert got == ops == [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size)
                          for x in f.layers if x.shape.kind == "eltwise"]
    same_totals(k, f)
    assert not [n for n, why in k.skipped if "unsupported" in why]


def test_clip_of_array_bounds_is_listed_not_guessed():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 4))
    lo = np.zeros((4,), "float32")
    out = L.Lambda(lambda t: keras.ops.clip(t, lo, lo + 1.0), name="lam")(L.Dense(4)(inp))
    report = energy.estimate(keras.Model(inp, out))
    assert [x.shape.kind for x in report.layers] == ["dense"]
    assert any("Clip of bounds" in why for _, why in report.skipped)


class Sliced(keras.Model):
    """A swish `Activation`, a PReLU and a `Dense(4, "swish")` on `x[:, :n]`, n from a
    `tf.where` (a size that depends on the data: open in the trace) or n = 5 (`open=False`)."""

    def __init__(self, open_size):
        super().__init__(name="sliced")
        self.open_size = open_size
        self.act = L.Activation("swish", name="sw")
        self.p = L.PReLU(shared_axes=[1], name="pr")
        self.d = L.Dense(4, activation="swish", name="d")

    def call(self, x):
        import tensorflow as tf

        n = tf.shape(tf.where(x[0, :, 0] > -1e9))[0] if self.open_size else 5
        return self.d(self.p(self.act(x[:, :n])))


def test_traced_open_size_is_listed_not_read_as_one():
    """Before: the swish and PReLU read 8 elements (the open 5 as 1) and the Dense's swish 4,
    while the Dense itself was listed ("unknown dimension")."""
    keras.utils.set_random_seed(0)
    model = Sliced(True)
    model(np.zeros((1, 5, 8), "float32"))
    report = energy.estimate(model, input_shape=(5, 8))
    assert report.layers == ()
    why = dict(report.skipped)
    for name in ("sw", "pr", "d"):
        assert why[name].startswith("unknown dimension"), (name, why)


def test_traced_fixed_size_is_charged_in_full():
    keras.utils.set_random_seed(0)
    model = Sliced(False)
    model(np.zeros((1, 5, 8), "float32"))
    report = energy.estimate(model, input_shape=(5, 8))
    got = [(x.name, x.shape.kind, x.shape.eltwise_op, x.shape.output_size)
           for x in report.layers]
    assert got == [("sw", "eltwise", "mul", 40), ("pr", "eltwise", "affine", 40),
                   ("d", "dense", "", 20), ("d/silu", "eltwise", "mul", 20)]
    assert report.macs == 5 * 8 * 4
