"""Weights at numeric extremes through share_weights and the palettized export (session 23, H4).

* ``kept_dtype="float16"`` on a kept weight (or the bias of its op) beyond float16's 65,504:
  it was cast to float16 (inf; a RuntimeWarning, then a NaN file refused by verification with
  a message about stale shapes); it is now kept float32, and the record's route says why.
* Scaled kernel palettes with scales above 65,504: no float16 overflow warning at export.
* A Palette's float64 codebook beyond float32's range is named as such (was "NaN/Inf").
* Fisher-weighted scalar k-means: the same result for importances scaled by 2^986 or 2^-1000,
  and for equal denormal importances (the sums overflowed / lost precision).
* Integer-valued weights with K >= their distinct values: lossless, bit-exact after export at
  batch 1 and 4 (regression guard).
"""

import keras
import numpy as np
import pytest

import dkm_tf
import dkm_tf.export as ex
from dkm_tf.export import verify


def _dense(kernel, bias):
    inp = keras.Input((kernel.shape[0],))
    layer = keras.layers.Dense(kernel.shape[1], name="fc")
    model = keras.Model(inp, layer(inp))
    layer.kernel.assign(kernel)
    layer.bias.assign(bias)
    return model


def _run(path, x, batch):
    return verify.run_tflite(path.read_bytes(), [x], "tflite", batch=batch)[0]


@pytest.mark.parametrize("where", ["kernel", "bias"])
def test_kept_float16_beyond_range_stays_float32(tmp_path, where):
    rng = np.random.default_rng(0)
    kernel = rng.choice([-3.0, -1.0, 2.0], size=(6, 4)).astype(np.float32)
    bias = np.zeros(4, np.float32)
    if where == "kernel":
        kernel *= 1e5  # up to 3e5 > 65,504
    else:
        bias[1] = 7e4
    model, palettes, _ = dkm_tf.share_weights(_dense(kernel, bias), 3)
    x = rng.integers(-2, 3, size=(4, 6)).astype(np.float32)
    path = tmp_path / "m.tflite"
    report = ex.to_tflite(model, path, "palettized", palettes, x, keep_float=["fc"],
                          kept_dtype="float16")
    (rec,) = report.tensors
    assert rec["storage"] == "float32 (kept)" and rec["fp16_bias_values"] == 0
    assert "exceed float16's 65,504" in rec["route"]
    assert "float16" not in ex.inspect_tflite(path).bytes_by_dtype  # nothing stored as half
    ref = np.asarray(model(x))
    for batch in (1, None):  # one sample per invoke, and all 4 in one invoke
        np.testing.assert_array_equal(_run(path, x, batch), ref)  # integers: exact


def test_kept_float16_in_range_still_halves(tmp_path):
    rng = np.random.default_rng(1)
    kernel = rng.choice([-3.0, -1.0, 2.0], size=(6, 4)).astype(np.float32) * 1e4
    model, palettes, _ = dkm_tf.share_weights(_dense(kernel, np.ones(4, np.float32)), 3)
    x = rng.integers(-2, 3, size=(4, 6)).astype(np.float32)
    path = tmp_path / "m.tflite"
    report = ex.to_tflite(model, path, "palettized", palettes, x, keep_float=["fc"],
                          kept_dtype="float16")
    (rec,) = report.tensors
    assert rec["storage"] == "float16 (kept)" and rec["fp16_bias_values"] == 4
    assert ex.inspect_tflite(path).bytes_by_dtype["float16"] == 2 * (24 + 4)


@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_ternary_dense_k3_is_bit_exact_after_export(tmp_path, decode):
    rng = np.random.default_rng(2)
    kernel = rng.choice([-1.0, 0.0, 1.0], size=(8, 4)).astype(np.float32)
    model, palettes, _ = dkm_tf.share_weights(_dense(kernel, np.zeros(4, np.float32)), 3)
    (p,) = [p for p in palettes if p.name == "fc/kernel"]
    np.testing.assert_array_equal(np.asarray(p.codebook).ravel(), [-1.0, 0.0, 1.0])
    got = np.asarray(model.get_layer("fc").kernel)
    assert got.tobytes() == kernel.tobytes()
    x = rng.integers(-3, 4, size=(4, 8)).astype(np.float32)
    path = tmp_path / "m.tflite"
    kw = {"keep_float": None} if decode == "once" else {}
    report = ex.to_tflite(model, path, "palettized", palettes, x, decode=decode, **kw)
    rec = next(r for r in report.tensors if r["palette"] == "fc/kernel")
    assert rec["K"] == 3 and rec["codebook_bytes"] == 12
    ref = kernel.T @ x.T  # exact in float32: small integers
    for batch in (1, None):
        np.testing.assert_array_equal(_run(path, x, batch), ref.T)


@pytest.mark.parametrize(("scale_bits", "decode", "stored"), [
    (8, "per_invoke", "int8"), (32, "per_invoke", None), (32, "once", None)])
def test_scaled_kernels_beyond_float16_export_without_overflow(tmp_path, scale_bits, decode,
                                                                stored):
    """Scales above 65,504 (kernel norms ~5e5) were cast to float16 whatever the storage: a
    RuntimeWarning ("overflow encountered in cast"), an error under ``-W error``."""
    rng = np.random.default_rng(3)
    inp = keras.Input((5, 5, 2))
    layer = keras.layers.Conv2D(3, 3, name="cv")
    model = keras.Model(inp, keras.layers.Flatten()(layer(inp)))
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 3)).astype(np.float32) * 1e5)
    shared, palettes, _ = dkm_tf.share_weights(model, 4, unit="kernel", codebook="shared",
                                               scale_bits=scale_bits)
    assert np.max(np.abs(palettes[0].scales)) > 65504
    x = rng.integers(-2, 3, size=(4, 5, 5, 2)).astype(np.float32)
    path = tmp_path / "m.tflite"
    kw = {"keep_float": None} if decode == "once" else {}
    report = ex.to_tflite(shared, path, "palettized", palettes, x, decode=decode, **kw)
    (rec,) = report.tensors
    assert rec["scale_bytes"] == 6 * (1 if stored == "int8" else 4)
    dtypes = ex.inspect_tflite(path).bytes_by_dtype
    assert "float16" not in dtypes and (stored is None or dtypes[stored] == 6)
    assert report.max_rel_error < 1e-5


def test_palette_float64_codebook_beyond_float32_is_named():
    """A finite float64 centroid of 1e39 became inf in the float32 cast (a RuntimeWarning,
    then "holds 1 NaN/Inf value(s)", though the caller passed none)."""
    layout = dkm_tf.layout_for((4, 3), "dense")
    book = np.array([[[0.0], [1e39]]])
    with pytest.raises(ValueError, match=r"'?l/kernel'?.*1 finite ones beyond float32's range"):
        dkm_tf.Palette(layer_name="l", weight_name="kernel", codebook=book,
                       indices=np.zeros((1, 12), np.int32), layout=layout)
    with pytest.raises(ValueError, match=r"1 NaN/Inf value\(s\); a palette"):  # a real NaN
        dkm_tf.Palette(layer_name="l", weight_name="kernel", codebook=np.array([[[0.0], [np.nan]]]),
                       indices=np.zeros((1, 12), np.int32), layout=layout)


@pytest.mark.parametrize("d", [1, 3])
def test_weighted_kmeans_is_scale_free_in_the_importances(d):
    """Importances ~1e297 overflowed the 1-D engine's sums (a RuntimeWarning; centroids
    -3.9, -3.3, -1.4, 0.22 holding 2 / 5 / 136 / 357 of 500 normal values, not +-0.4, +-1.4)."""
    from dkm_tf.graph.weighted_kmeans import weighted_kmeans

    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, d))
    imp = rng.random((500, d))
    c_ref, i_ref = weighted_kmeans(x, imp, 4)
    for scale in (2.0 ** 986, 2.0 ** -1000):  # 5e296, 9e-302
        c, i = weighted_kmeans(x, imp * scale, 4)
        np.testing.assert_array_equal(c, c_ref)
        np.testing.assert_array_equal(i, i_ref)


def test_weighted_kmeans_with_denormal_importances():
    from dkm_tf.graph.weighted_kmeans import weighted_kmeans

    x = np.random.default_rng(5).normal(size=(200, 1))
    c, i = weighted_kmeans(x, np.full((200, 1), 1e-320), 4)  # floor 1e-6 x mean underflows
    c_ref, i_ref = weighted_kmeans(x, np.ones((200, 1)), 4)  # equal importances: the same
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(i, i_ref)
