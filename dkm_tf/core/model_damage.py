"""Damage inside a model file whose first bytes look right: a ``.keras`` zip member that fails
its CRC-32, an HDF5 file cut short or with broken metadata, a weights-only ``.weights.h5``.
Keras reported these as a bare ``BadZipFile``, h5py ``OSError`` / ``RuntimeError`` (no file
named), or "No model config found"."""

from __future__ import annotations

import re
import zipfile
import zlib

__all__ = ["hdf5_damage", "raised_here", "zip_damage"]


def zip_damage(archive):
    """A phrase for an open ``zipfile.ZipFile`` whose members do not read back (CRC-32 or
    deflate errors: bytes changed after it was written), else None. Reads every member."""
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        return f"a damaged zip archive ({' '.join(str(e).split())[:160]})"
    if bad is not None:
        return (f"a damaged zip archive (its member {bad!r} fails its CRC-32 check: bytes "
                "changed after it was written)")
    return None


def hdf5_damage(path):
    """A phrase for an HDF5 file (signature checked) that h5py cannot open or walk (cut short,
    broken metadata), or that holds weights only (``.weights.h5``), else None. Reads the
    metadata, not the weight values (HDF5 stores no checksum of them)."""
    try:
        import h5py  # noqa: PLC0415 (a Keras dependency)
    except ImportError:  # pragma: no cover - Keras needs it
        return None
    try:
        with h5py.File(path, "r") as f:
            has_config = "model_config" in f.attrs
            f.visititems(lambda name, obj: dict(obj.attrs) and None)
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        text = " ".join(str(e).split())
        if "unable to lock file" in text:  # a good file another process holds open
            return None
        cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
        if cut:
            return (f"a truncated HDF5 file ({int(cut.group(1)):,} of the "
                    f"{int(cut.group(2)):,} bytes it was written with)")
        return f"a damaged HDF5 file (h5py: {text[:160]})"
    if not has_config:
        return ("an HDF5 file without a model config: a weights-only file "
                "(model.save_weights); build the model and call model.load_weights(path)")
    return None


def raised_here(error):
    """Whether ``error`` was raised by dkm_tf's own code (a refusal with its own message), not
    deep in a parser reading damaged bytes (flatbuffers, numpy, struct)."""
    import os  # noqa: PLC0415

    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
        package + os.sep)
