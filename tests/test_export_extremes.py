"""Palettized export at the extremes of K: the int16 index limit (32,768 codebook entries)."""

import dataclasses

import keras
import numpy as np
import pytest

import dkm_tf
import dkm_tf.export as ex
from dkm_tf.export import convert


def _tiny(k):
    """A Dense(4 -> 8) whose kernel palette has a codebook of ``k`` entries (32 used)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(8, name="fc")(inp))
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=32)
    (p,) = palettes
    extra = np.linspace(5.0, 6.0, k - p.n_clusters, dtype=np.float32)  # never indexed
    book = np.concatenate([p.codebook, extra[None, :, None]], axis=1)
    p = dataclasses.replace(p, codebook=book, indices=p.indices.astype(np.int64))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    return shared, [p], x


@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_codebook_over_int16_refused_before_work(tmp_path, monkeypatch, decode):
    model, palettes, x = _tiny(32769)

    def no_work(*args, **kwargs):
        raise AssertionError("converted before refusing")

    monkeypatch.setattr(convert, "convert", no_work)
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"'fc/kernel'.*32,769 entries.*at most 32,768"):
        ex.to_tflite(model, path, "palettized", palettes, x, decode=decode)
    assert not path.exists()


@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_codebook_of_32768_entries_exports(tmp_path, decode):
    model, palettes, x = _tiny(32768)
    kw = {"keep_float": None} if decode == "once" else {}
    report = ex.to_tflite(model, tmp_path / "m.tflite", "palettized", palettes, x,
                          decode=decode, **kw)
    (rec,) = report.tensors
    assert rec["K"] == 32768 and rec["index_bits"] == 16
    assert report.max_rel_error < 1e-5
    (found,) = ex.inspect_tflite(tmp_path / "m.tflite").palettized
    assert found["K"] == 32768 and found["index_bytes"] == rec["index_bytes"]
