"""Attention scaling and masks: the Keras estimate against the model's `.tflite` (probe 18c).

Measured on the code before these tests (2026-12-06), at shapes where T_q·H·d and T_q·H·T_k
differ: GroupQueryAttention / MultiHeadAttention (T_q=3, T_k=7, H=4, d=2) charged the 1/√d
product as T_q·H·d = 24 elements with 1 input, but Keras 3.15 calls `ops.dot_product_attention`,
which scales the T_q·H·T_k = 84 scores (the `.tflite`: a MUL of 84, 2 inputs); with dropout or
returned scores Keras scales the queries and the converter folds that into the query
projection (no op), yet 24 were charged. `Attention` charged its scalar multiplies with 1
input (the `.tflite` and the Keras reader's other constant products: 2), and left out the ADD
of a causal mask.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

L = keras.layers
T_Q, T_K, F, H, D = 3, 7, 8, 4, 2


def _both(m, x, tmp_path):
    path = tmp_path / "m.tflite"
    dkm_tf.export.to_tflite(m, str(path), format="float", sample_inputs=x)
    return energy.estimate(m), energy.estimate(str(path))


def _assert_same(k, f):
    assert k.macs == f.macs
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-9)
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-9)


def _qv():
    rng = np.random.RandomState(1)
    return [rng.randn(2, T_Q, F).astype("float32"), rng.randn(2, T_K, F).astype("float32")]


@pytest.mark.parametrize("variant", ["gqa", "mha", "mha_dropout", "mha_scores"])
def test_attention_scale_is_charged_as_keras_runs_it(variant, tmp_path):
    keras.utils.set_random_seed(0)
    q, v = keras.Input((T_Q, F)), keras.Input((T_K, F))
    if variant == "gqa":
        a = L.GroupQueryAttention(head_dim=D, num_query_heads=H, num_key_value_heads=1,
                                  name="att")(q, v)
    else:
        layer = L.MultiHeadAttention(H, D, dropout=0.1 if variant == "mha_dropout" else 0.0,
                                     name="att")
        a = layer(q, v, return_attention_scores=True)[0] if variant == "mha_scores" else \
            layer(q, v)
    k, f = _both(keras.Model([q, v], a), _qv(), tmp_path)
    rec = {r.name: r.shape for r in k.layers}
    if variant in ("gqa", "mha"):  # dot_product_attention: the scores, T_q·H·T_k
        s = rec["att/scale"]
        assert (s.eltwise_op, s.out_w, s.n_inputs) == ("mul", T_Q * H * T_K, 2)  # old: 24, 1
    else:  # the queries' product, folded into the query projection by the converter
        assert "att/scale" not in rec  # old: 24 elements charged
    # old paper totals: gqa 6,680.4 vs 7,165.9; mha 11,374.5 vs 11,860.0, with dropout or
    # returned scores 11,374.5 vs 11,281.1
    _assert_same(k, f)


@pytest.mark.parametrize("kind", ["dot", "concat", "additive_causal"])
def test_attention_scalar_products_and_causal_mask_match_the_tflite(kind, tmp_path):
    keras.utils.set_random_seed(0)
    t, d = 4, 8
    inp = keras.Input((t, d))
    q = L.Dense(d, name="q")(inp)
    if kind == "additive_causal":
        att = L.AdditiveAttention(name="att")
        a = att([q, inp], use_causal_mask=True)
    else:
        att = L.Attention(use_scale=True, score_mode=kind, name="att")
        a = att([q, inp])
        att.scale.assign(2.0)  # trained values: at 1.0 the converter drops the product
        if kind == "concat":
            att.concat_score_weight.assign(1.5)
    m = keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(a)))
    x = np.random.RandomState(1).randn(2, t, d).astype("float32")
    k, f = _both(m, x, tmp_path)
    rec = {r.name: r.shape for r in k.layers}
    for name in ("att/scale", "att/score_weight"):
        if name in rec:
            assert rec[name].n_inputs == 2  # old: 1
    if kind == "additive_causal":
        assert (rec["att/mask"].eltwise_op, rec["att/mask"].out_w) == ("add", t * t)  # old: -
    # old paper totals: dot 4,308.6 vs the .tflite's 4,356.6, concat 4,687.8 vs 5,119.8,
    # causal 5,009.5 vs 5,106.4
    _assert_same(k, f)


def test_mha_over_two_attention_axes_charges_the_query_product_the_tflite_keeps(tmp_path):
    keras.utils.set_random_seed(0)
    x = keras.Input((3, 4, 8))
    m = keras.Model(x, L.MultiHeadAttention(2, 3, attention_axes=(1, 2), name="att")(x, x))
    sample = np.random.RandomState(1).randn(2, 3, 4, 8).astype("float32")
    k, f = _both(m, sample, tmp_path)
    s = {r.name: r.shape for r in k.layers}["att/scale"]
    # Keras scales the 5-D queries (T_q·H·d = 12·2·3); the converter keeps that MUL
    assert (s.out_w, s.n_inputs) == (12 * 2 * 3, 2)  # old: 1 input
    muls = [r.shape for r in f.layers if r.shape.kind == "eltwise" and r.shape.eltwise_op == "mul"]
    assert [(m.out_w, m.n_inputs) for m in muls] == [(s.out_w, s.n_inputs)]


@pytest.mark.filterwarnings("ignore:Layer 'flat' .* mask:UserWarning")  # Keras' own
@pytest.mark.parametrize("masks", ["query", "value"])
def test_attention_query_mask_alone_masks_no_scores(masks, tmp_path):
    # Keras masks the scores with the value mask only (or a causal mask); a query-only mask
    # was charged a T_q·T_v ADD the .tflite does not have (paper 3,164.5 vs 3,043.4)
    keras.utils.set_random_seed(0)
    q, v = keras.Input((4, 8)), keras.Input((5, 8))
    qm, vm = keras.Input((4,), dtype="bool"), keras.Input((5,), dtype="bool")
    att = L.Attention(use_scale=True, name="att")
    a = att([q, v], mask=[qm, None] if masks == "query" else [None, vm])
    m = keras.Model([q, v, qm, vm], L.Dense(3, name="out")(L.Flatten(name="flat")(a)))
    att.scale.assign(2.0)
    rng = np.random.RandomState(1)
    x = [rng.randn(2, 4, 8).astype("float32"), rng.randn(2, 5, 8).astype("float32"),
         rng.rand(2, 4) > 0.3, rng.rand(2, 5) > 0.3]
    k, f = _both(m, x, tmp_path)
    rec = {r.name: r.shape for r in k.layers}
    assert ("att/mask" in rec) == (masks == "value")
    _assert_same(k, f)
