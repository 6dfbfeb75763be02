"""Palettized TFLite export of scaled / transformed kernel palettes (Son et al., ECCV 2018).

Checked three ways: outputs equal the Keras model's, the file stores what the report says
(one codebook per shared codebook, float16 scales per invoke, float32 scales decoded once),
and the stored bytes are exactly the report's index + codebook + scale bytes.
"""

import os
import pathlib
import re

import numpy as np
import pytest

import dkm_tf
from dkm_tf.export import inspect_tflite, to_tflite
from dkm_tf.export.rewrite import FlatModel
from tests.testing import run_tflite_per_sample


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(3)
    L = keras.layers
    return keras.Sequential([
        keras.Input((10, 10, 3)),
        L.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        L.Conv2D(16, 3, strides=2, name="c3"),
        L.Flatten(name="flat"),
        L.Dense(5, name="fc")])


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).normal(size=(4, 10, 10, 3)).astype(np.float32)


@pytest.mark.parametrize("transforms", [1, 4])
@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_kernel_palettes_export(model, x, tmp_path, transforms, decode):
    res = dkm_tf.share_weights(model, 8, unit="kernel", codebook="shared",
                               transforms=transforms)
    assert [p.name for p in res.palettes] == ["c1/kernel", "c2/kernel", "c3/kernel"]
    path = str(tmp_path / "k.tflite")
    rep = to_tflite(res.model, path, format="palettized", palettes=res.palettes,
                    decode=decode, sample_inputs=x[:1],
                    **({"keep_float": None} if decode == "once" else {}))
    # 1. outputs: the file computes the clustered Keras model, at batch 1 and batch 4
    ref = np.asarray(res.model(x))
    got = run_tflite_per_sample(path, x)
    assert np.max(np.abs(got - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))
    assert all(c.ok for c in rep.comparisons)
    # 2. stored types: every conv palettized with K T entries, one codebook for all three
    info = inspect_tflite(path)
    pal = info["palettized"] if isinstance(info, dict) else info.palettized
    assert len(pal) == 3
    assert {p["K"] for p in pal} == {8 * transforms}
    fm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
    names = {t: fm.tensor_name(t) for t in range(len(fm.tensors)) if fm.raw(t)}
    books = [t for t, n in names.items() if re.search(r"/codebook_\d+$", n)]
    assert len(books) == 1, [names[t] for t in books]
    scales = [t for t, n in names.items() if re.search(r"/scales_\d+$", n)]
    assert len(scales) == 3
    want = "float32" if decode == "once" else "float16"
    assert {fm.type_name(t) for t in scales} == {want}
    sizes = [8 * 3, 16 * 8, 16 * 16]  # one scale per (c_in, c_out) kernel
    assert sorted(int(np.prod(fm.shape(t))) for t in scales) == sizes
    # 3. bytes: the stored indices + codebook + scales are exactly what the report counts
    recs = rep.tensors
    assert sum(r["codebook_bytes"] for r in recs) == 4 * 8 * transforms * 9
    assert sum(r["scale_bytes"] for r in recs) == sum(sizes) * (4 if decode == "once" else 2)
    stored = sum(len(fm.raw(t)) for t, n in names.items()
                 if re.search(r"/(codebook|scales|indices)_\d+$", n))
    claimed = sum(r["index_bytes"] + r["codebook_bytes"] + r["scale_bytes"] for r in recs)
    assert stored == claimed
    assert rep.bytes == os.path.getsize(path)


def test_kernel_palette_export_smaller_than_float_on_a_wider_net(tmp_path):
    """At 64 -> 64 channels the kernel palette (4-bit index + 16-bit scale per 9 weights)
    stores ~2.2 bits per weight: the per-invoke file is well under float's size."""
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    m = keras.Sequential([keras.Input((8, 8, 64)),
                          L.Conv2D(64, 3, padding="same", name="a"),
                          L.Conv2D(64, 3, padding="same", name="b")])
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 64)).astype(np.float32)
    res = dkm_tf.share_weights(m, 16, unit="kernel", codebook="shared")
    fl = to_tflite(res.model, str(tmp_path / "f.tflite"), format="float", sample_inputs=x[:1])
    rep = to_tflite(res.model, str(tmp_path / "p.tflite"), format="palettized",
                    palettes=res.palettes, decode="per_invoke", sample_inputs=x[:1])
    n = 2 * 9 * 64 * 64
    payload = sum(r["index_bytes"] + r["codebook_bytes"] + r["scale_bytes"]
                  for r in rep.tensors)
    assert payload <= n * (16 / 3 / 9 + 16 / 9) / 8 + 16 * 9 * 4 + 64  # int16 3-tuples
    assert rep.bytes < 0.25 * fl.bytes, (rep.bytes, fl.bytes)


@pytest.mark.parametrize("scale_bits", [8, 16, 32])
@pytest.mark.parametrize("transforms", [1, 2])
def test_scale_bits_survive_per_invoke_storage(tmp_path, scale_bits, transforms):
    """8-bit scales ``q * step`` used to be stored as float16 per invoke (off by up to 2^-12
    relative: refused by the verifier); now int8 ``q`` with ``step`` as the tensor's
    quantization scale, which DEQUANTIZE turns back into the exact float32 scales."""
    import keras

    keras.utils.set_random_seed(6)
    L = keras.layers
    m = keras.Sequential([keras.Input((12, 12, 3)),
                          L.Conv2D(16, 3, activation="relu", name="k1"),
                          L.Conv2D(16, 3, name="k2"), L.Conv2D(8, 5, name="k3")])
    x = np.random.default_rng(0).normal(size=(5, 12, 12, 3)).astype(np.float32)
    res = dkm_tf.share_weights(m, 16, unit="kernel", codebook="shared",
                               transforms=transforms, scale_bits=scale_bits)
    path = str(tmp_path / "k.tflite")
    rep = to_tflite(res.model, path, format="palettized", palettes=res.palettes,
                    decode="per_invoke", sample_inputs=x)
    ref = np.asarray(res.model(x))
    got = run_tflite_per_sample(path, x)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
    fm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
    scales = [t for t in range(len(fm.tensors))
              if fm.raw(t) and re.search(r"/scales_\d+$", fm.tensor_name(t))]
    want = {8: "int8", 16: "float16", 32: "float32"}[scale_bits]
    assert {fm.type_name(t) for t in scales} == {want}
    assert sum(r["scale_bytes"] for r in rep.tensors) == sum(p.scales.size for p in res.palettes) \
        * scale_bits // 8
    if scale_bits == 8:  # DEQUANTIZE(q) = q * step gives every palette scale bit for bit
        stored = [np.frombuffer(fm.raw(t), np.int8).astype(np.float32)
                  * np.float32(fm.tensors[t].quantization.scale[0]) for t in scales]
        np.testing.assert_array_equal(np.sort(np.concatenate(stored)), np.sort(
            np.concatenate([p.scales.ravel() for p in res.palettes])))
