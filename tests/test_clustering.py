"""Tests for dkm_tf.training.clustering and .finetune: cluster_weights, strip_clustering,
palettes_of, finetune."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.models import digits_cnn  # noqa: E402
from dkm_tf.training.clustering import (  # noqa: E402
    cluster_weights,
    palettes_of,
    strip_clustering,
)
from dkm_tf.training.finetune import finetune  # noqa: E402
from dkm_tf.training.reassign import ReassignClusters  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402

L = keras.layers
ATOL = 1e-6


def _x(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _np(t):
    return keras.ops.convert_to_numpy(t)


def _built_cnn():
    model = digits_cnn()
    model(_x((1, 8, 8, 1)))
    return model


def _weights_by_path(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def test_cluster_weights_does_not_mutate_and_strip_round_trips():
    model = _built_cnn()
    before, n_params = _weights_by_path(model), model.count_params()
    kinds = [type(layer) for layer in model.layers]
    clustered, report = cluster_weights(model, 4, return_report=True)
    assert model.count_params() == n_params and [type(x) for x in model.layers] == kinds
    for path, value in _weights_by_path(model).items():
        np.testing.assert_array_equal(before[path], value)
    assert [n for n, _, _ in report.clustered] == ["conv1", "conv2", "fc1", "fc2"]
    assert sum(isinstance(x, ClusterWeights) for x in clustered.layers) == 4
    # train a little with hard sharing (biases too), then strip
    x, y = _x((32, 8, 8, 1), 1), np.arange(32) % 10
    clustered.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clustered.fit(x, y, epochs=2, batch_size=16, verbose=0)
    plain, palettes = strip_clustering(clustered)
    assert not any("dkm_tf" in type(layer).__module__ for layer in plain.layers)
    np.testing.assert_allclose(_np(plain(x)), _np(clustered(x)), atol=ATOL, rtol=ATOL)
    assert [p.layer_name for p in palettes] == ["conv1", "conv2", "fc1", "fc2"]
    for p in palettes:
        kernel = plain.get_layer(p.layer_name).kernel.numpy()
        assert len(np.unique(kernel)) <= 4
        assert 0 <= p.indices.min() and p.indices.max() < p.n_clusters <= 4
        np.testing.assert_array_equal(kernel, p.decode())
    # unclustered weights (biases) are copied bit for bit from the wrapped model
    for wrapper in [x for x in clustered.layers if isinstance(x, ClusterWeights)]:
        np.testing.assert_array_equal(wrapper.layer.bias.numpy(),
                                      plain.get_layer(wrapper.layer.name).bias.numpy())
    assert plain.get_layer("conv1").kernel.trainable


def test_functional_nested_and_shared_layers():
    shared = L.Dense(4, name="shared")
    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="inner_dense"),
                              L.BatchNormalization(name="bn")], name="block")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    out = L.Add()([inner(shared(a)), shared(b)])
    model = keras.Model([a, b], L.Dense(2, name="head")(out))
    xa, xb = _x((3, 4), 1), _x((3, 4), 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clustered, report = cluster_weights(model, 3, return_report=True,
                                            overrides={"head": None})
    assert any("bn (BatchNormalization)" in str(w.message) for w in caught)
    wrappers = [x for x in clustered.layers if isinstance(x, ClusterWeights)]
    assert [w.layer.name for w in wrappers] == ["shared"]  # one wrapper, called twice
    nested = clustered.get_layer("block")
    assert isinstance(nested.layers[0], ClusterWeights)
    assert {(n, r) for n, _, r in report.skipped} == {("head", "overrides say None")}
    assert report.folded == (("inner_dense", "bn"),)  # folded at strip, not skipped
    assert isinstance(clustered.get_layer("head"), L.Dense)
    np.testing.assert_array_equal(clustered.get_layer("head").kernel.numpy(),
                                  model.get_layer("head").kernel.numpy())
    plain, palettes = strip_clustering(clustered)
    assert sorted(p.layer_name for p in palettes) == ["inner_dense", "shared"]
    np.testing.assert_allclose(_np(plain([xa, xb])), _np(clustered([xa, xb])), atol=ATOL)
    with pytest.warns(UserWarning, match="folds into the layer before"):
        cluster_weights(model, 3, on_unsupported="error")  # every BatchNormalization folds
    alone = keras.Sequential([keras.Input((4,)), L.BatchNormalization(name="bn0"), L.Dense(2)])
    with pytest.raises(TypeError, match="BatchNormalization"):  # nothing to fold into
        cluster_weights(alone, 3, on_unsupported="error")


def test_overrides_by_type_and_name_per_channel():
    model = _built_cnn()
    clustered = cluster_weights(model, 8, overrides={
        "Conv2D": {"n_clusters": 2, "granularity": "per_channel"},
        "conv2": {"unit": "row"},
        "fc2": None,
    })
    c1, c2 = clustered.get_layer("cluster_conv1"), clustered.get_layer("cluster_conv2")
    assert (c1.n_clusters, c1.granularity, c1.unit) == (2, "per_channel", "scalar")
    assert (c2.n_clusters, c2.granularity, c2.unit) == (2, "per_channel", "row")
    assert clustered.get_layer("cluster_fc1").n_clusters == 8
    assert isinstance(clustered.get_layer("fc2"), L.Dense)
    plain, palettes = strip_clustering(clustered)
    kernel = plain.get_layer("conv1").kernel.numpy()
    for c in range(kernel.shape[-1]):  # <= K distinct values per output channel
        assert len(np.unique(kernel[..., c])) <= 2
    rows = units_lib.to_units(plain.get_layer("conv2").kernel.numpy(), palettes[1].layout)
    assert all(len(np.unique(rows[g], axis=0)) <= 2 for g in range(rows.shape[0]))


@pytest.mark.parametrize("overrides,error,pattern", [
    ({"nope": None}, ValueError, r"Keys \['nope'\] match no layer"),
    ({"fc1": {"bits": 3}}, ValueError, r"overrides\['fc1'\]"),
    ({"fc1": {"n_clusters": 0}}, ValueError, r"Received: n_clusters=0"),
    ([("fc1", None)], TypeError, r"Invalid type for argument `overrides`"),
])
def test_invalid_overrides(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        cluster_weights(_built_cnn(), 4, overrides=overrides)


def test_invalid_settings():
    with pytest.raises(ValueError, match=r"argument `granularity`"):
        cluster_weights(_built_cnn(), 4, granularity="per_row")
    with pytest.raises(ValueError, match=r"argument `on_unsupported`"):
        cluster_weights(_built_cnn(), 4, on_unsupported="ignore")


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(2)

    def call(self, x):
        return self.dense(x)


def test_subclassed_model_gives_clear_error_and_layers_can_be_wrapped():
    model = _Subclassed()
    model(_x((1, 3)))
    with pytest.raises(TypeError, match="subclassed model.*ClusterWeights"):
        cluster_weights(model, 4)
    with pytest.raises(TypeError, match="subclassed model"):
        strip_clustering(model)
    wrapped = cluster_weights(model.dense, 4)  # a single layer: a wrapper around a copy
    assert isinstance(wrapped, ClusterWeights) and wrapped.layer is not model.dense
    assert model.dense.kernel.trainable
    wrapped(_x((1, 3)))
    plain, palettes = strip_clustering(wrapped)
    assert isinstance(plain, L.Dense) and len(palettes) == 1


def test_palettes_of_recovers_palettes_from_plain_models():
    clustered = cluster_weights(_built_cnn(), 4, overrides={"fc2": {"granularity": "per_channel",
                                                                    "n_clusters": 3}})
    plain, palettes = strip_clustering(clustered)
    from_wrappers = palettes_of(clustered)
    recovered = palettes_of(plain)
    assert [p.name for p in recovered] == [p.name for p in palettes] == [
        p.name for p in from_wrappers]
    for a, b in zip(recovered, palettes):
        np.testing.assert_array_equal(a.decode(), b.decode())
        assert a.n_clusters <= b.n_clusters
    assert recovered[-1].layout.granularity == "per_channel"
    assert palettes_of(_built_cnn()) == []  # float kernels: nothing to recover


def test_reassign_callback_in_fit_and_error_without_latent():
    model = _built_cnn()
    x, y = _x((16, 8, 8, 1), 3), np.arange(16) % 10
    clustered = cluster_weights(model, 4, latent=True)
    clustered.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = ReassignClusters(every_n_epochs=2)
    clustered.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[callback])
    assert [e for e, _ in callback.history] == [1, 3]
    plain, palettes = strip_clustering(clustered)
    np.testing.assert_allclose(_np(plain(x)), _np(clustered(x)), atol=ATOL, rtol=ATOL)
    hard = cluster_weights(model, 4)
    hard.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="no latent kernel"):
        hard.fit(x, y, epochs=1, verbose=0, callbacks=[ReassignClusters()])
    with pytest.raises(ValueError, match="every_n_epochs"):
        ReassignClusters(every_n_epochs=0)


def test_finetune_returns_stripped_model_palettes_history():
    model = _built_cnn()
    x, y = _x((64, 8, 8, 1), 4), np.arange(64) % 10
    stripped, palettes, history = finetune(model, (x, y), (x[:16], y[:16]), n_clusters=4,
                                           epochs=1, batch_size=32, learning_rate=1e-3)
    assert len(palettes) == 4 and set(history.history) >= {"loss", "val_accuracy"}
    assert not any(isinstance(layer, ClusterWeights) for layer in stripped.layers)
    assert len(stripped.evaluate(x, y, verbose=0)) == 2  # compiled with loss + accuracy
    for p in palettes:
        assert len(np.unique(stripped.get_layer(p.layer_name).kernel.numpy())) <= 4
    with pytest.raises(ValueError, match="argument `epochs`"):
        finetune(model, (x, y), epochs=-1)


def test_finetune_takes_a_learning_rate_schedule_and_callbacks():
    model = _built_cnn()
    x, y = _x((64, 8, 8, 1), 4), np.arange(64) % 10
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, decay_steps=4, alpha=0.1)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(
            float(keras.ops.convert_to_numpy(rec_model[0].optimizer.learning_rate))))
    rec_model = []

    class Grab(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            rec_model.append(self.model)

    _, palettes, history = finetune(model, (x, y), n_clusters=4, epochs=2, batch_size=32,
                                    learning_rate=schedule, callbacks=[Grab(), record])
    assert len(history.history["loss"]) == 2 and len(palettes) == 4
    # 2 steps per epoch: after 4 steps the cosine schedule has reached alpha * 1e-3
    assert seen[0] < 1e-3 and seen[-1] == pytest.approx(1e-4, rel=1e-5)
    for bad in (0, -1e-3, "fast", True):
        with pytest.raises(ValueError, match="argument `learning_rate`.*LearningRateSchedule"):
            finetune(model, (x, y), learning_rate=bad)


def test_clustering_a_clustered_model_keeps_its_wrappers():
    clustered = cluster_weights(_built_cnn(), 4)
    x = _x((4, 8, 8, 1), 5)
    with pytest.warns(UserWarning, match=r"already clustered with other settings than asked.*"
                      r"strip_clustering\(model\) first.*cluster_fc1 \(n_clusters=4, not 8\)"):
        again, report = cluster_weights(clustered, 8, return_report=True)
    assert not report.clustered and len(report.skipped) == 4
    assert all(r.startswith("already clustered (kept as it is: n_clusters=4, not 8;")
               for _, _, r in report.skipped)
    assert again.get_layer("cluster_fc1") is not clustered.get_layer("cluster_fc1")
    assert again.get_layer("cluster_fc1").n_clusters == 4
    np.testing.assert_array_equal(_np(again(x)), _np(clustered(x)))
