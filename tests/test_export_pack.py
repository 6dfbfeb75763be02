"""Byte-exact tests of the index packing core (pure numpy)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkm_tf.export import pack


@pytest.mark.parametrize("k,g", [(2, 15), (3, 9), (4, 7), (13, 4), (14, 3), (16, 3), (32, 3),
                                 (33, 2), (181, 2), (182, 1), (256, 1), (1, 16)])
def test_tuple_width(k, g):
    """g is the most base-K digits an int16 position (0..32767) can hold."""
    assert pack.tuple_width(k) == g


def test_tuple_width_table_cap():
    """Capping the table (K**g * g values) lowers g."""
    assert pack.tuple_width(2, max_table_entries=1 << 18) == 14  # 2**15*15 > 2**18
    assert pack.tuple_width(16, max_table_entries=4096 * 3) == 3
    assert pack.tuple_width(16, max_table_entries=4096 * 3 - 1) == 2


def test_pack_tuples_bytes():
    """p = i0 + K*i1 (+ K^2*i2): [2, 0, 1, 1] with K=3, g=2 -> int16 [2, 4]."""
    packed = pack.pack_tuples(np.array([2, 0, 1, 1]), k=3, g=2)
    assert packed.dtype == np.int16
    assert packed.tobytes() == b"\x02\x00\x04\x00"


def test_pack_tuples_k16_three_per_int16_with_padding():
    """K=16: [15, 0, 1 | 2] -> 15 + 0 + 256 = 271, then 2 (zero padded) -> 2."""
    packed = pack.pack_tuples(np.array([15, 0, 1, 2]), k=16, g=3)
    assert packed.tolist() == [271, 2]
    assert packed.tobytes() == bytes([0x0F, 0x01, 0x02, 0x00])


def test_pack_tuples_rows_are_independent():
    """A 2-D input packs each row separately (per-channel indices)."""
    idx = np.array([[1, 2, 3], [3, 2, 1]])
    assert pack.pack_tuples(idx, k=4, g=2).tolist() == [[9, 3], [11, 1]]


def test_pack_bits_int4_bytes():
    """INT4 fields q = i - 8, two per byte, low nibble first."""
    # i=0 -> q=-8 -> 0x8; i=15 -> q=7 -> 0x7; i=8 -> 0x0 (+ zero padding nibble)
    assert pack.pack_bits(np.array([0, 15, 8]), 4).tobytes() == bytes([0x78, 0x00])


def test_pack_bits_int2_bytes():
    """INT2 fields q = i - 2, four per byte, low bits first: [2, 0, 1, 1] -> 0xF8."""
    assert pack.pack_bits(np.array([2, 0, 1, 1]), 2).tobytes() == b"\xf8"


def test_enum_table_digits():
    """Row p lists the base-K digits of p, least significant first."""
    t = pack.enum_table(3, 2)
    assert t.shape == (9, 2)
    assert t[5].tolist() == [2, 1]  # 5 = 2 + 3*1
    p = pack.pack_tuples(t, 3, 2)[:, 0]
    assert p.tolist() == list(range(9))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 40), n=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_tuples_round_trip(k, n, seed):
    idx = np.random.default_rng(seed).integers(0, k, n)
    g = pack.tuple_width(k)
    packed = pack.pack_tuples(idx, k, g)
    assert packed.min() >= 0
    assert len(packed) == -(-n // g)
    np.testing.assert_array_equal(pack.unpack_tuples(packed, k, g, n), idx)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from([2, 4]), n=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_bits_round_trip(bits, n, seed):
    idx = np.random.default_rng(seed).integers(0, 1 << bits, n)
    packed = pack.pack_bits(idx, bits)
    assert len(packed) == -(-n * bits // 8)
    np.testing.assert_array_equal(pack.unpack_bits(packed, bits, n), idx)


@pytest.mark.parametrize("bits,storage", [(1, ("int2", 2)), (2, ("int2", 2)), (3, ("int4", 4)),
                                          (4, ("int4", 4)), (5, ("uint8", 8)),
                                          (8, ("uint8", 8)), (9, ("int16", 16))])
def test_storage_for_bits(bits, storage):
    assert pack.storage_for_bits(bits) == storage


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"Invalid value for argument `k`.*Received: k=0"):
        pack.tuple_width(0)
    with pytest.raises(ValueError, match=r"Indices must lie in \[0, 3\)"):
        pack.pack_tuples(np.array([0, 3]), k=3, g=2)
    with pytest.raises(ValueError, match=r"Invalid value for argument `g`"):
        pack.pack_tuples(np.array([0, 1]), k=16, g=4)
    with pytest.raises(ValueError, match=r"Invalid value for argument `bits`.*Received: bits=3"):
        pack.pack_bits(np.array([0]), 3)
    with pytest.raises(ValueError, match=r"Indices must lie in \[0, 4\)"):
        pack.pack_bits(np.array([4]), 2)
