"""GroupNormalization and UnitNormalization in `energy.estimate` of a Keras model (probe 18).

Measured before (2026-12-06): both were skipped as "unsupported layer type" (their element-wise
cost left out: a GroupNormalization over (5, 6) with 3 groups: 0 of the 525.6 paper-metric
units its `.tflite` charges; a UnitNormalization over 6 features: 0 of 47.4).
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

L = keras.layers


def _model(kind, **kw):
    keras.utils.set_random_seed(0)
    if kind == "group":
        inp = keras.Input((5, 6))
        out = L.GroupNormalization(3, name="norm", **kw)(inp)
    else:
        inp = keras.Input((6,))
        out = L.UnitNormalization(name="norm")(inp)
    m = keras.Model(inp, out)
    if kind == "group" and m.get_layer("norm").center:
        m.get_layer("norm").beta.assign(np.full((6,), 0.5, "float32"))
    return m


@pytest.mark.parametrize(("kind", "kw", "parts"), [
    ("group", {}, [("add", 3), ("mul", 6), ("mul", 6), ("add", 6), ("mul", 30), ("add", 30)]),
    ("group", {"scale": False, "center": False}, [("add", 3), ("mul", 3), ("mul", 30),
                                                 ("add", 30)]),
    ("unit", {}, [("max", 1), ("mul", 6)]),
])
def test_normalization_records_follow_keras_arithmetic(kind, kw, parts):
    r = energy.estimate(_model(kind, **kw))
    got = [(x.shape.eltwise_op, x.shape.out_w) for x in r.layers if x.shape.layer == "norm"]
    assert got == parts  # old: [], skipped "unsupported layer type"
    assert r.macs == 0 and not any(name == "norm" for name, _ in r.skipped)


@pytest.mark.parametrize("kind", ["group", "unit"])
def test_normalization_keras_estimate_equals_its_tflite(kind, tmp_path):
    m = _model(kind)
    path = str(tmp_path / "n.tflite")
    x = np.random.RandomState(1).randn(3, *m.inputs[0].shape[1:]).astype("float32")
    dkm_tf.export.to_tflite(m, path, format="float", sample_inputs=x)
    k, f = energy.estimate(m), energy.estimate(path)
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-9)  # old: 0 vs 525.6
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-9)
