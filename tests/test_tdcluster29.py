"""TimeDistributed(Conv2D) / TimeDistributed(Dense) are clustered as the layer they wrap.

Until 2026-12-07 a TimeDistributed layer was skipped ("the TimeDistributed wrapper is not
supported"), so a video / sequence model kept its per-frame kernels float. Every check here is
against numpy: the shared model's outputs against a conv + dense computed from the codebook
and the indices, the centroid gradient against the per-weight gradients summed by index, the
palettized file's tensors against the palettes, and its outputs against Keras at batch 1 and 3.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import gradients, tf_backend_only  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.graph import clusterable  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402

L = keras.layers
T, H, W, C = 3, 6, 6, 2
K = 4


def _video_model(seed=0):
    """Frames (T, H, W, C) -> TimeDistributed(Conv2D 3x3) -> per-frame Flatten ->
    TimeDistributed(Dense): the per-frame kernels of a small video model."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((T, H, W, C))
    x = L.TimeDistributed(L.Conv2D(4, 3, name="conv"), name="td_conv")(inp)
    x = L.TimeDistributed(L.Flatten(), name="td_flat")(x)
    x = L.TimeDistributed(L.Dense(5, name="fc"), name="td_fc")(x)
    model = keras.Model(inp, x, name="video")
    for layer in (model.get_layer("td_conv").layer, model.get_layer("td_fc").layer):
        layer.bias.assign(np.random.default_rng(seed + 1).normal(size=layer.bias.shape)
                          .astype("float32"))
    return model


def _frames(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, T, H, W, C)).astype("float32")


def _decode(palette):
    """codebook[indices] (gathered here) put in the kernel's shape by the layout's unit order."""
    gathered = np.take_along_axis(palette.codebook, palette.indices.astype(np.int64)[..., None],
                                  axis=1)  # (G, M, d)
    return units_lib.from_units(gathered, palette.layout)


def _index_map(palette):
    """The centroid index of every weight, in the kernel's shape."""
    return units_lib.from_units(palette.indices.astype(np.int64)[..., None], palette.layout)


def _numpy_video(x, conv_k, conv_b, fc_k, fc_b):
    """The video model in numpy: valid 3x3 conv per frame, row-major flatten, dense."""
    n, t = x.shape[:2]
    kh, kw = conv_k.shape[:2]
    oh, ow = H - kh + 1, W - kw + 1
    conv = np.zeros((n, t, oh, ow, conv_k.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i:i + kh, j:j + kw, :].astype(np.float64)
            conv[:, :, i, j, :] = np.einsum("ntabc,abco->nto", patch, conv_k) + conv_b
    return conv.reshape(n, t, -1) @ fc_k.astype(np.float64) + fc_b


def test_clusterable_weights_of_time_distributed_layers():
    model = _video_model()
    td_conv, td_fc = model.get_layer("td_conv"), model.get_layer("td_fc")
    assert clusterable.is_clusterable(td_conv) and clusterable.is_clusterable(td_fc)
    got = clusterable.clusterable_weights(td_conv)
    assert [(p, k) for p, _, k in got] == [("layer.kernel", "conv")]
    assert got[0][1] is td_conv.layer.kernel
    assert clusterable.get_weight(td_fc, "layer.kernel") is td_fc.layer.kernel
    nested = L.TimeDistributed(L.TimeDistributed(L.Dense(3)))
    nested.build((None, 2, 4, 6))
    assert [p for p, _, _ in clusterable.clusterable_weights(nested)] == ["layer.layer.kernel"]
    rnn = L.TimeDistributed(L.LSTM(4))
    rnn.build((None, 2, 3, 6))
    assert [p for p, _, _ in clusterable.clusterable_weights(rnn)] == \
        ["layer.cell.kernel", "layer.cell.recurrent_kernel"]
    assert not clusterable.is_clusterable(L.TimeDistributed(L.BatchNormalization()))
    with pytest.raises(TypeError, match=r"its cell ConvLSTMCell is not a SimpleRNNCell"):
        clusterable.clusterable_weights(L.TimeDistributed(L.ConvLSTM1D(2, 3)))


def test_share_weights_matches_numpy_reference():
    model = _video_model()
    x = _frames(3)
    shared = dkm_tf.share_weights(model, n_clusters=K)
    assert shared.skipped == []
    by_name = {p.name: p for p in shared.palettes}
    assert sorted(by_name) == ["td_conv/layer.kernel", "td_fc/layer.kernel"]
    conv_k = _decode(by_name["td_conv/layer.kernel"])
    fc_k = _decode(by_name["td_fc/layer.kernel"])
    assert np.unique(conv_k).size <= K and np.unique(fc_k).size <= K
    out = shared.model.get_layer("td_conv").layer, shared.model.get_layer("td_fc").layer
    np.testing.assert_array_equal(np.asarray(out[0].kernel), conv_k)
    np.testing.assert_array_equal(np.asarray(out[1].kernel), fc_k)
    want = _numpy_video(x, conv_k, np.asarray(out[0].bias), fc_k, np.asarray(out[1].bias))
    np.testing.assert_allclose(np.asarray(shared.model(x)), want, rtol=0, atol=1e-5)
    # the source model keeps its float kernels (was: the shared model equal to it, unclustered)
    assert np.unique(np.asarray(model.get_layer("td_fc").layer.kernel)).size == 64 * 5


def test_centroid_gradient_is_sum_of_member_gradients():
    """d loss / d codebook[k] of a TimeDistributed(Conv2D) = the sum of d loss / d W over the
    weights with index k, W the plain layer's kernel set to the decoded values."""
    keras.utils.set_random_seed(3)
    x = _frames(2, seed=3)
    td = L.TimeDistributed(L.Conv2D(3, 3))
    td(x)
    wrapper = ClusterWeights(td, n_clusters=K)
    target = np.random.default_rng(4).normal(size=(2, T, 4, 4, 3)).astype(np.float32)
    loss = float(keras.ops.sum((wrapper(x) - target) ** 2))
    (slot,) = wrapper._slots  # noqa: SLF001
    assert slot.attr == "layer.kernel"
    grad_codebook = gradients(lambda: keras.ops.sum((wrapper(x) - target) ** 2),
                              [slot.codebook])[0][0, :, 0]

    plain = L.TimeDistributed(L.Conv2D(3, 3))
    plain(x)
    (palette,) = wrapper.palettes()
    decoded = _decode(palette)
    plain.set_weights([decoded, np.asarray(td.layer.bias)])
    (grad_w,) = gradients(lambda: keras.ops.sum((plain(x) - target) ** 2), [plain.layer.kernel])
    np.testing.assert_allclose(loss, float(keras.ops.sum((plain(x) - target) ** 2)), rtol=1e-6)
    idx = _index_map(palette)
    reference = np.array([grad_w[idx == k].sum() for k in range(K)])
    np.testing.assert_allclose(grad_codebook, reference, rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(reference) >= 2


@tf_backend_only()
def test_cluster_fit_strip_save_load(tmp_path):
    model = _video_model()
    x = _frames(4)
    y = np.random.default_rng(2).normal(size=(4, T, 5)).astype(np.float32)
    wrapped, report = dkm_tf.cluster_weights(model, K, return_report=True)
    assert report.skipped == ()
    assert {lay.name for lay in wrapped.layers if isinstance(lay, ClusterWeights)} == \
        {"cluster_td_conv", "cluster_td_fc"}
    state = {v.path: np.array(v) for v in wrapped.weights
             if v.path.endswith(("_codebook", "_indices"))}
    assert len(state) == 4
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    wrapped.fit(x, y, epochs=1, batch_size=4, verbose=0)
    for v in wrapped.weights:
        if v.path in state:
            assert (not np.array_equal(state[v.path], np.array(v))) == \
                v.path.endswith("_codebook"), v.path  # centroids train, indices stay

    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(wrapped(x)))
    clone = keras.Model.from_config(wrapped.get_config())
    clone.set_weights(wrapped.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(wrapped(x)))

    plain, palettes = dkm_tf.strip_clustering(loaded)
    assert sorted(p.name for p in palettes) == ["td_conv/layer.kernel", "td_fc/layer.kernel"]
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(wrapped(x)), atol=1e-6, rtol=0)
    for p in palettes:
        kernel = plain.get_layer(p.layer_name).layer.kernel
        np.testing.assert_array_equal(np.asarray(kernel), _decode(p))
    plain.save(tmp_path / "plain.keras")
    recovered = {p.name: p for p in dkm_tf.palettes_of(
        keras.models.load_model(tmp_path / "plain.keras"))}
    assert {n: p.decode().tobytes() for n, p in recovered.items()} == \
        {p.name: p.decode().tobytes() for p in palettes}


def test_depthwise_inside_time_distributed_defaults_per_channel():
    """share_weights and cluster_weights give a TimeDistributed(DepthwiseConv2D) the per-channel
    codebooks of a plain DepthwiseConv2D (cluster_weights gave it one per tensor)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((2, 6, 6, 3))
    model = keras.Model(inp, L.TimeDistributed(L.DepthwiseConv2D(3), name="td_dw")(inp))
    shared = dkm_tf.share_weights(model, K)
    wrapped = dkm_tf.cluster_weights(model, K)
    _, stripped = dkm_tf.strip_clustering(wrapped)
    assert [p.layout.granularity for p in shared.palettes] == ["per_channel"]
    assert [p.layout.granularity for p in stripped] == ["per_channel"]
    assert stripped[0].codebook.shape[0] == 3


def test_overrides_key_the_wrapper():
    model = _video_model()
    shared = dkm_tf.share_weights(model, K, overrides={"td_fc": {"n_clusters": 2},
                                                        "td_conv": None})
    assert [(p.name, p.codebook.shape[1]) for p in shared.palettes] == [("td_fc/layer.kernel", 2)]
    assert [name for name, _ in shared.skipped] == ["td_conv"]
    # the wrapped layer's class or name reaches it too, below the wrapper's own keys
    for key, skipped in (("Conv2D", "td_conv"), ("fc", "td_fc")):
        shared = dkm_tf.share_weights(model, K, overrides={key: None})
        assert [name for name, _ in shared.skipped] == [skipped]
        wrapped = dkm_tf.cluster_weights(model, K, overrides={key: None})
        assert not isinstance(wrapped.get_layer(skipped), ClusterWeights)
    shared = dkm_tf.share_weights(model, K, overrides={"Conv2D": None, "td_conv": {}})
    assert [p.name for p in shared.palettes] == ["td_conv/layer.kernel", "td_fc/layer.kernel"]


def test_unsupported_inside_time_distributed_is_named():
    """A TimeDistributed of a custom layer holding a Dense is skipped with the reason, and
    scaled kernel clustering refuses a TimeDistributed(Conv2D) by name."""

    class Block(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.fc = L.Dense(3)

        def build(self, shape):
            self.fc.build(shape)

        def call(self, x):
            return self.fc(x)

        def compute_output_shape(self, shape):
            return (*shape[:-1], 3)

    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 6))
    y = L.TimeDistributed(L.Dense(2), name="td_d")(L.TimeDistributed(Block(), name="td_b")(inp))
    shared = dkm_tf.share_weights(keras.Model(inp, y), K)
    assert [p.name for p in shared.palettes] == ["td_d/layer.kernel"]
    ((name, why),) = shared.skipped
    assert name == "td_b" and "the Block it wraps is not supported" in why
    assert "layer.fc.kernel (Dense)" in why
    with pytest.raises(ValueError, match=r"a TimeDistributed layer is not supported"):
        dkm_tf.share_weights(_video_model(), K, unit="kernel", codebook="shared")


def _interpret(path, x):
    interpreters = pytest.importorskip("ai_edge_litert.interpreter")
    it = interpreters.Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@tf_backend_only()
def test_palettized_export_matches_keras(tmp_path):
    from dkm_tf import export  # noqa: PLC0415
    from dkm_tf.export.palettize import tflite_layouts  # noqa: PLC0415
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    model = _video_model()
    x = _frames(3)
    shared = dkm_tf.share_weights(model, K)
    path = tmp_path / "video.tflite"
    r = export.to_tflite(shared.model, path, "palettized", shared.palettes, x, keep_float=None)
    assert r.bytes == os.path.getsize(path)
    for b in (1, 3):
        np.testing.assert_allclose(_interpret(path, x[:b]), np.asarray(shared.model(x[:b])),
                                   rtol=0, atol=1e-5)
    by_name = {t["palette"]: t for t in r.tensors}
    assert sorted(by_name) == ["td_conv/layer.kernel", "td_fc/layer.kernel"]
    fm = FlatModel.from_bytes(path.read_bytes())
    view = fm.subgraph(0)
    consts = [(view.type_name(t), view.raw(t)) for t in range(len(view.tensors)) if view.raw(t)]
    for p in shared.palettes:
        t, n = by_name[p.name], p.indices.size
        assert t["storage"] == "int16 (7 indices/int16)", t  # 2-bit indices, 7 per int16
        assert t["index_bytes"] == 2 * -(-n // 7)
        assert ("int16", t["index_bytes"]) in {(d, len(raw)) for d, raw in consts}
        assert ("float32", p.codebook.astype(np.float32).tobytes()) in consts
        for _, perm, shape in tflite_layouts(p.layout):  # no float copy of the kernel
            dense = _decode(p).astype(np.float32).transpose(perm).reshape(shape).tobytes()
            assert ("float32", dense) not in consts


@tf_backend_only()
def test_compress_counts_each_weight_once():
    model = _video_model()
    x, y = _frames(8), np.zeros((8, T, 5), np.float32)
    model.compile(optimizer="adam", loss="mse")
    result = dkm_tf.compress(model, (x, y), method="wr", n_clusters=K, verbose=0)
    rows = {row["name"]: row for row in result.size.rows}
    assert sorted(rows) == ["td_conv/layer.kernel", "td_fc/layer.kernel"]
    assert [rows[n]["N"] for n in sorted(rows)] == [3 * 3 * C * 4, 4 * 4 * 4 * 5]
    assert sum(r["N"] for r in rows.values()) + result.size.other_params == \
        model.count_params() == 72 + 320 + 4 + 5
    assert result.size.totals["original_bits"] == 32 * model.count_params()  # once each


def test_one_layer_in_two_time_distributed_is_clustered_once():
    """TimeDistributed(d) at two places reads one kernel: the copying entry points refuse the
    tie; share_weights(inplace=True) clusters it once (it wrote two palettes for one tensor,
    counted twice by the size report)."""
    keras.utils.set_random_seed(0)
    inp, d = keras.Input((3, 6)), L.Dense(6, name="d")
    out = L.TimeDistributed(d, name="tb")(L.TimeDistributed(d, name="ta")(inp))
    model = keras.Model(inp, out)
    for entry in (dkm_tf.share_weights, dkm_tf.cluster_weights):
        with pytest.raises(ValueError, match=r"'ta'.layer.kernel is tracked by layer 'tb'"):
            entry(model, K)
    shared = dkm_tf.share_weights(model, K, inplace=True)
    assert [p.name for p in shared.palettes] == ["ta/layer.kernel"]
    assert [name for name, _ in shared.skipped] == ["tb"]
    assert "the weight ta/layer.kernel (the same variable)" in shared.skipped[0][1]
    assert [row["N"] for row in dkm_tf.size_report(shared.palettes).rows] == [36]
    np.testing.assert_array_equal(np.asarray(d.kernel), _decode(shared.palettes[0]))
