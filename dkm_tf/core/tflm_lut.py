"""The header of a TFLite Micro lookup-table tensor (``TFLM_DECODE``'s ancillary data).

``tflite_micro.compression`` stores each LUT-compressed weight as packed ``b``-bit indices plus
an ancillary tensor: a 16-byte header, then the value tables. Header bytes used here: byte 0
the decode type (0 = lookup table), byte 5 ``channel axis << 4 | b`` (axis 15 = one table for
the whole tensor), byte 6 the entries per table (K). Read by the export inspector and the
energy reader, which must agree on K.
"""

from __future__ import annotations

import typing

__all__ = ["HEADER_BYTES", "LutHeader", "read_lut_header"]

HEADER_BYTES = 16
_LUT, _ONE_TABLE = 0, 15


class LutHeader(typing.NamedTuple):
    """One lookup-table header: ``axis`` is None for one table per tensor."""

    bits: int
    axis: int | None
    entries: int
    table_bytes: int


def read_lut_header(raw):
    """The :class:`LutHeader` of ancillary bytes ``raw``, or None when they are not a lookup
    table (another decode type, too short, zero bits or entries).

    >>> read_lut_header(bytes([0, 1, 0, 0, 0, (15 << 4) | 2, 3, 0] + [0] * 8) + bytes(12))
    LutHeader(bits=2, axis=None, entries=3, table_bytes=12)
    """
    raw = bytes(raw)
    if len(raw) < HEADER_BYTES or raw[0] != _LUT:
        return None
    bits, axis, entries = raw[5] & 0x0F, raw[5] >> 4, raw[6]
    if not bits or not entries:
        return None
    return LutHeader(bits, None if axis == _ONE_TABLE else axis, entries,
                     len(raw) - HEADER_BYTES)
