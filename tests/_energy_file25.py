"""Helpers of the session-25 energy tests: a Keras model's estimate beside its float file's."""

import numpy as np

from dkm_tf import energy
from dkm_tf.export import to_tflite

# The batches the session-31 energy tests build at. Without DKM_TF_SLOW, conftest runs each
# case at one of the two (alternating between cases); DKM_TF_SLOW=1 runs both.
BATCHES = (None, 2)


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


def convs(report):
    """`(in_h, in_w, in_c, out_h, out_w, out_c)` of every conv record, in order."""
    return [(s.in_h, s.in_w, s.in_c, s.out_h, s.out_w, s.out_c) for s in
            (x.shape for x in report.layers) if s.kind == "conv"]


def eltwise(report):
    """`eltwise_op` of every element-wise record, in order."""
    return [x.shape.eltwise_op for x in report.layers if x.shape.kind == "eltwise"]


def chain(*layers, shape=(8, 8, 3)):
    """A builder of the Functional model calling `layer()` of each of `layers` in turn."""
    import keras

    def build():
        x = keras.Input(shape)
        y = x
        for layer in layers:
            y = layer()(y)
        return keras.Model(x, y)
    return build
