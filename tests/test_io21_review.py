"""What the review of the I/O-failure work found: a good ``.tflite`` with an open input size
called "truncated or corrupted" (``tests/test_energy_foreign.py`` and
``tests/test_cli_gaps.py`` caught it; the reader now tells its own refusals from a parser's
errors), an earlier run's file of a refused target left unnamed when a
later target hit a full disk, a locked ``.h5`` called damaged, "no temp file was left" said of
a temp file that was left, and a full disk while creating the target's folder raised bare."""

import errno
import types

import numpy as np
import pytest

from dkm_tf.core import files


def test_raised_here_tells_own_refusals_from_parser_errors():
    from dkm_tf.core.model_damage import raised_here  # noqa: PLC0415

    try:
        files.check_target(b"bytes")
    except (TypeError, ValueError) as e:
        assert raised_here(e)
    try:
        np.frombuffer(b"abc", dtype=np.float32)
    except ValueError as e:
        assert not raised_here(e)


def test_export_all_full_disk_names_an_earlier_file_of_a_refused_target(tmp_path, monkeypatch):
    import importlib  # noqa: PLC0415

    import keras  # noqa: PLC0415

    from dkm_tf.export.verify import ExportVerificationError  # noqa: PLC0415

    ea = importlib.import_module("dkm_tf.export.export_all")
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(inp))
    x = np.zeros((2, 6), np.float32)
    stale = tmp_path / "model.fp16.tflite"
    stale.write_bytes(b"an earlier run's fp16 export")

    def fake(model, path, **kwargs):
        if kwargs["format"] == "fp16":
            raise ExportVerificationError("outputs differ")
        if kwargs["format"] == "int8":
            raise OSError(errno.ENOSPC, f"Could not write {path!r}: no space left on device")
        with open(path, "wb") as f:
            f.write(b"this run")
        return types.SimpleNamespace(path=path, format=kwargs["format"])

    monkeypatch.setattr(ea, "to_tflite", fake)
    with pytest.raises(OSError) as info:
        ea.export_all(model, None, str(tmp_path), x, targets=["float", "fp16", "int8"])
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert "not written: ['fp16', 'int8']" in message
    assert str(stale) in message and "not this model's" in message
    assert message.count("[Errno 28]") <= 1


def test_locked_h5_is_not_called_damaged(monkeypatch, tmp_path):
    h5py = pytest.importorskip("h5py")
    from dkm_tf.core import model_damage  # noqa: PLC0415

    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = "{}"

    class Locked:
        def __init__(self, *args, **kwargs):
            raise OSError("Unable to synchronously open file (unable to lock file, errno = 11, "
                          "error message = 'Resource temporarily unavailable')")

    monkeypatch.setattr(h5py, "File", Locked)
    assert model_damage.hdf5_damage(path) is None


def test_temp_file_left_behind_is_not_denied(tmp_path, monkeypatch):
    from dkm_tf.core.write_errors import write_error  # noqa: PLC0415

    tmp = tmp_path / ".tmp-left"
    tmp.write_bytes(b"partial")
    clear = write_error(OSError(errno.ENOSPC, "No space left on device"),
                        str(tmp_path / "out.bin"), str(tmp_path), False, str(tmp))
    assert "could not be removed" in str(clear) and "no temp file was left" not in str(clear)
    clear = write_error(OSError(errno.ENOSPC, "No space left on device"),
                        str(tmp_path / "out.bin"), str(tmp_path), False, None)
    assert "no temp file was left" in str(clear)


def test_full_disk_while_creating_the_folder_names_the_file(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "makedirs", no_space)
    target = tmp_path / "new" / "out.bin"
    with pytest.raises(OSError) as info:
        with files.atomic_path(str(target)) as tmp:
            open(tmp, "wb").close()
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert str(target) in str(info.value)
    assert not target.parent.exists()
