"""The JSON form of palette indices: the array's bytes in base64, not a list of numbers.

A list of integers costs ~2-3.4 characters per index in JSON (`clustered.palettes.json` of
ResNet50 was 86 MB, about the float model's size, and took 7 s to write); base64 of the indices
as the smallest unsigned type that holds them costs 1.33 characters per index for K <= 256.
Indices below 2**7 are bit-packed: ``b = max(1, bit_length(max index))`` bits each, low bits
first, in one stream (``{"bits", "shape", "base64"}``): ``4 b / 24`` characters per index,
0.67 for K = 16 (ResNet50's file at K = 16: 34 MB before, half of it now), 0.33 for K = 4.
:func:`unpack_indices` reads every form (files written before keep loading).
:func:`pack_float32` / :func:`unpack_float32` do the same for a float32 array (the kernel
palettes' per-unit scales): its exact little-endian bytes, 5.33 characters per value instead
of the ~19 of a list of their float64 reprs.

Worked example (indices ``[2, 0, 1, 1]``, b = 2): the stream, each index low bit first, is
``0 1 | 0 0 | 1 0 | 1 0``; its bits fill one byte from the low end: ``0b01010010`` = ``0x52``.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

__all__ = ["pack_float32", "pack_indices", "unpack_float32", "unpack_indices"]

_KEYS = {"dtype", "shape", "base64"}
_FLOAT_DTYPE = "float32"
_BIT_KEYS = {"bits", "shape", "base64"}
_DTYPES = ("uint8", "uint16", "uint32", "int64")
_CHUNK = 1 << 20  # values per packing step (a multiple of 8: every step ends on a byte)


def pack_indices(indices):
    """``{"bits", "shape", "base64"}`` of an integer array in ``[0, 128)`` (bit-packed), else
    ``{"dtype", "shape", "base64"}`` (little-endian bytes of the smallest type that holds it).

    Example:
        >>> pack_indices(np.array([2, 0, 1, 1]))
        {'bits': 2, 'shape': [4], 'base64': 'Ug=='}
    """
    a = np.asarray(indices)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    shape = [int(n) for n in a.shape]
    if lo >= 0 and hi < 1 << 7:
        bits = max(1, hi.bit_length())
        return {"bits": bits, "shape": shape,
                "base64": base64.b64encode(_pack(a.ravel(), bits)).decode("ascii")}
    name = next((t for t in _DTYPES[:3] if lo >= 0 and hi <= np.iinfo(t).max), "int64")
    data = np.ascontiguousarray(a, dtype=np.dtype(name).newbyteorder("<")).tobytes()
    return {"dtype": name, "shape": shape, "base64": base64.b64encode(data).decode("ascii")}


def _pack(flat, bits):
    """``bits`` bits of every value of ``flat`` (each low bit first) in one stream of bytes."""
    shifts = np.arange(bits, dtype=np.uint8)
    out = [np.packbits(((flat[i:i + _CHUNK].astype(np.uint8)[:, None] >> shifts) & 1).ravel(),
                       bitorder="little") for i in range(0, flat.size, _CHUNK)]
    return np.concatenate(out).tobytes() if out else b""


def _unpack(data, bits, n):
    """Inverse of :func:`_pack`: ``n`` int64 values."""
    out = np.empty(n, np.int64)
    weights = (1 << np.arange(bits)).astype(np.int64)
    step = _CHUNK * bits // 8
    for j, i in enumerate(range(0, n, _CHUNK)):
        m = min(_CHUNK, n - i)
        field = np.unpackbits(np.frombuffer(data[j * step:j * step + step], np.uint8),
                              count=m * bits, bitorder="little")
        out[i:i + m] = field.reshape(m, bits) @ weights
    return out


def unpack_indices(value):
    """The int64 array of :func:`pack_indices`' dict, or of a (nested) list of integers.

    Raises:
        ValueError: a dict with other keys, an unknown dtype, or bytes that do not fill its
            shape.
    """
    if not isinstance(value, dict):
        a = np.asarray(value)
        return a.astype(np.int32) if a.size == 0 else a
    if set(value) == _BIT_KEYS:
        return _unpack_bit_form(value)
    if set(value) != _KEYS or value.get("dtype") not in _DTYPES:
        shown = {k: v for k, v in value.items() if k != "base64"}
        raise ValueError("Invalid value for argument `d`. Expected palette indices as a list, "
                         f"a dict with keys {sorted(_BIT_KEYS)} (bits 1..7) or with keys "
                         f"{sorted(_KEYS)} and dtype one of "
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


def _unpack_bit_form(value):
    """The int64 array of a ``{"bits", "shape", "base64"}`` dict; ValueError if it is not one."""
    bits = value["bits"]
    try:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 7:
            raise ValueError(f"bits must be an integer in 1..7, got {bits!r}")
        shape = tuple(int(n) for n in value["shape"])
        if any(n < 0 for n in shape):
            raise ValueError(f"negative dimension in shape {list(shape)}")
        n = math.prod(shape)  # Python integers: no overflow before the byte count is checked
        data = base64.b64decode(value["base64"], validate=True)
        if len(data) != -(-n * bits // 8):
            raise ValueError(f"{len(data)} bytes for {n} indices of {bits} bits "
                             f"(expected {-(-n * bits // 8)})")
    except (binascii.Error, TypeError, ValueError, OverflowError) as e:
        raise ValueError("Invalid value for argument `d`. Expected palette indices whose "
                         f"base64 bytes fill shape {value.get('shape')} at {bits!r} bits per "
                         f"index. Received: {type(e).__name__}: {e}") from e
    a = _unpack(data, bits, n).reshape(shape)
    return a.astype(np.int32) if a.size == 0 else a


def pack_float32(values):
    """``{"dtype": "float32", "shape", "base64"}``: the float32 array's little-endian bytes.

    Example:
        >>> pack_float32(np.array([1.0, -0.5]))
        {'dtype': 'float32', 'shape': [2], 'base64': 'AACAPwAAAL8='}
    """
    a = np.asarray(values, np.float32)
    data = np.ascontiguousarray(a, dtype=np.dtype(_FLOAT_DTYPE).newbyteorder("<")).tobytes()
    return {"dtype": _FLOAT_DTYPE, "shape": [int(n) for n in a.shape],
            "base64": base64.b64encode(data).decode("ascii")}


def unpack_float32(value):
    """The float32 array of :func:`pack_float32`'s dict, or of a (nested) list of numbers.

    Raises:
        ValueError: a dict that is not :func:`pack_float32`'s, or bytes that do not fill its
            shape.
    """
    if not isinstance(value, dict):
        return np.asarray(value, np.float32)
    try:
        if set(value) != _KEYS or value.get("dtype") != _FLOAT_DTYPE:
            raise ValueError(f"keys {sorted(value)} with dtype {value.get('dtype')!r}")
        data = base64.b64decode(value["base64"], validate=True)
        shape = tuple(int(n) for n in value["shape"])
        a = np.frombuffer(data, np.dtype(_FLOAT_DTYPE).newbyteorder("<")).reshape(shape)
    except (binascii.Error, TypeError, ValueError) as e:
        raise ValueError("Invalid value for argument `d`. Expected a list of numbers or a dict "
                         f"with keys {sorted(_KEYS)} and dtype {_FLOAT_DTYPE!r} whose base64 "
                         "bytes fill its shape. Received: "
                         f"{type(e).__name__}: {e}") from e
    return a.astype(np.float32)
