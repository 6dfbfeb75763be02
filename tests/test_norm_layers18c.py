"""GroupNormalization of an image input: the Keras estimate against its `.tflite` (probe 18c).

Measured on the code before this test (2026-12-06): for a 4-D input the converter keeps the
variance's ``x - mean`` as a SUB of E elements (of a 3-D input it fuses it into a
SQUARED_DIFFERENCE, a statistic), which the Keras estimate left out: input (4, 4, 6),
3 groups: paper 3,395.8 vs the `.tflite`'s 3,977.2.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

L = keras.layers


@pytest.mark.parametrize("shape", [(5, 6), (4, 4, 6)])
def test_group_norm_keras_estimate_equals_its_tflite(shape, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    gn = L.GroupNormalization(groups=3, name="gn")
    m = keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(gn(inp))))
    rng = np.random.RandomState(1)
    gn.beta.assign(rng.rand(6))  # a zero beta: the converter drops its ADD
    gn.gamma.assign(rng.rand(6) + 0.5)
    path = tmp_path / "gn.tflite"
    dkm_tf.export.to_tflite(m, str(path), format="float",
                            sample_inputs=rng.rand(2, *shape).astype("float32"))
    k, f = energy.estimate(m), energy.estimate(str(path))
    e = int(np.prod(shape))
    adds = sorted(r.shape.out_w for r in k.layers if r.shape.kind == "eltwise"
                  and r.shape.eltwise_op == "add")
    # var + eps (G), + beta (C), + res (E), and of a 4-D input x - mean (E): old no second E
    assert adds == sorted([3, 6, e] + ([e] if len(shape) == 3 else []))
    assert k.macs == f.macs == e * 3
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-9)
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-9)
