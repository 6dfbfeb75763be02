"""A recurrent layer's input kernel is multiplied once per invoke, in front of its WHILE loop.

With the kernels decoded once (persistent tensors, loop variables of the WHILE), XNNPACK
leaves the body's FULLY_CONNECTED ops to the builtin kernel, one call per time step: an
LSTM(64) ran at 1.25-1.37x the float file (bench/recurrent_latency.py). The product
``x_t W`` does not depend on the recurrence, so the export computes it for every step in one
BATCH_MATMUL (``decode="once"``; FULLY_CONNECTED with ``per_invoke``) before the loop, with
the cell's constant bias, and the body gathers step t of it (1.05-1.12x float).

Checked here: the body keeps one product per cell (the recurrent one), no constant bias ADD;
the file matches an independent numpy LSTM on the clustered weights; every recurrent kind
(LSTM, GRU, SimpleRNN, Bidirectional, stacked cells) still verifies, and a cell whose input is
another cell's output (inside the loop) is left as it was.
"""

import keras
import numpy as np
import pytest

import dkm_tf.export as ex
from dkm_tf.core.interpreters import make_interpreter
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.graph.share import share_weights

L = keras.layers
T, F, U = 7, 5, 12


def _lstm_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((T, F))
    return keras.Model(inp, L.Dense(3, name="head")(L.LSTM(U, name="lstm")(inp)))


@pytest.fixture(scope="module")
def lstm():
    res = share_weights(_lstm_model(), 16)
    x = np.random.default_rng(4).standard_normal((3, T, F)).astype(np.float32)
    return res, x


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _numpy_lstm(model, x):
    """Keras' LSTM (gates i, f, c, o; sigmoid / tanh) then the Dense head, in float64."""
    w, u, b = (np.asarray(v, np.float64) for v in model.get_layer("lstm").get_weights())
    hw, hb = (np.asarray(v, np.float64) for v in model.get_layer("head").get_weights())
    h = np.zeros((x.shape[0], U))
    c = np.zeros((x.shape[0], U))
    for t in range(x.shape[1]):
        z = x[:, t].astype(np.float64) @ w + h @ u + b
        i, f, g, o = np.split(z, 4, axis=1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
    return h @ hw + hb


def _run(path, x):
    with open(path, "rb") as f:
        it = make_interpreter("tflite", f.read())
    d = it.get_input_details()[0]
    out = []
    for row in x:  # recurrent files are fixed at batch 1
        it.set_tensor(d["index"], row[None])
        it.invoke()
        out.append(it.get_tensor(it.get_output_details()[0]["index"])[0].copy())
    return np.stack(out)


def _loop(path):
    with open(path, "rb") as f:
        fm = FlatModel.from_bytes(f.read())
    (wop,) = [op for op in fm.operators if fm.op_name(op) == "WHILE"]
    return fm, fm.subgraph(int(wop.builtinOptions.bodySubgraphIndex))


@pytest.mark.parametrize("decode, before", [("once", "BATCH_MATMUL"),
                                            ("per_invoke", "FULLY_CONNECTED")])
def test_input_product_leaves_the_loop(lstm, decode, before, tmp_path):
    res, x = lstm
    r = ex.to_tflite(res.model, tmp_path / "r.tflite", "palettized", res.palettes, x,
                     decode=decode)
    fm, body = _loop(r.path)
    names = [body.op_name(op) for op in body.operators]
    # old: two FULLY_CONNECTED per step (input and recurrent kernel) and a bias ADD
    assert names.count("FULLY_CONNECTED") == 1
    fc = next(op for op in body.operators if body.op_name(op) == "FULLY_CONNECTED")
    assert body.shape(int(fc.inputs[1])) == (4 * U, U)  # the recurrent kernel
    assert not any(body.op_name(op) == "ADD" and any(body.raw(int(t)) for t in op.inputs)
                   and body.type_name(int(op.outputs[0])) == "float32"
                   for op in body.operators)
    products = [op for op in fm.operators if fm.op_name(op) == before
                and fm.shape(int(op.outputs[0])) == (T, 4 * U)]
    assert len(products) == 1 and fm.shape(int(products[0].inputs[1])) == (4 * U, F)
    route = {t["palette"]: t["route"] for t in r.tensors}
    assert f"one {before} in front of the loop" in route["lstm/cell.kernel"]
    assert "in front of the loop" not in route["lstm/cell.recurrent_kernel"]
    ref = _numpy_lstm(res.model, x)
    got = _run(r.path, x)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert r.max_rel_error < 1e-5


def test_sizes_stay_palettized(tmp_path):
    """The bench's LSTM(64): the projection adds a few tensors (~0.6 KB), no weights; the
    file stays 0.36x float (0.355x before, bench/results/recurrent_latency.md)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 16))
    model = keras.Model(inp, L.Dense(10)(L.LSTM(64)(inp)))
    res = share_weights(model, 16)
    x = np.random.default_rng(1).standard_normal((2, 20, 16)).astype(np.float32)
    flt = ex.to_tflite(res.model, tmp_path / "f.tflite", "float", sample_inputs=x)
    once = ex.to_tflite(res.model, tmp_path / "o.tflite", "palettized", res.palettes, x)
    info = ex.inspect_tflite(once.path)
    assert len(info.palettized) == 3 and info.bytes == once.bytes
    assert info.bytes_by_dtype["float32"] < 2000  # codebooks, the bias: no float kernel
    assert once.bytes / flt.bytes < 0.365


def test_every_recurrent_kind_verifies(tmp_path):
    keras.utils.set_random_seed(5)
    inp = keras.Input((T, F))
    parts = [L.LSTM(6, name="lstm")(inp), L.GRU(5, name="gru")(inp),
             L.SimpleRNN(4, name="srnn")(inp), L.Bidirectional(L.LSTM(3), name="bi")(inp),
             L.RNN([L.LSTMCell(6), L.GRUCell(5)], name="stack")(inp)]
    model = keras.Model(inp, L.Dense(2, name="head")(L.Concatenate()(parts)))
    res = share_weights(model, 8)
    x = np.random.default_rng(6).standard_normal((2, T, F)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "k.tflite", "palettized", res.palettes, x)
    assert r.max_rel_error < 1e-5
    moved = {t["palette"] for t in r.tensors if "in front of the loop" in t["route"]}
    kernels = {"lstm/cell.kernel", "gru/cell.kernel", "srnn/cell.kernel",
               "bi/forward_layer.cell.kernel", "bi/backward_layer.cell.kernel",
               "stack/cell.cells.0.kernel"}
    # the second stacked cell reads the first cell's output, computed inside the loop
    assert moved == kernels & {p.name for p in res.palettes}
    assert "stack/cell.cells.1.kernel" not in moved


def test_nothing_to_move_leaves_the_file_alone(lstm, tmp_path):
    """The float file's body reads constant kernels (no loop variable): no projection."""
    from dkm_tf.export.subgraphs import hoist_input_projections  # noqa: PLC0415
    res, x = lstm
    r = ex.to_tflite(res.model, tmp_path / "f.tflite", "float", sample_inputs=x)
    with open(r.path, "rb") as f:
        data = f.read()
    fm = FlatModel.from_bytes(data)
    (wop,) = [op for op in fm.operators if fm.op_name(op) == "WHILE"]
    assert hoist_input_projections(fm, int(wop.builtinOptions.bodySubgraphIndex)) == {}
    assert fm.to_bytes() == FlatModel.from_bytes(data).to_bytes()
