"""The JSON form of palette indices: the array's bytes in base64, not a list of numbers.

A list of integers costs ~2-3.4 characters per index in JSON (`clustered.palettes.json` of
ResNet50 was 86 MB, about the float model's size, and took 7 s to write); base64 of the indices
as the smallest unsigned type that holds them costs 1.33 characters per index for K <= 256.
:func:`unpack_indices` reads both forms (files written before keep loading).
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

__all__ = ["pack_indices", "unpack_indices"]

_KEYS = {"dtype", "shape", "base64"}
_DTYPES = ("uint8", "uint16", "uint32", "int64")


def pack_indices(indices):
    """``{"dtype", "shape", "base64"}`` of an integer array (little-endian bytes)."""
    a = np.asarray(indices)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    name = next((t for t in _DTYPES[:3] if lo >= 0 and hi <= np.iinfo(t).max), "int64")
    data = np.ascontiguousarray(a, dtype=np.dtype(name).newbyteorder("<")).tobytes()
    return {"dtype": name, "shape": [int(n) for n in a.shape],
            "base64": base64.b64encode(data).decode("ascii")}


def unpack_indices(value):
    """The int64 array of :func:`pack_indices`' dict, or of a (nested) list of integers.

    Raises:
        ValueError: a dict with other keys, an unknown dtype, or bytes that do not fill its
            shape.
    """
    if not isinstance(value, dict):
        a = np.asarray(value)
        return a.astype(np.int32) if a.size == 0 else a
    if set(value) != _KEYS or value.get("dtype") not in _DTYPES:
        shown = {k: v for k, v in value.items() if k != "base64"}
        raise ValueError("Invalid value for argument `d`. Expected palette indices as a list "
                         f"or a dict with keys {sorted(_KEYS)} and dtype one of "
                         f"{list(_DTYPES)}. Received: indices={shown}")
    try:
        data = base64.b64decode(value["base64"], validate=True)
        shape = tuple(int(n) for n in value["shape"])
        a = np.frombuffer(data, np.dtype(value["dtype"]).newbyteorder("<")).reshape(shape)
    except (binascii.Error, TypeError, ValueError) as e:
        raise ValueError("Invalid value for argument `d`. Expected palette indices whose "
                         f"base64 bytes fill shape {value.get('shape')} as "
                         f"{value.get('dtype')}. Received: {type(e).__name__}: {e}") from e
    return a.astype(np.int32) if a.size == 0 else a.astype(np.int64)
