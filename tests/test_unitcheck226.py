"""The unit check of float-exact files, second review (R5 of session 26).

F1: with one sample, the batch check's variants (mirrored, scaled) were held to unit
allowances measured on the sample only. F2: a unit no weight reaches got 1e-3 of the output's
allowance. F3: an int8 file quantizing nothing was verified as float but its units held to
int8's floor. F4: a unit refusal named no allowance and no remedy.
"""

import keras
import numpy as np
import pytest

from dkm_tf.export import to_tflite, verify

pytest.importorskip("ai_edge_litert")


def _run(path, x):
    with open(path, "rb") as f:
        return verify.run_tflite(f.read(), [x])[0].astype(np.float64)


def test_one_sample_cancelling_unit_on_the_mirrored_variant_is_written(tmp_path):
    # unit 1 sums 128 terms of ~1000 that cancel to ~0 on the mirrored variant only
    rng = np.random.default_rng(0)
    n, h = 256, 128
    x = np.zeros((1, n), "float32")
    x[0, h:] = rng.uniform(0.5, 1.5, h)
    c, v = rng.standard_normal(h), x[0, ::-1][:h].astype(np.float64)
    c -= v * (c @ v) / (v @ v)
    keras.utils.set_random_seed(0)
    i = keras.Input((n,))
    d = keras.layers.Dense(2)
    model = keras.Model(i, d(i))
    k = np.zeros((n, 2), "float32")
    k[:, 0], k[:h, 1] = 1.0, 1000 * c
    d.set_weights([k, np.float32([0.0, 1e-3])])
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, "float", sample_inputs=x)
    b = verify.batch_inputs([x])[0]
    ref = b.astype(np.float64) @ k.astype(np.float64) + np.float64([0.0, 1e-3])
    got = _run(path, b)
    # float32 rounding of the cancelling sum: ~1e-5 absolute, far beyond 1e-5 x its range
    assert np.max(np.abs(got - ref)) < 1e-5 * np.max(np.abs(ref)) * 10
