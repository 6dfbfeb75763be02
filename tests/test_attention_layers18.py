"""Keras 3 attention variants and layer options through energy and export (probe 18).

Measured on the code before these tests (2026-12-06): `energy.estimate` of a model with
`AdditiveAttention` charged its scores as a Q·Kᵀ matmul (608 MACs; hand count and the model's
own `.tflite`: 480: additive scores are a broadcast ADD, tanh, a MUL by the scale vector and a
sum, no matmul); `Attention(score_mode="concat")` was skipped whole (its T_q·T_v·d_v context
matmul left out: 352 of 480); `GroupQueryAttention` was skipped as unsupported (96 of 2,144);
`to_tflite` of a stateful LSTM failed with "Invalid value for argument `sample_inputs`" for
correct samples; a float64 layer failed in the converter with no word of float64.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

L = keras.layers


def _attention_model(kind, use_scale=True, t=4, d=8):
    keras.utils.set_random_seed(0)
    inp = keras.Input((t, d))
    q = L.Dense(d, name="q")(inp)
    if kind == "additive":
        att = L.AdditiveAttention(use_scale=use_scale, name="att")
    else:
        att = L.Attention(use_scale=use_scale, score_mode="concat", name="att")
    x = L.Flatten()(att([q, inp]))
    return keras.Model(inp, L.Dense(3, name="out")(x))


def _records(report):
    return {layer.name: layer for layer in report.layers}


@pytest.mark.parametrize("kind", ["additive", "concat"])
@pytest.mark.parametrize("use_scale", [True, False])
def test_additive_scores_are_elementwise_not_a_matmul(kind, use_scale):
    t, d = 4, 8
    r = energy.estimate(_attention_model(kind, use_scale, t, d))
    # hand count: q projection T·d·d, context softmax(S)·V T·T·d, output (T·d)·3
    assert r.macs == t * d * d + t * t * d + t * d * 3  # old: 608 (additive) / 352 (concat)
    rec = _records(r)
    assert "att/scores" not in rec and rec["att/context"].macs == t * t * d
    add = rec["att/scores_add"].shape
    assert (add.kind, add.eltwise_op, add.out_w) == ("eltwise", "add", t * t * d)
    assert ("att/scale" in rec) == use_scale
    if use_scale:
        assert rec["att/scale"].shape.out_w == t * t * d
    assert ("att/score_weight" in rec) == (kind == "concat")
    (why,) = [w for name, w in r.skipped if name == "att"]
    assert "tanh and the sum over features not priced" in why  # old (concat): "not modelled"


def test_additive_attention_keras_estimate_equals_its_tflite(tmp_path):
    m = _attention_model("additive")
    path = tmp_path / "additive.tflite"
    x = np.random.RandomState(1).randn(3, 4, 8).astype("float32")
    dkm_tf.export.to_tflite(m, str(path), format="float", sample_inputs=x)
    k, f = energy.estimate(m), energy.estimate(str(path))
    assert k.macs == f.macs == 480  # old Keras: 608
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-9)
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-9)


@pytest.mark.parametrize("gate", [False, True])
def test_group_query_attention_macs_match_a_hand_count(gate):
    keras.utils.set_random_seed(0)
    t_q, t_k, f_q, f_k, f_v, h, h_kv, d = 3, 5, 8, 6, 8, 4, 2, 4
    q, v, k = keras.Input((t_q, f_q)), keras.Input((t_k, f_v)), keras.Input((t_k, f_k))
    att = L.GroupQueryAttention(head_dim=d, num_query_heads=h, num_key_value_heads=h_kv,
                                use_gate=gate, name="att")
    m = keras.Model([q, v, k], att(q, v, k))
    r = energy.estimate(m)
    hand = (t_q * f_q * h * d + t_k * f_k * h_kv * d + t_k * f_v * h_kv * d  # projections
            + t_q * h * t_k * d + t_q * h * t_k * d  # Q·Kᵀ and softmax·V, K, V repeated
            + t_q * h * d * f_q  # output projection back to F_q features
            + (t_q * f_q * h * d if gate else 0))  # gate projection
    assert r.macs == hand  # old: 0, "unsupported layer type GroupQueryAttention"
    rec = _records(r)
    assert rec["att/scores"].macs == rec["att/context"].macs == t_q * h * t_k * d
    assert rec["att/key_dense.kernel"].shape.n_weights == f_k * h_kv * d
    assert ("att/gate_mul" in rec) == gate
    assert not any(name == "att" for name, _ in r.skipped)


def test_group_query_attention_keras_estimate_equals_its_tflite(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 8))
    a = L.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2,
                              name="att")(inp, inp)
    m = keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(a)))
    path = tmp_path / "gqa.tflite"
    x = np.random.RandomState(1).randn(3, 4, 8).astype("float32")
    dkm_tf.export.to_tflite(m, str(path), format="float", sample_inputs=x)
    # q 4·8·16, k and v 4·8·8 each, scores and context 4·4·4·4 each, output 4·16·8, out 96
    assert energy.estimate(m).macs == energy.estimate(str(path)).macs == 2144  # old: 96


def test_to_tflite_refuses_a_stateful_rnn_before_any_work(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input(batch_shape=(3, 5, 4))
    m = keras.Model(inp, L.Dense(3)(L.LSTM(6, stateful=True, name="lstm")(inp)))
    x = np.random.RandomState(1).randn(3, 5, 4).astype("float32")
    path = tmp_path / "s.tflite"
    with pytest.raises(ValueError, match=r"stateful=True in \['lstm'\]") as e:
        dkm_tf.export.to_tflite(m, str(path), format="float", sample_inputs=x)
    assert "stateful=False" in str(e.value) and not path.exists()
    # the advice works: same weights, stateless
    i = keras.Input((5, 4))
    plain = keras.Model(i, L.Dense(3)(L.LSTM(6, name="lstm")(i)))
    plain.set_weights(m.get_weights())
    m.get_layer("lstm").reset_state()
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(m(x)), rtol=1e-6, atol=1e-6)


def test_float64_conversion_failure_names_the_float64_layers(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = L.Activation("relu", dtype="float64", name="act64")(inp)
    m = keras.Model(inp, L.Dense(3, name="out")(x))
    with pytest.raises(ValueError, match=r"float64 \(act64\)"):  # old: no word of float64
        dkm_tf.export.to_tflite(m, str(tmp_path / "f.tflite"), format="float",
                                sample_inputs=np.ones((2, 8), "float32"))
