"""Clustering recurrent and attention layers: SimpleRNN, LSTM, GRU, RNN (stacked cells),
Bidirectional, MultiHeadAttention and EinsumDense, from weight sharing to palettized TFLite.

Every numeric check is against numpy: decoded palettes against the model's weights, the
centroid gradient against the per-weight gradients summed by index, the k-means penalty
against the cluster means of its assignment, MAC counts against hand formulas.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import gradients, tf_backend_only  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf import export as ex  # noqa: E402
from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.energy.keras_reader import read_keras_model  # noqa: E402
from dkm_tf.export.palettize import tflite_layouts  # noqa: E402
from dkm_tf.export.rewrite import FlatModel  # noqa: E402
from dkm_tf.graph import clusterable  # noqa: E402
from dkm_tf.training.attach import kmeans_regularizers  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402

L = keras.layers
T, F = 6, 8
K = 4


def _recurrent_model(seed=0):
    """LSTM, Bidirectional(LSTM), GRU, SimpleRNN and RNN over stacked cells, one model."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((T, F))
    a = L.LSTM(32, name="lstm")(inp)
    b = L.Bidirectional(L.LSTM(8), name="bilstm")(inp)
    c = L.GRU(8, name="gru")(inp)
    d = L.SimpleRNN(8, name="srnn")(inp)
    e = L.RNN([L.LSTMCell(6), L.GRUCell(5)], name="stack")(inp)
    h = L.Concatenate()([a, b, c, d, e])
    return keras.Model(inp, L.Dense(3, name="head")(h), name="recurrent")


def _attention_model(seed=0, steps=T):
    """MultiHeadAttention (value_dim != key_dim) and a 3-D EinsumDense kernel."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((steps, F))
    h = L.Dense(16, name="proj")(inp)
    h = L.MultiHeadAttention(2, 8, value_dim=4, name="mha")(h, h)
    h = L.EinsumDense("abc,cde->abde", (steps, 2, 8), name="ein")(h)
    h = L.Flatten()(h)
    return keras.Model(inp, L.Dense(3, name="head")(h), name="attention")


# name -> (model, time steps); 20 attention steps: its projections become BATCH_MATMULs
MODELS = {"recurrent": (_recurrent_model, T),
          "attention": (lambda: _attention_model(steps=20), 20)}
EXPECTED = {  # layer -> (path, kind) of its clusterable weights
    "lstm": [("cell.kernel", "dense"), ("cell.recurrent_kernel", "dense")],
    "bilstm": [("forward_layer.cell.kernel", "dense"),
               ("forward_layer.cell.recurrent_kernel", "dense"),
               ("backward_layer.cell.kernel", "dense"),
               ("backward_layer.cell.recurrent_kernel", "dense")],
    "stack": [("cell.cells.0.kernel", "dense"), ("cell.cells.0.recurrent_kernel", "dense"),
              ("cell.cells.1.kernel", "dense"), ("cell.cells.1.recurrent_kernel", "dense")],
    "mha": [("query_dense.kernel", "einsum:1,2"), ("key_dense.kernel", "einsum:1,2"),
            ("value_dense.kernel", "einsum:1,2"), ("output_dense.kernel", "einsum:2")],
    "ein": [("kernel", "einsum:1,2")],
}


def _x(n=8, steps=T, seed=1):
    return np.random.default_rng(seed).standard_normal((n, steps, F)).astype(np.float32)


def _weight(model, palette):
    return np.asarray(clusterable.get_weight(model.get_layer(palette.layer_name),
                                             palette.weight_name))


def test_clusterable_weights_and_paths():
    models = [_recurrent_model(), _attention_model()]
    layers = {lay.name: lay for m in models for lay in m.layers}
    for name, expected in EXPECTED.items():
        got = clusterable.clusterable_weights(layers[name])
        assert [(p, k) for p, _, k in got] == expected
        for path, var, _ in got:
            assert clusterable.get_weight(layers[name], path) is var
    assert [p for p, _, _ in clusterable.clusterable_weights(layers["gru"])] == \
        ["cell.kernel", "cell.recurrent_kernel"]
    assert clusterable.get_weight(layers["stack"], "cell.cells.7.kernel") is None
    conv_lstm = L.ConvLSTM1D(2, 3)
    assert not clusterable.is_clusterable(conv_lstm)
    with pytest.raises(TypeError, match=r"its cell ConvLSTMCell is not a SimpleRNNCell"):
        clusterable.clusterable_weights(conv_lstm)
    unbuilt = L.MultiHeadAttention(2, 4)
    assert clusterable.is_clusterable(unbuilt)
    with pytest.raises(ValueError, match="is not built"):
        clusterable.clusterable_weights(unbuilt)
    # an unbuilt attention layer cannot be built from one shape by the wrapper: clear error
    with pytest.raises(ValueError, match=r"cannot be built from the wrapper's input shape"):
        ClusterWeights(L.MultiHeadAttention(2, 4), n_clusters=2)(_x(2)[..., :4])


def test_einsum_layout_per_channel_groups_output_axes():
    """(d_model, heads, head_dim) with output axes (1, 2): one group per (head, dim) column;
    to_units / from_units are exact inverses."""
    kernel = np.random.default_rng(0).standard_normal((16, 2, 8))
    lay = units_lib.layout_for(kernel.shape, units_lib.einsum_kind([1, 2]), "scalar",
                               "per_channel")
    assert (lay.n_groups, lay.n_units, lay.unit_dim) == (16, 16, 1)
    u = units_lib.to_units(kernel, lay)
    np.testing.assert_array_equal(u[3, :, 0], kernel[:, 0, 3])  # group = head 0, dim 3
    np.testing.assert_array_equal(units_lib.from_units(u, lay), kernel)
    assert not units_lib.is_kind("einsum:2,1") and not units_lib.is_kind("einsum:x")
    with pytest.raises(ValueError, match="increasing axes"):
        units_lib.layout_for((4, 4), "einsum:2")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_share_weights(name, granularity):
    model = MODELS[name][0]()
    shared, palettes, skipped = dkm_tf.share_weights(model, K, granularity=granularity)
    assert skipped == []
    names = {p.name for p in palettes}
    for layer, expected in EXPECTED.items():
        if layer in {lay.name for lay in model.layers}:
            assert {f"{layer}/{path}" for path, _ in expected} <= names
    for p in palettes:
        w = _weight(shared, p)
        np.testing.assert_array_equal(w, p.decode())
        groups = units_lib.to_units(w, p.layout)[..., 0]
        assert max(np.unique(g).size for g in groups) <= K
        assert not np.array_equal(w, _weight(model, p))  # the source model is untouched


@tf_backend_only()
@pytest.mark.parametrize("name", list(MODELS))
def test_cluster_train_strip_save_export(name, tmp_path):
    make, steps = MODELS[name]
    model = make()
    # 4 samples (were 8): the checks do not depend on the count; a recurrent file is verified
    # one sample per invoke (its batch is fixed at 1), Keras one sample per call beside it
    x = _x(4, steps=steps)
    y = np.random.default_rng(2).standard_normal((len(x), 3)).astype(np.float32)
    wrapped, report = dkm_tf.cluster_weights(model, K, return_report=True)
    assert report.skipped == ()
    state = {v.path: np.array(v) for v in wrapped.weights
             if v.path.endswith(("_codebook", "_indices"))}
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    history = wrapped.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for v in wrapped.weights:
        if v.path in state:
            changed = not np.array_equal(state[v.path], np.array(v))
            assert changed == v.path.endswith("_codebook"), v.path  # centroids move only

    plain, palettes = dkm_tf.strip_clustering(wrapped)
    assert len(palettes) == sum(len(clusterable.clusterable_weights(lay))
                                for lay in model.layers if clusterable.is_clusterable(lay))
    for p in palettes:
        w = _weight(plain, p)
        np.testing.assert_array_equal(w, p.decode())
        assert np.unique(w).size <= K
    y_wrapped = np.asarray(wrapped(x))
    np.testing.assert_allclose(np.asarray(plain(x)), y_wrapped, atol=1e-6, rtol=0)

    path = tmp_path / "plain.keras"
    plain.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(plain(x)))
    recovered = {p.name: p for p in dkm_tf.palettes_of(loaded)}
    for p in palettes:  # lossless palettes from the values alone
        np.testing.assert_array_equal(recovered[p.name].decode(), p.decode())

    r = ex.to_tflite(loaded, tmp_path / "m.tflite", "palettized", palettes, x)
    assert r.max_rel_error < 1e-5 and all(c.ok for c in r.comparisons)
    by_name = {t["palette"]: t for t in r.tensors}
    assert set(by_name) == {p.name for p in palettes}
    for p in palettes:
        t = by_name[p.name]
        assert t["storage"].startswith("int16"), t
        recurrent = isinstance(model.get_layer(p.layer_name), (L.RNN, L.Bidirectional))
        assert ("subgraph" in t) == recurrent  # the cell's kernels live in the WHILE body
    _assert_no_float_copy(tmp_path / "m.tflite", palettes)
    if name == "recurrent":
        assert any("batch fixed at 1" in n for n in r.notes)
    else:  # T = 20 rows: the projections run as BATCH_MATMUL on the decoded weights
        assert all(by_name[f"mha/{w}_dense.kernel"]["route"].startswith("BATCH_MATMUL")
                   for w in ("query", "key", "value", "output"))


def _assert_no_float_copy(path, palettes):
    """No float32 constant of any subgraph holds a palettized kernel's values."""
    with open(path, "rb") as f:
        fm = FlatModel.from_bytes(f.read())
    digests = set()
    for p in palettes:
        for _, tperm, tshape in tflite_layouts(p.layout):
            digests.add(p.decode().astype(np.float32).transpose(tperm).reshape(tshape).tobytes())
    for i in range(len(fm.model.subgraphs)):
        view = fm.subgraph(i)
        for t in range(len(view.tensors)):
            if view.type_name(t) == "float32" and view.raw(t):
                assert view.raw(t) not in digests, (i, view.tensor_name(t))


def test_centroid_gradient_is_sum_of_member_gradients():
    """d loss / d codebook[k] of an LSTM's recurrent kernel = sum of d loss / d W over the
    weights with index k (numpy reduction of the plain layer's kernel gradient)."""
    keras.utils.set_random_seed(3)
    x = _x(4)
    lstm = L.LSTM(6)
    lstm(x)
    wrapper = ClusterWeights(lstm, n_clusters=K)
    wrapper(x)
    slot = {s.attr: s for s in wrapper._slots}["cell.recurrent_kernel"]  # noqa: SLF001
    target = np.random.default_rng(4).standard_normal((4, 6)).astype(np.float32)
    loss = float(keras.ops.sum((wrapper(x) - target) ** 2))
    grad_codebook = gradients(lambda: keras.ops.sum((wrapper(x) - target) ** 2),
                              [slot.codebook])[0][0, :, 0]

    plain = L.LSTM(6)
    plain(x)
    decoded = {p.weight_name: p.decode() for p in wrapper.palettes()}
    plain.set_weights([decoded["cell.kernel"], decoded["cell.recurrent_kernel"],
                       np.asarray(lstm.cell.bias)])
    loss_plain = float(keras.ops.sum((plain(x) - target) ** 2))
    (grad_w,) = gradients(lambda: keras.ops.sum((plain(x) - target) ** 2),
                          [plain.cell.recurrent_kernel])
    np.testing.assert_allclose(float(loss), float(loss_plain), rtol=1e-6)
    idx = units_lib.from_units(np.asarray(slot.indices)[..., None], slot.layout)
    reference = np.array([grad_w[idx == k].sum() for k in range(K)])
    np.testing.assert_allclose(grad_codebook, reference, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(reference) >= 2


def test_attach_regularizer_recurrent_and_attention(tmp_path):
    keras.utils.set_random_seed(5)
    inp = keras.Input((T, F))
    a = L.Bidirectional(L.LSTM(4), name="bilstm")(inp)
    b = L.Flatten()(L.MultiHeadAttention(2, 4, name="mha")(inp, inp))
    model = keras.Model(inp, L.Dense(2, name="head")(L.Concatenate()([a, b])))
    lam = 0.5
    with pytest.warns(UserWarning, match=r"\['mha'\] \(MultiHeadAttention / "
                                         r"GroupQueryAttention\) train, but are not saved"):
        attached = dkm_tf.attach_regularizer(model, K, lam=lam, include_dense=True)
    assert len(attached) == 4 + 4 + 1  # 2 directions x 2 kernels, 4 projections, head
    cell = model.get_layer("bilstm").forward_layer.cell
    reg = cell.recurrent_kernel.regularizer
    assert cell.recurrent_regularizer is reg  # on the cell: saved with the layer's config
    w = np.asarray(cell.recurrent_kernel, np.float64).reshape(-1)
    means = np.array([w[reg.assignment == k].mean() for k in range(K)])
    expected = 0.5 * lam * float(np.sum((w - means[reg.assignment]) ** 2))
    penalty = float(reg(cell.recurrent_kernel))
    assert np.isfinite(penalty) and penalty > 0
    np.testing.assert_allclose(penalty, expected, rtol=1e-5)
    model.compile(optimizer="sgd", loss="mse")
    assert np.isfinite(model.fit(_x(4), np.zeros((4, 2)), verbose=0).history["loss"][0])
    model.save(tmp_path / "r.keras")
    loaded = dkm_tf.load_model(tmp_path / "r.keras")
    assert len(kmeans_regularizers(loaded)) == 5  # MHA's are not saved (warned above)
    assert dkm_tf.detach_regularizer(model) == 9 and not model.losses
    with pytest.raises(ValueError, match=r"Expected 'scalar' or 'auto' for weight "
                                         r"'query_dense.kernel' of layer 'mha'"):
        dkm_tf.attach_regularizer(model, K, unit="row", layers=["mha"])


def test_energy_counts_recurrent_and_attention_macs():
    shapes, skipped = read_keras_model(_recurrent_model())
    macs = {s.name: s.macs for s in shapes}
    assert not [r for _, r in skipped if "unsupported" in r]
    u = 32  # LSTM: T * F * 4u input MACs, T * u * 4u recurrent MACs
    assert macs["lstm/cell.kernel"] == T * F * 4 * u
    assert macs["lstm/cell.recurrent_kernel"] == T * u * 4 * u
    assert macs["bilstm/backward_layer.cell.recurrent_kernel"] == T * 8 * 4 * 8
    assert macs["gru/cell.kernel"] == T * F * 3 * 8
    assert macs["srnn/cell.recurrent_kernel"] == T * 8 * 8
    assert macs["stack/cell.cells.1.kernel"] == T * 6 * 3 * 5  # GRUCell fed by LSTMCell(6)
    weights = {s.name: s.n_weights for s in shapes}
    assert weights["lstm/cell.recurrent_kernel"] == u * 4 * u

    shapes, _ = read_keras_model(_attention_model())
    macs = {s.name: s.macs for s in shapes}
    d, h, dk, dv = 16, 2, 8, 4
    assert macs["mha/query_dense.kernel"] == T * d * h * dk
    assert macs["mha/value_dense.kernel"] == T * d * h * dv
    assert macs["mha/output_dense.kernel"] == T * h * dv * d
    assert macs["mha/scores"] == T * h * T * dk  # Q K^T per head
    assert macs["mha/context"] == T * h * T * dv  # softmax(.) V per head
    assert macs["ein/kernel"] == T * d * 2 * 8

    model = _attention_model()
    shared, palettes, _ = dkm_tf.share_weights(model, K)
    report = dkm_tf.energy.estimate(shared, palettes=palettes)
    shared_rows = {row.shape.name for row in report.layers if row.n_clusters == K}
    assert shared_rows == {"proj", "ein/kernel", "head"} | {
        f"mha/{w}_dense.kernel" for w in ("query", "key", "value", "output")}


@tf_backend_only()
def test_split_weight_is_kept_float_and_reported(tmp_path):
    """GRU(reset_after=False) reads its recurrent kernel in two column blocks: the converter
    writes two constants, the export keeps them float32 and says so."""
    keras.utils.set_random_seed(6)
    inp = keras.Input((T, F))
    model = keras.Model(inp, L.GRU(8, reset_after=False, name="gru")(inp))
    shared, palettes, _ = dkm_tf.share_weights(model, K)
    r = ex.to_tflite(shared, tmp_path / "g.tflite", "palettized", palettes, _x(4))
    by_name = {t["palette"]: t for t in r.tensors}
    kept = by_name["gru/cell.recurrent_kernel"]
    assert kept["storage"] == "float32 (not found)" and kept["not_found"]
    assert by_name["gru/cell.kernel"]["storage"].startswith("int16")
    assert any(n.startswith("gru/cell.recurrent_kernel: kept float32") for n in r.notes)
    assert r.max_rel_error < 1e-5
