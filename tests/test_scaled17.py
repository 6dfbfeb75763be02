"""8-bit kernel scales off the ``max |s| / 127`` grid (fine-tuning keeps the first step while
the scales move: the largest measured at 122 and 125 steps) are stored as int8 + step in a
per-invoke palettized file, as the size report counts them; they were stored as float32 (4x
the counted bytes; outputs were right)."""

import dataclasses
import pathlib
import re

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.export import to_tflite
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.export.scaled import int8_grid


@pytest.mark.parametrize("top_steps", [127, 125, 122, 60, 1])
def test_int8_grid_finds_a_grid_whose_largest_scale_sits_below_127_steps(top_steps):
    rng = np.random.default_rng(top_steps)
    step = np.float32(0.0037)
    q = rng.integers(-top_steps, top_steps + 1, 200)
    q[0] = top_steps
    s = (q.astype(np.float32) * step).astype(np.float32)
    grid = int8_grid(s)
    assert grid is not None
    got_q, got_step = grid
    assert got_q.dtype == np.int8
    np.testing.assert_array_equal((got_q.astype(np.float32) * np.float32(got_step)), s)


def test_int8_grid_refuses_scales_on_no_grid():
    s = np.random.default_rng(0).normal(size=50).astype(np.float32)
    assert int8_grid(s) is None


def test_fine_tuned_scales_below_127_steps_stored_as_int8(tmp_path):
    keras.utils.set_random_seed(6)
    L = keras.layers
    m = keras.Sequential([keras.Input((10, 10, 3)),
                          L.Conv2D(16, 3, activation="relu", name="k1"),
                          L.Conv2D(8, 3, name="k2")])
    res = dkm_tf.share_weights(m, 8, unit="kernel", codebook="shared", scale_bits=8)
    moved = []
    for p in res.palettes:  # as fine-tuning leaves them: the step kept, the top at 122 steps
        q, step = int8_grid(p.scales)
        q2 = np.round(q.astype(np.float64) * 122 / 127)
        scales = (q2.astype(np.float32) * np.float32(step)).astype(np.float32)
        moved.append(dataclasses.replace(p, scales=scales))
    model = keras.models.clone_model(res.model)
    model.set_weights(res.model.get_weights())
    for p in moved:
        model.get_layer(p.layer_name).kernel.assign(p.decode())
    x = np.random.default_rng(0).normal(size=(4, 10, 10, 3)).astype(np.float32)
    path = tmp_path / "k.tflite"
    rep = to_tflite(model, path, format="palettized", palettes=moved, decode="per_invoke",
                    sample_inputs=x)
    fm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
    scales = [t for t in range(len(fm.tensors))
              if fm.raw(t) and re.search(r"/scales_\d+$", fm.tensor_name(t))]
    assert scales and {fm.type_name(t) for t in scales} == {"int8"}  # was float32
    assert sum(r["scale_bytes"] for r in rep.tensors) == sum(p.scales.size for p in moved)
    stored = np.sort(np.concatenate([
        np.frombuffer(fm.raw(t), np.int8).astype(np.float32)
        * np.float32(fm.tensors[t].quantization.scale[0]) for t in scales]))
    np.testing.assert_array_equal(stored, np.sort(np.concatenate([p.scales.ravel()
                                                                  for p in moved])))
