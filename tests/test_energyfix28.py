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
