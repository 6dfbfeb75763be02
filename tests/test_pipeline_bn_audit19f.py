"""A BatchNormalization first in a Pipeline nested in a Pipeline is folded (audit 19f).

Measured on the code before this test (2026-12-06): `energy.estimate` charged it as an
"affine" record instead of folding it into the convolution before it, as the Functional
reader and the converter fold it (Pipeline([Conv2D, Pipeline([BN, ReLU])]) on (8, 8, 3):
paper 32,102.4 vs the flat Functional model's 30,661.9; with MaxPooling2D for the ReLU the
flat model and its float `.tflite` agree, and the nested one did not).
"""

import keras
import numpy as np
import pytest
from testing import tf_backend_only

import dkm_tf
from dkm_tf import energy

L = keras.layers
pytestmark = tf_backend_only()


def _model(kind, tail):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    bn, after = L.BatchNormalization(name="bn"), tail()
    if kind == "nested":
        x = L.Pipeline([L.Conv2D(4, 3, name="c"), L.Pipeline([bn, after])])(inp)
    elif kind == "deep":  # the batch norm first in a Pipeline first in a nested Pipeline
        x = L.Pipeline([L.Conv2D(4, 3, name="c"), L.Pipeline([L.Pipeline([bn]), after])])(inp)
    else:
        x = after(bn(L.Conv2D(4, 3, name="c")(inp)))
    m = keras.Model(inp, L.Dense(3, name="d")(L.Flatten()(x)))
    rng = np.random.RandomState(2)
    bn.moving_mean.assign(rng.rand(4))
    bn.gamma.assign(rng.rand(4) + 0.5)
    return m


@pytest.mark.parametrize("kind", ["nested", "deep"])
def test_nested_pipeline_batch_norm_is_folded_like_the_flat_model_and_its_file(kind, tmp_path):
    nested, flat = _model(kind, L.MaxPooling2D), _model("flat", L.MaxPooling2D)
    n, f = energy.estimate(nested), energy.estimate(flat)
    x = np.random.RandomState(1).rand(2, 8, 8, 3).astype("float32")
    path = str(tmp_path / "n.tflite")
    dkm_tf.export.to_tflite(nested, path, format="float", sample_inputs=x)
    t = energy.estimate(path)
    assert n.macs == f.macs == t.macs == 6 * 6 * 27 * 4 + 3 * 3 * 4 * 3
    np.testing.assert_allclose(n.paper_total, f.paper_total, rtol=1e-9)
    np.testing.assert_allclose(n.paper_total, t.paper_total, rtol=1e-9)
    np.testing.assert_allclose(n.hierarchy_total, f.hierarchy_total, rtol=1e-9)
    assert not any(r.shape.kind == "eltwise" and r.shape.eltwise_op == "affine" for r in n.layers)
    assert dict(n.skipped)["bn"].startswith("folded into c ")


def test_nested_pipeline_batch_norm_then_relu_matches_the_flat_model():
    n, f = energy.estimate(_model("nested", L.ReLU)), energy.estimate(_model("flat", L.ReLU))
    np.testing.assert_allclose(n.paper_total, f.paper_total, rtol=1e-9)  # old: 32,102 vs 30,662
    assert [r.name for r in n.layers if r.name == "bn"] == []
