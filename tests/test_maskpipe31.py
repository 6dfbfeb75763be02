"""Session 31: masks followed through a layer computing its own, made in a Pipeline, from outside.

Before session 31 (cac6419; each on an Embedding(20, 8, mask_zero=True) of 6 tokens, Keras /
float file hierarchy, paper): a Pipeline's run-time mask was not followed through a layer
computing a mask of its own after it, the pooling charged no mask SUM
(`GlobalAveragePooling1D()(LSTM(4, return_sequences=True)(Pipeline([Dense(8)])(e)))` 0.9944 /
0.9985, through `MultiHeadAttention(2, 4)` 0.9952 / 0.9990, an `Add` with a Dense of `e` 0.9871
/ 0.9969); a mask made in a Pipeline was a fresh tensor to the merge, `Pipeline([emb,
GlobalAveragePooling1D()])(x)` beside `GlobalAveragePooling1D()(emb(x))` charged two poolings
and two mask SUMs where the file computes one (2.0000 / 2.0000, also with `Model(xi, emb(xi))`
first in the Pipeline); a Pipeline in a nested model whose mask comes from outside, a Dense
before its pooling (`Model(j, Pipeline([Dense(8), GlobalAveragePooling1D()])(j))` on `e`),
charged no mask SUM (0.9697 / 0.9936); a subclassed model of one Dense(8) in the Pipeline
(`Pipeline([Sub(), GlobalAveragePooling1D()])`) or before the pooling outside, the same (0.9697
/ 0.9936: no graph; its `call` is traced now, `energy.subclassed_masks`); a layer computing a
mask of its own in a nested model from the mask coming from outside (a `Concatenate`, an LSTM,
a `MultiHeadAttention`) before the pooling there, the same (0.9849, 0.9971, 0.9952). Each Keras
estimate is checked beside its float file's (rtol 1e-6), its mask SUM records (an average
pooling of 1 channel over the 6 steps) counted, and the masked average Keras computes checked
against numpy."""

import keras
import numpy as np
import pytest
from _energy_file25 import both, same_totals
from keras import layers as L

from tests._energy_file25 import BATCHES

pytestmark = pytest.mark.filterwarnings(  # Keras' own: a Pipeline does not support masking
    "ignore:(?s).*will therefore destroy the mask:UserWarning")

GAP = L.GlobalAveragePooling1D


def _tokens(batch):
    x = keras.Input((6,), dtype="int32", batch_size=batch)
    return x, L.Embedding(20, 8, mask_zero=True)(x)


def _after(layer):
    def build(batch):
        x, e = _tokens(batch)
        return keras.Model(x, GAP()(layer(L.Pipeline([L.Dense(8)])(e), e)))
    return build


def _twin(inner_model=False):
    def build(batch):
        x = keras.Input((6,), dtype="int32", batch_size=batch)
        emb = L.Embedding(20, 8, mask_zero=True)
        first = emb
        if inner_model:
            xi = keras.Input((6,), dtype="int32")
            first = keras.Model(xi, emb(xi))
        return keras.Model(x, [L.Pipeline([first, GAP()])(x), GAP()(emb(x))])
    return build


def _nested(batch):
    x, e = _tokens(batch)
    j = keras.Input((6, 8))
    return keras.Model(x, keras.Model(j, L.Pipeline([L.Dense(8), GAP()])(j))(e))


class Sub(keras.Model):
    """A subclassed model of one Dense(8) (or Conv1D(8, 3), which drops the mask)."""

    def __init__(self, conv=False):
        super().__init__()
        self.d = L.Conv1D(8, 3, padding="same") if conv else L.Dense(8)

    def call(self, inputs):
        return self.d(inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (8,)


def _subclassed(where, conv=False):
    def build(batch):
        x, e = _tokens(batch)
        if where == "outside":
            return keras.Model(x, GAP()(Sub(conv)(e)))
        return keras.Model(x, L.Pipeline([Sub(conv), GAP()])(e))
    return build


def _own_mask_in_nested(body, twice=False):
    def build(batch):
        x, e = _tokens(batch)
        j = keras.Input((6, 8))
        inner = keras.Model(j, GAP()(body(j)))
        if not twice:
            return keras.Model(x, inner(e))
        y = keras.Input((6,), dtype="int32", batch_size=batch)
        return keras.Model([x, y], [inner(e), inner(L.Embedding(20, 8, mask_zero=True)(y))])
    return build


def _concat(j):
    return L.Concatenate()([L.Dense(16)(j), j])


# (builder, mask SUMs and poolings the file computes)
CASES = {
    "lstm_after_pipeline": (_after(lambda p, e: L.LSTM(4, return_sequences=True)(p)), 1, 1),
    "mha_after_pipeline": (_after(lambda p, e: L.MultiHeadAttention(2, 4)(p, p)), 1, 1),
    "add_after_pipeline": (_after(lambda p, e: L.Add()([p, L.Dense(8)(e)])), 1, 1),
    "embedding_in_pipeline_beside_twin": (_twin(), 1, 1),
    "model_of_embedding_in_pipeline_beside_twin": (_twin(True), 1, 1),
    "pipeline_in_nested_model_dense_first": (_nested, 1, 1),
    "subclassed_in_pipeline": (_subclassed("pipeline"), 1, 1),  # 0.9697 / 0.9936 before
    "subclassed_outside": (_subclassed("outside"), 1, 1),  # 0.9697 / 0.9936 before
    "subclassed_conv_in_pipeline": (_subclassed("pipeline", conv=True), 0, 1),  # no mask
    "concatenate_in_nested_model": (_own_mask_in_nested(_concat), 1, 1),  # 0.9849 / 0.9969
    "lstm_in_nested_model": (_own_mask_in_nested(  # 0.9971 / 0.9993 before
        lambda j: L.Dense(8)(L.LSTM(8, return_sequences=True)(j))), 1, 1),
    "mha_in_nested_model": (_own_mask_in_nested(  # 0.9952 / 0.9990 before
        lambda j: L.Dense(8)(L.MultiHeadAttention(2, 4)(j, j))), 1, 1),
    "nested_model_on_two_masks": (_own_mask_in_nested(_concat, True), 2, 2),  # 0.9756 / 0.9939
}


def _mask_sums(report):
    return [x for x in report.layers if x.name.endswith("/mask_sum")]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_the_mask_a_pooling_runs_with_reads_as_its_file(case, batch, tmp_path):
    keras.utils.set_random_seed(0)
    build, sums, pools = CASES[case]
    k, f = both(build(batch), tmp_path)
    same_totals(k, f)  # before: 0.9944, 0.9952, 0.9871, 2.0000, 2.0000, 0.9697 x3 (hierarchy)
    assert len(_mask_sums(k)) == sums
    for rec in _mask_sums(k):
        assert (rec.shape.kind, rec.shape.input_size, rec.shape.output_size) == ("pool", 6, 1)
    assert len([x for x in k.layers if x.shape.kind == "pool"]) == pools + sums


def test_keras_averages_the_kept_steps_in_these_models():
    """What the mask SUM is for: each pooling above averages the unmasked steps only (numpy
    reference, atol 1e-5), so the file's SUM of the mask is computed (not a plain MEAN)."""
    keras.utils.set_random_seed(0)
    tokens = np.array([[3, 5, 0, 7, 0, 0], [1, 2, 3, 4, 5, 0]], dtype="int32")
    keep = (tokens != 0).astype("float32")[..., None]
    model = _twin()(None)
    emb = [x for x in model.layers if isinstance(x, L.Embedding)][0]
    rows = np.asarray(emb.embeddings)[tokens]
    want = (rows * keep).sum(1) / keep.sum(1)
    for out in model(tokens):
        np.testing.assert_allclose(np.asarray(out), want, atol=1e-5)
    lstm = _after(lambda p, e: L.LSTM(4, return_sequences=True)(p))(None)
    seq = keras.Model(lstm.input, lstm.layers[-2].output)  # the LSTM's output
    h = np.asarray(seq(tokens))
    np.testing.assert_allclose(np.asarray(lstm(tokens)), (h * keep).sum(1) / keep.sum(1),
                               atol=1e-5)
