"""The user's dataset as a ``.npz`` file: checked from its array headers
(:func:`check_npz`), then loaded (:func:`load_npz`); a file that cannot be used is a
:class:`DatasetFileError` naming the file and the argument it was given as."""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from dkm_tf.data_inputs import check_named, named_inputs

__all__ = ["NPZ_KEYS", "DatasetFileError", "check_npz", "load_npz"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")  # keras.datasets' load_data() order


class DatasetFileError(ValueError):
    """A ``.npz`` dataset that cannot be used (a ValueError raised by :func:`check_npz`).

    Args:
        path, expected, received: the file, what is needed, what it holds (kept as attributes).
        arg: the argument the file was given as (``"path"`` of :func:`check_npz` /
            :func:`load_npz`, ``"name"`` of :func:`dkm_tf.data.load_dataset`).
    """

    def __init__(self, path, expected, received, arg="path"):
        self.path, self.expected, self.received, self.arg = path, expected, received, arg
        super().__init__(f"Invalid value for argument `{arg}`. Expected {expected}. "
                         f"Received: {arg}={path!r} ({received})")


def _headers(path):
    """``{array name: (shape, dtype)}`` of a ``.npz`` file, from the headers alone."""
    info = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".npy"):
                    with z.open(name) as f:
                        fmt = np.lib.format
                        read = (fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0)
                                else fmt.read_array_header_2_0)
                        shape, _, dtype = read(f)
                    info[name[:-4]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DatasetFileError(path, "a .npz file (np.savez)", e) from None
    return info


def check_npz(path):
    """Check the ``.npz`` dataset at ``path`` from its array headers alone (nothing is loaded).

    Args:
        path: a ``.npz`` file (str or path-like) in one of two forms (as ``np.savez`` writes
            them). Labelled: the four arrays of :data:`NPZ_KEYS`, inputs with one sample per
            row and the same shape per sample in both splits, and 1-D integer class labels (or
            ``(n, 1)``), one per sample. Unlabelled: ``x_train`` (and optionally ``x_test``,
            held-out inputs of the same shape), calibration inputs for the post-training
            methods (``refine``, ``weighting``), which need no labels. A model of several
            inputs: one array per input in place of ``x_train`` / ``x_test``, keyed
            ``x_train.<input name>`` / ``x_test.<input name>`` (the same inputs in both, the
            same number of samples in each array of a split and its labels).

    Returns:
        ``{key: (shape, dtype)}`` of the arrays (``"y_train" in`` it: labelled).

    Raises:
        DatasetFileError: a ValueError naming what is wrong (missing file, not a ``.npz``,
            missing arrays, pickled objects, inputs that are not real numbers (complex,
            strings, dates, records), lengths or shapes that do not match, labels that are
            not integers).
    """
    if not isinstance(path, (str, os.PathLike)):  # os.fspath's TypeError named nothing
        raise TypeError("Invalid type for argument `path`. Expected a .npz file path (str or "
                        f"os.PathLike). Received: path={path!r} of type {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetFileError(path, "a .npz file",
                               "a folder" if os.path.isdir(path) else "no such file")
    found = _headers(path)
    labelled = bool({"y_train", "y_test"} & set(found)) or "x_train" not in found
    keys = NPZ_KEYS if labelled else tuple(k for k in ("x_train", "x_test") if k in found)
    if named_inputs(found):  # x_train.<input name>: a model of several inputs
        keys = check_named(path, found,
                           lambda want, got: DatasetFileError(path, want, got))
        labelled = "y_train" in keys
    missing = [k for k in keys if k not in found]
    if missing:
        raise DatasetFileError(path, f"a .npz file with the arrays {list(NPZ_KEYS)} (or, "
                               "without labels, x_train and optionally x_test)",
                               f"it lacks {missing}; it has {sorted(found)}")
    info = {k: found[k] for k in keys}
    for key, (shape, dtype) in info.items():
        if dtype.hasobject:
            raise DatasetFileError(path, "numeric arrays", f"{key} holds objects")
        if key[0] == "x" and dtype.kind not in "biuf":  # complex, strings, dates, records
            raise DatasetFileError(path, f"real numbers (bool, integer or float) in {key}",
                                   f"dtype {dtype}")
        if key[0] == "x" and (len(shape) < 2 - ("." in key) or shape[0] < 1):
            raise DatasetFileError(path, f"{key} with samples along its first axis",
                                   f"shape {shape}")
    for split in ("train", "test") if labelled else ():
        ys, yd = info[f"y_{split}"]
        xs = info.get(f"x_{split}", (ys,))[0]  # one array per input: checked by check_named
        if not (len(ys) == 1 or (len(ys) == 2 and ys[1] == 1)) or ys[0] != xs[0]:
            raise DatasetFileError(path, f"y_{split} of shape ({xs[0]},): one label per "
                                   "sample", f"shape {ys}")
        if yd.kind not in "iu":
            raise DatasetFileError(path, f"integer class labels in y_{split}", f"dtype {yd}")
    if "x_test" in info and "x_train" in info and (
            info["x_train"][0][1:] != info["x_test"][0][1:]):
        raise DatasetFileError(path, "x_train and x_test with the same shape per sample",
                               f"{info['x_train'][0][1:]} and {info['x_test'][0][1:]}")
    return info


def load_npz(path):
    """The user's dataset from the ``.npz`` file at ``path``, checked by :func:`check_npz`.

    Args:
        path: a ``.npz`` file (str or path-like). Inputs are cast to float32 and used as they
            are (no scaling: store them as the model expects them) and must be finite (integers
            exact in float32: ids above 2**24 are refused, not rounded to other ids); labels
            are cast to int32 and must be in [0, 2**31 - 1].

    Returns:
        ``(x_train, y_train), (x_test, y_test)``; unlabelled: ``(x_train, None),
        (x_test, None)``, or ``(x_train, None), None`` without ``x_test``. A file of one
        array per input gives ``x_train`` / ``x_test`` as dicts ``{input name: array}``
        (``dkm_tf.compress`` and Keras take them for a model of a flat list of inputs).
    """
    keys, path = list(check_npz(path)), os.fspath(path)
    arrays = {}
    with np.load(path, allow_pickle=False) as z:
        for k in keys:
            a = _read(z, k, path)
            if k[0] == "y" and a.size and (a.min() < 0 or a.max() > np.iinfo(np.int32).max):
                raise DatasetFileError(path, f"class labels in [0, 2**31 - 1] in {k}",
                                       f"labels from {a.min()} to {a.max()}")
            if k[0] == "x" and a.dtype.kind in "iu":
                _check_exact(a, k, path)
            with np.errstate(over="ignore"):  # beyond float32: inf, refused just below
                arrays[k] = (a.astype(np.int32).reshape(-1) if k[0] == "y" else
                             a.astype(np.float32, copy=False))  # float32: no second copy
            if k[0] == "x" and not np.isfinite(arrays[k]).all():
                bad = int(np.count_nonzero(~np.isfinite(arrays[k])))
                raise DatasetFileError(path, f"finite inputs in {k}", f"{bad:,} of "
                                       f"{arrays[k].size:,} values are NaN or infinite "
                                       "(as float32)")
    for split in ("x_train", "x_test"):  # one array per input: {input name: array}
        named = {k.partition(".")[2]: arrays.pop(k) for k in keys if k.startswith(split + ".")}
        if named:
            arrays[split] = named
    if "y_train" not in arrays:
        test = arrays.get("x_test")
        return (arrays["x_train"], None), None if test is None else (test, None)
    return ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))


def _check_exact(a, key, path):
    """Refuses integer inputs ``a`` (array ``key``) that float32 cannot hold exactly: ids
    above 2**24 became other ids (a Hashing -> Embedding model scored 0.917 for 1.0)."""
    big = a[(a > 2**24) | (a < -(2**24))] if a.size else a
    if not big.size:
        return
    exact = np.frompyfunc(lambda v: int(float(np.float32(v))) == int(v), 1, 1)
    bad = big[~exact(big).astype(bool)]
    if bad.size:
        top = int(bad[np.argmax(np.abs(bad.astype(np.float64)))])
        raise DatasetFileError(path, f"integer inputs in {key} that float32 holds exactly "
                               f"(inputs are cast to float32, exact for every integer up to "
                               f"2**24 = 16777216 in magnitude)",
                               f"{bad.size:,} value{'s' * (bad.size != 1)} float32 would "
                               f"change, the largest {top} "
                               f"(read as {int(np.float32(top))})")


def _read(archive, key, path):
    """Array ``key`` of the open ``.npz`` ``archive``; a member whose bytes were damaged after
    its header was written (a CRC-32 or deflate error, cut short) is a DatasetFileError."""
    try:
        return archive[key]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DatasetFileError(path, "a .npz file (np.savez)", f"its array {key} does not "
                               f"read back: {' '.join(str(e).split())[:160]}") from None
