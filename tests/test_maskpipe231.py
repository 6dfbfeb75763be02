"""Session 31, after review: a mask made in a Pipeline merges with its twin outside only where
the file computes one for both (an Embedding(mask_zero=True)'s), not a `Masking`'s.

Before the fix (main 8a8d68f; Keras / float file hierarchy and paper): `Pipeline([Masking(0.),
GlobalAveragePooling1D()])(t)` beside `GlobalAveragePooling1D()(Masking(0.)(t))`, t of 6x8, was
charged one pooling and one mask SUM where the file computes two of each: 0.5000 / 0.5000 (the
same with one Masking layer on both sides); with a Dense(8) after the Masking on both sides
0.7857 / 0.9454. The Embedding twin (one pooling, one SUM, as the file) and two Maskings outside
(merged, as the file) stay 1.0000. Each Keras estimate is checked beside its float file's (rtol
1e-6), its pooling records counted, and the masked average Keras computes checked against numpy.
"""

import keras
import numpy as np
import pytest
from _energy_file25 import both, same_totals
from keras import layers as L

from tests._energy_file25 import BATCHES

pytestmark = pytest.mark.filterwarnings(  # Keras' own: a Pipeline does not support masking
    "ignore:(?s).*will therefore destroy the mask:UserWarning")

GAP = L.GlobalAveragePooling1D


def _masking_twin(batch):
    t = keras.Input((6, 8), batch_size=batch)
    return keras.Model(t, [L.Pipeline([L.Masking(0.0), GAP()])(t), GAP()(L.Masking(0.0)(t))])


def _one_masking(batch):
    t = keras.Input((6, 8), batch_size=batch)
    m = L.Masking(0.0)
    return keras.Model(t, [L.Pipeline([m, GAP()])(t), GAP()(m(t))])


def _masking_dense(batch):
    t = keras.Input((6, 8), batch_size=batch)
    m, d = L.Masking(0.0), L.Dense(8)
    return keras.Model(t, [L.Pipeline([m, d, GAP()])(t), GAP()(d(m(t)))])


def _two_outside(batch):
    t = keras.Input((6, 8), batch_size=batch)
    return keras.Model(t, [GAP()(L.Masking(0.0)(t)), GAP()(L.Masking(0.0)(t))])


def _embedding_twin(batch):
    x = keras.Input((6,), dtype="int32", batch_size=batch)
    a, b = L.Embedding(20, 8, mask_zero=True), L.Embedding(20, 8, mask_zero=True)
    a.build((None, 6))
    b.build((None, 6))
    b.set_weights(a.get_weights())
    return keras.Model(x, [L.Pipeline([a, GAP()])(x), GAP()(b(x))])


CASES = {  # build, the poolings and mask SUMs Keras is charged (as the file computes)
    "masking in a Pipeline and outside": (_masking_twin, 4),  # before 2 (0.5000)
    "one Masking layer on both sides": (_one_masking, 4),  # before 2 (0.5000)
    "a Masking then a Dense on both sides": (_masking_dense, 4),  # before 2 (0.7857)
    "two Maskings outside": (_two_outside, 2),
    "two Embeddings of one weight": (_embedding_twin, 2),
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_mask_made_in_a_pipeline_merges_as_in_its_file(case, batch, tmp_path):
    keras.utils.set_random_seed(0)
    build, pools = CASES[case]
    k, f = both(build(batch), tmp_path)
    same_totals(k, f)
    assert len([x for x in k.layers if x.shape.kind == "pool"]) == pools
    assert len([x for x in f.layers if x.shape.kind == "pool"]) == pools


def test_keras_averages_the_kept_steps_on_both_sides():
    """Both outputs of the Masking twin average the steps not all 0 (numpy, atol 1e-6)."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 6, 8)).astype("float32")
    t[0, [1, 4]] = 0.0
    t[1, 5] = 0.0
    keep = np.any(t != 0, axis=-1, keepdims=True).astype("float32")
    want = (t * keep).sum(1) / keep.sum(1)
    for out in _masking_twin(None)(t):
        np.testing.assert_allclose(np.asarray(out), want, atol=1e-6)


def _attention_beside(pipeline, batch):
    x = keras.Input((6,), dtype="int32", batch_size=batch)
    e = L.Embedding(20, 8, mask_zero=True)(x)
    p = L.Pipeline([L.Dense(8)])(e) if pipeline else L.Dense(8)(e)
    return keras.Model(x, [GAP()(L.Attention()([p, p])), GAP()(p)])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("pipeline", [True, False])
def test_an_attention_passes_its_query_mask_one_sum_as_the_file(pipeline, batch, tmp_path):
    """`Attention.compute_mask` returns its query's mask as a new tensor of the same value:
    the file computes one SUM of it for both poolings (before: Keras 2). The Keras estimate
    still lacks the file's masking of the attention scores (KNOWN_LIMITATIONS): hierarchy
    0.8494 before, 0.8390 now; the SUM counts are checked here."""
    keras.utils.set_random_seed(0)
    k, f = both(_attention_beside(pipeline, batch), tmp_path)
    sums = [x for x in k.layers if x.name.endswith("/mask_sum")]
    assert len(sums) == 1
    assert (sums[0].shape.input_size, sums[0].shape.output_size) == (6, 1)
    assert len([x for x in f.layers if x.shape.kind == "pool" and x.shape.output_size == 1]) == 1
    assert len([x for x in k.layers if x.shape.kind == "pool"]) == 3
