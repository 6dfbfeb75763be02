"""Review R1 of the TimeDistributed clustering (2026-12-07).

A TimeDistributed is clustered as the layer it wraps, so that layer's class and name reach it
in ``overrides`` (below the wrapper's own keys): ``{"Dense": None}`` on a plain Dense beside a
TimeDistributed(Dense) was refused; the energy estimate of a saved shared file charged a
TimeDistributed kernel as float (its weight ``td/layer.kernel`` missed the record ``td``);
``refine`` left a TimeDistributed(Dense) at plain k-means; and the skip reason of scaled
kernel clustering told a TimeDistributed(Dense) that ``unit='kernel'`` clusters it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.graph import clusterable  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402

L = keras.layers
K = 4


def _seq_model(seed=0):
    """(3, 16) -> TimeDistributed(Dense 16->8, "fc") "td" -> Flatten -> Dense "head"."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((3, 16))
    x = L.TimeDistributed(L.Dense(8, name="fc"), name="td")(inp)
    return keras.Model(inp, L.Dense(3, name="head")(L.Flatten()(x)))


def _by_name(result):
    return {p.name: p.codebook.shape[1] for p in result.palettes}


def test_override_keys_order():
    inner = L.TimeDistributed(L.Dense(3, name="fc"), name="a")
    assert clusterable.override_keys(L.TimeDistributed(inner, name="b")) == [
        "Dense", "TimeDistributed", "fc", "a", "b"]
    assert clusterable.override_keys(L.Dense(2, name="d")) == ["Dense", "d"]
    assert clusterable.override_keys(L.Bidirectional(L.LSTM(3), name="bi")) == [
        "LSTM", "Bidirectional", "bi"]


def test_wrapped_class_reaches_time_distributed():
    """{"Dense": None} leaves a plain Dense and a TimeDistributed(Dense) float (it was refused);
    the wrapper's name, above the class, clusters it again."""
    model = _seq_model()
    shared = dkm_tf.share_weights(model, K, overrides={"Dense": None})
    assert list(shared.palettes) == []
    assert sorted(name for name, _ in shared.skipped) == ["head", "td"]
    wrapped = dkm_tf.cluster_weights(model, K, overrides={"Dense": None})
    assert not any(isinstance(la, ClusterWeights) for la in wrapped.layers)
    shared = dkm_tf.share_weights(model, K, overrides={"Dense": None, "td": {"n_clusters": 2}})
    assert _by_name(shared) == {"td/layer.kernel": 2}
    shared = dkm_tf.share_weights(model, K, overrides={"fc": {"n_clusters": 2}})
    assert _by_name(shared) == {"td/layer.kernel": 2, "head/kernel": K}
    shared = dkm_tf.share_weights(model, K, overrides={"TimeDistributed": {"n_clusters": 3},
                                                       "Dense": {"n_clusters": 2}})
    assert _by_name(shared) == {"td/layer.kernel": 3, "head/kernel": 2}


def test_key_of_only_a_wrapped_class_is_accepted():
    """A model holding only TimeDistributed(Dense): "Dense" is not a key that "matches no
    layer"."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 16))
    model = keras.Model(inp, L.TimeDistributed(L.Dense(8, name="fc"), name="td")(inp))
    shared = dkm_tf.share_weights(model, K, overrides={"Dense": {"n_clusters": 2}})
    assert _by_name(shared) == {"td/layer.kernel": 2}
    wrapped = dkm_tf.cluster_weights(model, K, overrides={"fc": {"n_clusters": 2}})
    _, palettes = dkm_tf.strip_clustering(wrapped)
    assert [p.codebook.shape[1] for p in palettes] == [2]


def test_depthwise_class_key_sets_granularity():
    keras.utils.set_random_seed(0)
    inp = keras.Input((2, 6, 6, 3))
    model = keras.Model(inp, L.TimeDistributed(L.DepthwiseConv2D(3), name="td_dw")(inp))
    shared = dkm_tf.share_weights(
        model, K, overrides={"DepthwiseConv2D": {"granularity": "per_tensor"}})
    assert [p.layout.granularity for p in shared.palettes] == ["per_tensor"]


def test_wrapped_class_reaches_bidirectional():
    """{"LSTM": None} left the plain LSTM float and clustered the Bidirectional(LSTM)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 5))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bi")(inp)
    model = keras.Model(inp, L.LSTM(3, name="plain")(x))
    shared = dkm_tf.share_weights(model, K, overrides={"LSTM": None})
    assert list(shared.palettes) == []
    assert sorted(name for name, _ in shared.skipped) == ["bi", "plain"]
    shared = dkm_tf.share_weights(model, K, overrides={"LSTM": None, "bi": {}})
    assert sorted({p.layer_name for p in shared.palettes}) == ["bi"]


def test_kernel_scope_reason_names_the_wrapped_class():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    x = L.Reshape((16, 4))(L.Conv2D(4, 3, name="conv")(inp))
    model = keras.Model(inp, L.TimeDistributed(L.Dense(3), name="td")(x))
    shared = dkm_tf.share_weights(model, K, unit="kernel", codebook="shared")
    why = dict(shared.skipped)["td"]
    assert "TimeDistributed(Dense) has no k x k Conv2D kernel" in why
    assert "clusters it" not in why
    with pytest.raises(ValueError, match=r"a TimeDistributed layer is not supported"):
        inp = keras.Input((2, 6, 6, 2))
        dkm_tf.share_weights(keras.Model(inp, L.TimeDistributed(L.Conv2D(4, 3))(inp)), K,
                             unit="kernel", codebook="shared")


def _records(report):
    return [(r.name, r.n_clusters, round(float(r.paper_total), 6)) for r in report.layers]


@pytest.mark.parametrize("inner", ["dense", "conv2d"])
def test_energy_of_saved_file_charges_time_distributed_kernel(tmp_path, inner):
    """estimate(saved .keras) inferred no palette for `td` (its weight was keyed
    `td/layer.kernel`, its records are `td`, `td#2`, `td#3`): the kernel was charged as
    float (895.0 instead of 523.0 per step for TD(Dense 16->8), K = 4)."""
    from dkm_tf import energy  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    shape, layer = (((3, 16), L.Dense(8, name="fc")) if inner == "dense"
                    else ((3, 6, 6, 2), L.Conv2D(4, 3, name="conv")))
    inp = keras.Input(shape)
    x = L.Flatten()(L.TimeDistributed(layer, name="td")(inp))
    model = keras.Model(inp, L.Dense(3, name="head")(x))
    shared = dkm_tf.share_weights(model, K)
    path = tmp_path / "shared.keras"
    shared.model.save(path)
    from_file = energy.estimate(str(path))
    given = energy.estimate(shared.model, palettes=shared.palettes)
    assert [r[0] for r in _records(given)] == ["td", "td#2", "td#3", "head"]
    assert all(n == K for _, n, _ in _records(given))
    assert _records(from_file) == _records(given)
    assert _records(given) != _records(energy.estimate(model))  # float costs more


def test_energy_palettes_of_time_distributed_separable():
    """Palettes `td/layer.depthwise_kernel` reach the records `td/depthwise` (estimate
    raised "names layer 'td/layer.depthwise_kernel', which is not a conv or dense layer")."""
    from dkm_tf import energy  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    inp = keras.Input((2, 6, 6, 3))
    y = L.TimeDistributed(L.SeparableConv2D(4, 3, name="sep"), name="td")(inp)
    shared = dkm_tf.share_weights(keras.Model(inp, y), K)
    report = energy.estimate(shared.model, palettes=shared.palettes)
    assert [(name, n) for name, n, _ in _records(report)] == [
        ("td/depthwise", K), ("td/pointwise", K), ("td#2/depthwise", K), ("td#2/pointwise", K)]


def _two_dense(wrapped, seed=0):
    """(3, 16) -> Dense(8, relu) -> Dense(5), each in a TimeDistributed when ``wrapped``
    (the same weights either way: a Dense maps the last axis)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((3, 16))
    a, b = L.Dense(8, activation="relu", name="fc1"), L.Dense(5, name="fc2")
    if wrapped:
        a, b = L.TimeDistributed(a, name="td1"), L.TimeDistributed(b, name="td2")
    model = keras.Model(inp, b(a(inp)))
    rng = np.random.default_rng(seed + 1)
    model.set_weights([rng.normal(size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_refine_time_distributed_dense(refine):
    """refine="outputs" / "gptq" left a TimeDistributed(Dense) at plain k-means ("layer.kernel
    is a weight inside a TimeDistributed"). It is now fitted as the Dense it wraps, on the
    wrapper's inputs with time folded into the batch: the same codebooks and biases as the
    plain Dense model's refine, and a lower output error than plain k-means."""
    x = np.random.default_rng(7).normal(size=(32, 3, 16)).astype("float32")
    td, plain = _two_dense(True), _two_dense(False)
    ref = np.asarray(td(x), np.float64)
    np.testing.assert_allclose(np.asarray(plain(x)), ref, rtol=1e-5, atol=1e-5)
    kmeans = dkm_tf.share_weights(td, K)
    got = dkm_tf.share_weights(td, K, refine=refine, data=x)
    want = dkm_tf.share_weights(plain, K, refine=refine, data=x)
    assert [p.weight_name for p in got.palettes] == ["layer.kernel", "layer.kernel"]
    assert any(p.note.startswith("output-refined") for p in want.palettes)
    for p, q in zip(got.palettes, want.palettes):
        assert p.note.split(":")[0] == q.note.split(":")[0]
        np.testing.assert_allclose(p.codebook, q.codebook, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(p.indices, q.indices)
        np.testing.assert_array_equal(
            np.asarray(clusterable.get_weight(got.model.get_layer(p.layer_name),
                                              p.weight_name)), p.decode())
    for t, w in zip(("td1", "td2"), ("fc1", "fc2")):
        np.testing.assert_allclose(np.asarray(got.model.get_layer(t).layer.bias),
                                   np.asarray(want.model.get_layer(w).bias), atol=1e-5)
    err = float(np.mean((np.asarray(got.model(x), np.float64) - ref) ** 2))
    err_kmeans = float(np.mean((np.asarray(kmeans.model(x), np.float64) - ref) ** 2))
    assert err < 0.9 * err_kmeans
