"""Export fixes from the architecture probe (MobileNetV3, EfficientNet, U-Net, text models).

* ``format="tflm"`` on a model with an op TFLite Micro has no kernel for (TILE from
  UpSampling2D) was a bare ``RuntimeError: TFLM failed to allocate tensors`` (the op was named
  on stderr only): now a ``ValueError`` naming the op, and nothing is written.
* Without ``sample_inputs``, integer inputs (token ids) were drawn from {0, 1}, so the check
  read 2 rows of a 1,000-row embedding, and the note said "standard-normal": ids now span the
  smallest Embedding table and the note says so.
"""

import os
import pathlib

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import export
from dkm_tf.export import convert
from dkm_tf.export.tflm import tflm_available


def _upsampling_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c")(inp)
    h = keras.layers.UpSampling2D(name="up")(h)
    return keras.Model(inp, keras.layers.Conv2D(2, 1, name="o")(h))


@pytest.mark.skipif(not tflm_available(), reason="needs tflite-micro")
def test_tflm_names_the_op_it_lacks_and_writes_nothing(tmp_path):
    shared = dkm_tf.share_weights(_upsampling_model(), 4)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"no kernel for the op\(s\) \['TILE'\]"):
        export.to_tflite(shared.model, path, format="tflm", palettes=shared.palettes,
                         sample_inputs=x)
    assert not path.exists() and not os.listdir(tmp_path)


def _text_model(vocab=50, second=None):
    keras.utils.set_random_seed(0)
    ids = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(vocab, 4, name="emb")(ids)
    if second is not None:  # a second, smaller table on the same ids
        h = keras.layers.Concatenate()(
            [h, keras.layers.Embedding(second, 4, name="emb2")(ids)])
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(ids, keras.layers.Dense(3, name="out")(h))


@pytest.mark.parametrize("vocab,second,high", [(50, None, 50), (50, 30, 30)])
def test_synthetic_token_ids_span_the_embedding_table(vocab, second, high):
    model = _text_model(vocab, second)
    specs = convert.input_specs(model)
    (ids,), note = convert.synthetic_samples(model, specs)
    assert ids.dtype == np.int32 and ids.shape == (8, 12)
    assert ids.min() >= 0 and ids.max() < high
    assert len(np.unique(ids)) > high // 2  # 96 draws reach most rows, not 2 of them
    assert f"integer inputs uniform in [0, {high})" in note
    assert "Embedding table" in note


def test_synthetic_samples_without_an_embedding_and_float_inputs():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), dtype="int32"), keras.Input((4,))
    h = keras.layers.Concatenate()([keras.ops.cast(a, "float32"), b])
    model = keras.Model([a, b], keras.layers.Dense(2)(h))
    (ia, fb), note = convert.synthetic_samples(model, convert.input_specs(model))
    assert set(np.unique(ia)) <= {0, 1} and fb.dtype == np.float32
    assert "float inputs standard normal" in note and "[0, 2) (no Embedding" in note


def test_export_without_samples_verifies_on_the_whole_table(tmp_path):
    shared = dkm_tf.share_weights(_text_model(), 4)
    report = export.to_tflite(shared.model, tmp_path / "t.tflite", format="palettized",
                              palettes=shared.palettes, decode="per_invoke")
    assert any("integer inputs uniform in [0, 50)" in n for n in report.notes), report.notes
    assert all(c.ok for c in report.comparisons)


@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_conv3d_transpose_is_palettized(tmp_path, decode):
    """A Conv3DTranspose's kernel (d, h, w, out, in) is CONV_3D_TRANSPOSE's filter as is: it was
    matched to the 4-D TRANSPOSE_CONV layout and the export failed ("axes don't match array")."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 6, 2))
    model = keras.Model(inp, keras.layers.Conv3DTranspose(16, 3, strides=2, name="ct")(inp))
    clustered, palettes, _ = dkm_tf.share_weights(model, 4)
    x = np.random.default_rng(0).uniform(0, 1, (3, 6, 6, 6, 2)).astype(np.float32)
    path = str(tmp_path / "ct.tflite")
    kept = {"keep_float": None} if decode == "once" else {}  # auto keeps this tiny one float
    report = export.to_tflite(clustered, path, palettes=palettes, sample_inputs=x,
                              decode=decode, **kept)
    assert all(c.ok for c in report.comparisons)
    (stored,) = export.inspect_tflite(path).palettized
    assert stored["K"] == 4 and stored["mode"] == decode
    ref = np.asarray(clustered(x))
    from dkm_tf.export.verify import run_tflite

    got = run_tflite(pathlib.Path(path).read_bytes(), [x], "litert")[0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
