"""Helpers of the session-25 energy tests: a Keras model's estimate beside its float file's."""

import numpy as np

from dkm_tf import energy
from dkm_tf.export import to_tflite


def both(model, tmp_path):
    """`energy.estimate` of `model` and of its float `.tflite` (written under `tmp_path`)."""
    path = str(tmp_path / "m.tflite")
    to_tflite(model, path, format="float")
    return energy.estimate(model), energy.estimate(path)


def same_totals(k, f):
    """The hierarchy and paper totals of two reports agree to rtol 1e-6."""
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-6)
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-6)


def op_records(report, layer):
    """`(eltwise_op, n_inputs, outputs)` of the records of `layer`, in order."""
    return [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size) for x in report.layers
            if x.shape.layer == layer]


def randomize(layer):
    """Every weight of `layer` drawn from U(0.5, 1.5) (seed 0): not an identity."""
    rng = np.random.default_rng(0)
    for w in layer.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
