"""Review R4 of reading Lambdas and chains of folded ops (`tests/test_tdnest26.py`,
`tests/test_tdnest226.py`): each case's Keras estimate against its file's.

A layer a Lambda calls that is also called elsewhere (or twice in the Lambda) had no palette
on its record inside the Lambda (Keras / palettized-file hierarchy 1.4516, paper 1.2102).
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy
from dkm_tf.export import to_tflite

L = keras.layers

FNS = {
    "once_inside": lambda d: lambda t: d(t) * t,
    "twice_inside": lambda d: lambda t: d(d(t)),
}


@pytest.mark.parametrize("fn", sorted(FNS))
def test_a_layer_a_lambda_calls_keeps_its_palette(fn, tmp_path):
    keras.utils.set_random_seed(0)
    d = L.Dense(8, name="inner_d")
    i = keras.Input((8,))
    h = L.Dense(8, name="d0")(i)
    model = keras.Model(i, L.Lambda(FNS[fn](d), name="lam")(d(h)))  # d called outside too
    clustered, palettes, _ = dkm_tf.share_weights(model, n_clusters=4, seed=0, inplace=True)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    k = energy.estimate(clustered, palettes=palettes)
    path = str(tmp_path / "m.tflite")
    to_tflite(clustered, path, "palettized", palettes, sample_inputs=x)
    f = energy.estimate(path)
    dense = [x for x in k.layers if x.shape.layer == "inner_d"]
    assert len(dense) == 2 + (fn == "twice_inside")
    assert all(x.n_clusters == 4 for x in dense)
    assert sorted(x.n_clusters or 0 for x in k.layers) == sorted(
        x.n_clusters or 0 for x in f.layers)
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-6)
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-6)
