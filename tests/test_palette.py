"""Palette record and compression-ratio accounting against hand-computed figures."""

import math

import numpy as np
import pytest

from dkm_tf.core import palette, units


def _palette(kernel, k=4, **kw):
    kw.setdefault("kind", "conv")
    return palette.cluster_tensor(kernel, n_clusters=k, layer_name="conv", **kw)


def test_decode_has_at_most_k_values_per_channel():
    k = np.random.default_rng(0).normal(size=(3, 3, 8, 6)).astype(np.float32)
    p = _palette(k, 4, granularity="per_channel")
    dec = p.decode()
    assert dec.shape == k.shape
    for c in range(6):
        assert np.unique(dec[..., c]).size <= 4
    assert p.indices.min() >= 0 and p.indices.max() < 4
    assert np.unique(dec).size > 4  # but not per tensor
    p2 = _palette(k, 4)
    assert np.unique(p2.decode()).size == 4


def test_row_palette_decodes_rows_of_the_codebook():
    k = np.random.default_rng(1).normal(size=(3, 3, 4, 8)).astype(np.float32)
    p = _palette(k, 8, unit="row")
    rows = np.transpose(p.decode(), [3, 2, 0, 1]).reshape(-1, 3)
    assert np.unique(rows, axis=0).shape[0] <= 8
    assert p.codebook.shape == (1, 8, 3)


def test_compression_ratio_matches_han_formula():
    k = np.random.default_rng(2).normal(size=(5, 5, 20, 50)).astype(np.float32)
    p = _palette(k, 16)
    n = k.size
    assert p.compression_ratio("log2") == pytest.approx(n * 32 / (n * 4 + 16 * 32))
    h = p.entropy_bits()
    assert 3.0 < h <= 4.0
    counts = np.bincount(p.indices.ravel(), minlength=16) / n
    counts = counts[counts > 0]
    assert h == pytest.approx(-(counts * np.log2(counts)).sum())
    assert p.compression_ratio("entropy") == pytest.approx(n * 32 / (n * h + 16 * 32))
    # vector units: N = n / d sub-vectors of d = 5 values
    pr = _palette(k, 16, unit="row")
    big_n = n // 5
    assert pr.compression_ratio("log2") == pytest.approx(n * 32 / (big_n * 4 + 16 * 5 * 32))
    # packed: ceil(log2 K) bits
    p5 = _palette(k, 5)
    assert p5.index_bits("packed") == n * 3
    assert p5.index_bits("log2") == pytest.approx(n * math.log2(5))


def test_size_report_counts_shared_codebooks_once_and_other_params():
    k = np.random.default_rng(3).normal(size=(3, 3, 4, 4)).astype(np.float32)
    a = palette.cluster_tensor(k, kind="conv", n_clusters=4, layer_name="a")
    b = palette.Palette("b", "kernel", a.codebook, a.indices, a.layout, codebook_id="shared")
    a2 = palette.Palette("a", "kernel", a.codebook, a.indices, a.layout, codebook_id="shared")
    rep = palette.size_report([a2, b], other_params=10)
    n = k.size
    assert rep.totals["compressed_bits_log2"] == pytest.approx(2 * n * 2 + 4 * 32 + 10 * 32)
    assert rep.totals["original_bits"] == 2 * n * 32 + 10 * 32
    text = rep.summary()
    assert "a/kernel" in text and "entropy" in text


def test_lossless_pass_through_note():
    k = np.repeat(np.array([0.5, -0.5, 0.25], np.float32), 12).reshape(3, 3, 2, 2)
    p = _palette(k, 16)
    assert p.n_clusters == 3 and "lossless" in p.note
    np.testing.assert_array_equal(p.decode(), k)


def test_dict_round_trip():
    k = np.random.default_rng(4).normal(size=(3, 3, 2, 3)).astype(np.float32)
    p = _palette(k, 4, unit="kernel", granularity="per_channel")
    q = palette.Palette.from_dict(p.to_dict())
    np.testing.assert_array_equal(q.decode(), p.decode())
    assert q.layout == p.layout


def test_invalid_palettes():
    lay = units.layout_for((3, 3, 2, 2), "conv")
    with pytest.raises(ValueError, match="indices must lie in"):
        palette.Palette("l", "kernel", np.zeros((1, 2, 1)), np.full((1, 36), 2), lay)
    with pytest.raises(ValueError, match="codebook shape"):
        palette.Palette("l", "kernel", np.zeros((2, 2, 1)), np.zeros((1, 36), int), lay)
    with pytest.raises(ValueError, match="indices shape"):
        palette.Palette("l", "kernel", np.zeros((1, 2, 1)), np.zeros((1, 35), int), lay)
    p = _palette(np.ones((3, 3, 2, 2), np.float32) * np.arange(2), 2)
    with pytest.raises(ValueError, match="`coding`. Expected one of"):
        p.index_bits("huffman")


def test_nan_kernel_error_names_the_tensor():
    k = np.ones((3, 3, 2, 2), np.float32)
    k[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="conv/kernel"):
        _palette(k, 2)


def test_sparsity_ties_the_smallest_units_to_zero():
    rng = np.random.default_rng(5)
    k = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
    p = palette.cluster_tensor(k, kind="conv", n_clusters=4, unit="row", sparsity=0.5)
    rows = np.transpose(k, [3, 2, 0, 1]).reshape(-1, 3)
    norms = np.linalg.norm(rows, axis=1)
    zero = p.indices[0] == 0
    assert zero.sum() == rows.shape[0] // 2
    assert norms[zero].max() <= norms[~zero].min()
    np.testing.assert_array_equal(p.codebook[0, 0], np.zeros(3))
    dec = np.transpose(p.decode(), [3, 2, 0, 1]).reshape(-1, 3)
    assert np.all(dec[zero] == 0) and np.unique(dec, axis=0).shape[0] <= 4
    with pytest.raises(ValueError, match="`sparsity`. Expected a fraction"):
        palette.cluster_tensor(k, kind="conv", n_clusters=4, sparsity=1.0)


def test_indices_travel_as_base64_bytes_and_lists_still_load():
    """to_dict stored indices as a JSON list (~3.4 characters each: ResNet50's palettes file
    was 86 MB); now the bytes of the smallest unsigned type, in base64."""
    import json

    from dkm_tf.core.index_codec import pack_indices, unpack_indices

    rng = np.random.default_rng(0)
    for k, dtype in ((200, "uint8"), (300, "uint16")):  # K <= 128: bit-packed (index_bits19)
        idx = rng.integers(0, k, (3, 1000))
        packed = pack_indices(idx)
        assert packed["dtype"] == dtype and packed["shape"] == [3, 1000]
        back = unpack_indices(json.loads(json.dumps(packed)))
        assert back.dtype == np.int64 and np.array_equal(back, idx)
        assert len(json.dumps(packed)) < (1.4 if k == 200 else 2.7) * idx.size + 100
    assert np.array_equal(unpack_indices([[1, 2], [3, 0]]), [[1, 2], [3, 0]])  # old files
    assert unpack_indices([]).dtype == np.int32
    assert unpack_indices(pack_indices(np.zeros((2, 0), np.int32))).shape == (2, 0)
    with pytest.raises(ValueError, match="keys"):
        unpack_indices({"dtype": "uint8", "shape": [2]})
    with pytest.raises(ValueError, match="fill shape"):
        unpack_indices({"dtype": "uint8", "shape": [5], "base64": "AAE="})
    p = palette.cluster_tensor(rng.normal(size=(3, 3, 4, 8)).astype(np.float32), kind="conv",
                               n_clusters=4, layer_name="c")
    d = json.loads(json.dumps(p.to_dict()))
    assert isinstance(d["indices"], dict)
    again = palette.Palette.from_dict(d)
    assert np.array_equal(again.indices, p.indices) and np.array_equal(again.decode(), p.decode())
    d["indices"] = p.indices.tolist()  # a file written before
    assert np.array_equal(palette.Palette.from_dict(d).decode(), p.decode())
