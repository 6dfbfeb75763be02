"""The Keras reader charges an `EinsumDense(output_shape=(None, n))` and the layers after it.

Found by probing `energy.estimate(keras_model)` against `energy.estimate(<its float file>)`:
Keras records that EinsumDense's output as `(None, None, n)` whatever its input's length (the
usual spelling of "keep the sequence axis"), and the walk of the Keras graph skipped it and
every layer after it ("unknown dimension"): `Input((5, 6))`, `EinsumDense("abc,cd->abd",
(None, 7))` and a `Dense(3)` read 0 MACs against the file's 315. A model with one fixed-size
input is now read by tracing it at that size, and `skipped` says so.
"""

import keras
import numpy as np

import dkm_tf
from dkm_tf.energy import estimate

L = keras.layers


def _open_einsum(tail):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 6))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 7), bias_axes="d")(inputs)
    assert tuple(x.shape) == (None, None, 7)  # Keras' own record: the length is lost
    return keras.Model(inputs, tail(x))


def test_open_einsum_output_and_the_layers_after_it_are_charged():
    model = _open_einsum(lambda x: L.Dense(3)(L.Conv1D(4, 3)(x)))
    report = estimate(model)
    # by hand: EinsumDense 5 positions x 6 x 7; Conv1D(4, 3) 3 positions x (3 x 7) x 4;
    # Dense(3) 3 positions x 4 x 3
    assert [r.macs for r in report.layers] == [5 * 6 * 7, 3 * 21 * 4, 3 * 4 * 3]
    assert [r.name for r in report.layers] == [x.name for x in model.layers[1:]]
    reasons = [why for _, why in report.skipped]
    assert not any(why.startswith("unknown dimension") for why in reasons)
    assert any("read by tracing the model at that size" in why for why in reasons)


def test_open_einsum_palettes_are_charged_on_the_traced_records():
    model = _open_einsum(lambda x: L.Dense(3)(x))
    shared = dkm_tf.share_weights(model, n_clusters=4)
    report = estimate(shared.model, palettes=shared.palettes)
    assert report.macs == 5 * 6 * 7 + 5 * 7 * 3
    assert report.baseline is not None and report.baseline.macs == report.macs
    # 4 shared values per kernel: the weight traffic, so the total, drops
    assert report.paper_total < report.baseline.paper_total
    kernels = [np.asarray(x.kernel) for x in shared.model.layers[1:]]
    assert all(len(np.unique(k)) <= 4 for k in kernels)


def test_two_inputs_keep_the_walk_and_its_listed_skip():
    a, b = keras.Input((5, 6)), keras.Input((5, 6))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 7))(L.Add()([a, b]))
    report = estimate(keras.Model([a, b], x))
    skipped = dict(report.skipped)
    assert skipped[x._keras_history.operation.name].startswith("unknown dimension")
