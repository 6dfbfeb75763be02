"""`.tflite` records named after the Keras layer that made them, as the Keras estimate names them.

`estimate(file, palettes=...)` matches palettes to records by layer name, and before / after
tables compare Keras and file records by name. Found on keras.applications at 32x32: the
depthwise convs of MobileNetV2 / V3 and EfficientNetB0 were named after the BatchNormalization
or ReLU fused into them (`expanded_conv_depthwise_relu_1`), ConvNeXt's grouped convs lowered to
BATCH_MATMUL by the palettized exporter `batch_matmul_<index>`, and a palette of a layer named
`x_1` took the record of layer `x` (which the file renames `x_1`).
"""

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf import energy, export  # noqa: E402


def _linear(report):
    return [(rec.name, rec.shape.macs) for rec in report.layers
            if rec.shape.kind in ("conv", "dense")]


def _same_names(keras_report, path):
    """Asserts the file's conv / dense records are the Keras estimate's, in order, each named
    after its layer (Keras 3 export renames scopes `layer` -> `layer_1`)."""
    want, got = _linear(keras_report), _linear(energy.estimate(str(path)))
    assert [m for _, m in got] == [m for _, m in want]
    for (name, _), (keras_name, _) in zip(got, want, strict=True):
        assert re.fullmatch(re.escape(keras_name) + r"(_\d+)?", name), (name, keras_name)


def _bn_statistics(model):
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))


def _inverted_residual():
    # MobileNetV2's block: conv -> BN -> ReLU6, depthwise -> BN -> ReLU (V3: a ReLU layer)
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1, use_bias=False, name="expand")(inp)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(6.0, name="expand_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6.0, name="dw_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw2")(x)
    x = keras.layers.BatchNormalization(name="dw2_bn")(x)
    x = keras.layers.ReLU(name="re_lu")(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, x)
    _bn_statistics(model)
    # a zero bias of the output layer is dropped: the record would be `fully_connected_<i>`
    model.get_layer("head").bias.assign(np.arange(1.0, 4.0, dtype="float32"))
    return model


def _samples(shape):
    return np.random.default_rng(1).normal(size=(4, *shape)).astype("float32")


def test_float_depthwise_named_after_its_layer_not_the_fused_bn_or_relu(tmp_path):
    model = _inverted_residual()
    path = tmp_path / "f.tflite"
    export.to_tflite(model, path, "float", sample_inputs=_samples((8, 8, 4)))
    # was: `dw_relu_1`, `re_lu_1` (the fused activation's scope, first in the tensor name)
    _same_names(energy.estimate(model), path)


def test_palettized_depthwise_named_and_its_palette_matched(tmp_path):
    model = _inverted_residual()
    shared = dkm_tf.share_weights(model, n_clusters=16)
    path = tmp_path / "p.tflite"
    export.to_tflite(shared.model, path, "palettized", palettes=shared.palettes,
                     sample_inputs=_samples((8, 8, 4)), keep_float=None)
    _same_names(energy.estimate(shared.model), path)
    # was refused: "names layer 'dw', which is not a conv or dense layer of the model"
    est = energy.estimate(str(path), palettes=shared.palettes)
    got = {rec.name: rec.n_clusters for rec in est.layers if rec.shape.kind in ("conv", "dense")}
    assert got == {f"{p.layer_name}_1": p.n_clusters for p in shared.palettes}
    assert sorted(got.values()) == [9, 9, 12, 16, 16]  # depthwise: 9 weights per codebook


def test_grouped_conv_lowered_to_batch_matmul_named_after_its_layer(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", groups=4, name="gdw")(inp)  # ConvNeXt's
    x = keras.layers.Dense(4, name="pw")(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    # the converter keeps no scope in a grouped conv's tensor names but its bias's (a zero
    # bias is a constant shared with other layers: named `batch_matmul_<index>` still)
    model.get_layer("gdw").bias.assign(np.arange(1.0, 5.0, dtype="float32"))
    export.to_tflite(model, tmp_path / "f.tflite", "float", sample_inputs=_samples((6, 6, 4)))
    _same_names(energy.estimate(model), tmp_path / "f.tflite")
    shared = dkm_tf.share_weights(model, n_clusters=16)
    path = tmp_path / "g.tflite"
    report = export.to_tflite(shared.model, path, palettes=shared.palettes,
                              sample_inputs=_samples((6, 6, 4)), keep_float=None)
    assert sum("groups batched" in t["route"] for t in report.tensors) == 1
    # was: `batch_matmul_<index>` (an N-D BATCH_MATMUL was named by its output only)
    _same_names(energy.estimate(shared.model), path)
    est = energy.estimate(str(path), palettes=shared.palettes)
    assert {rec.name: rec.n_clusters for rec in est.layers
            if rec.shape.kind in ("conv", "dense")} == {"gdw_1": 16, "pw_1": 16}


@pytest.mark.parametrize("reverse", [False, True])
def test_palette_of_layer_x_1_matches_its_own_record_not_x(tmp_path, reverse):
    # MobileNetV3Small has layers `..._squeeze_excite_conv` and `..._squeeze_excite_conv_1`;
    # the file names them `..._conv_1` and `..._conv_1_<n>`
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 4, 8))
    x = keras.layers.Conv2D(8, 1, name="c")(inp)
    x = keras.layers.Conv2D(8, 1, name="c_1")(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    shared = dkm_tf.share_weights(model, n_clusters=16, overrides={"c": {"n_clusters": 4}})
    path = tmp_path / "s.tflite"
    export.to_tflite(shared.model, path, palettes=shared.palettes,
                     sample_inputs=_samples((4, 4, 8)), keep_float=None)
    palettes = shared.palettes[::-1] if reverse else shared.palettes
    # was refused in either order, "describes 64 weights ... matches no unassigned kernel":
    # `c_1`'s palette took record `c_1`, c's (as digitsclassifier's `conv2d_1` did)
    est = energy.estimate(str(path), palettes=palettes)
    got = {rec.name: rec.n_clusters for rec in est.layers if rec.shape.kind != "pool"}
    assert got.pop("c_1") == 4
    ((other, k),) = got.items()  # TF's scope for `c_1` here: `c_1_2`
    assert re.fullmatch(r"c_1_\d+", other) and k == 16
    keras_est = energy.estimate(shared.model, palettes=palettes)  # Keras names: unchanged
    assert {rec.name: rec.n_clusters for rec in keras_est.layers
            if rec.shape.kind != "pool"} == {"c": 4, "c_1": 16}


def test_palette_of_x_1_with_x_left_float_is_charged_on_its_own_record(tmp_path):
    # review fix: with `c` float and only `c_1` palettized, `c_1`'s palette was charged on
    # record `c_1`, which is layer `c` renamed by the file, and `c_1`'s own record as float
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 4, 8))
    x = keras.layers.Conv2D(8, 1, name="c")(inp)
    x = keras.layers.Conv2D(8, 1, name="c_1")(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    shared = dkm_tf.share_weights(model, n_clusters=4, overrides={"c": None})
    assert [p.layer_name for p in shared.palettes] == ["c_1"]
    path = tmp_path / "s.tflite"
    report = export.to_tflite(shared.model, path, palettes=shared.palettes,
                              sample_inputs=_samples((4, 4, 8)), keep_float=None)
    (row,) = report.tensors
    est = energy.estimate(str(path), palettes=shared.palettes)
    got = {rec.name: rec.n_clusters for rec in est.layers if rec.shape.kind != "pool"}
    scope = row["tensor"].split("/")[1]  # the file's scope of layer c_1 (`c_1_2`)
    assert re.fullmatch(r"c_1_\d+", scope), row
    assert got == {"c_1": None, scope: 4}


def test_keras_estimate_of_a_recurrent_model_matches_palettes_by_exact_name():
    # second review: the file test read any upper-case op as a .tflite record, and a Keras
    # GRU / LSTM record (op "GRU") made palette `dense` go to record `dense_1`
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    x = keras.layers.GRU(8, name="gru")(inp)
    x = keras.layers.Dense(8, name="dense")(x)
    model = keras.Model(inp, keras.layers.Dense(8, name="dense_1")(x))
    shared = dkm_tf.share_weights(model, n_clusters=4, overrides={"gru": None, "dense_1": None})
    assert [p.layer_name for p in shared.palettes] == ["dense"]
    est = energy.estimate(shared.model, palettes=shared.palettes)
    got = {rec.name: rec.n_clusters for rec in est.layers if rec.name.startswith("dense")}
    assert got == {"dense": 4, "dense_1": None}
