"""I/O failures while writing (a full disk, too many open files, a folder removed mid-write)
and damaged files while reading: a clear error naming the file, an earlier file left
byte-identical, no temp file left, never a bare zipfile / h5py / flatbuffers error.

Hermetic: the failures are raised by monkeypatched ``os.replace`` / ``tempfile.mkstemp`` /
converter objects, not by a real full disk."""

import errno
import json
import os
import types
import zipfile

import numpy as np
import pytest

from dkm_tf.core import files


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(files.TEMP_PREFIX)]


@pytest.fixture(scope="module")
def tiny():
    """A Dense model, its float .tflite bytes and sample inputs."""
    import keras  # noqa: PLC0415

    from dkm_tf.export.convert import convert, input_specs  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(inp))
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    return model, convert(model, input_specs(model, x)), x


# ---- writes --------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["block", "replace"])
def test_no_space_names_the_file_and_keeps_the_earlier_file(tmp_path, monkeypatch, where):
    target = tmp_path / "out.json"
    target.write_bytes(b"earlier good file")
    with pytest.raises(OSError) as info:
        with files.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("new")
            if where == "block":
                raise OSError(errno.ENOSPC, "No space left on device")
            monkeypatch.setattr(files.os, "replace", _no_space)
    monkeypatch.undo()
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert str(target) in message and "no space left on device" in message
    assert "earlier file" in message and "unchanged" in message
    assert target.read_bytes() == b"earlier good file"
    assert _temps(tmp_path) == []


def test_h5py_style_no_space_without_errno_is_named(tmp_path):
    target = tmp_path / "m.h5"
    with pytest.raises(OSError, match=r"m\.h5'.*no space left on device.*nothing was written"):
        with files.atomic_path(target):
            raise OSError("Unable to create file (file write failed: errno = 28, error "
                          "message = 'No space left on device')")
    assert not target.exists() and _temps(tmp_path) == []


def test_no_space_in_another_folder_names_that_folder(tmp_path):
    elsewhere = tmp_path / "tmpdir" / "keras-weights.h5"
    elsewhere.parent.mkdir()
    out = tmp_path / "out"
    with pytest.raises(OSError, match=r"m\.keras'.*no space left on device at '.*keras-"
                                      r"weights\.h5' \([\d,]+ bytes free in '.*tmpdir'\)"):
        with files.atomic_path(out / "m.keras"):
            raise OSError(errno.ENOSPC, "No space left on device", str(elsewhere))


def test_too_many_open_files_at_the_temp_file_names_the_target(tmp_path, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    with pytest.raises(OSError, match=r"r\.json'.*too many open files.*ulimit -n") as info:
        files.write_text_atomic(tmp_path / "r.json", "{}")
    assert info.value.errno == errno.EMFILE


def test_folder_removed_mid_write_says_so(tmp_path):
    import shutil  # noqa: PLC0415

    sub = tmp_path / "sub"
    with pytest.raises(FileNotFoundError, match="was removed while it was written"):
        with files.atomic_path(sub / "x.json") as tmp:
            with open(tmp, "w") as f:
                f.write("{}")
            shutil.rmtree(sub)


def test_other_errors_pass_unchanged(tmp_path):
    error = OSError(errno.EPERM, "not ours")
    with pytest.raises(OSError) as info:
        with files.atomic_path(tmp_path / "a.txt"):
            raise error
    assert info.value is error
    with pytest.raises(KeyError):
        with files.atomic_path(tmp_path / "a.txt"):
            raise KeyError("x")
    assert _temps(tmp_path) == []


def test_to_tflite_on_a_full_disk_keeps_the_earlier_file(tiny, tmp_path, monkeypatch):
    from dkm_tf.export import to_tflite  # noqa: PLC0415

    model, _, x = tiny
    target = tmp_path / "m.tflite"
    target.write_bytes(b"earlier export")
    monkeypatch.setattr(files.os, "replace", _no_space)
    with pytest.raises(OSError, match=r"m\.tflite'.*no space left on device"):
        to_tflite(model, str(target), format="float", sample_inputs=x)
    monkeypatch.undo()
    assert target.read_bytes() == b"earlier export" and _temps(tmp_path) == []


def test_export_all_stopped_by_a_full_disk_names_the_stale_files(tiny, tmp_path, monkeypatch):
    import importlib  # noqa: PLC0415

    ea = importlib.import_module("dkm_tf.export.export_all")  # the package's name is the function
    model, _, x = tiny
    earlier = tmp_path / "model.int8.tflite"
    earlier.write_bytes(b"an earlier run's export")
    calls = []

    def fake(model, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, f"Could not write {path!r}: no space left on device")
        with open(path, "wb") as f:
            f.write(b"this run")
        return types.SimpleNamespace(path=path, format=kwargs["format"])

    monkeypatch.setattr(ea, "to_tflite", fake)
    with pytest.raises(OSError) as info:
        ea.export_all(model, None, str(tmp_path), x, targets=["float", "int8"])
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "stopped at target 'int8'" in message
    assert str(tmp_path / "model.float.tflite") in message  # written by this call
    assert "not this model's" in message and str(earlier) in message
    assert earlier.read_bytes() == b"an earlier run's export"


def test_converter_out_of_file_descriptors_is_not_blamed_on_the_model(tiny, monkeypatch):
    import tensorflow as tf  # noqa: PLC0415

    from dkm_tf.export.convert import convert, input_specs  # noqa: PLC0415

    model, _, x = tiny

    class Converter:
        def __init__(self, *args):
            pass

        def convert(self):
            raise RuntimeError("RestoreV2 ... /tmp/tmpab/variables: Too many open files")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_concrete_functions", Converter)
    with pytest.raises(OSError, match="too many open files") as info:
        convert(model, input_specs(model, x))
    assert info.value.errno == errno.EMFILE
    assert "probably uses operations" not in str(info.value)


def test_file_without_signature_from_a_full_temp_folder_is_refused(tiny, monkeypatch):
    import shutil  # noqa: PLC0415

    from dkm_tf.export.convert_failures import check_signature  # noqa: PLC0415
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    model, content, _ = tiny
    fm = FlatModel.from_bytes(content)
    fm.model.signatureDefs = []
    bare = fm.to_bytes()
    check_signature(model, content)  # has one: passes
    monkeypatch.setattr(shutil, "disk_usage", lambda p: types.SimpleNamespace(free=4096))
    with pytest.raises(OSError, match="no space left on device.*4,096 bytes free"):
        check_signature(model, bare)


# ---- damaged inputs ------------------------------------------------------------------------

def _keras_like_zip(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("config.json", json.dumps({"class_name": "Functional"}))
        z.writestr("model.weights.h5", bytes(range(256)) * 8)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 1000] ^= 0xFF  # inside the member's bytes: its CRC-32 no longer matches
    path.write_bytes(bytes(data))


def test_keras_file_with_a_damaged_member_is_refused_before_keras(tmp_path):
    import dkm_tf  # noqa: PLC0415

    path = tmp_path / "m.keras"
    _keras_like_zip(path)
    with pytest.raises(ValueError, match=r"m\.keras'.*damaged zip.*model\.weights\.h5.*CRC"):
        files.check_model_file(path)
    with pytest.raises(ValueError, match=r"path=.*m\.keras'.*damaged zip"):
        dkm_tf.load_model(path)


def test_truncated_and_weights_only_h5_files_are_named(tmp_path):
    import h5py  # noqa: PLC0415

    good = tmp_path / "m.h5"
    with h5py.File(good, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential"})
        f.create_dataset("w", data=np.arange(4000, dtype=np.float32))
    files.check_model_file(good)  # a model file: passes
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.h5'.*a truncated HDF5 file \([\d,]+ of the"):
        files.check_model_file(cut)
    weights = tmp_path / "m.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_dataset("w", data=np.arange(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"weights-only.*load_weights"):
        files.check_model_file(weights)


def test_damaged_tflite_in_the_energy_reader_names_the_file(tiny, tmp_path, monkeypatch):
    from dkm_tf.energy import tflite_reader  # noqa: PLC0415

    path = tmp_path / "m.tflite"
    path.write_bytes(tiny[1])

    def damaged(*args, **kwargs):  # what flatbuffers raises on an offset past the end
        raise ValueError("buffer is smaller than requested size")

    monkeypatch.setattr(tflite_reader, "_read_graph", damaged)
    with pytest.raises(ValueError, match=r"m\.tflite' is not a readable TFLite model"):
        tflite_reader.read_tflite_palettes(path)


def test_truncated_tflite_in_inspect_names_the_file(tiny, tmp_path):
    from dkm_tf.export.inspect import inspect_tflite  # noqa: PLC0415
    from dkm_tf.export.rewrite import TFLiteFormatError  # noqa: PLC0415

    path = tmp_path / "cut.tflite"
    path.write_bytes(tiny[1][: len(tiny[1]) // 2])
    with pytest.raises(TFLiteFormatError, match=r"cut\.tflite'.*Corrupted TFLite"):
        inspect_tflite(path)


def _damaged_npz(path):
    x = np.arange(4000, dtype=np.float32).reshape(100, 40)
    np.savez(path, x_train=x, y_train=np.zeros(100, np.int64), x_test=x,
             y_test=np.zeros(100, np.int64))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_test.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 8000] ^= 0xFF
    path.write_bytes(bytes(data))


def test_npz_with_damaged_array_bytes_is_a_dataset_error(tmp_path):
    from dkm_tf import data  # noqa: PLC0415
    from dkm_tf.export.cli import load_samples  # noqa: PLC0415

    path = tmp_path / "d.npz"
    _damaged_npz(path)
    data.check_npz(path)  # the headers read fine
    with pytest.raises(data.DatasetFileError, match=r"d\.npz'.*x_test does not read back"):
        data.load_npz(path)
    with pytest.raises(ValueError, match=r"samples file .*d\.npz'.*damaged"):
        load_samples(path)


def test_npz_errors_name_the_argument_they_came_from(tmp_path):
    from dkm_tf import data  # noqa: PLC0415

    path = tmp_path / "none.npz"
    for fn in (data.check_npz, data.load_npz):
        with pytest.raises(data.DatasetFileError, match=r"argument `path`.*path='.*none\.npz'"):
            fn(path)
    with pytest.raises(data.DatasetFileError, match=r"argument `name`.*name='.*none\.npz'"):
        data.load_dataset(str(path))


def test_random_bytes_as_samples_say_what_the_file_is_not(tmp_path):
    from dkm_tf.export.cli import load_samples  # noqa: PLC0415

    path = tmp_path / "x.npz"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(ValueError, match="neither a .npy nor a .npz"):
        load_samples(path)
