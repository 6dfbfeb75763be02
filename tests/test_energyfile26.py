"""Session 26: the `.tflite` reader after a `TimeDistributed` layer, and a `Rescaling` the
converter folds into the conv or Dense after it, in a Keras model's estimate."""

import keras
import numpy as np
import pytest
from _energy_file25 import both
from keras import layers as L


def _eltwise(report):
    """`(eltwise_op, n_inputs, outputs)` of every element-wise record, in order."""
    return [(x.shape.eltwise_op, x.shape.n_inputs, x.shape.output_size) for x in report.layers
            if x.shape.kind == "eltwise"]


@pytest.mark.parametrize("steps", [1, 3, 7])
@pytest.mark.parametrize("inner,shape,per_step", [
    (lambda: L.Conv2D(4, 3), (8, 8, 3), 6 * 6 * 4),
    (lambda: L.Dense(5), (6,), 5),
    (lambda: keras.Sequential([L.Dense(5)]), (6,), 5),
], ids=["conv", "dense", "sequential"])
def test_ops_after_a_time_distributed_layer_count_every_step(inner, shape, per_step, steps,
                                                             tmp_path):
    """The file's ops after the PACK run time-major, `(T, batch, ...)`: the reader took the
    shape past the first axis, one step (a ReLU(3) after a 3-step TimeDistributed conv: 144
    elements per op where 432 run; Keras / file paper 1.042, 1.058 at 10 steps)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((steps, *shape))
    model = keras.Model(inp, L.ReLU(max_value=3.0)(L.TimeDistributed(inner())(inp)))
    k, f = both(model, tmp_path)
    n = steps * per_step  # RELU, MINIMUM, RELU over every step (`keras_lowered.relu_ops`)
    assert _eltwise(f) == [("relu", 1, n), ("max", 2, n), ("relu", 1, n)]
    if not isinstance(model.layers[1].layer, keras.Sequential):  # Keras: not modelled
        assert _eltwise(k) == _eltwise(f)
        np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-6)


def test_merge_after_a_time_distributed_layer_counts_every_step(tmp_path):
    """An Add of a TimeDistributed Dense's output and the input (5 steps of 6): the file runs
    it batch-major, after the TRANSPOSE back (passed before the fix too; a guard)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 6))
    model = keras.Model(inp, L.Add()([L.TimeDistributed(L.Dense(6))(inp), inp]))
    k, f = both(model, tmp_path)
    assert _eltwise(f) == _eltwise(k) == [("add", 2, 30)]
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-6)
