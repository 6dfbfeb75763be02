"""Export records after review R5 of the exportrec round (session 30).

The exportrec round recorded a palette found in no subgraph whose values equal a found one's
as merged by the converter (0 bytes, ``shared_with``). It never checked that the file lacks a
float32 copy: three equal Conv2D, two behind ``Rescaling`` (0.5, 0.25), left the two scaled
kernels float32 (864 B each) and recorded both as merged (records 2,576 B, analytic 6,232 B;
now 4,304 and 7,960). ``format='tflm'`` never applied the merge (two equal Dense on one input:
``b/kernel`` "float32 (not found)", 2,048 B, in a file holding no float32). A Dense and a
``Conv1D(kernel_size=1)`` of equal weights had the codebook counted in the second record
(``shared_with`` the first). Each checked against the file read with the LiteRT schema's
reader (:mod:`tests.test_exportrec30`'s helpers).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf import export as ex  # noqa: E402
from tests.test_exportrec30 import (  # noqa: E402
    _counted,
    _equal_dense,
    _export,
    _file_buffers,
    _float_weights,
    _stored_bytes,
)

L = keras.layers


def _three_convs():
    """a, b, c of equal kernels; b reads 0.25 x, a 0.5 x (the converter folds each scale into
    its kernel: two float32 copies no palette matches), c x."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    ca, cb, cc = (L.Conv2D(8, 3, use_bias=False, name=n) for n in "abc")
    y = L.Concatenate()([cb(L.Rescaling(0.25)(inp)), ca(L.Rescaling(0.5)(inp)), cc(inp)])
    model = keras.Model(inp, L.Dense(4, name="head")(L.Flatten()(y)))
    cb.set_weights(ca.get_weights())
    cc.set_weights(ca.get_weights())
    return model


def test_scaled_float_copies_are_not_recorded_as_merged(tmp_path):
    """Parent: a/kernel and c/kernel "0.00 b/w, merged with b/kernel's" while the file holds
    two float32 kernels of their size; now both "float32 (not found)" at 4 B per weight,
    the records summing to the file's buffers, each float32 weight claimed."""
    model = _three_convs()
    sh = dkm_tf.share_weights(model, n_clusters=16)
    x = np.random.default_rng(0).uniform(0, 2, (4, 8, 8, 3)).astype("float32")
    rep, path = _export(sh.model, sh.palettes, x, tmp_path, keep_float=None)
    floats = _float_weights(path)
    assert sorted(n for _, n, _ in floats.values()) == [864, 864], floats  # 8*3*3*3 * 4 B
    recs = {r["palette"]: r for r in rep.tensors}
    found = [name for name, r in recs.items() if not r.get("not_found")]
    lost = sorted(name for name, r in recs.items() if r.get("not_found"))
    assert len(lost) == 2 and "head/kernel" in found, recs
    for name in lost:
        r = recs[name]
        assert r["storage"] == "float32 (not found)" and "shared_with" not in r, r
        assert r["codebook_bytes"] == 864 and r["index_bytes"] == 0, r
        assert any(n.startswith(f"{name}: kept float32") for n in rep.notes), rep.notes
    assert _counted(rep.tensors) == _stored_bytes(path, rep.tensors)
    unclustered = rep.n_params - sum(int(p.n_values) for p in sh.palettes)
    aux = sum(r.get("aux_bytes", 0) for r in rep.tensors)  # the im2col filter
    assert rep.analytic_bytes == (rep.graph_bytes + _counted(rep.tensors) + aux
                                  + 4 * unclustered)


def _dense_and_conv1d():
    keras.utils.set_random_seed(0)
    x = keras.Input((5, 16), name="x")
    a, b = L.Dense(32, name="a"), L.Conv1D(32, 1, name="b")
    y = L.Concatenate()([a(x), b(x)])
    model = keras.Model(x, L.Dense(4, name="h")(L.Flatten()(y)))
    b.set_weights([w.reshape(v.shape) for w, v in zip(a.get_weights(), b.get_weights())])
    return model


def test_shared_codebook_is_counted_in_the_owner_record(tmp_path):
    """Parent: a/kernel 342 B of indices and 0 B of codebook, b/kernel 0 B of indices, the
    64 B codebook and shared_with=a/kernel. Now a/kernel (first in palette order, owner of
    the index buffer) counts the codebook too; b/kernel adds nothing."""
    model = _dense_and_conv1d()
    sh = dkm_tf.share_weights(model, 16)
    assert [p.name for p in sh.palettes].index("a/kernel") < [
        p.name for p in sh.palettes].index("b/kernel")
    x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype("float32")
    rep, path = _export(sh.model, sh.palettes, x, tmp_path, keep_float=None)
    recs = {r["palette"]: r for r in rep.tensors}
    a, b = recs["a/kernel"], recs["b/kernel"]
    # the codebook buffer a reads: 16 float32 values
    books = {n for g, name, typ, buf, n in _file_buffers(path)
             if name.startswith("dkm") and "/codebook_" in name}
    assert books == {64}, books
    assert a["codebook_bytes"] == 64 and a["index_bytes"] > 0 and "shared_with" not in a, a
    assert b["index_bytes"] == b["codebook_bytes"] == 0 and b["shared_with"] == "a/kernel", b
    assert b["bits_per_weight"] == 0.0
    assert a["bits_per_weight"] == pytest.approx(8 * (a["index_bytes"] + 64) / 512)
    assert _counted(rep.tensors) == _stored_bytes(path, rep.tensors)


def test_tflm_merged_equal_dense_is_not_recorded_float(tmp_path):
    """Parent: b/kernel "float32 (not found)", 32 b/w, records 2,272 B for a 2,096 B file
    holding no float32 weight, analytic 2,544. Now recorded in a/kernel's op: 0 B,
    shared_with=a/kernel."""
    pytest.importorskip("tflite_micro")
    model = _equal_dense(False)
    sh = dkm_tf.share_weights(model, 4)
    xs = np.random.default_rng(1).normal(size=(1, 16)).astype("float32")
    path = str(tmp_path / "m.tflite")
    rep = ex.to_tflite(sh.model, path, "tflm", sh.palettes, xs)
    assert _float_weights(path) == {}  # every weight compressed
    recs = {r["palette"]: r for r in rep.tensors}
    b = recs["b/kernel"]
    assert not b.get("not_found") and b["shared_with"] == "a/kernel", b
    assert b["index_bytes"] == b["codebook_bytes"] == 0 and b["bits_per_weight"] == 0.0
    assert not any("kept float32" in n for n in rep.notes), rep.notes
    names = {r["tensor"] for r in rep.tensors}
    stored = {buf: n for g, name, typ, buf, n in _file_buffers(path) if name in names}
    assert sum(r["index_bytes"] for r in rep.tensors) == sum(stored.values())
    unclustered = rep.n_params - sum(int(p.n_values) for p in sh.palettes)
    assert rep.analytic_bytes == rep.graph_bytes + 4 * unclustered + sum(
        r["index_bytes"] + r["codebook_bytes"] for r in rep.tensors)
