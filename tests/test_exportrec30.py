"""A palettized report's per-tensor records count each stored buffer once (session 30).

One buffer of a palettized file can back several records: two layers of equal weights (one
index buffer; or one op, the converter having merged them), one LSTM called twice or a
``TimeDistributed(LSTM)`` (one buffer for every loop body), a float32 kernel kept in several
bodies (stored once by the converter). The parent counted such a buffer in every record
(TimeDistributed(LSTM(6)) over 3 steps at K = 256: 4,320 B of kept kernels in the records,
1,632 B stored; two equal Dense layers: "float32 (not found)" 2,048 B that the file does not
hold) and ``analytic_bytes`` took each loop body's copy off the float count (21,144 B for
23,832 B). Checked here against an independent count: the ``.tflite`` parsed with the
LiteRT schema's reader, each distinct buffer of an index, codebook or scale tensor and of a
kept weight summed once.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf import export as ex  # noqa: E402

L = keras.layers
ROLES = ("/indices_", "/codebook_", "/scales_", "/half_")  # half: kept float16 weights, biases


def _file_buffers(path):
    """[(subgraph, name, type, buffer, bytes)] of the constant tensors, read with the schema's
    own (read-only) flatbuffer accessors, not the exporter's FlatModel."""
    try:
        from ai_edge_litert import schema_py_generated as s  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python import schema_py_generated as s  # noqa: PLC0415
    with open(path, "rb") as f:
        data = f.read()
    m = s.Model.GetRootAsModel(data, 0)
    rows = []
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            size = m.Buffers(t.Buffer()).DataLength() if t.Buffer() else 0
            if size:
                rows.append((g, t.Name().decode(), t.Type(), t.Buffer(), size))
    return rows


def _float_weights(path):
    """{name: (buffer, bytes, values)} of the float32 constants of at least 64 values in at
    least 2 dimensions (inspect_tflite's role "weight") the exporter did not make."""
    try:
        from ai_edge_litert import schema_py_generated as s  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        from tensorflow.lite.python import schema_py_generated as s  # noqa: PLC0415
    with open(path, "rb") as f:
        m = s.Model.GetRootAsModel(f.read(), 0)
    out = {}
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            size = m.Buffers(t.Buffer()).DataLength() if t.Buffer() else 0
            name = t.Name().decode()
            if size and t.Type() == 0 and t.ShapeLength() >= 2 and size >= 256 \
                    and not name.startswith("dkm"):  # TensorType.FLOAT32 == 0
                out[name] = (t.Buffer(), size, size // 4)
    return out


def _stored_bytes(path, records):
    """Bytes of the distinct buffers the records describe: the exporter's index, codebook,
    scale and float16 (kept weights and their ops' biases) tensors, each kept float32 weight
    (the tensor the record names) and each float32 weight the converter left (a "not found"
    record claims one of its size). Every float32 weight of the file must be claimed: one no
    record counts would make the records' sum short of what the file holds."""
    rows = _file_buffers(path)
    kept = {r["tensor"] for r in records if r.get("storage") == "float32 (kept)"}
    sizes = {b: n for g, name, typ, b, n in rows
             if name.startswith("dkm") and any(k in name for k in ROLES)
             or name in kept and typ == 0}  # TensorType.FLOAT32 == 0
    left = {b: (n, values) for name, (b, n, values) in _float_weights(path).items()
            if name not in kept}
    for r in records:
        if r.get("not_found"):
            b = next((b for b, (n, values) in sorted(left.items())
                      if values == r["n_weights"]), None)
            assert b is not None, f"{r['palette']}: not found, but no float32 weight left"
            sizes[b] = left.pop(b)[0]
    assert not left, f"float32 weights no record counts: {left}"
    return sum(sizes.values())


def _counted(records):
    """The records' bytes, plus the float16 biases of kept ops (counted as parameters)."""
    return sum(r["index_bytes"] + r["codebook_bytes"] + r.get("scale_bytes", 0)
               + 2 * r.get("fp16_bias_values", 0) for r in records)


def _export(model, palettes, xs, tmp_path, **kw):
    path = str(tmp_path / "m.tflite")
    rep = ex.to_tflite(model, path, "palettized", palettes, xs, **kw)
    assert rep.bytes == os.path.getsize(path)
    return rep, path


def _equal_dense(two_inputs):
    keras.utils.set_random_seed(0)
    x = keras.Input((16,), name="x")
    y = keras.Input((16,), name="y") if two_inputs else x
    a, b = L.Dense(32, name="a"), L.Dense(32, name="b")
    model = keras.Model([x, y] if two_inputs else x,
                        L.Dense(4, name="h")(L.Concatenate()([a(x), b(y)])))
    b.set_weights(a.get_weights())
    return model


@pytest.mark.parametrize("two_inputs", [False, True], ids=["one_op", "two_ops"])
def test_equal_dense_layers_count_their_index_buffer_once(two_inputs, tmp_path):
    """One input: the converter merges the two equal ops (parent: b "float32 (not found)",
    2,048 B counted, none stored); two inputs: two ops read one index buffer (parent: counted
    twice). Now b's record adds 0 bytes and names a's."""
    model = _equal_dense(two_inputs)
    sh = dkm_tf.share_weights(model, 4)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(2, 16)).astype("float32") for _ in range(1 + two_inputs)]
    rep, path = _export(sh.model, sh.palettes, xs if two_inputs else xs[0], tmp_path,
                        keep_float=None)
    recs = {r["palette"]: r for r in rep.tensors}
    b = recs["b/kernel"]
    assert not b.get("not_found") and b["shared_with"] == "a/kernel", b
    assert b["index_bytes"] == b["codebook_bytes"] == 0 and b["bits_per_weight"] == 0.0
    assert recs["a/kernel"]["index_bytes"] > 0 and "shared_with" not in recs["a/kernel"]
    assert _counted(rep.tensors) == _stored_bytes(path, rep.tensors)
    assert "shared with" in rep.summary() or "shared_with=a/kernel" in rep.summary()
    np.testing.assert_allclose(_run(path, xs), np.asarray(sh.model(
        xs if two_inputs else xs[0])), rtol=1e-5, atol=1e-5)


def _run(path, xs):
    import tensorflow as tf  # noqa: PLC0415

    it = tf.lite.Interpreter(model_path=path)
    details = sorted(it.get_input_details(), key=lambda d: (len(d["name"]), d["name"]))
    for d, x in zip(details, xs):
        it.resize_tensor_input(d["index"], x.shape)
    it.allocate_tensors()
    for d, x in zip(details, xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _lstm_twice():
    keras.utils.set_random_seed(0)
    a, b, r = keras.Input((5, 8)), keras.Input((5, 8)), L.LSTM(6, name="r")
    return keras.Model([a, b], L.Dense(4, name="head")(L.Concatenate()([r(a), r(b)]))), 2


def _td_lstm():
    keras.utils.set_random_seed(0)
    x = keras.Input((3, 5, 8))
    y = L.TimeDistributed(L.LSTM(6, name="r"), name="td")(x)
    return keras.Model(x, L.Dense(4, name="head")(L.Flatten()(y))), 1


def _equal_lstms():
    keras.utils.set_random_seed(0)
    x = keras.Input((5, 8))
    a, b = L.LSTM(6, name="a"), L.LSTM(6, name="b")
    model = keras.Model(x, L.Dense(4, name="h")(L.Concatenate()([a(x), b(x)])))
    b.set_weights(a.get_weights())
    return model, 1


def _dense_and_td_dense():
    keras.utils.set_random_seed(0)
    x = keras.Input((3, 8))
    y = L.TimeDistributed(L.Dense(16, name="d"), name="tdd")(x)
    return keras.Model(x, L.Dense(4, name="head")(L.Flatten()(L.Dense(12, name="e")(y)))), 1


CASES = {"lstm_twice": _lstm_twice, "td_lstm": _td_lstm, "equal_lstms": _equal_lstms,
         "dense_td_dense": _dense_and_td_dense}


@pytest.mark.parametrize("k,kw", [(4, {"keep_float": None}), (256, {}),
                                  (256, {"kept_dtype": "float16"}),
                                  (4, {"decode": "per_invoke"})],
                         ids=["k4_palettized", "k256_kept_float", "k256_kept_float16",
                              "k4_per_invoke"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_records_sum_to_the_distinct_stored_buffers(case, k, kw, tmp_path):
    """Parent, for example: TD(LSTM(6)) at K = 256 (kept float32 in 3 bodies) 4,320 B counted
    for 1,632 B stored; two equal LSTMs at K = 4: 290 B for 160 B."""
    model, n_in = CASES[case]()
    sh = dkm_tf.share_weights(model, k)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(1, *model.inputs[0].shape[1:])).astype("float32")
          for _ in range(n_in)]
    rep, path = _export(sh.model, sh.palettes, xs if n_in > 1 else xs[0], tmp_path, **kw)
    json.dumps(rep.tensors)  # report.json: no buffer objects left in the records
    assert not any(key.startswith("_") for r in rep.tensors for key in r)
    stored = _stored_bytes(path, rep.tensors)
    assert stored > 0 and _counted(rep.tensors) == stored, [
        (r["palette"], r.get("subgraph"), r["storage"], r["index_bytes"],
         r["codebook_bytes"]) for r in rep.tensors]
    shared = [r for r in rep.tensors if "shared_with" in r]
    if case == "dense_td_dense":  # nothing is shared: nothing is marked or taken off
        assert not shared and not any("copy_of_subgraph" in r for r in rep.tensors)
    if case == "equal_lstms":  # b's kernels read a's buffers
        assert sorted(r["palette"] for r in shared if r.get("codebook_bytes") == 0
                      and r["index_bytes"] == 0) == ["b/cell.kernel", "b/cell.recurrent_kernel"]
    # analytic: graph + the stored buffers + 4 B per parameter no palette holds (2 B for a
    # bias stored float16)
    unclustered = rep.n_params - sum(int(p.n_values) for p in sh.palettes)
    aux = sum(r.get("aux_bytes", 0) for r in rep.tensors)
    halved = sum(r.get("fp16_bias_values", 0) for r in rep.tensors)
    assert rep.analytic_bytes == (rep.graph_bytes + stored - 2 * halved + aux
                                  + 4 * unclustered - 2 * halved)


def test_real_model_records_unchanged(tmp_path):
    """digitsclassifier (no buffer shared): no record marked, the records' bytes are each
    tensor's own and sum to the stored buffers."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    try:
        import _real_models as zoo  # noqa: PLC0415
        real = zoo.load_digitsclassifier()
    except Exception as e:  # noqa: BLE001 - the installed zoo is optional
        pytest.skip(f"digitsclassifier not available: {type(e).__name__}: {e}")
    finally:
        sys.path.pop(0)
    sh = dkm_tf.share_weights(real.model, 16)
    rep, path = _export(sh.model, sh.palettes, real.inputs[:4], tmp_path)
    assert not any("shared_with" in r or "copy_of_subgraph" in r for r in rep.tensors)
    assert _counted(rep.tensors) == _stored_bytes(path, rep.tensors)
    for r in rep.tensors:
        stored = r["index_bytes"] + r["codebook_bytes"] + r.get("scale_bytes", 0)
        assert r["bits_per_weight"] == pytest.approx(8 * stored / r["n_weights"]), r


@pytest.mark.parametrize("case", ["td_lstm", "equal_lstms"])
def test_tflm_records_count_each_compressed_buffer_once(case, tmp_path):
    """format='tflm': the converter stores a kernel read in several loop bodies (or two equal
    kernels) once and the compressor keeps one buffer; the parent's records counted it per
    body (TD(LSTM(6)) over 3 steps: 382 B of indices and tables for 150) and
    ``analytic_bytes`` took each body's weights off the float count (21,022 B for a
    23,424 B file; now 23,478 B)."""
    pytest.importorskip("tflite_micro")
    model, _ = CASES[case]()
    sh = dkm_tf.share_weights(model, 4)
    xs = np.random.default_rng(1).normal(size=(1, *model.inputs[0].shape[1:])).astype(
        "float32")
    path = str(tmp_path / "m.tflite")
    rep = ex.to_tflite(sh.model, path, "tflm", sh.palettes, xs)
    names = {r["tensor"] for r in rep.tensors}
    stored = {b: n for g, name, typ, b, n in _file_buffers(path) if name in names}
    assert sum(r["index_bytes"] for r in rep.tensors) == sum(stored.values())
    later = [r for r in rep.tensors if r["index_bytes"] == 0]
    if case == "td_lstm":
        assert sorted((r["palette"], r["copy_of_subgraph"]) for r in later) == sorted(
            [(n, 2) for n in ("td/layer.cell.kernel", "td/layer.cell.recurrent_kernel")] * 2)
    else:
        assert {r["palette"]: r["shared_with"] for r in later} == {
            "b/cell.kernel": "a/cell.kernel", "b/cell.recurrent_kernel": "a/cell.recurrent_kernel"}
    assert all(r["codebook_bytes"] == 0 and r["bits_per_weight"] == 0 for r in later)
    # analytic: the float file's graph, each stored table once, 4 B per unclustered parameter
    unclustered = rep.n_params - sum(int(p.n_values) for p in sh.palettes)
    assert rep.analytic_bytes == rep.graph_bytes + 4 * unclustered + sum(
        r["index_bytes"] + r["codebook_bytes"] for r in rep.tensors)
