"""Kernel palettes' ``transforms`` and ``scales`` in JSON: packed, exact, old lists still load.

The transform ids (< 8) take the indices' bit-packed form; the per-unit float32 scales their
exact little-endian bytes. The references below build the bytes with ``struct`` and plain
Python integers, independently of the numpy codec.
"""

import base64
import json
import math
import struct

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.core.index_codec import pack_float32, unpack_float32
from dkm_tf.core.palette import Palette


@pytest.fixture(scope="module")
def kernel_palette():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6, 6, 8)), keras.layers.Conv2D(16, 3)])
    (p,) = dkm_tf.share_weights(model, 8, unit="kernel", transforms=8, scale_bits=8).palettes
    assert p.scales is not None and p.transforms is not None and p.n_transforms == 8
    return p


def _reference_bits(values, bits):
    stream = 0
    for j, v in enumerate(int(v) for v in values):
        stream |= v << (bits * j)
    return stream.to_bytes(-(-len(values) * bits // 8), "little")


def test_transforms_and_scales_round_trip_bit_for_bit_through_json(kernel_palette):
    p = kernel_palette
    d = json.loads(json.dumps(p.to_dict()))
    t, s = d["transforms"], d["scales"]
    bits = int(p.transforms.max()).bit_length()
    assert t["bits"] == bits and t["shape"] == list(p.transforms.shape)
    assert base64.b64decode(t["base64"]) == _reference_bits(p.transforms.ravel(), bits)
    assert s["dtype"] == "float32" and s["shape"] == list(p.scales.shape)
    flat = p.scales.ravel().tolist()
    assert base64.b64decode(s["base64"]) == struct.pack(f"<{len(flat)}f", *flat)
    q = Palette.from_dict(d)
    assert q.scales.dtype == np.float32 and np.array_equal(q.scales, p.scales)
    assert np.array_equal(q.transforms, p.transforms) and q.transforms.dtype == np.uint8
    assert np.array_equal(q.decode(), p.decode())


def test_the_packed_fields_are_the_size_of_their_bytes(kernel_palette):
    p = kernel_palette
    d = p.to_dict()
    n = p.transforms.size
    # base64 of ceil(n b / 8) bytes (b <= 3 for T = 8), of 4 n bytes for the scales, + keys
    assert len(json.dumps(d["transforms"])) <= 4 * math.ceil(math.ceil(n * 3 / 8) / 3) + 60
    assert len(json.dumps(d["scales"])) <= 4 * math.ceil(4 * n / 3) + 60
    as_lists = len(json.dumps(p.scales.tolist())) + len(json.dumps(p.transforms.tolist()))
    assert len(json.dumps(d["scales"])) + len(json.dumps(d["transforms"])) < as_lists / 2


def test_files_written_with_lists_keep_loading(kernel_palette):
    p = kernel_palette
    d = json.loads(json.dumps(p.to_dict()))
    d["scales"], d["transforms"] = p.scales.tolist(), p.transforms.tolist()  # the old form
    q = Palette.from_dict(d)
    assert np.array_equal(q.scales, p.scales) and np.array_equal(q.transforms, p.transforms)
    assert np.array_equal(q.decode(), p.decode())


def test_float32_codec_is_exact_on_awkward_values():
    values = np.array([[0.0, -0.0, 1e-45, -3.4028235e38], [np.pi, 1 / 3, 7.0, 2.0 ** -126]],
                      np.float32)
    back = unpack_float32(json.loads(json.dumps(pack_float32(values))))
    assert back.dtype == np.float32 and back.shape == (2, 4)
    assert back.tobytes() == values.tobytes()  # bit for bit, the sign of -0.0 included
    assert unpack_float32(pack_float32(np.zeros((0, 3)))).shape == (0, 3)


@pytest.mark.parametrize("bad", [
    {"dtype": "float64", "shape": [1], "base64": "AAAAAAAAAAA="},
    {"dtype": "float32", "shape": [3], "base64": "AACAPw=="},
    {"dtype": "float32", "shape": [1], "base64": "not base64!"},
    {"dtype": "float32", "shape": [1]},
])
def test_a_broken_scales_dict_is_refused_naming_the_field(kernel_palette, bad):
    d = json.loads(json.dumps(kernel_palette.to_dict()))
    d["scales"] = bad
    with pytest.raises(ValueError, match="argument `d`.*float32"):
        Palette.from_dict(d)
