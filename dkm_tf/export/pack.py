"""Pure-numpy packing of palette indices into the integer layouts the exporters store.

Two families, one per decode mode:

* **Tuples in int16** (``decode="once"``). TFLite's GATHER is the only op that both turns
  integers into positions and computes its output at load time, and its positions must be
  int16/int32 and non-negative, so one int16 carries at most 15 bits. ``g`` indices in base
  ``K`` share one int16 as ``p = i0 + K*i1 + K**2*i2 + ...`` (``K**g <= 32768``): 3 per int16
  for K <= 32 (5.33 bits/index), 4 for K <= 13 (4 bits), 15 for K = 2.
* **Bit fields** (``decode="per_invoke"``). ``ceil(log2 K)`` bits per index in the TFLite
  sub-byte types: INT2 (4 per byte) and INT4 (2 per byte), low bits first, stored as signed
  ``q = i - 2**(b-1)`` so that DEQUANTIZE with ``zero_point = -2**(b-1)`` and scale 1 gives
  back ``i``; uint8 for 5..8 bits.

Worked example (K = 3, indices ``[2, 0, 1, 1]``):

* tuples, g = 9 fits (3**9 = 19683 <= 32768) but there are only 4 indices, so one int16:
  ``2 + 3*0 + 9*1 + 27*1 = 38``;
* INT2 (b = 2, q = i - 2 = ``[0, -2, -1, -1]`` = bits ``00 10 11 11``), low bits first:
  one byte ``0b11111000`` = ``0xF8``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["INT16_POSITIONS", "bit_width", "enum_table", "pack_bits", "pack_tuples",
           "storage_for_bits", "tuple_width", "unpack_bits", "unpack_tuples"]

INT16_POSITIONS = 1 << 15  # GATHER positions must be >= 0, so an int16 holds 0..32767


def _check_k(k):
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError("Invalid value for argument `k`. Expected an integer >= 1. "
                         f"Received: k={k!r}")


def bit_width(k):
    """Bits of one index for a codebook of ``k`` entries: ceil(log2 k), at least 1."""
    _check_k(k)
    return max(1, int(math.ceil(math.log2(k))))


def tuple_width(k, max_table_entries=None, limit=INT16_POSITIONS):
    """Largest g with ``k**g <= limit`` (indices per int16), optionally capping ``k**g * g``.

    Args:
        k: codebook size K.
        max_table_entries: if given, also require ``k**g * g <= max_table_entries`` (the
            decoded tuple table's size in values; it lives in RAM at run time).
        limit: number of distinct positions (32768 for int16).

    Returns:
        g >= 1. For K = 1 every index is 0; g is then 16.
    """
    _check_k(k)
    if k == 1:
        return 16
    g = 1
    while k ** (g + 1) <= limit and (max_table_entries is None
                                     or k ** (g + 1) * (g + 1) <= max_table_entries):
        g += 1
    return g


def enum_table(k, g):
    """The (k**g, g) int32 table whose row p lists the base-k digits of p, least first."""
    p = np.arange(k ** g, dtype=np.int64)[:, None]
    return ((p // (k ** np.arange(g, dtype=np.int64))) % k).astype(np.int32)


def pack_tuples(indices, k, g):
    """Pack indices in ``[0, k)`` along the last axis, ``g`` per int16, base ``k``.

    The last axis is padded with zeros to a multiple of ``g``.

    Args:
        indices: integer array (..., n).
        k: codebook size.
        g: indices per int16 (``k**g <= 32768``).

    Returns:
        int16 array (..., ceil(n / g)).

    Example:
        >>> pack_tuples(np.array([2, 0, 1, 1]), k=3, g=2).tolist()
        [2, 4]
    """
    _check_k(k)
    if g < 1 or k ** g > INT16_POSITIONS and k > 1:
        raise ValueError(f"Invalid value for argument `g`. Expected 1 <= g with k**g <= "
                         f"{INT16_POSITIONS}. Received: g={g!r} (k={k})")
    idx = np.asarray(indices, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= k):
        raise ValueError(f"Indices must lie in [0, {k}); found [{idx.min()}, {idx.max()}].")
    n = idx.shape[-1]
    pad = (-n) % g
    if pad:
        idx = np.concatenate([idx, np.zeros(idx.shape[:-1] + (pad,), np.int64)], axis=-1)
    idx = idx.reshape(idx.shape[:-1] + (-1, g))
    return (idx * (k ** np.arange(g, dtype=np.int64))).sum(-1).astype(np.int16)


def unpack_tuples(packed, k, g, n):
    """Inverse of :func:`pack_tuples`: the first ``n`` indices along the last axis."""
    p = np.asarray(packed, np.int64)[..., None]
    digits = (p // (k ** np.arange(g, dtype=np.int64))) % k
    return digits.reshape(p.shape[:-2] + (-1,))[..., :n].astype(np.int32)


def storage_for_bits(bits):
    """(TFLite dtype name, bits per stored index) for ``bits``-bit indices decoded per invoke."""
    if bits <= 2:
        return "int2", 2
    if bits <= 4:
        return "int4", 4
    if bits <= 8:
        return "uint8", 8
    if bits <= 15:
        return "int16", 16
    raise ValueError(f"Invalid value for argument `bits`. Expected 1..15. Received: bits={bits}")


def pack_bits(indices, bits):
    """Pack indices (flattened, C order) into ``bits``-bit signed fields, low bits first.

    Field value ``q = i - 2**(bits-1)``, so DEQUANTIZE(scale=1, zero_point=-2**(bits-1))
    recovers ``i``. ``bits`` must be 2 (INT2) or 4 (INT4); the last byte is zero-padded.

    Example:
        >>> pack_bits(np.array([2, 0, 1, 1]), 2).tobytes()
        b'\\xf8'
        >>> pack_bits(np.array([0, 15, 8]), 4).tobytes().hex()
        '7800'
    """
    if bits not in (2, 4):
        raise ValueError(f"Invalid value for argument `bits`. Expected one of [2, 4]. "
                         f"Received: bits={bits!r}")
    idx = np.asarray(indices, np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= 1 << bits):
        raise ValueError(f"Indices must lie in [0, {1 << bits}) for {bits}-bit fields; found "
                         f"[{idx.min()}, {idx.max()}].")
    per = 8 // bits
    q = (idx - (1 << (bits - 1))) & ((1 << bits) - 1)
    q = np.concatenate([q, np.zeros((-len(q)) % per, np.int64)]).reshape(-1, per)
    return (q << (bits * np.arange(per))).sum(-1).astype(np.uint8)


def unpack_bits(packed, bits, n):
    """Inverse of :func:`pack_bits`: the first ``n`` indices."""
    b = np.asarray(packed, np.uint8).astype(np.int64)[:, None]
    per = 8 // bits
    q = (b >> (bits * np.arange(per))) & ((1 << bits) - 1)
    return (q.ravel()[:n] ^ (1 << (bits - 1))).astype(np.int32)
