"""Review of session 23's report-number and numeric-extreme changes (R3).

- ``params_note`` said "2 BatchNormalization layer(s) folded" for a model where one of them
  (right after the input) cannot be folded and stays in the compressed model.
- ``granularity_note`` said "one per channel" of a tensor set to per_tensor by ``--overrides``
  under ``--granularity per_channel``.
- Fisher importances near 1e308 (finite) still overflowed the mean behind the floor: NaN
  centroids.
- ``tflite_accuracy`` cast uint8 pixels straight into an int8-input file (200 -> -56): 0.14
  for a file whose accuracy is 0.985.
"""

import types

import keras
import numpy as np
import pytest

from dkm_tf.graph.weighted_kmeans import weighted_kmeans
from dkm_tf.pipeline_report import granularity_note, params_note


def _net(with_bn1):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((6, 6, 1)), keras.layers.BatchNormalization(name="bn0"),
              keras.layers.Conv2D(8, 3, use_bias=not with_bn1, name="conv")]
    layers += [keras.layers.BatchNormalization(name="bn1")] if with_bn1 else []
    return keras.Sequential(layers + [keras.layers.Flatten(), keras.layers.Dense(3)])


def test_params_note_counts_the_folded_batchnorms_only():
    model, folded = _net(True), _net(False)  # bn1 folded into conv; bn0 kept
    assert model.count_params() - folded.count_params() == 4 * 8 - 8
    (note,) = params_note(model, folded)
    assert "(1 BatchNormalization layer(s) folded" in note
    assert f"{folded.count_params():,} parameters, the input model {model.count_params():,}" \
        in note


def test_granularity_note_per_tensor_override_is_not_called_per_channel():
    size = types.SimpleNamespace(rows=[{"name": "fc/kernel", "granularity": "per_tensor"},
                                       {"name": "conv/kernel", "granularity": "per_channel"}])
    (note,) = granularity_note(size, "per_channel")
    assert note.startswith("1 tensor(s) clustered with another granularity than per_channel: "
                           "fc/kernel (per_tensor); depthwise")
    assert "one per channel" not in note and "`overrides`" in note
    size.rows[0]["granularity"] = "per_channel"
    (note,) = granularity_note(size, "per_tensor")
    assert "2 tensor(s)" in note and "their K is per codebook (one per channel)" in note


@pytest.mark.parametrize("d", [1, 3])
def test_weighted_kmeans_with_importances_near_the_float64_maximum(d):
    rng = np.random.default_rng(0)
    x, imp = rng.normal(size=(500, d)), rng.random((500, d))
    ref = weighted_kmeans(x, imp, 4)
    got = weighted_kmeans(x, imp * 1e308, 4)  # finite; their sum is not
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a, b)


def _full_int8(model, x, io_type, path):
    """``model`` converted to full int8 with ``io_type`` inputs and outputs, calibrated on
    ``x``; written to ``path``."""
    import tensorflow as tf  # noqa: PLC0415

    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = io_type
    path.write_bytes(c.convert())
    return path


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tflite_accuracy_of_uint8_pixels_for_an_int8_input_file(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from dkm_tf.pipeline import tflite_accuracy  # noqa: PLC0415

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255.0),
                          keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(5)])
    xr = rng.integers(0, 256, (200, 8, 8, 1)).astype(np.uint8)
    xf = xr.astype(np.float32)
    y = np.argmax(m.predict(xf, verbose=0), 1)
    path = _full_int8(m, xf, tf.int8, tmp_path / "ri8.tflite")
    as_floats = tflite_accuracy(str(path), (xf, y))
    assert as_floats > 0.9
    assert tflite_accuracy(str(path), (xr, y)) == as_floats  # was 0.14: 200 cast to -56


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tflite_accuracy_refuses_integer_codes_of_another_dtype(tmp_path):
    """int64 pixel codes 0..255 for a uint8 input of scale 1/255: read as real values they
    saturated (0.505 for 0.99; review R4 of the fix above): refused, naming both readings."""
    tf = pytest.importorskip("tensorflow")
    from dkm_tf.pipeline import tflite_accuracy  # noqa: PLC0415

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(5)])  # inputs in [0, 1]
    xr = rng.integers(0, 256, (200, 8, 8, 1)).astype(np.uint8)
    xf = xr.astype(np.float32) / 255
    y = np.argmax(m.predict(xf, verbose=0), 1)
    path = _full_int8(m, xf, tf.uint8, tmp_path / "u8.tflite")
    good = tflite_accuracy(str(path), (xf, y))
    assert good > 0.9 and tflite_accuracy(str(path), (xr, y)) == good  # reals; own codes
    with pytest.raises(ValueError, match=r"argument `data`.*x.astype\(uint8\).*int64.*0\.\.255"):
        tflite_accuracy(str(path), (xr.astype(np.int64), y))


def test_tflite_accuracy_of_a_two_input_file_and_of_wrapped_samples(tmp_path):
    """A two-input file failed with "XNNPack delegate failed to reshape" (list / tuple x) or
    an IndexError (dict x): now None with a note (its input order need not be the model's);
    since session 31 a dict keyed by its signature inputs is fed by key and scored;
    a one-input file's samples given as [x] or {name: x} are read as x."""
    tf = pytest.importorskip("tensorflow")
    from dkm_tf.pipeline import tflite_accuracy  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    two = keras.Model([a, b], keras.layers.Dense(3)(keras.layers.Concatenate()([a, b])))
    r = np.random.default_rng(0)
    x1, x2 = r.normal(size=(50, 4)).astype("float32"), r.normal(size=(50, 6)).astype("float32")
    y = r.integers(0, 3, 50)
    path = tmp_path / "two.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(two).convert())
    for x in ([x1, x1], (x1, x1)):  # its subgraph order is [b, a]: a list is not read
        notes = []
        assert tflite_accuracy(str(path), (x, y), notes=notes) is None
        assert notes[0].startswith(f"no accuracy of {path}: it has 2 inputs, and x is no dict")
    x2b = r.normal(size=(50, 4)).astype("float32")  # session 31: a dict is fed by key
    want = np.mean(np.argmax(two.predict([x1, x2b], verbose=0), 1) == y)
    assert tflite_accuracy(str(path), ({"a": x1, "b": x2b}, y)) == pytest.approx(want)
    assert tflite_accuracy(str(path), ({"a": x2b, "b": x1}, y)) != pytest.approx(want)
    one = keras.Sequential([keras.Input((6,), name="x"), keras.layers.Dense(3)])
    path = tmp_path / "one.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(one).convert())
    y = np.argmax(one.predict(x2, verbose=0), 1)
    assert tflite_accuracy(str(path), (x2, y)) == 1.0
    assert tflite_accuracy(str(path), ([x2], y)) == tflite_accuracy(str(path), ({"x": x2}, y))
    assert tflite_accuracy(str(path), ([x2], y)) == 1.0
    assert tflite_accuracy(str(path), (x2[:1], y[:1])) == 1.0  # one sample, not unwrapped
    # one label for 50 samples was broadcast (0.5 read silently; review R7), 5 samples for
    # 50 labels failed in numpy, two arrays for a one-input file gave None without a note
    for x, labels in ((x2, y[:1]), (x2[:5], y), ([x2, x2], y), ({"x": x2, "z": x2}, y)):
        with pytest.raises(ValueError, match=r"argument `data`.*one label per sample"):
            tflite_accuracy(str(path), (x, labels))
