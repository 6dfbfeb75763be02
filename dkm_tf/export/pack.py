"""Pure-numpy packing of palette indices into the integer layouts the exporters store.

Two families, one per decode mode:

* **Tuples in int16** (``decode="once"``). TFLite's GATHER is the only op that both turns
  integers into positions and computes its output at load time, and its positions must be
  int16/int32 and non-negative, so one int16 carries at most 15 bits. ``g`` indices in base
  ``K`` share one int16 as ``p = i0 + K*i1 + K**2*i2 + ...`` (``K**g <= 32768``): 3 per int16
  for K <= 32 (5.33 bits/index), 4 for K <= 13 (4 bits), 15 for K = 2.
* **Bit fields with spare bits in int16** (``decode="once"``, :class:`DenseScheme`): where
  base-K tuples waste bits (K = 16: 3 indices use 12 of the 15 bits), each int16 holds ``g``
  ``b``-bit indices in its low bits and ``r = 15 - g*b`` spare bits on top; the spare bits of
  ``q`` words hold ``e`` more indices. K = 16: 15 indices per 4 int16 (4.27 bits/index
  instead of 5.33); K = 4: 15 per 2 (2.13 instead of 2.29); K = 64: 5 per 2 (6.4 instead of 8).
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

import dataclasses
import math

import numpy as np

__all__ = ["INT16_POSITIONS", "MAX_EXTRA_TABLE", "DenseScheme", "bit_width", "dense_scheme",
           "enum_table", "extra_tables", "pack_bits", "pack_dense",
           "pack_tuples", "storage_for_bits", "tuple_width", "unpack_bits", "unpack_dense",
           "unpack_tuples"]

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


# --------------------------------------------------------------------------- dense int16
@dataclasses.dataclass(frozen=True)
class DenseScheme:
    """``q`` int16 words holding ``q*g + e`` indices of ``b`` bits (``decode="once"``).

    Word ``u`` of a group is ``w_u = sum_j i_{u,j} 2^(b j) + 2^(g b) s_u`` with the regular
    indices ``i_{u,0..g-1}`` in its low ``g*b`` bits and ``r`` spare bits ``s_u`` on top
    (``w_u < 2^15``, a valid GATHER position). The spare fields, read as one number
    ``N = sum_u s_u 2^(r u)``, hold the ``e`` extra indices: ``N = sum_j x_j 2^(b j)``. A
    group lists its indices as the ``q*g`` regular ones (word by word), then the ``e`` extras.
    Every extra index lies in the spare bits of at most two consecutive words (so that one
    integer MUL can join its two parts in the decode graph).
    """

    b: int  # bits per index
    g: int  # regular indices per word
    q: int  # words per group
    e: int  # extra indices per group (in the spare bits)

    @property
    def r(self):
        return 15 - self.g * self.b

    @property
    def per_group(self):
        return self.q * self.g + self.e

    @property
    def bits_per_index(self):
        return 16 * self.q / self.per_group

    def extra_fields(self, j):
        """Extra index ``j`` as ((word, shift, bits), ...) of spare fields, low bits first."""
        out, lo, left = [], j * self.b, self.b
        while left:
            u, shift = divmod(lo, self.r)
            n = min(left, self.r - shift)
            out.append((u, shift, n))
            lo, left = lo + n, left - n
        return tuple(out)


def dense_scheme(k, max_table_entries=None):
    """The :class:`DenseScheme` for codebooks of ``k`` entries, or None when base-``k``
    tuples (:func:`tuple_width`) are at least as dense or the decode table would be larger
    than ``max_table_entries`` values (the regular table has ``2^(g b) * g`` of them)."""
    _check_k(k)
    b = bit_width(k)
    g = 15 // b
    r = 15 - g * b
    if k == 1 or r == 0 or g == 0:
        return None
    if max_table_entries is not None and (1 << (g * b)) * g > max_table_entries:
        return None
    q = b // math.gcd(b, r)  # q*r spare bits hold whole indices
    scheme = DenseScheme(b, g, q, q * r // b)
    if any(len(scheme.extra_fields(j)) > 2 for j in range(scheme.e)) \
            or extra_tables(scheme) is None:
        return None
    if scheme.bits_per_index >= 16 / tuple_width(k, max_table_entries):
        return None
    return scheme


MAX_EXTRA_TABLE = 4096  # longest EXTRA table (entries) a scheme may need


def _primes(n):
    out, c = [], 2
    while len(out) < n:
        if all(c % p for p in out if p * p <= c):
            out.append(c)
        c += 1
    return out


def _factors(n0, n1):
    """(low factor per A, high factor per B) for an extra index split into n0 + n1 bits:
    A + 2^n0 B is recovered from the product, which is unique; the shortest table wins."""
    a, b = np.arange(1 << n0), np.arange(1 << n1)
    p = _primes((1 << n0) + (1 << n1))
    options = [(np.asarray(p[:1 << n0]), np.asarray(p[1 << n0:])),
               (a + 1, ((1 << n0) + 1) ** b),
               (((1 << n1) + 1) ** a, b + 1)]
    return min(options, key=lambda o: int(o[0].max()) * int(o[1].max()))


def extra_tables(scheme):
    """``(rows, low, high, extra)`` for the spare-bit indices of ``scheme``.

    ``rows``: (e, 2) word rows (u of the low part, u of the high part) of each extra index;
    ``low``, ``high``: int32 (e, 2^r) factor of each spare value; ``extra``: int16 (e, L)
    with ``extra[j, low[j, s] * high[j, t]]`` = the index held by spare values (s, t).
    Returns None when some ``extra`` table would be longer than :data:`MAX_EXTRA_TABLE`.
    """
    e, r = scheme.e, scheme.r
    spare = np.arange(1 << r)
    rows, low, high, tables = [], [], [], []
    for j in range(e):
        fields = scheme.extra_fields(j)
        (u0, sh0, n0), rest = fields[0], fields[1:]
        u1, n1 = (rest[0][0], rest[0][2]) if rest else (u0, 0)
        f_lo, f_hi = _factors(n0, n1)
        a = (spare >> sh0) & ((1 << n0) - 1)
        bb = spare & ((1 << n1) - 1)
        low.append(f_lo[a])
        high.append(f_hi[bb])
        size = int(f_lo.max()) * int(f_hi.max()) + 1
        if size > MAX_EXTRA_TABLE:
            return None
        table = np.zeros(size, np.int64)
        aa, bv = np.meshgrid(np.arange(1 << n0), np.arange(1 << n1), indexing="ij")
        table[f_lo[aa] * f_hi[bv]] = aa + (bv << n0)
        tables.append(table)
        rows.append((u0, u1))
    width = max(len(t) for t in tables)
    extra = np.zeros((e, width), np.int16)
    for j, t in enumerate(tables):
        extra[j, :len(t)] = t
    return (np.asarray(rows, np.int32), np.asarray(low, np.int32),
            np.asarray(high, np.int32), extra)


def pack_dense(indices, scheme):
    """Pack indices (< ``2^b``) along the last axis into ``scheme.q`` rows of int16 words.

    With ``Q = ceil(n / per_group)`` groups (the last axis zero-padded to ``Q * per_group``),
    the first ``q*Q*g`` indices are the regular ones, in (word row u, group, digit) order,
    and the last ``e*Q`` the extra ones, in (extra j, group) order: so a decoder that
    concatenates ``regular[u, group, digit]`` and ``extra[j, group]`` (flattened) gets the
    indices back in order, and row ``u`` of the words can be read with one slice.

    Returns:
        int16 array (..., q, Q).

    Example (K = 16: 15 indices in 4 words):
        >>> s = dense_scheme(16)
        >>> pack_dense(np.arange(15) % 16, s).ravel().tolist()
        [16912, 13635, 14454, 31657]
    """
    b, g, q, e, r = scheme.b, scheme.g, scheme.q, scheme.e, scheme.r
    idx = np.asarray(indices, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= 1 << b):
        raise ValueError(f"Indices must lie in [0, {1 << b}); found [{idx.min()}, "
                         f"{idx.max()}].")
    lead, n = idx.shape[:-1], idx.shape[-1]
    groups = max(1, -(-n // scheme.per_group))
    idx = np.concatenate([idx, np.zeros(lead + (groups * scheme.per_group - n,), np.int64)],
                         axis=-1)
    regular = idx[..., :q * groups * g].reshape(lead + (q, groups, g))
    words = (regular << (b * np.arange(g))).sum(-1)                  # (..., q, Q)
    extra = idx[..., q * groups * g:].reshape(lead + (e, groups))
    spare = (extra << (b * np.arange(e))[:, None]).sum(-2)           # (..., Q): q*r bits
    fields = (spare[..., None, :] >> (r * np.arange(q))[:, None]) & ((1 << r) - 1)
    return (words + (fields << (g * b))).astype(np.int16)


def unpack_dense(packed, scheme, n):
    """Inverse of :func:`pack_dense`: the first ``n`` indices."""
    b, g, q, r, e = scheme.b, scheme.g, scheme.q, scheme.r, scheme.e
    w = np.asarray(packed, np.int64)                                   # (..., q, Q)
    lead = w.shape[:-2]
    regular = (w[..., None] >> (b * np.arange(g))) & ((1 << b) - 1)    # (..., q, Q, g)
    spare = ((w >> (g * b)) << (r * np.arange(q))[:, None]).sum(-2)   # (..., Q)
    extra = (spare[..., None, :] >> (b * np.arange(e))[:, None]) & ((1 << b) - 1)
    flat = np.concatenate([regular.reshape(lead + (-1,)), extra.reshape(lead + (-1,))], -1)
    return flat[..., :n].astype(np.int32)
