"""Densely packed decode-once indices (spare int16 bits) and float16 kept weights.

Pure-numpy packing is checked byte for byte against an independent bit-level reference; the
exported files three ways: outputs equal Keras (batch 1 and batch 3), the stored int16 words
are exactly ``pack_dense`` of the palette's indices (decoded at load, before any invoke), and
the file's constants are the bytes the report claims.
"""

import pathlib

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testing import tflite_interpreter

import dkm_tf.export as ex
from dkm_tf.energy.tflite_reader import read_tflite_palettes
from dkm_tf.export import pack, policy
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.graph.share import share_weights


# ------------------------------------------------------------------ packing (numpy)
@pytest.mark.parametrize("k,expected", [
    (16, (4, 3, 4, 3)), (15, (4, 3, 4, 3)), (14, (4, 3, 4, 3)), (4, (2, 7, 2, 1)),
    (64, (6, 2, 2, 1)), (33, (6, 2, 2, 1)),
    (13, None), (32, None), (8, None), (2, None), (3, None), (128, None), (256, None)])
def test_dense_scheme_only_where_denser_than_tuples(k, expected):
    """(b, g, q, e); None where base-K tuples are as dense (K <= 13: 4 per int16; K = 17..32:
    15 bits used), where an extra index would span 3+ words (K = 65..128) or its table would
    be too long (K > 181)."""
    s = pack.dense_scheme(k)
    assert (None if s is None else (s.b, s.g, s.q, s.e)) == expected
    if s is not None:
        assert s.bits_per_index < 16 / pack.tuple_width(k)
        assert s.q * 16 >= s.per_group * s.b  # never more bits than int16 words hold


def _reference_words(idx, b, g, q, e):
    """Independent bit-level packing: slot order regular (row u, group, digit), then extras
    (j, group); each word = g b-bit digits + 15 - g*b spare bits of the extras' bit string."""
    n_groups = -(-len(idx) // (q * g + e))
    idx = list(idx) + [0] * (n_groups * (q * g + e) - len(idx))
    reg, ext = idx[:q * g * n_groups], idx[q * g * n_groups:]
    r = 15 - g * b
    words = np.zeros((q, n_groups), np.int64)
    for c in range(n_groups):
        bits = "".join(format(ext[j * n_groups + c], f"0{b}b")[::-1] for j in range(e))
        bits = bits.ljust(q * r, "0")  # little-endian bit string of the extras
        for u in range(q):
            w = sum(reg[(u * n_groups + c) * g + j] << (b * j) for j in range(g))
            spare = int(bits[u * r:(u + 1) * r][::-1] or "0", 2)
            words[u, c] = w + (spare << (g * b))
    return words


def test_pack_dense_k16_bytes():
    """15 indices 0..14 in 4 words: word u = digits 3u..3u+2 + 4096 * (extras' bits 3u..3u+2);
    extras 12, 13, 14 = bit string 0011 1011 0111 (LSB first)."""
    s = pack.dense_scheme(16)
    words = pack.pack_dense(np.arange(15), s)
    assert words.dtype == np.int16 and words.shape == (4, 1)
    assert words.ravel().tolist() == [16912, 13635, 14454, 31657]
    assert words.ravel().tolist() == _reference_words(list(range(15)), 4, 3, 4, 3).ravel().tolist()
    assert words.tobytes() == bytes.fromhex("104243357638a97b")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(k=st.sampled_from([4, 14, 15, 16, 33, 64]), n=st.integers(1, 200),
       seed=st.integers(0, 2 ** 16))
def test_pack_dense_matches_reference_and_round_trips(k, n, seed):
    s = pack.dense_scheme(k)
    idx = np.random.default_rng(seed).integers(0, k, n)
    words = pack.pack_dense(idx, s)
    assert words.min() >= 0  # valid GATHER positions
    np.testing.assert_array_equal(words, _reference_words(idx, s.b, s.g, s.q, s.e))
    np.testing.assert_array_equal(pack.unpack_dense(words, s, n), idx)


@pytest.mark.parametrize("k", [4, 16, 64])
def test_extra_tables_recover_every_extra_index(k):
    """For every pair of spare fields, EXTRA[j, LOW[j, s_lo] * HIGH[j, s_hi]] is the index
    whose bits they hold (so the MUL + GATHER in the graph is exact)."""
    s = pack.dense_scheme(k)
    rows, low, high, extra = pack.extra_tables(s)
    for j in range(s.e):
        fields = s.extra_fields(j)
        for value in range(1 << s.b):  # place the index's bits in the spare fields
            spare = [0] * s.q
            lo = 0
            for u, shift, nbits in fields:
                spare[u] |= ((value >> lo) & ((1 << nbits) - 1)) << shift
                lo += nbits
            got = extra[j, low[j, spare[rows[j, 0]]] * high[j, spare[rows[j, 1]]]]
            assert got == value
        assert extra.shape[1] <= pack.MAX_EXTRA_TABLE


def test_dense_only_when_it_pays(monkeypatch):
    """One qualifying weight must save more than the dense chain's own bytes."""
    lay = type("L", (), {"n_groups": 1, "unit_dim": 1})
    pal = lambda n: type("P", (), {"n_clusters": 16, "layout": lay,  # noqa: E731
                                   "indices": np.zeros(n, np.int32)})
    n = policy.DENSE_MIN_INDICES
    per = lambda m: 2 * -(-m // 3) - 8 * -(-m // 15) - policy.DENSE_WEIGHT_BYTES  # noqa: E731
    assert per(n) <= policy.DENSE_SHARED_BYTES < per(4 * n)
    assert not policy.dense_pays([pal(n)], 1 << 20)
    assert policy.dense_pays([pal(4 * n)], 1 << 20)
    assert policy.dense_pays([pal(n)] * 4, 1 << 20)      # four of them share the tables
    assert not policy.dense_pays([pal(n - 1)] * 9, 1 << 20)  # none qualifies


def test_once_storage_threshold():
    """Dense from DENSE_MIN_INDICES indices on, one codebook only; bytes = 2 q ceil(n / 15)."""
    n = policy.DENSE_MIN_INDICES
    scheme, label, bits, nbytes = policy.once_storage(16, n, 1, 1, 1 << 20)
    assert isinstance(scheme, pack.DenseScheme) and label == "int16 (15 indices/4 int16)"
    assert bits == pytest.approx(64 / 15) and nbytes == 8 * -(-n // 15)
    assert policy.once_storage(16, n - 1, 1, 1, 1 << 20)[:2] == (3, "int16 (3 indices/int16)")
    assert policy.once_storage(16, n, 8, 1, 1 << 20)[0] == 3  # per channel: tuples


# ------------------------------------------------------------------ exports
def _dense_model(n_in=200, n_out=180, seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_in,))
    h = keras.layers.Dense(n_out, activation="relu", name="big",
                           bias_initializer="random_normal")(inp)
    return keras.Model(inp, keras.layers.Dense(10, name="head",
                                               bias_initializer="random_normal")(h))


def _payload(path):
    fm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
    return sum(len(fm.raw(t)) for t in range(len(fm.tensors)))


def _stored(path, name_part):
    fm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
    return [fm.const(t) for t in range(len(fm.tensors))
            if fm.raw(t) and name_part in fm.tensor_name(t)], fm


@pytest.mark.parametrize("k", [16, 14, 4, 64])
def test_dense_export_matches_keras_and_stores_pack_dense(k, tmp_path, monkeypatch):
    # the chain itself, wherever it applies (K = 4 saves only 0.16 bits per index: less
    # than the chain's own bytes on this model, so the size policy would use tuples)
    monkeypatch.setattr(policy, "DENSE_SHARED_BYTES", 0)
    monkeypatch.setattr(policy, "DENSE_WEIGHT_BYTES", 0)
    model = _dense_model()
    res = share_weights(model, k)
    x = np.random.default_rng(1).normal(size=(6, 200)).astype(np.float32)
    path = tmp_path / "m.tflite"
    r = ex.to_tflite(res.model, path, "palettized", res.palettes, x, keep_float=None)
    assert r.max_rel_error <= 1e-5 and all(c.ok for c in r.comparisons)
    big = next(p for p in res.palettes if p.layer_name == "big")
    scheme = pack.dense_scheme(k)
    rec = next(t for t in r.tensors if t["palette"] == "big/kernel")
    assert rec["storage"] == f"int16 ({scheme.per_group} indices/{scheme.q} int16)"
    assert rec["index_bytes"] == 2 * scheme.q * -(-36000 // scheme.per_group)
    # the stored words are pack_dense of the indices in the FULLY_CONNECTED layout (out, in)
    kernel = np.asarray(res.model.get_layer("big").kernel)
    idx = (kernel.T.ravel()[:, None] == big.codebook.ravel()[None]).argmax(-1)
    words = [w for w in _stored(path, "indices")[0] if w.shape[0] == scheme.q]
    assert len(words) == 1 and words[0].tobytes() == pack.pack_dense(idx, scheme).tobytes()
    # decoded at load: before any invoke the weight operand already holds the kernel
    it = tflite_interpreter(path)
    fm = FlatModel.from_bytes(path.read_bytes())
    ops = [op for op in fm.operators if fm.op_name(op) in ("FULLY_CONNECTED", "BATCH_MATMUL")]
    decoded = [it.get_tensor(int(op.inputs[1])) for op in ops]
    assert any(d.size == kernel.size and np.array_equal(d.reshape(kernel.T.shape), kernel.T)
               for d in decoded)
    # batch 3 in one invoke, both interpreters
    want = np.asarray(res.model(x[:3]))
    for kind in ("litert", "tflite"):
        it = tflite_interpreter(path, kind)
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        it.resize_tensor_input(inp["index"], [3, 200])
        it.allocate_tensors()
        it.set_tensor(inp["index"], x[:3])
        it.invoke()
        np.testing.assert_allclose(it.get_tensor(out["index"]), want, rtol=1e-5, atol=1e-5)
    # what inspect and the energy reader see; the constants are the claimed bytes
    info = ex.inspect_tflite(path)
    dense = [p for p in info.palettized if p["per_element"] != int(p["per_element"])]
    assert [(p["K"], p["index_bytes"], p["per_element"]) for p in dense] == \
        [(1 << scheme.b, rec["index_bytes"], scheme.per_group / scheme.q)]
    _, _, stored = read_tflite_palettes(path)
    assert sorted((p.n_clusters, p.unit_dim, p.n_codebooks, p.mode) for p in stored.values()) \
        == sorted([(1 << scheme.b, 1, 1, "once"), (k, 1, 1, "once")])
    # small int32 shape operands of the decode chains (a few hundred bytes) are not modelled
    payload = sum(len(fm.raw(t)) for t in range(len(fm.tensors)))
    assert abs(payload - (r.analytic_bytes - r.graph_bytes)) <= 0.02 * payload + 512


def test_index_packing_tuples_trades_file_bytes_for_ram(tmp_path):
    """index_packing="tuples": the big kernel back at 3 indices per int16 (a larger file);
    a bad value is refused before any file is written."""
    res = share_weights(_dense_model(400, 300), 16)
    x = np.random.default_rng(1).normal(size=(4, 400)).astype(np.float32)
    with pytest.raises(ValueError, match="index_packing.*dense.*tuples.*'packed'"):
        ex.to_tflite(res.model, tmp_path / "bad.tflite", "palettized", res.palettes, x,
                     index_packing="packed")
    assert not (tmp_path / "bad.tflite").exists()
    r = {p: ex.to_tflite(res.model, tmp_path / f"{p}.tflite", "palettized", res.palettes, x,
                         keep_float=None, index_packing=p) for p in ("dense", "tuples")}
    rec = {p: next(t for t in r[p].tensors if t["palette"] == "big/kernel") for p in r}
    assert rec["tuples"]["storage"] == "int16 (3 indices/int16)"
    assert rec["tuples"]["index_bytes"] == 2 * 40000
    assert rec["dense"]["index_bytes"] == 2 * 4 * 8000
    assert r["tuples"].bytes - r["dense"].bytes > 0.7 * (80000 - 64000)
    assert r["tuples"].max_rel_error <= 1e-5


def test_dense_export_of_row_units(tmp_path, monkeypatch):
    """Vector units (d = 10 values per row): the codebook gather is (d, 2^b) -> d x M."""
    for name in ("DENSE_MIN_INDICES", "DENSE_SHARED_BYTES", "DENSE_WEIGHT_BYTES"):
        monkeypatch.setattr(policy, name, 0)
    model = _dense_model(60, 50)
    res = share_weights(model, 16, unit="row")
    x = np.random.default_rng(2).normal(size=(4, 60)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "rows.tflite", "palettized", res.palettes, x,
                     keep_float=None)
    assert r.max_rel_error <= 1e-5
    dense = [t for t in r.tensors if "4 int16" in t["storage"]]
    assert {t["palette"] for t in dense} == {p.name for p in res.palettes}
    _, _, stored = read_tflite_palettes(tmp_path / "rows.tflite")
    assert sorted(p.unit_dim for p in stored.values()) == \
        sorted(p.unit_dim for p in res.palettes)


def test_kept_float16_halves_kept_weights_and_their_biases(tmp_path):
    """kept_dtype="float16": a kept conv's kernel and bias become float16 + DEQUANTIZE, the
    conv stays a CONV_2D run by XNNPACK, outputs within the fp16 tolerance; float32 kept
    files are exact. Bad kept_dtype: a clear error, nothing written."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv",
                            bias_initializer="random_normal")(inp)
    out = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(h))
    res = share_weights(keras.Model(inp, out), 16)
    x = np.random.default_rng(4).normal(size=(4, 12, 12, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="kept_dtype.*float16.*bfloat16"):
        ex.to_tflite(res.model, tmp_path / "bad.tflite", "palettized", res.palettes, x,
                     kept_dtype="bfloat16")
    assert not (tmp_path / "bad.tflite").exists()
    reports = {kd: ex.to_tflite(res.model, tmp_path / f"{kd}.tflite", "palettized",
                                res.palettes, x, keep_float=["conv"], kept_dtype=kd)
               for kd in ("float32", "float16")}
    f32, f16 = reports["float32"], reports["float16"]
    rec = next(t for t in f16.tensors if t["palette"] == "conv/kernel")
    assert rec["storage"] == "float16 (kept)" and rec["fp16_bias_values"] == 8
    assert f16.bytes < f32.bytes
    assert _payload(f32.path) - _payload(f16.path) == 2 * (8 * 27 + 8)  # kernel, bias halved
    assert f32.max_rel_error <= 1e-6 and f16.max_rel_error <= 2e-3
    halves, fm = _stored(f16.path, "half")
    kernel = np.asarray(res.model.get_layer("conv").kernel)
    assert sorted(h.size for h in halves) == [8, kernel.size]
    assert all(h.dtype == np.float16 for h in halves)
    np.testing.assert_array_equal(
        next(h for h in halves if h.size == kernel.size),
        kernel.transpose(3, 0, 1, 2).astype(np.float16))
    names = [fm.op_name(op) for op in fm.operators]
    assert names.count("DEQUANTIZE") == 2 and "CONV_2D" in names
    for path in (f16.path, f32.path):  # XNNPACK runs the conv in both files: its input
        it = tflite_interpreter(path)     # enters a delegate node, its output stays inside
        ffm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
        conv = next(op for op in ffm.operators if ffm.op_name(op) == "CONV_2D")
        ins = {int(t) for op in it._get_ops_details() if op["op_name"] == "DELEGATE"
               for t in op["inputs"]}
        assert int(conv.inputs[0]) in ins and int(conv.outputs[0]) not in ins
    payload = _payload(f16.path)
    assert abs(payload - (f16.analytic_bytes - f16.graph_bytes)) <= 0.02 * payload + 512


@pytest.mark.parametrize("transforms", [1, 4])
def test_dense_export_of_scaled_kernel_palettes(tmp_path, monkeypatch, transforms):
    """Son et al.'s shared kernel codebook (d = 9, per-kernel scales, T transforms: K T = 16
    or 64 entries) through the dense chain: outputs equal the clustered Keras model."""
    for name in ("DENSE_MIN_INDICES", "DENSE_SHARED_BYTES", "DENSE_WEIGHT_BYTES"):
        monkeypatch.setattr(policy, name, 0)
    keras.utils.set_random_seed(5)
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(16, 3, padding="same", name="c2")(h)
    model = keras.Model(inp, keras.layers.Dense(5, name="fc")(keras.layers.Flatten()(h)))
    res = share_weights(model, 16 // transforms if transforms > 1 else 16, unit="kernel",
                        codebook="shared", transforms=transforms)
    x = np.random.default_rng(6).normal(size=(3, 10, 10, 3)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "k.tflite", "palettized", res.palettes, x,
                     keep_float=None)
    assert r.max_rel_error <= 1e-5 and all(c.ok for c in r.comparisons)
    convs = [t for t in r.tensors if t["palette"] in ("c1/kernel", "c2/kernel")]
    assert convs and all("4 int16" in t["storage"] or "2 int16" in t["storage"]
                         for t in convs)


def test_codebook_shared_by_a_dense_and_a_tuple_weight_is_counted_as_stored(tmp_path):
    """Two weights with the same codebook, one densely packed (40,000 indices), one in tuples
    (20,000): the dense chain stores its codebook 1-D, the tuple chain (1, K), so the file
    holds two codebook tensors; they read one buffer (equal bytes, merged by share_buffers),
    so the report counts it once (session 30: it counted 64 B twice), in a's record."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((200,))
    h = keras.layers.Dense(200, name="a", use_bias=False)(inp)
    model = keras.Model(inp, keras.layers.Dense(100, name="b", use_bias=False)(h))
    b = np.asarray(model.get_layer("b").kernel)
    model.get_layer("a").kernel.assign(np.concatenate([b.ravel(), b.ravel()[::-1]])
                                       .reshape(200, 200))  # the same values, twice each
    res = share_weights(model, 16)
    assert np.array_equal(res.palettes[0].codebook, res.palettes[1].codebook)
    x = np.random.default_rng(0).normal(size=(3, 200)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "m.tflite", "palettized", res.palettes, x,
                     keep_float=None)
    assert sorted(t["storage"] for t in r.tensors) == ["int16 (15 indices/4 int16)",
                                                       "int16 (3 indices/int16)"]
    books = [t for t in ex.inspect_tflite(r.path).tensors
             if t["role"].startswith("palette codebook")]
    stored = {t["buffer"]: t["bytes"] for t in books}
    assert len(books) == 2 and len(stored) == 1
    assert sum(t["codebook_bytes"] for t in r.tensors) == sum(stored.values())
    assert {t["palette"]: t.get("shared_with") for t in r.tensors} == {"a/kernel": None,
                                                                         "b/kernel": "a/kernel"}
