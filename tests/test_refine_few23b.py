"""``refine`` on very few calibration samples (session 23, helper b).

A fit judged on the samples it was fitted on over-fits a small calibration set (HED 64 x 64,
K=16, on one sample: held-out error 0.176 against plain k-means' 0.048; the digits CNN at K=4
on 1-8 samples: a held-out KL up to 7x plain k-means'). With one sample the k-means codebooks
now stay (every palette's note says why); below ``MIN_SAMPLES`` the refined palettes' notes
and ``compress``'s notes say how few samples there were. Tiny models, fixed seeds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.graph import refine as refine_lib  # noqa: E402

MIN_SAMPLES = 16  # refine.MIN_SAMPLES


def _model(seed=0):
    inp = keras.Input((6,))
    h = keras.layers.Dense(5, activation="relu", name="d1")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(h))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, v.shape).astype(np.float32) for v in model.weights])
    return model


def _x(n, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)


@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_one_calibration_sample_keeps_the_k_means_codebooks(refine):
    model = _model()
    plain = dkm_tf.share_weights(model, 3)
    one = dkm_tf.share_weights(model, 3, refine=refine, data=_x(1))
    for p, q in zip(one.palettes, plain.palettes, strict=True):
        np.testing.assert_array_equal(p.codebook, q.codebook)
        np.testing.assert_array_equal(p.indices, q.indices)
        assert "output refine not applied: one calibration sample" in p.note, p.note
    for v, w in zip(one.model.weights, plain.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(w))


def test_few_samples_are_noted_on_the_refined_palettes_and_by_compress():
    assert getattr(refine_lib, "MIN_SAMPLES", None) == MIN_SAMPLES
    model = _model()
    few = dkm_tf.share_weights(model, 3, refine="outputs", data=_x(6))
    refined = [p for p in few.palettes if "output-refined" in p.note]
    assert refined  # the tiny model's fits are kept on its 6 samples
    for p in refined:
        assert f"on 6 calibration samples, fewer than {MIN_SAMPLES}: may over-fit" in p.note
    many = dkm_tf.share_weights(model, 3, refine="outputs", data=_x(MIN_SAMPLES))
    assert not any("fewer than" in p.note for p in many.palettes)
    r = dkm_tf.compress(model, (_x(40), None), n_clusters=3, refine="gptq",
                        calibration_samples=4, verbose=0)
    assert r.calibration["samples"] == 4
    assert any(n.startswith("refine calibrated on 4 sample(s): fits on fewer than "
                            f"{MIN_SAMPLES} over-fitted") for n in r.notes), r.notes
    r = dkm_tf.compress(model, (_x(40), None), n_clusters=3, refine="gptq",
                        calibration_samples=MIN_SAMPLES, verbose=0)
    assert not any("over-fitted" in n for n in r.notes), r.notes
