"""The Keras reader charges an `EinsumDense(output_shape=(None, n))` and the layers after it.

Found by probing `energy.estimate(keras_model)` against `energy.estimate(<its float file>)`:
Keras records that EinsumDense's output as `(None, None, n)` whatever its input's length (the
usual spelling of "keep the sequence axis"), and the walk of the Keras graph skipped it and
every layer after it ("unknown dimension"): `Input((5, 6))`, `EinsumDense("abc,cd->abd",
(None, 7))` and a `Dense(3)` read 0 MACs against the file's 315. A model with fixed-size
inputs is now read at the sizes of one trace of the model (`open_shapes`), and `skipped` says so.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.energy import estimate
from dkm_tf.export import to_tflite

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
    assert [r.shape.layer for r in report.layers] == [x.name for x in model.layers[1:]]
    reasons = [why for _, why in report.skipped]
    assert not any(why.startswith("unknown dimension") for why in reasons)
    assert any("filled in from one trace of it at its input size (5, 6)" in why
               for why in reasons)


def test_open_einsum_palettes_are_charged_on_the_filled_records():
    model = _open_einsum(lambda x: L.Dense(3)(x))
    shared = dkm_tf.share_weights(model, n_clusters=4)
    report = estimate(shared.model, palettes=shared.palettes)
    assert report.macs == 5 * 6 * 7 + 5 * 7 * 3
    assert report.baseline is not None and report.baseline.macs == report.macs
    # 4 shared values per kernel: the weight traffic, so the total, drops
    assert report.paper_total < report.baseline.paper_total
    kernels = [np.asarray(x.kernel) for x in shared.model.layers[1:]]
    assert all(len(np.unique(k)) <= 4 for k in kernels)


def test_two_inputs_are_filled_in_too():
    a, b = keras.Input((5, 6)), keras.Input((5, 6))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 7))(L.Add()([a, b]))
    report = estimate(keras.Model([a, b], x))
    assert report.macs == 5 * 6 * 7  # 509661a traced one input only: this one was skipped
    assert x._keras_history.operation.name not in dict(report.skipped)


def _dot_model(shape_a, shape_b, axes, normalize=False):
    keras.utils.set_random_seed(0)
    a, b = keras.Input(shape_a), keras.Input(shape_b)
    out = L.Dot(axes=axes, normalize=normalize, name="dot")([a, b])
    return keras.Model([a, b], L.Dense(2)(out))


# A `Dot` was "unsupported layer type Dot" (listed, not charged) while the file charges its
# BATCH_MATMUL: (5, 8) . (3, 8) over the last axes read 80 MACs of the file's 200 (0.73 of
# its paper total with the Dense before); now the Keras and file totals agree exactly.
@pytest.mark.parametrize("shape_a,shape_b,axes,m,k,n", [
    ((5, 8), (3, 8), (2, 2), 5, 8, 3),   # x . y^T
    ((5, 8), (5, 6), (1, 1), 8, 5, 6),   # x^T . y
    ((5, 8), (8, 3), (2, 1), 5, 8, 3),   # x . y
    ((4, 6), (7, 4), (1, 2), 6, 4, 7),   # x^T . y^T
    ((6,), (6,), 1, 1, 6, 1),            # a row of dot products
])
def test_dot_is_charged_as_its_batch_matmul(shape_a, shape_b, axes, m, k, n, tmp_path):
    model = _dot_model(shape_a, shape_b, axes)
    report = estimate(model)
    assert report.layer("dot").macs == m * k * n
    assert report.macs == m * k * n + m * n * 2  # the Dense(2) over the (m, n) products
    assert "dot" not in dict(report.skipped)
    rng = np.random.default_rng(0)
    samples = [rng.standard_normal((2,) + s).astype("float32") for s in (shape_a, shape_b)]
    path = str(tmp_path / "dot.tflite")
    to_tflite(model, path, format="float", sample_inputs=samples)
    in_file = estimate(path)
    assert in_file.macs == report.macs
    np.testing.assert_allclose(report.paper_total, in_file.paper_total, rtol=1e-9)
    np.testing.assert_allclose(report.hierarchy_total, in_file.hierarchy_total, rtol=1e-9)


def test_dot_normalize_lists_its_l2_normalisation():
    report = estimate(_dot_model((5, 8), (3, 8), (2, 2), normalize=True))
    assert report.layer("dot").macs == 5 * 8 * 3
    assert "L2 normalisation" in dict(report.skipped)["dot"]
