"""Follow-ups to `tests/test_energysmall28.py` (review R4 of branch h28-energysmall).

A `keras.ops.clip(t, -0.0, hi)` was read as a RELU (a RELU6 fused into the conv before it for
hi = 6), where the converter matches a bound of +0.0 only and keeps a MINIMUM and a MAXIMUM
(after a 3x3 conv, Keras / file hierarchy 0.3862 for [-0.0, 6.0], 0.8977 for [-0.0, 1.0]);
element-wise ops of integers only (an integer clip, minimum, product: index arithmetic) were
charged, where the `.tflite` reader lists them (Keras / file 2.36 for a clip before a Dense).
"""

import keras
import numpy as np
import pytest

from dkm_tf import energy
from dkm_tf.export import to_tflite
from tests._energy_file25 import both, same_totals

L = keras.layers
E = 6 * 6 * 4  # elements after the conv


def _eltwise(report):
    return [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size) for x in report.layers
            if x.shape.kind == "eltwise"]


@pytest.mark.parametrize("lo,hi,ops", [
    (-0.0, 6.0, [("max", 2, E), ("max", 2, E)]),  # MINIMUM, MAXIMUM: no RELU6
    (-0.0, 1.0, [("max", 2, E), ("max", 2, E)]),  # no MINIMUM + RELU
    (0.0, 6.0, []),  # +0.0: a RELU6 fused into the conv, as before
    (0.0, 1.0, [("max", 2, E), ("relu", 1, E)]),
    (-1.0, 1.0, []),  # a RELU_N1_TO_1 fused into the conv, as before
])
def test_clip_of_negative_zero_is_no_relu(lo, hi, ops, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Lambda(lambda t: keras.ops.clip(t, lo, hi), name="lam")(
        L.Conv2D(4, 3, name="conv")(inp)))
    k, f = both(model, tmp_path)
    assert _eltwise(k) == ops == _eltwise(f)
    same_totals(k, f)


_INT = {
    "clip": lambda t: keras.ops.clip(t, -1, 5),
    "clip_in_lambda": lambda t: L.Lambda(lambda u: keras.ops.clip(u, 0, 3))(t),
    "minimum": lambda t: keras.ops.minimum(t, 5),
    "product": lambda t: t * 2,
}


@pytest.mark.parametrize("case", list(_INT))
def test_integer_elementwise_ops_are_not_charged(case, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), dtype="int32")
    model = keras.Model(inp, L.Dense(3, name="d")(keras.ops.cast(_INT[case](inp), "float32")))
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, format="float", sample_inputs=np.ones((1, 8), "int32"))
    k, f = energy.estimate(model), energy.estimate(path)
    assert _eltwise(k) == [] == _eltwise(f)
    assert k.macs == f.macs == 8 * 3  # the Dense only, by hand
    same_totals(k, f)
    assert [why for _, why in k.skipped if "of integers" in why]


def test_float_elementwise_op_is_still_charged(tmp_path):
    """The same ops on floats are charged (the integer check reads dtypes, not ops)."""
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(3, name="d")(keras.ops.minimum(inp * 2.0, 5.0)))
    k, f = both(model, tmp_path)
    assert [op for op, _, _ in _eltwise(k)] == [op for op, _, _ in _eltwise(f)]
    assert _eltwise(k)
    same_totals(k, f)


T = 3  # steps


def _td(layer, step_shape):
    inp = keras.Input((T, *step_shape))
    return keras.Model(inp, L.TimeDistributed(layer, name="td")(inp))


def test_time_distributed_own_activation_is_per_step(tmp_path):
    """A Dense(4, activation="swish")'s MUL runs after each step's FULLY_CONNECTED in the
    file; it was one record of all steps after the T step records."""
    keras.utils.set_random_seed(0)
    k, f = both(_td(L.Dense(4, activation="swish", name="c"), (8,)), tmp_path)
    got = [(x.name, x.shape.kind, x.shape.output_size) for x in k.layers]
    assert got == [(n, kind, 4) for s in ("td", "td#2", "td#3")
                   for n, kind in ((s, "dense"), (f"{s}/silu", "eltwise"))]
    assert [(x.shape.kind, x.shape.output_size) for x in f.layers] == [
        (kind, size) for _, kind, size in got]
    same_totals(k, f)


def test_time_distributed_einsum_dense_is_charged_every_step(tmp_path):
    """The equation has no step axis: it was read at the wrapper's shape as one step (32 MACs
    of the file's 96, hierarchy 0.3333)."""
    keras.utils.set_random_seed(0)
    k, f = both(_td(L.EinsumDense("ab,bc->ac", 4, name="c"), (8,)), tmp_path)
    assert k.macs == f.macs == T * 8 * 4  # by hand
    assert len(k.layers) == len(f.layers) == T
    assert [x.name for x in k.layers] == ["td/kernel", "td#2/kernel", "td#3/kernel"]  # 1: c/kernel
    same_totals(k, f)


@pytest.mark.parametrize("build,step_shape", [
    (lambda: L.GroupNormalization(2, name="c"), (5, 4)),
    (lambda: L.GroupNormalization(2, name="c"), (3, 3, 4)),  # an image per step: a SUB too
    (lambda: L.UnitNormalization(name="c"), (5, 4)),
])
def test_time_distributed_normalization_is_charged_per_step(build, step_shape, tmp_path):
    """It was read at the wrapper's shape (G group adds, not T·G, and an image's SUB):
    GroupNormalization(2) over 3 steps of 5x4, Keras / file hierarchy 1.2663."""
    keras.utils.set_random_seed(0)
    model = _td(build(), step_shape)
    layer = model.get_layer("td").layer
    if isinstance(layer, L.GroupNormalization):
        layer.beta.assign(np.linspace(0.1, 0.4, 4, dtype="float32"))  # an ADD of its own
    k, f = both(model, tmp_path)
    assert sorted(_eltwise(k)) == sorted(_eltwise(f))
    assert len(k.layers) % T == 0 and k.layers[len(k.layers) // T].name == "td#2"
    same_totals(k, f)
