"""A recurrent layer's kernels in several WHILE bodies are palettized in every body (review R13).

``TimeDistributed(LSTM)`` unrolls to one WHILE loop per time step, and one LSTM layer called
on two inputs to one loop per call: the cell's kernels are constants of each loop body. The
parent palettized them in the first body only; the other bodies kept float32 copies of the
decoded kernel while the report claimed ``int16 3.00 b/w``. Checked against numpy: no float32
constant of the file holds a palette's decoded values, the file's outputs equal Keras', each
record's storage is the dtype of the index tensor stored, and the copies share one stored
index and codebook buffer whose bytes the records count once, decoded once in front of all
the loops (TimeDistributed(LSTM(6)) over 3 steps: 39,248 B on the parent with float32
copies, 34,160 B now).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf import export as ex  # noqa: E402
from dkm_tf.export.rewrite import FlatModel  # noqa: E402
from dkm_tf.export.subgraph_copies import check_no_float_copies  # noqa: E402

L = keras.layers


def _td_model():
    keras.utils.set_random_seed(0)
    x = keras.Input((3, 5, 8))
    y = L.TimeDistributed(L.LSTM(6, name="r"), name="td")(x)
    return keras.Model(x, L.Dense(4, name="head")(L.Flatten()(y)))


def _shared_model():
    keras.utils.set_random_seed(0)
    a, b, r = keras.Input((5, 8)), keras.Input((5, 8)), L.LSTM(6, name="r")
    return keras.Model([a, b], L.Dense(4, name="head")(L.Concatenate()([r(a), r(b)])))


def _float_consts(content):
    fm = FlatModel.from_bytes(content)
    for g in range(len(fm.model.subgraphs)):
        view = fm.subgraph(g)
        for t in range(len(view.tensors)):
            if view.type_name(t) == "float32" and view.raw(t):
                yield g, view.tensor_name(t), np.frombuffer(view.raw(t), np.float32)


def _run(path, inputs):
    import tensorflow as tf  # noqa: PLC0415

    it = tf.lite.Interpreter(model_path=path)
    it.allocate_tensors()
    details = sorted(it.get_input_details(), key=lambda d: (len(d["name"]), d["name"]))
    for d, x in zip(details, inputs):  # input_layer, input_layer_1: the model's order
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("build,n_in,bodies", [(_td_model, 1, 3), (_shared_model, 2, 2)],
                         ids=["time_distributed", "shared_twice"])
def test_every_loop_body_palettized(tmp_path, build, n_in, bodies):
    model = build()
    sh = dkm_tf.share_weights(model, 4)
    rng = np.random.default_rng(1)
    shape = (1, *model.inputs[0].shape[1:])
    xs = [rng.normal(size=shape).astype("float32") for _ in range(n_in)]
    path = str(tmp_path / "s.tflite")
    rep = ex.to_tflite(sh.model, path, "palettized", sh.palettes, xs if n_in > 1 else xs[0],
                       keep_float=None)
    with open(path, "rb") as f:
        content = f.read()
    assert rep.bytes == len(content) == os.path.getsize(path)
    # no float32 constant anywhere holds a palette's decoded kernel (any layout: sorted)
    decoded = {p.name: np.sort(p.decode().ravel().astype(np.float32)) for p in sh.palettes}
    for g, name, values in _float_consts(content):
        for pname, ref in decoded.items():
            assert not (values.size == ref.size and np.array_equal(np.sort(values), ref)), (
                f"float32 copy of {pname} in subgraph {g}: {name}")
    # outputs equal Keras' (float32 rounding; the decoded weights equal the model's)
    want = np.asarray(sh.model(xs if n_in > 1 else xs[0]))
    got = _run(path, xs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # one record per palette and loop body; every record stored as the index tensors are
    recs = [r for r in rep.tensors if r["palette"].startswith(("td/", "r/"))]
    cell = [p for p in sh.palettes if p.name.startswith(("td/", "r/"))]
    cell = [p for p in cell if "bias" not in p.name]
    assert len([r for r in recs if "bias" not in r["palette"]]) == bodies * len(cell)
    fm = FlatModel.from_bytes(content)
    stored = {}  # buffer -> (dtype, bytes) of the exporter's index and codebook tensors
    for g in range(len(fm.model.subgraphs)):
        view = fm.subgraph(g)
        for t in range(len(view.tensors)):
            n = view.tensor_name(t)
            if n.startswith("dkm") and ("/indices" in n or "/codebook" in n) and view.raw(t):
                stored[int(view.tensors[t].buffer)] = (view.type_name(t), len(view.raw(t)))
    kinds = {r["storage"].split()[0] for r in rep.tensors if not r.get("kept")}
    assert kinds <= {dtype for dtype, _ in stored.values()}, (kinds, stored)
    # the copies share the first body's buffers: the records count the bytes once
    counted = sum(r["index_bytes"] + r["codebook_bytes"] for r in rep.tensors)
    assert counted == sum(b for _, b in stored.values())
    copies = [r for r in rep.tensors if "copy_of_subgraph" in r]
    assert len(copies) == (bodies - 1) * len(cell)
    assert all(r["index_bytes"] == r["codebook_bytes"] == 0 for r in copies)
    # each weight decoded once, in front of all the loops: one index tensor per palette
    names = [t["name"] for t in ex.inspect_tflite(content).tensors
             if t["role"].startswith("palette indices")]
    assert len(names) == len({r["palette"] for r in rep.tensors if not r.get("kept")}), names


def test_float_copy_is_refused():
    """The export-time check names a float32 copy of a palettized weight left in a body."""
    model = _td_model()
    sh = dkm_tf.share_weights(model, 4)
    from dkm_tf.export import convert as convert_lib  # noqa: PLC0415

    content = convert_lib.convert(sh.model, convert_lib.input_specs(
        sh.model, np.zeros((1, 3, 5, 8), np.float32), 1))
    fm = FlatModel.from_bytes(content)
    recs = [{"palette": p.name} for p in sh.palettes]  # all claimed palettized
    with pytest.raises(ValueError, match=r"float32 copies of palettized weights.*subgraph"):
        check_no_float_copies(fm, sh.palettes, recs)


def test_tflm_every_loop_body_compressed(tmp_path):
    """format='tflm' compressed the first body's kernels only (parent: float32 MatMul 768 B
    and MatMul_1 576 B weights left in subgraphs 2, 4 and 6 by inspect_tflite); now every
    body's kernels are LUT-compressed, one record per body, and the file is verified."""
    model = _td_model()
    sh = dkm_tf.share_weights(model, 4)
    xs = np.random.default_rng(1).normal(size=(1, 3, 5, 8)).astype("float32")
    path = str(tmp_path / "m.tflite")
    rep = ex.to_tflite(sh.model, path, "tflm", sh.palettes, xs)
    floats = [(t["subgraph"], t["name"]) for t in ex.inspect_tflite(path).tensors
              if t["role"] == "weight" and t["dtype"] == "float32"]
    assert floats == []
    cell = [r for r in rep.tensors if r["palette"].startswith("td/")]
    assert sorted({r.get("subgraph") for r in cell}) == [2, 4, 6]
    assert len(cell) == 6 and all(r["storage"] == "2-bit LUT indices" for r in cell)


@pytest.mark.parametrize("keep_float", [["b"], None])
def test_a_layer_of_weights_equal_to_another_keeps_its_own_record(keep_float, tmp_path):
    """Two LSTMs of equal weights (review R15): the second's loop body was claimed as a copy of
    the first's palette, so `keep_float=["b"]` was ignored (b palettized, reported "float32
    (not found)"); kept float, its float32 kernels are no "copy" to refuse either."""
    keras.utils.set_random_seed(0)
    x = keras.Input((5, 8))
    a, b = L.LSTM(6, name="a"), L.LSTM(6, name="b")
    model = keras.Model(x, L.Dense(4, name="h")(L.Concatenate()([a(x), b(x)])))
    b.set_weights(a.get_weights())
    sh = dkm_tf.share_weights(model, 4)
    xs = np.random.default_rng(1).normal(size=(1, 5, 8)).astype("float32")
    path = str(tmp_path / "m.tflite")
    rep = ex.to_tflite(sh.model, path, "palettized", sh.palettes, xs, keep_float=keep_float)
    assert rep.bytes == os.path.getsize(path)
    recs = {r["palette"]: r for r in rep.tensors if r["palette"].startswith("b/")}
    assert sorted(recs) == ["b/cell.kernel", "b/cell.recurrent_kernel"]
    for r in recs.values():
        assert "copy_of_subgraph" not in r and not r.get("not_found")
        assert r["storage"] == ("float32 (kept)" if keep_float else "int16 (7 indices/int16)")
    np.testing.assert_allclose(_run(path, [xs]), np.asarray(sh.model(xs)), atol=1e-5)
