"""Bit-packed palette indices in JSON (``clustered.palettes.json``): ``b`` bits per index.

The reference below builds the bit stream with plain Python integers, independently of the
numpy packing; the old forms (a list, the ``{"dtype", ...}`` bytes) keep loading.
"""

import base64
import json

import numpy as np
import pytest

from dkm_tf.core import index_codec
from dkm_tf.core.index_codec import pack_indices, unpack_indices


def _reference_bytes(values, bits):
    stream = 0
    for j, v in enumerate(int(v) for v in values):
        stream |= v << (bits * j)
    return stream.to_bytes(-(-len(values) * bits // 8), "little")


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 16, 33, 64, 100, 128])
def test_indices_below_128_are_bit_packed_as_the_reference_stream(k, monkeypatch):
    monkeypatch.setattr(index_codec, "_CHUNK", 16)  # several steps on a small input
    rng = np.random.default_rng(k)
    for n in (1, 7, 8, 9, 16, 17, 61):
        idx = rng.integers(0, k, n)
        idx[0] = k - 1  # the largest index sets the width
        packed = json.loads(json.dumps(pack_indices(idx.reshape(1, n))))
        bits = max(1, (k - 1).bit_length())
        assert packed["bits"] == bits and packed["shape"] == [1, n] and "dtype" not in packed
        assert base64.b64decode(packed["base64"]) == _reference_bytes(idx, bits)
        back = unpack_indices(packed)
        assert back.dtype == np.int64 and np.array_equal(back, idx.reshape(1, n))


def test_worked_example_and_sizes():
    assert pack_indices(np.array([2, 0, 1, 1])) == {"bits": 2, "shape": [4], "base64": "Ug=="}
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, (64, 1000))
    text = json.dumps(pack_indices(idx))
    byte_form = json.dumps({"dtype": "uint8", "shape": [64, 1000], "base64": base64.b64encode(
        idx.astype(np.uint8).tobytes()).decode("ascii")})
    assert len(text) <= 0.67 * idx.size + 100 and len(text) <= 0.51 * len(byte_form)
    assert np.array_equal(unpack_indices(json.loads(byte_form)), idx)  # files written before
    assert pack_indices(rng.integers(0, 200, 10))["dtype"] == "uint8"  # 8 bits: bytes as before
    empty = pack_indices(np.zeros((2, 0), np.int64))
    assert unpack_indices(empty).shape == (2, 0) and unpack_indices(empty).dtype == np.int32


@pytest.mark.parametrize("change, match", [
    ({"bits": 0}, "bits must be an integer in 1..7"),
    ({"bits": 8}, "bits must be an integer in 1..7"),
    ({"bits": True}, "bits must be an integer in 1..7"),
    ({"bits": 2.0}, "bits must be an integer in 1..7"),
    ({"shape": [5]}, "1 bytes for 5 indices of 2 bits"),
    ({"base64": "UlI="}, "2 bytes for 4 indices"),
    ({"base64": "U!=="}, "Error"),
    ({"shape": [-1, -4]}, "negative dimension"),  # numpy's bare reshape error before
    ({"shape": [10 ** 30]}, "bytes for 1000000000000000000000000000000 indices"),  # Overflow
])
def test_a_bad_bit_form_is_refused_naming_what_is_wrong(change, match):
    value = {**pack_indices(np.array([2, 0, 1, 1])), **change}
    with pytest.raises(ValueError, match="Invalid value for argument `d`") as err:
        unpack_indices(value)
    assert match in str(err.value)


def test_palettes_json_round_trips_with_packed_indices(tmp_path):
    from dkm_tf import palette
    from dkm_tf.pipeline import save_palettes

    rng = np.random.default_rng(1)
    p = palette.cluster_tensor(rng.normal(size=(3, 3, 8, 16)).astype(np.float32), kind="conv",
                               n_clusters=16, layer_name="c")
    path = save_palettes([p], tmp_path / "m.keras")
    with open(path) as f:
        (d,) = json.load(f)
    assert d["indices"]["bits"] == 4
    again = palette.Palette.from_dict(d)
    assert np.array_equal(again.indices, p.indices) and np.array_equal(again.decode(), p.decode())
