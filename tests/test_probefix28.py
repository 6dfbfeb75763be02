"""Session-28 probe findings: a weight listed twice in `size_report`, an unbuilt Sequential
built by `energy.estimate`, a masked GlobalAveragePooling1D under-charged by the Keras
reader, refusals of preprocessing layers that named only the converter's TF op."""

import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy
from dkm_tf.core import palette

keras = pytest.importorskip("keras")
L = keras.layers


def _palettes():
    rng = np.random.default_rng(0)
    a = palette.cluster_tensor(rng.normal(size=(8, 4)).astype("float32"), kind="dense",
                               n_clusters=4, layer_name="a")
    b = palette.cluster_tensor(rng.normal(size=(4, 2)).astype("float32"), kind="dense",
                               n_clusters=2, layer_name="b")
    return [a, b]


def test_size_report_refuses_a_weight_listed_twice():
    pals = _palettes()
    one = palette.size_report(pals)
    assert one.totals["original_bits"] == (32 + 8) * 32  # each weight once
    with pytest.raises(ValueError, match=r"`palettes`.*one palette per weight.*'a/kernel' \(2x"):
        palette.size_report(pals + [pals[0]])
    with pytest.raises(ValueError, match="'a/kernel'"):
        dkm_tf.size_report(iter([pals[0], pals[1], pals[0]]))  # an iterator too
    with pytest.raises(TypeError, match="`palettes`.*Received: a list holding"):
        palette.size_report([pals[0], "b/kernel"])


def test_export_still_refuses_a_weight_given_two_palettes(tmp_path):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), L.Dense(2, name="a")])
    p = palette.cluster_tensor(m.layers[0].kernel.numpy(), kind="dense", n_clusters=4,
                               layer_name="a")
    m.layers[0].kernel.assign(p.decode())
    from dkm_tf.export import to_tflite

    with pytest.raises(ValueError, match=r"one palette per weight.*'a/kernel' \(2x, K=\[4, 4\]"):
        to_tflite(m, str(tmp_path / "m.tflite"), format="palettized", palettes=[p, p])
