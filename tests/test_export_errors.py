"""Bad input to the exporters: clear errors, and never a partial or unverified file."""

import os
import pathlib

import keras
import numpy as np
import pytest
from test_export_tflite import clustered_copy
from testing import subclassed_model

import dkm_tf.export as ex
from dkm_tf.models import digits_cnn


@pytest.fixture(scope="module")
def digits():
    model = digits_cnn()
    palettes = clustered_copy(model, 8)
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
    return model, palettes, x


def _leftovers(d):
    return sorted(p.name for p in pathlib.Path(d).iterdir())


@pytest.mark.parametrize("kwargs,message", [
    ({"format": "onnx"}, "Invalid value for argument `format`. Expected one of ['float', "
     "'fp16', 'palettized', 'int8', 'tflm']. Received: format='onnx'"),
    ({"decode": "lazy"}, "Invalid value for argument `decode`. Expected one of ['once', "
     "'per_invoke']. Received: decode='lazy'"),
    ({"int8_mode": "int4"}, "Invalid value for argument `int8_mode`. Expected one of "
     "['dynamic', 'full']. Received: int8_mode='int4'"),
    ({"interpreters": ["onnxruntime"]}, "Invalid value for argument `interpreters`."),
])
def test_unknown_modes(digits, tmp_path, kwargs, message):
    model, palettes, x = digits
    args = {"format": "palettized", **kwargs}
    with pytest.raises(ValueError) as e:
        ex.to_tflite(model, tmp_path / "m.tflite", palettes=palettes, sample_inputs=x, **args)
    assert message in str(e.value)
    assert _leftovers(tmp_path) == []


def test_palettized_needs_palettes(digits, tmp_path):
    model, _, x = digits
    with pytest.raises(ValueError, match=r"format='palettized' needs the palettes"):
        ex.to_tflite(model, tmp_path / "m.tflite", "palettized", None, x)


def test_palettes_of_another_layer(digits, tmp_path):
    model, palettes, x = digits
    other = clustered_copy(keras.Sequential([keras.Input((3,)), keras.layers.Dense(
        2, name="elsewhere")]), 2)
    with pytest.raises(ValueError, match=r"Palettes do not match the model: palette "
                                         r"'elsewhere/kernel' names no weight"):
        ex.to_tflite(model, tmp_path / "m.tflite", "palettized", palettes + other, x)
    assert _leftovers(tmp_path) == []


def test_palettes_with_other_values(tmp_path):
    model = digits_cnn()
    palettes = clustered_copy(model, 8)
    model.get_layer("fc1").kernel.assign(np.asarray(model.get_layer("fc1").kernel) + 0.01)
    x = np.zeros((2, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match=r"weight 'fc1/kernel' differs from palette.decode\(\)"):
        ex.to_tflite(model, tmp_path / "m.tflite", "palettized", palettes, x)
    with pytest.raises(TypeError, match=r"Invalid type for argument `palettes`"):
        ex.to_tflite(model, tmp_path / "m.tflite", "palettized", {"a": 1}, x)
    assert _leftovers(tmp_path) == []


def test_model_with_unsupported_op(tmp_path):
    inp = keras.Input((4, 4))
    y = keras.layers.Lambda(lambda t: keras.ops.svd(t)[1])(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(y))
    with pytest.raises(ValueError, match=r"no TFLite builtin kernel.*Svd"):
        ex.to_tflite(model, tmp_path / "m.tflite", "float")
    assert _leftovers(tmp_path) == []


def test_unwritable_paths(digits, tmp_path):
    model, palettes, x = digits
    (tmp_path / "file").write_text("x")
    for bad, match in [(tmp_path / "missing" / "m.tflite", "directory does not exist"),
                       (tmp_path / "file" / "m.tflite", "directory does not exist"),
                       (tmp_path, "Expected a file path")]:
        with pytest.raises(ValueError, match=match):
            ex.to_tflite(model, bad, "palettized", palettes, x)
    assert _leftovers(tmp_path) == ["file"]


def test_disagreeing_model_is_not_written(digits, tmp_path):
    """A failed verification leaves an existing file untouched and no temporary file."""
    model, palettes, x = digits
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous")
    with pytest.raises(ex.ExportVerificationError, match=r"Refusing to write .*int8 model "
                                                         r"disagrees"):
        ex.to_tflite(model, target, "int8", palettes, x, int8_mode="full", tolerance=1e-9)
    assert target.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == ["m.tflite"]


def test_subclassed_model_needs_sample_inputs(tmp_path):
    m = subclassed_model()
    with pytest.raises(ValueError, match=r"sample inputs are required"):
        ex.to_tflite(m, tmp_path / "m.tflite", "float")


def test_inspect_rejects_corrupted_files(digits, tmp_path):
    model, palettes, x = digits
    good = tmp_path / "good.tflite"
    ex.to_tflite(model, good, "palettized", palettes, x)
    data = good.read_bytes()
    cases = {"random.tflite": os.urandom(4096), "empty.tflite": b"",
             "truncated.tflite": data[: len(data) // 3],
             "wrong_id.tflite": data[:4] + b"XXXX" + data[8:]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ex.TFLiteFormatError, match="TFLite flatbuffer"):
            ex.inspect_tflite(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="No such .tflite file"):
        ex.inspect_tflite(tmp_path / "none.tflite")
    assert ex.inspect_tflite(good).palettized


def test_export_without_litert_falls_back_to_tf_lite(tmp_path, monkeypatch):
    from dkm_tf.export import interpreters, verify

    if interpreters.tflite_unsupported() is not None:  # TF < 2.21: test_versions checks it
        pytest.skip(interpreters.tflite_unsupported())

    monkeypatch.setattr(verify, "litert_available", lambda: False)
    model = digits_cnn()
    palettes = clustered_copy(model, 8)
    rep = ex.to_tflite(model, tmp_path / "m.tflite", palettes=palettes)
    assert [c.interpreter for c in rep.comparisons] == ["tflite"]
    assert any("ai_edge_litert not installed" in n for n in rep.notes)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tflm_refusal_of_a_folded_palette_says_how_to_keep_it_per_tensor(tmp_path):
    """A per-tensor palette becomes per channel when strip_clustering folds the batch norm
    after its conv: the advice to "cluster it per tensor" did not help a model that was."""
    pytest.importorskip("tflite_micro")
    import dkm_tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    norm = keras.layers.BatchNormalization(name="bn")
    x = norm(keras.layers.Conv2D(40, 3, name="conv")(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    norm.moving_variance.assign(np.linspace(0.5, 2.0, 40).astype("float32"))
    stripped, palettes = dkm_tf.strip_clustering(dkm_tf.cluster_weights(model, 8))
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"fold_batch_norm\(model\).model then cluster_weights"):
        ex.to_tflite(stripped, str(path), format="tflm", palettes=palettes,
                     sample_inputs=np.zeros((1, 6, 6, 3), "float32"))
    assert not path.exists()
    folded = dkm_tf.fold_batch_norm(model).model
    plain, palettes = dkm_tf.strip_clustering(dkm_tf.cluster_weights(folded, 8))
    ex.to_tflite(plain, str(path), format="tflm", palettes=palettes,
                 sample_inputs=np.zeros((1, 6, 6, 3), "float32"))  # the advice works
    assert path.exists()
