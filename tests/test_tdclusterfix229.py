"""Review R10 of the TimeDistributed clustering (2026-12-07).

Keys that reach a TimeDistributed through the layer it wraps (its class and name) escaped the
check that refuses a key meaning two things (a layer's name and others' class); a mixed
Bidirectional (LSTM forward, GRU backward) took whichever class entry came last; a kernel read
by a layer and a TimeDistributed of it was clustered by one reader's settings while the other
was reported "excluded by overrides"; and no test fed ``refine`` a TimeDistributed layer that
needs its time axis folded (a Dense accepts rank 3).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402

L = keras.layers


def _td_dense_beside_conv(inner_name=None, conv_name="c"):
    """(3, 8) -> TimeDistributed(Dense 8) "td" -> Reshape (3, 8, 1) -> Conv2D 2."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    x = L.TimeDistributed(L.Dense(8, name=inner_name), name="td")(inp)
    x = L.Conv2D(2, 3, name=conv_name)(L.Reshape((3, 8, 1))(x))
    return keras.Model(inp, x)


@pytest.mark.parametrize("entry", ["share_weights", "cluster_weights"])
def test_conv_named_like_wrapped_class_is_refused(entry):
    """A Conv2D named "Dense" beside a TimeDistributed(Dense): {"Dense": None} left both
    float with no word (a plain Dense beside it was refused)."""
    m = _td_dense_beside_conv(conv_name="Dense")
    with pytest.raises(ValueError, match=r"key 'Dense' names layer 'Dense'.*\['td'\]"):
        getattr(dkm_tf, entry)(m, 4, overrides={"Dense": None})


def test_wrapped_layer_named_like_a_class_is_refused():
    """TimeDistributed(Dense(name="Conv2D")) beside a Conv2D: {"Conv2D": {"n_clusters": 2}}
    gave K = 2 to both."""
    m = _td_dense_beside_conv(inner_name="Conv2D")
    with pytest.raises(ValueError, match=r"key 'Conv2D' names layer 'td'.*\['c'\]"):
        dkm_tf.share_weights(m, 4, overrides={"Conv2D": {"n_clusters": 2}})


def test_class_keys_of_wrapped_layers_still_accepted():
    """The wrapped class alone, and a key that is a name only, keep working."""
    m = _td_dense_beside_conv(inner_name="fc")
    r = dkm_tf.share_weights(m, 4, overrides={"Dense": None, "c": {"n_clusters": 2}})
    assert [(p.layer_name, p.n_clusters) for p in r.palettes] == [("c", 2)]
    r = dkm_tf.share_weights(m, 4, overrides={"fc": {"n_clusters": 2}})
    assert sorted((p.layer_name, p.n_clusters) for p in r.palettes) == [("c", 4), ("td", 2)]


def _mixed_bidirectional():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 3))
    x = L.Bidirectional(L.LSTM(4), backward_layer=L.GRU(4, go_backwards=True),
                        name="bidi")(inp)
    return keras.Model(inp, L.Dense(2, name="head")(x))


def test_mixed_bidirectional_conflicting_class_entries_refused():
    """Bidirectional(LSTM, backward_layer=GRU): {"LSTM": None, "GRU": {"n_clusters": 2}}
    clustered both sides at K = 2 (the backward class's entry won for the whole layer)."""
    m = _mixed_bidirectional()
    for ov in ({"LSTM": None, "GRU": {"n_clusters": 2}},
               {"GRU": {"n_clusters": 2}, "LSTM": None},
               {"LSTM": {"n_clusters": 3}, "GRU": {"n_clusters": 2}}):
        with pytest.raises(ValueError, match=r"'bidi'.*'LSTM'.*'GRU'.*key it by its name"):
            dkm_tf.share_weights(m, 4, overrides=ov)
    r = dkm_tf.share_weights(m, 4, overrides={"LSTM": {"n_clusters": 2},
                                             "GRU": {"n_clusters": 2}})
    assert {p.n_clusters for p in r.palettes if p.layer_name == "bidi"} == {2}
    r = dkm_tf.share_weights(m, 4, overrides={"bidi": None, "GRU": {"n_clusters": 2}})
    assert [p.layer_name for p in r.palettes] == ["head"]


def _tied(inplace_model=True):
    keras.utils.set_random_seed(0)
    d = L.Dense(8, name="d")
    inp = keras.Input((3, 8))
    x = L.TimeDistributed(d, name="td")(d(inp))
    return keras.Model(inp, x), d


@pytest.mark.parametrize("ov", [{"d": None, "td": {"n_clusters": 2}},
                                {"d": {"n_clusters": 3}, "td": {"n_clusters": 2}}])
def test_tied_kernel_with_two_settings_is_refused(ov):
    """d and TimeDistributed(d) read one kernel: {"d": None, "td": {...}} reported d
    "excluded by overrides" while its kernel was clustered as td's."""
    m, d = _tied()
    before = np.asarray(d.kernel).copy()
    with pytest.raises(ValueError, match=r"'d'.*'td'.*same variable"):
        dkm_tf.share_weights(m, 4, inplace=True, overrides=ov)
    np.testing.assert_array_equal(np.asarray(d.kernel), before)


def test_tied_kernel_with_one_setting_is_clustered_once():
    m, d = _tied()
    r = dkm_tf.share_weights(m, 4, inplace=True, overrides={"d": {"n_clusters": 2}})
    assert [(p.layer_name, p.n_clusters) for p in r.palettes] == [("d", 2)]
    assert len(np.unique(np.asarray(d.kernel))) == 2


def test_wrapped_name_and_plain_name_is_refused():
    """A Dense "fc" beside TimeDistributed(Dense(name="fc"), name="td"): key "fc" reached
    both with no word."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    x = L.TimeDistributed(L.Dense(8, name="fc"), name="td")(inp)
    m = keras.Model(inp, L.Dense(4, name="fc")(x))
    with pytest.raises(ValueError, match=r"key 'fc' names layers \['fc', 'td'\]"):
        dkm_tf.share_weights(m, 4, overrides={"fc": None})
    r = dkm_tf.share_weights(m, 4, overrides={"td": None})
    assert [p.layer_name for p in r.palettes] == ["fc"]


def _conv_twins():
    """A TimeDistributed Conv2D stack on (3, 9, 9, 2) and the same layers on (9, 9, 2)."""
    def layers():
        return [L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c"),
                L.Conv2D(3, 2, strides=(1, 2), name="c2"), L.Flatten(name="f"),
                L.Dense(5, name="d")]
    keras.utils.set_random_seed(1)
    la, lb = layers(), layers()
    x = inp = keras.Input((3, 9, 9, 2))
    for layer in la:
        x = L.TimeDistributed(layer, name="td_" + layer.name)(x)
    y = jnp = keras.Input((9, 9, 2))
    for layer in lb:
        y = layer(y)
    a, b = keras.Model(inp, x), keras.Model(jnp, y)
    for p, q in zip(la, lb):
        q.set_weights(p.get_weights())
    return a, b


@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_refine_time_distributed_conv_matches_folded_twin(refine):
    """A TimeDistributed(Conv2D) (strides 2, same padding) is refined as the Conv2D it wraps
    on its inputs with time folded into the batch: the codebooks of a plain Conv2D model fed
    the folded inputs. (Without the folding a Dense still accepted rank 3; a Conv2D does not.)"""
    a, b = _conv_twins()
    x = np.random.default_rng(0).normal(size=(16, 3, 9, 9, 2)).astype("float32")
    xf = x.reshape(-1, 9, 9, 2)
    np.testing.assert_allclose(np.asarray(a(x)).reshape(-1, 5), np.asarray(b(xf)), atol=1e-5)
    got = dkm_tf.share_weights(a, 4, data=x, refine=refine)
    want = dkm_tf.share_weights(b, 4, data=xf, refine=refine)
    assert [p.layer_name for p in got.palettes] == ["td_c", "td_c2", "td_d"]
    for p, q in zip(got.palettes, want.palettes):
        assert "not applied" not in p.note, p.note
        assert p.note.split(":")[0] == q.note.split(":")[0], (p.note, q.note)
        np.testing.assert_allclose(p.codebook, q.codebook, rtol=1e-4, atol=1e-4)
    assert any(p.note.startswith("output-refined") for p in got.palettes)
