"""`estimate(file, palettes=...)` of a default-named Sequential (`dense`, `dense_1`) whose last
Dense has a zero bias (its `.tflite` record is named after its op): the palette of `dense_1`
(100 weights) was refused as ambiguous with record `dense_1` (layer `dense`'s, 1,440
weights), though the sizes settle it (second review of session 17)."""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(4, 3, name="conv2d"), L.Flatten(),
                          L.Dense(10, name="dense"), L.Dense(10, name="dense_1")])  # zero biases
    res = dkm_tf.share_weights(m, 4)
    path = tmp_path_factory.mktemp("zero") / "z.tflite"
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    dkm_tf.export.to_tflite(res.model, path, "palettized", palettes=res.palettes,
                            decode="per_invoke", sample_inputs=x)
    return res, path


def _rows(est):
    return sorted((r.n_clusters, r.macs, r.paper_total) for r in est.layers
                  if r.shape.kind in ("conv", "dense"))


def test_every_palette_charged_as_in_keras(files):
    res, path = files
    got = energy.estimate(path, palettes=res.palettes, index_cost="log2")
    want = energy.estimate(res.model, palettes=res.palettes, index_cost="log2")
    for g, w in zip(_rows(got), _rows(want), strict=True):
        assert g[:2] == w[:2] and g[2] == pytest.approx(w[2], rel=1e-12)
    assert got.paper_total == pytest.approx(want.paper_total, rel=1e-12)


@pytest.mark.parametrize("layer", ["dense", "dense_1"])
def test_one_palette_goes_to_its_own_record(files, layer):
    res, path = files
    pal = [p for p in res.palettes if p.layer_name == layer]
    got = energy.estimate(path, palettes=pal, index_cost="log2")
    charged = [r for r in got.layers if r.n_clusters is not None]
    assert len(charged) == 1 and charged[0].shape.n_weights == pal[0].n_values
