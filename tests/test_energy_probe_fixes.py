"""Energy estimate fixes found by an adversarial probe; every expectation computed by hand.

* A Dense on an N-D tensor is one FULLY_CONNECTED on a 2-D `[positions, in]` input (or N-D
  with keep_num_dims) in a .tflite: charged for all its positions, as by the Keras reader,
  in the float file and in both palettized decode modes (before: 1 position).
* A conv lowered to BATCH_MATMUL whose weight sits on the left of the product keeps its
  palette and its weight count in a decode-once file (before: charged as float, with the
  activations taken for its weights).
* The one-hot DEPTHWISE_CONV_2D im2col helper of a decode-once file is reported, not charged.
* Conv1D/2DTranspose: in_h·in_w·in_c·kh·kw·out_c MACs in every reader, palettes applied.
* Palettes (or pruning) naming a layer that is not modelled (Embedding, Conv3D) give a
  `skipped` entry saying so; a layer the model does not have still raises.
"""

import math
import types

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from testing import layer_stack  # noqa: E402

from dkm_tf import energy  # noqa: E402
from dkm_tf.energy import SharingInfo  # noqa: E402
from dkm_tf.graph.share import share_weights  # noqa: E402

L = keras.layers
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="tracing and TFLite conversion need the TensorFlow backend")


def _sample(shape, n=2):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)


def _export(model, path, fmt, palettes=None, **kw):
    from dkm_tf.export import to_tflite

    x = _sample(tuple(model.inputs[0].shape)[1:])
    to_tflite(model, path, fmt, palettes, x, **kw)
    return str(path)


def _by_weights(report):
    """{n_weights: (macs, K)} of the conv / dense records (each size appears once here)."""
    return {x.shape.n_weights: (x.macs, x.n_clusters) for x in report.layers if x.macs}


# ------------------------------------------------------------------ 1. Dense on N-D tensors


@TF_ONLY
@pytest.mark.parametrize("shape", [(4, 4, 8), (6, 8)])
def test_dense_on_nd_input_same_macs_in_keras_float_and_palettized_files(shape, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    h = L.Dense(16, name="fc")(inp)
    out = L.Dense(4, name="head")(L.Flatten()(h))
    shared = share_weights(keras.Model(inp, out), 4)
    positions, f_in = int(np.prod(shape[:-1])), shape[-1]
    expected = {f_in * 16: (positions * f_in * 16, 4),     # fc at every position
                positions * 16 * 4: (positions * 16 * 4, 4)}  # head on the flattened map
    keras_report = energy.estimate(shared.model, palettes=shared.palettes)
    assert _by_weights(keras_report) == expected
    files = {"float": _export(shared.model, tmp_path / "f.tflite", "float"),
             "once": _export(shared.model, tmp_path / "o.tflite", "palettized",
                             shared.palettes, decode="once", keep_float=None),
             "per_invoke": _export(shared.model, tmp_path / "p.tflite", "palettized",
                                   shared.palettes, decode="per_invoke")}
    for label, path in files.items():
        got = _by_weights(energy.estimate(path))
        want = expected if label != "float" else {n: (m, None) for n, (m, _) in
                                                  expected.items()}
        assert got == want, label


@TF_ONLY
def test_fully_connected_n_d_and_folded_inputs_at_any_stored_batch(tmp_path):
    """x @ W on a (batch, 4, 5, 6) tensor is one FULLY_CONNECTED with keep_num_dims (4-D
    input); on the tensor reshaped to (-1, 6) one with a 2-D input (stored as [1, 6] at a
    dynamic batch: the rows are read through the RESHAPE) or, at a fixed batch, a 4-D input
    flattened to [batch * 20, 6]. All are charged per image: 20 rows of 6 x 7."""
    import tensorflow as tf

    w = tf.constant(np.ones((6, 7), np.float32))
    for batch in (None, 1, 3):  # None: dynamic, stored as 1
        for label, fn in [("n_d", lambda x: tf.matmul(x, w)),
                          ("folded", lambda x: tf.matmul(tf.reshape(x, (-1, 6)), w))]:
            fn = tf.function(fn)
            concrete = fn.get_concrete_function(tf.TensorSpec((batch, 4, 5, 6), tf.float32))
            path = tmp_path / f"{label}_{batch}.tflite"
            path.write_bytes(
                tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn).convert())
            report = energy.estimate(str(path))
            assert [x.macs for x in report.layers] == [4 * 5 * 6 * 7], (label, batch)
            assert all("rows" not in why for _, why in report.skipped)


@TF_ONLY
def test_weight_left_lowered_conv_keeps_its_palette_in_a_once_file(tmp_path):
    """Conv 3x3 stride 2 on 8x8x8 -> 4x4x32: 16 output rows, so the once file multiplies
    W [32, 72] . im2col^T (the weight on the left)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 8))
    out = L.Conv2D(32, 3, strides=2, padding="same", name="c")(inp)
    shared = share_weights(keras.Model(inp, out), 4)
    path = _export(shared.model, tmp_path / "o.tflite", "palettized", shared.palettes,
                   decode="once", keep_float=None)
    report = energy.estimate(path)
    [rec] = [x for x in report.layers if x.macs]
    assert rec.shape.op == "BATCH_MATMUL"
    assert (rec.shape.n_weights, rec.shape.positions) == (72 * 32, 16)
    assert (rec.macs, rec.n_clusters) == (16 * 32 * 72, 4)


# ---------------------------------------------------------------- 2. im2col helper (once)


def _patchify():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 4, strides=4, name="stem")(inp)            # 4x4x8, one-hot im2col
    h = L.DepthwiseConv2D(3, padding="same", name="dw")(h)      # a real depthwise conv
    h = L.Conv2D(8, 3, padding="same", name="c2")(h)
    return keras.Model(inp, L.GlobalAveragePooling2D()(h))


STEM, DW, C2 = 16 * 8 * 4 * 4 * 3, 16 * 8 * 9, 16 * 8 * 9 * 8


@TF_ONLY
def test_im2col_helper_of_a_once_file_is_reported_not_charged(tmp_path):
    shared = share_weights(_patchify(), 4)
    assert energy.estimate(shared.model).macs == STEM + DW + C2
    path = _export(shared.model, tmp_path / "o.tflite", "palettized", shared.palettes,
                   decode="once", keep_float=None)
    report = energy.estimate(path)
    assert report.macs == STEM + DW + C2
    assert sorted(x.macs for x in report.layers if x.macs) == sorted([STEM, DW, C2])
    helper = [why for _, why in report.skipped if why.startswith("im2col")]
    assert len(helper) == 1 and "im2col_filter" in helper[0] and "not charged" in helper[0]

    # the same file with one tap of the helper's filter changed: no longer a copy, charged
    from tensorflow.lite.python import schema_py_generated as schema

    buf = bytearray((tmp_path / "o.tflite").read_bytes())
    graph = schema.Model.GetRootAs(buf, 0).Subgraphs(0)
    model = schema.Model.GetRootAs(buf, 0)
    [t] = [graph.Tensors(i) for i in range(graph.TensorsLength())
           if b"im2col_filter" in (graph.Tensors(i).Name() or b"")]
    data = model.Buffers(t.Buffer()).DataAsNumpy()  # a view into `buf`
    values = np.frombuffer(bytes(data), np.float32).copy()
    values[np.argmax(values)] = 2.0
    data[:] = np.frombuffer(values.tobytes(), np.uint8)
    (tmp_path / "x.tflite").write_bytes(bytes(buf))
    edited = energy.estimate(str(tmp_path / "x.tflite"))
    assert not any(why.startswith("im2col") for _, why in edited.skipped)
    # + the depthwise conv: 4x4 positions x 48 channels (3 x 16 offsets) x 4x4 taps each
    assert edited.macs == STEM + DW + C2 + 16 * 48 * 16


# ------------------------------------------------------------------ 3a. Conv1D/2DTranspose


def _transpose_layers(padding):
    return [L.Conv2DTranspose(4, 3, strides=2, padding=padding, name="up"),
            L.Conv2D(2, 1, name="o")]


@TF_ONLY
@pytest.mark.parametrize("padding,out_hw", [("same", (12, 10)), ("valid", (13, 11))])
def test_conv2d_transpose_macs_by_hand_in_every_reader(padding, out_hw, tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 5, 3))
    x = inp
    for layer in _transpose_layers(padding):
        x = layer(x)
    shared = share_weights(keras.Model(inp, x), 4)
    up = 6 * 5 * 3 * 3 * 3 * 4                  # in_h * in_w * in_c * kh * kw * out_c
    o = math.prod(out_hw) * 2 * 4
    expected = {3 * 3 * 3 * 4: up, 4 * 2: o}    # by kernel size

    keras_report = energy.estimate(shared.model, palettes=shared.palettes)
    assert {n: m for n, (m, _) in _by_weights(keras_report).items()} == expected
    assert keras_report.layer("up").n_clusters == 4
    assert "up" not in dict(keras_report.skipped)

    sub = layer_stack(_transpose_layers(padding), "sub")
    sub(np.zeros((1, 6, 5, 3), np.float32))
    traced = energy.estimate(sub, input_shape=(6, 5, 3))
    assert {n: m for n, (m, _) in _by_weights(traced).items()} == expected
    assert traced.layers[0].name == "up"

    for fmt, kw, k in [("float", {}, None), ("palettized", {"decode": "per_invoke"}, 4)]:
        path = _export(shared.model, tmp_path / f"{fmt}.tflite", fmt,
                       shared.palettes if k else None, **kw)
        got = _by_weights(energy.estimate(path))
        assert got == {n: (m, k) for n, m in expected.items()}, fmt


@TF_ONLY
def test_conv1d_transpose_in_keras_traced_and_tflite(tmp_path):
    import tensorflow as tf

    def layers():
        return [L.Conv1DTranspose(5, 3, strides=2, name="up1")]

    keras.utils.set_random_seed(0)
    inp = keras.Input((9, 3))
    model = keras.Model(inp, layers()[0](inp))
    sub = layer_stack(layers(), "sub")
    sub(np.zeros((1, 9, 3), np.float32))
    path = tmp_path / "t.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    for report in (energy.estimate(model), energy.estimate(sub, input_shape=(9, 3)),
                   energy.estimate(str(path))):
        assert [(x.macs, x.shape.n_weights) for x in report.layers] == [(9 * 3 * 3 * 5,
                                                                         3 * 3 * 5)]
    assert energy.estimate(sub, input_shape=(9, 3)).layers[0].shape.layer == "up1"


# ------------------------------------------------- 3b. palettes of layers not modelled


def _embedding_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((10,), dtype="int32")
    h = L.Embedding(50, 8, name="emb")(inp)
    h = L.Conv1D(8, 3, name="conv")(h)                          # 8 positions
    return keras.Model(inp, L.Dense(3, name="fc")(L.GlobalMaxPooling1D()(h)))


def _conv3d_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 6, 6, 2))
    h = L.Conv3D(4, 3, name="c3")(inp)
    return keras.Model(inp, L.Dense(3, name="fc")(L.GlobalAveragePooling3D()(h)))


@pytest.mark.parametrize("make,layer,why,macs", [
    (_embedding_model, "emb", "Embedding: a table lookup, no MACs", 8 * 8 * 3 * 8 + 8 * 3),
    (_conv3d_model, "c3", "unsupported layer type Conv3D", 4 * 3),
])
def test_palettes_of_unmodelled_layers_are_reported_not_raised(make, layer, why, macs):
    shared = share_weights(make(), 4)
    assert layer in {p.layer_name for p in shared.palettes}
    report = energy.estimate(shared.model, palettes=shared.palettes)
    assert report.macs == macs
    reasons = dict(report.skipped)
    assert reasons[layer].startswith(why)
    assert reasons[layer].endswith("its palette (K=4, d=1) is not charged")
    assert all(x.n_clusters == 4 for x in report.layers if x.macs)    # the others applied
    pruned = energy.estimate(shared.model, pruning={layer: 0.5})
    assert dict(pruned.skipped)[layer].endswith("its pruning (kept 0.5) is not applied")
    # a layer the model does not have is still an error
    fake = types.SimpleNamespace(layer_name="nope", n_clusters=4, unit_dim=1, n_units=24)
    with pytest.raises(ValueError, match="names layer 'nope', which is not a conv or dense"):
        energy.estimate(shared.model, palettes=[*shared.palettes, fake])
    with pytest.raises(ValueError, match="names layer 'nope'"):
        energy.estimate(shared.model, weight_sharing={"nope": SharingInfo(4, 1, 24)})
    with pytest.raises(ValueError, match="Pruning info names layer 'nope'"):
        energy.estimate(shared.model, pruning={"nope": 0.5})


def test_palettes_file_beside_a_keras_model_with_an_embedding(tmp_path):
    from dkm_tf.pipeline import save_palettes

    shared = share_weights(_embedding_model(), 4)
    path = tmp_path / "clustered.keras"
    shared.model.save(path)
    save_palettes(shared.palettes, str(path))
    report = energy.estimate(str(path))
    assert report.macs == 8 * 8 * 3 * 8 + 8 * 3
    assert dict(report.skipped)["emb"].endswith("is not charged")
    assert not any("REJECTED" in n for n in report.notes)
