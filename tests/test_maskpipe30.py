"""Session 30: a `keras.layers.Pipeline` given a mask (`energy.keras_pipeline.masked_chain`).

Keras records the mask of a Pipeline called on a masked tensor (`Embedding(20, 8,
mask_zero=True)` before it), or given `mask=`, as its node's second input; the reader took one
input only and listed the Pipeline in `skipped` ("not read (one of each)"), charging nothing
(Embedding -> `Pipeline([GlobalAveragePooling1D(), Dense(4)])` on 6 tokens beside the same
pooling and Dense outside: Keras / file hierarchy 0.7072, paper 0.6345; `Pipeline([
GlobalAveragePooling1D(), Dense(3)])(t, mask=m)` beside `GlobalAveragePooling1D()(t)`, 5x4:
0.3280 / 0.2759). Each Keras estimate is checked beside its float file's (hierarchy and paper
totals, rtol 1e-6) and against the records worked out by hand: a masked pooling is a SUM of
the inputs (an average pooling of C channels over T steps) and a SUM of the (T,) mask (one
channel), an unmasked one a MEAN (C channels); a Dense of n inputs and k units. The masks
Keras gives the layers are checked on the model's outputs against numpy."""

import keras
import numpy as np
import pytest
from _energy_file25 import both, same_totals
from keras import layers as L

pytestmark = pytest.mark.filterwarnings(  # Keras' own: a Pipeline does not support masking
    "ignore:(?s).*will therefore destroy the mask:UserWarning")


def _pool(c, t):
    """The record `(kind, outputs, inputs)` of a pooling of `c` channels over `t` steps."""
    return ("pool", c, c * t)


def _dense(n, k, positions=1):
    return ("dense", k * positions, n * positions)


def _records(report):
    return sorted((x.shape.kind, x.shape.output_size, x.shape.input_size) for x in report.layers)


def _tokens(batch):
    x = keras.Input((6,), dtype="int32", batch_size=batch)
    return x, L.Embedding(20, 8, mask_zero=True)(x)


def _gap_dense(units=4):
    return L.Pipeline([L.GlobalAveragePooling1D(), L.Dense(units)])


def _beside(batch):  # the reproduction: the same pooling and Dense outside too
    x, e = _tokens(batch)
    return keras.Model(x, [_gap_dense()(e), L.Dense(4)(L.GlobalAveragePooling1D()(e))])


def _alone(batch):
    x, e = _tokens(batch)
    return keras.Model(x, _gap_dense()(e))


def _explicit(batch, layers=None, outside=lambda t, m: L.GlobalAveragePooling1D()(t)):
    x = keras.Input((5, 4), batch_size=batch)
    m, t = keras.ops.greater(x[:, :, 0], 0), keras.ops.tanh(x)
    y = L.Pipeline(layers or [L.GlobalAveragePooling1D(), L.Dense(3)])(t, mask=m)
    return keras.Model(x, [y, outside(t, m)])


def _masked_outside(t, m):
    return L.GlobalAveragePooling1D()(t, mask=m)


def _in_nested(batch):  # the Embedding and the Pipeline in a nested model, twins outside
    xi, emb = keras.Input((6,), dtype="int32"), L.Embedding(20, 8, mask_zero=True)
    inner = keras.Model(xi, _gap_dense()(emb(xi)))
    x = keras.Input((6,), dtype="int32", batch_size=batch)
    return keras.Model(x, [inner(x), L.Dense(4)(L.GlobalAveragePooling1D()(emb(x)))])


def _nested_pipeline(batch, body=lambda j: _gap_dense()(j), beside=False):
    x, e = _tokens(batch)  # the mask reaches the nested model's graph when it runs
    j = keras.Input((6, 8))
    inner = keras.Model(j, body(j))
    outs = [inner(e)] + ([L.Dense(4)(L.GlobalAveragePooling1D()(e))] if beside else [])
    return keras.Model(x, outs)


def _model_in_pipeline(batch):
    x, e = _tokens(batch)
    j = keras.Input((6, 8))
    return keras.Model(x, L.Pipeline([keras.Model(j, L.GlobalAveragePooling1D()(j)),
                                      L.Dense(4)])(e))


def _twice_same(batch):  # one Pipeline called twice on one masked tensor: computed once
    x, e = _tokens(batch)
    p = _gap_dense()
    return keras.Model(x, [p(e), L.ReLU()(p(e))])


def _twice(batch, nested=False):  # on two masked tensors (one Embedding, two inputs)
    x, x2 = (keras.Input((6,), dtype="int32", batch_size=batch) for _ in range(2))
    emb, p = L.Embedding(20, 8, mask_zero=True), _gap_dense()
    if nested:
        j = keras.Input((6, 8))
        p = keras.Model(j, p(j))
    return keras.Model([x, x2], [p(emb(x)), p(emb(x2))])


def _dense_first(batch, beside=False):  # the mask passes through a Dense (rank 3)
    x, e = _tokens(batch)
    d = L.Dense(8)
    y = L.Pipeline([d, L.GlobalAveragePooling1D(), L.Dense(4)])(e)
    return keras.Model(x, [y] + ([L.GlobalAveragePooling1D()(d(e))] if beside else []))


def _dropout_first(batch):
    x, e = _tokens(batch)
    return keras.Model(x, [L.Pipeline([L.Dropout(0.5), L.GlobalAveragePooling1D()])(e),
                           L.GlobalAveragePooling1D()(e)])


def _in_pipeline(batch):
    x, e = _tokens(batch)
    return keras.Model(x, L.Pipeline([L.Pipeline([L.GlobalAveragePooling1D()]),
                                      L.Dense(4)])(e))


def _masking(batch):  # a mask made inside the Pipeline
    x = keras.Input((5, 4), batch_size=batch)
    return keras.Model(x, L.Pipeline([L.Masking(), L.GlobalAveragePooling1D(), L.Dense(3)])(
        keras.ops.tanh(x)))


def _dense_in_pipeline(batch):  # the mask passes out of the inner Pipeline (its tensor's)
    x, e = _tokens(batch)
    return keras.Model(x, L.Pipeline([L.Pipeline([L.Dense(8)]), L.GlobalAveragePooling1D(),
                                      L.Dense(4)])(e))


def _embedding_in_it(batch, beside=False):  # the mask made by an Embedding in the Pipeline
    x = keras.Input((6,), dtype="int32", batch_size=batch)
    emb = L.Embedding(20, 8, mask_zero=True)
    if beside:
        return keras.Model(x, [L.Pipeline([emb, L.GlobalAveragePooling1D()])(x),
                               L.GlobalAveragePooling1D()(emb(x))])
    return keras.Model(x, L.Pipeline([emb, L.GlobalAveragePooling1D(), L.Dense(4)])(x))


MASKED = [_pool(8, 6), _pool(1, 6)]  # a masked pooling of the 6x8 embedding
CASES = {  # builder, the file's records
    "beside": (_beside, MASKED + [_dense(8, 4)] * 2),  # 0.7072 / 0.6345 before
    "alone": (_alone, MASKED + [_dense(8, 4)]),  # nothing charged before
    "explicit": (_explicit, [_pool(4, 5), _pool(1, 5), _dense(4, 3), _pool(4, 5)]),  # 0.3280
    "explicit_dense_first": (lambda b: _explicit(b, [L.Dense(3), L.GlobalAveragePooling1D()]),
                             [_dense(4, 3, 5), _pool(3, 5), _pool(4, 5)]),  # no mask given
    "explicit_same_outside": (lambda b: _explicit(b, outside=_masked_outside),
                              [_pool(4, 5), _pool(1, 5), _dense(4, 3)]),  # merged
    "nested_model_holding_it": (_in_nested, MASKED + [_dense(8, 4)] * 2),
    "in_a_nested_model": (_nested_pipeline, MASKED + [_dense(8, 4)]),
    "nested_model_in_it": (_model_in_pipeline, MASKED + [_dense(8, 4)]),
    "twice_on_one_tensor": (_twice_same, MASKED + [_dense(8, 4)] * 2),  # one with its RELU
    "twice_on_two_tensors": (_twice, (MASKED + [_dense(8, 4)]) * 2),
    "nested_twice": (lambda b: _twice(b, nested=True), (MASKED + [_dense(8, 4)]) * 2),
    "dense_first": (_dense_first, [_dense(8, 8, 6)] + MASKED + [_dense(8, 4)]),
    "dense_first_beside": (lambda b: _dense_first(b, True), [_dense(8, 8, 6)] + MASKED + [
        _dense(8, 4)]),
    "dropout_first": (_dropout_first, MASKED),
    "pipeline_in_it": (_in_pipeline, MASKED + [_dense(8, 4)]),
    "masking_in_it": (_masking, [_pool(4, 5), _pool(1, 5), _dense(4, 3)]),  # 0.8780 before
    "embedding_in_it": (_embedding_in_it, MASKED + [_dense(8, 4)]),  # 0.9349 before
    "dense_in_a_pipeline_in_it": (_dense_in_pipeline, [_dense(8, 8, 6)] + MASKED + [
        _dense(8, 4)]),
}
BATCH_2 = ["beside", "explicit", "nested_model_holding_it", "twice_on_two_tensors",
           "nested_twice", "dense_first_beside"]


@pytest.mark.parametrize("case,batch", [(c, None) for c in CASES] + [(c, 2) for c in BATCH_2])
def test_a_pipeline_given_a_mask_reads_as_its_file(case, batch, tmp_path):
    build, records = CASES[case]
    keras.utils.set_random_seed(0)
    k, f = both(build(batch), tmp_path)
    assert _records(f) == sorted(records)
    assert _records(k) == sorted(records)
    assert not [s for s in k.skipped if "not read" in s[1]], k.skipped
    same_totals(k, f)


def test_known_limitation_nested_pooling_not_merged_with_its_masked_twin(tmp_path):
    """A Pipeline (or a plain pooling) in a nested model called on a masked tensor runs with
    the mask but is not merged with the same masked pooling outside (`keras_cse` keys the
    nested graph without the mask; KNOWN_LIMITATIONS.md): one pooling more than the file,
    Keras / file hierarchy 1.3684, paper 1.2391. Pinned so that a fix shows here."""
    keras.utils.set_random_seed(0)
    k, f = both(_nested_pipeline(None, beside=True), tmp_path)
    assert _records(f) == sorted(MASKED + [_dense(8, 4)] * 2)
    assert _records(k) == sorted(MASKED + [_pool(8, 6)] + [_dense(8, 4)] * 2)
    np.testing.assert_allclose(k.hierarchy_total / f.hierarchy_total, 1.3684, atol=1e-4)
    np.testing.assert_allclose(k.paper_total / f.paper_total, 1.2391, atol=1e-4)


def test_a_mask_made_in_a_pipeline_merges_with_its_twin_outside(tmp_path):
    """A mask a layer of the Pipeline makes (an Embedding's) is keyed by the output it is made
    on (`carried_masks.mask_key`), as the one Keras records on the same layer's call outside:
    `Pipeline([emb, GAP])(x)` beside `GAP(emb(x))` is one pooling and one mask SUM, as the
    file (Keras / file 2.0000 before session 31, both charged; 1.8889 before 2026-12-07)."""
    keras.utils.set_random_seed(0)
    k, f = both(_embedding_in_it(None, beside=True), tmp_path)
    assert _records(f) == sorted(MASKED)
    assert _records(k) == sorted(MASKED)
    same_totals(k, f)


def _gap_weights(model):
    dense = [x for x in model.layers if isinstance(x, L.Pipeline)][0].layers[-1]
    return [np.asarray(w) for w in dense.weights]


def test_keras_masks_the_pooling_as_the_records_say():
    """The masks the records assume, checked on Keras' outputs with numpy: the pooling of
    `Embedding(mask_zero=True)` -> Pipeline averages the kept steps (its mask's SUM charged),
    as does `Pipeline([GAP, Dense])(t, mask=m)`; `Pipeline([Dense(3), GAP])(t, mask=m)`
    averages all steps (no mask reaches the pooling: none charged)."""
    keras.utils.set_random_seed(0)
    model = _alone(None)
    tokens = np.array([[3, 5, 0, 0, 7, 0], [1, 0, 0, 0, 0, 0]], "int32")
    table = np.asarray(model.layers[1].embeddings)
    kept = (tokens != 0)[..., None]
    mean = (table[tokens] * kept).sum(1) / kept.sum(1)
    kernel, bias = _gap_weights(model)
    np.testing.assert_allclose(model.predict(tokens, verbose=0), mean @ kernel + bias,
                               rtol=1e-5, atol=1e-6)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 4)).astype("float32")
    m, t = (x[:, :, 0] > 0)[..., None], np.tanh(x)
    model = _explicit(None)
    kernel, bias = _gap_weights(model)
    got = model.predict(x, verbose=0)[0]
    np.testing.assert_allclose(got, (t * m).sum(1) / m.sum(1) @ kernel + bias, rtol=1e-5,
                               atol=1e-6)
    model = _explicit(None, [L.Dense(3), L.GlobalAveragePooling1D()])
    d = [x for x in model.layers if isinstance(x, L.Pipeline)][0].layers[0]
    kernel, bias = (np.asarray(w) for w in d.weights)
    np.testing.assert_allclose(model.predict(x, verbose=0)[0], (t @ kernel + bias).mean(1),
                               rtol=1e-5, atol=1e-6)
