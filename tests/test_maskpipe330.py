"""Session 30 (third round): two calls of one Pipeline / nested model on one input share a mask.

A mask a Pipeline or nested model makes itself (a `Masking`, an Embedding(mask_zero=True)) was
cached per call (node), so two calls of the same Pipeline or model on the same tensor, each read
by its own pooling, got two fresh masks: the poolings never merged and the mask SUM was charged
twice, though the Pipelines' Dense calls merge and the float file computes everything once.
Before 2026-12-07: `Pipeline([Masking(), Dense(4)])` twice on a 5x4 input, Keras / float file
hierarchy 1.3431, paper 1.1201; `Pipeline([Embedding(mask_zero), Dense(8)])` twice, 1.2728 /
1.0578; a nested model of a `Masking` twice, 2.0000 / 2.0000. Each Keras estimate is checked
beside its float file's (rtol 1e-6); calls on different inputs keep two masks (two SUMs)."""

import keras
import pytest
from _energy_file25 import both, same_totals
from keras import layers as L

pytestmark = pytest.mark.filterwarnings(  # Keras' own: a Pipeline does not support masking
    "ignore:(?s).*will therefore destroy the mask:UserWarning")

GAP = L.GlobalAveragePooling1D


def _twice(q, a, b):
    return L.Concatenate()([GAP()(q(a)), GAP()(q(b))])


def _masking_pipeline(batch, other=False):
    z, w = keras.Input((5, 4), batch_size=batch), keras.Input((5, 4), batch_size=batch)
    q = L.Pipeline([L.Masking(), L.Dense(4)])
    return keras.Model([z, w] if other else z, _twice(q, z, w if other else z))


def _embedding_pipeline(batch, other=False):
    x, y = (keras.Input((6,), dtype="int32", batch_size=batch) for _ in range(2))
    p = L.Pipeline([L.Embedding(20, 8, mask_zero=True), L.Dense(8)])
    return keras.Model([x, y] if other else x, _twice(p, x, y if other else x))


def _masking_model(batch, other=False):
    z, w = keras.Input((5, 4), batch_size=batch), keras.Input((5, 4), batch_size=batch)
    j = keras.Input((5, 4))
    inner = keras.Model(j, L.Masking()(j))
    return keras.Model([z, w] if other else z, _twice(inner, z, w if other else z))


BUILDERS = {"masking_pipeline": _masking_pipeline, "embedding_pipeline": _embedding_pipeline,
            "masking_model": _masking_model}


def _mask_sums(report):
    return [x for x in report.layers if x.name.endswith("/mask_sum")]


@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("case", list(BUILDERS))
@pytest.mark.parametrize("other", [False, True], ids=["same_input", "different_inputs"])
def test_two_calls_of_one_masked_pipeline_read_as_the_file(case, batch, other, tmp_path):
    k, f = both(BUILDERS[case](batch, other), tmp_path)
    same_totals(k, f)  # same input, before 2026-12-07: 1.3431 / 1.1201, 1.2728, 2.0000
    assert len(_mask_sums(k)) == (2 if other else 1)
    pools = [x for x in k.layers if x.shape.kind == "pool"]
    assert len(pools) == (4 if other else 2)  # each pooling and its mask SUM
