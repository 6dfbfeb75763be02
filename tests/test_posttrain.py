"""share_weights (post-training k-means, the paper's WR baseline) on real Keras models."""

import os

import keras
import numpy as np
import pytest
from testing import small_cnn, subclassed_model

import dkm_tf
from dkm_tf.graph import copying


def _weights_by_path(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


def test_clusters_kernels_and_leaves_the_rest_bit_identical():
    model = small_cnn()
    before = _weights_by_path(model)
    params_before = model.count_params()
    clustered, palettes, skipped = dkm_tf.share_weights(
        model, 4, seed=0, overrides={"DepthwiseConv2D": {"granularity": "per_tensor"}})
    # the input model is not touched
    for path, value in _weights_by_path(model).items():
        np.testing.assert_array_equal(value, before[path])
    assert model.count_params() == params_before
    names = {p.name for p in palettes}
    assert names == {"c1/kernel", "dw/kernel", "out/kernel"}
    for p in palettes:
        layer = clustered.get_layer(p.layer_name)
        kernel = getattr(layer, p.weight_name).numpy()
        assert np.unique(kernel).size <= 4
        np.testing.assert_array_equal(kernel, p.decode())
    # biases and BatchNormalization are untouched (paths compared below the model's name:
    # the copy's layers are built outside the model's name scope)
    def rel(path):
        return path.removeprefix(model.name + "/")

    after = {rel(w.path): w.numpy() for w in clustered.weights}
    before = {rel(k): v for k, v in before.items()}
    for (path, value), (path2, value2) in zip(sorted(before.items()), sorted(after.items())):
        assert path == path2
        if not path.endswith("kernel"):
            np.testing.assert_array_equal(value, value2)
    assert skipped == [("bn", skipped[0][1])] and "BatchNormalization" in skipped[0][1]


def test_per_channel_row_units():
    model = small_cnn()
    clustered, palettes, _ = dkm_tf.share_weights(model, 2, unit="row",
                                                  granularity="per_channel")
    c1 = clustered.get_layer("c1").kernel.numpy()
    for c in range(c1.shape[-1]):
        rows = np.transpose(c1[..., c], [2, 0, 1]).reshape(-1, 3)
        assert np.unique(rows, axis=0).shape[0] <= 2


def test_auto_unit_uses_rows_for_kxk_and_scalars_for_dense():
    _, palettes, _ = dkm_tf.share_weights(small_cnn(), 4, unit="auto")
    by = {p.layer_name: p for p in palettes}
    assert by["c1"].unit_dim == 3 and by["out"].unit_dim == 1


def test_overrides_by_name_and_type():
    _, palettes, skipped = dkm_tf.share_weights(
        small_cnn(), 4, overrides={"Dense": {"n_clusters": 2}, "dw": None})
    by = {p.layer_name: p for p in palettes}
    assert by["out"].n_clusters == 2 and by["c1"].n_clusters == 4
    assert "dw" not in by and ("dw", "excluded by overrides") in skipped
    with pytest.raises(ValueError, match="Unknown setting"):
        dkm_tf.share_weights(small_cnn(), 4, overrides={"out": {"bits": 2}})


def test_nested_functional_model_and_shared_layer():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="inner_dense")],
                             name="inner")
    shared = keras.layers.Dense(5, name="shared")
    x = keras.Input((6,))
    y = keras.layers.Add()([shared(inner(x)), shared(keras.layers.Dense(5, name="d0")(x))])
    model = keras.Model(x, y)
    clustered, palettes, _ = dkm_tf.share_weights(model, 3)
    assert sorted(p.layer_name for p in palettes) == ["d0", "inner_dense", "shared"]
    data = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    assert clustered(data).shape == (4, 5)


def test_nan_weights_error_names_the_layer():
    model = small_cnn()
    k = model.get_layer("out").kernel
    bad = k.numpy()
    bad[0, 0] = np.nan
    k.assign(bad)
    with pytest.raises(ValueError, match="out/kernel"):
        dkm_tf.share_weights(model, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`unit`. Expected one of"):
        dkm_tf.share_weights(small_cnn(), 4, unit="filter")
    with pytest.raises(ValueError, match="`n_clusters`"):
        dkm_tf.share_weights(small_cnn(), 0)
    with pytest.raises(TypeError, match="keras.Model"):
        dkm_tf.share_weights("model.keras", 4)


def test_subclassed_model_gives_a_clear_error_and_inplace_clusters_it():
    m = subclassed_model()
    with pytest.raises(TypeError, match="subclassed model.*inplace=True"):
        dkm_tf.share_weights(m, 2)
    before = [np.asarray(v).copy() for v in m.weights]
    result = dkm_tf.share_weights(m, 2, inplace=True)
    assert result.model is m and result.palettes
    for p in result.palettes:  # the model's own kernel now holds the decoded values
        layer = next(lay for lay in copying.iter_layers(m) if lay.name == p.layer_name)
        np.testing.assert_array_equal(np.asarray(getattr(layer, p.weight_name)), p.decode())
    changed = sum(not np.array_equal(a, np.asarray(v)) for a, v in zip(before, m.weights))
    assert changed == len(result.palettes)
    with pytest.raises(TypeError, match="inplace"):
        dkm_tf.share_weights(small_cnn(), 2, inplace=1)


def test_save_model_atomic(tmp_path):
    model = small_cnn()
    path = copying.save_model_atomic(model, tmp_path / "m.keras")
    assert os.path.isfile(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]
    with pytest.raises(ValueError, match="ending in '.keras'"):
        copying.save_model_atomic(model, tmp_path / "m.h5")
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_cluster_weights_accepts_auto_units():
    with pytest.warns(UserWarning, match="bn \\(BatchNormalization\\)"):
        clustered = dkm_tf.cluster_weights(small_cnn(), 4, unit="auto")
    _, palettes = dkm_tf.strip_clustering(clustered)
    by = {p.layer_name: p for p in palettes}
    assert by["c1"].unit_dim == 3 and by["out"].unit_dim == 1


def _mse_not_registered(y, p):  # a plain function: Keras cannot deserialize it
    return keras.ops.mean(keras.ops.square(keras.ops.cast(y, p.dtype)[:, None] - p))


def test_compiled_sequential_with_an_unregistered_loss_is_copied():
    """Keras re-compiles a cloned Sequential from its compile config, which fails for a plain
    function loss; every copier here must still work and leave the original compiled."""
    from dkm_tf.training import clustering, finetune, retrain

    model = small_cnn()
    model.compile("adam", loss=_mse_not_registered)
    x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 10
    copy = copying.copy_model(model)
    assert copy is not model and not copy.compiled and model.compiled
    assert model.loss is _mse_not_registered
    assert dkm_tf.share_weights(model, 4).palettes
    with pytest.warns(UserWarning, match="bn"):  # BatchNormalization is left unclustered
        clustered = clustering.cluster_weights(model, 4)
    assert clustering.strip_clustering(clustered)[1]
    with pytest.warns(UserWarning, match="bn"):
        _, _, hist = finetune.finetune(model, (x, y), n_clusters=4, epochs=1, batch_size=16)
    assert len(hist.history["loss"]) == 1  # trained with the model's own (custom) loss
    out, _ = retrain.dkm_retrain(model, (x, y), n_clusters=4, epochs=1, batch_size=16)
    assert out.loss is _mse_not_registered
    assert model.compiled


@pytest.mark.parametrize("make", [
    lambda: keras.layers.Conv2D(4, 3, name="conv"),  # weights created in build, in order
    lambda: keras.layers.BatchNormalization(name="bn"),  # four weights, two non-trainable
    lambda: keras.layers.Bidirectional(keras.layers.LSTM(3), name="bilstm"),  # sublayers
])
def test_copy_layer_creates_the_weights_from_their_values(make, monkeypatch):
    """copy_layer builds each weight directly from the source value (no set_weights) when
    the layer creates its own weights in order, and falls back to set_weights otherwise;
    the copy never shares a variable with the source."""
    layer = make()
    layer.build((2, 5, 5, 3) if isinstance(layer, keras.layers.Conv2D) else (2, 4, 3))
    rng = np.random.default_rng(0)
    layer.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in layer.weights])
    calls = []
    set_weights = keras.layers.Layer.set_weights
    monkeypatch.setattr(keras.layers.Layer, "set_weights",
                        lambda self, w: (calls.append(self.name), set_weights(self, w)))
    new = copying.copy_layer(layer)
    assert len(new.weights) == len(layer.weights)
    for a, b in zip(layer.weights, new.weights, strict=True):
        assert a is not b and a.dtype == b.dtype and a.trainable == b.trainable
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert calls == (["bilstm"] if isinstance(layer, keras.layers.Bidirectional) else [])
    new.weights[0].assign(np.zeros(new.weights[0].shape))  # independent storage
    assert np.any(layer.weights[0].numpy() != 0)


def test_share_weights_rejects_a_non_model():
    with pytest.raises(TypeError, match="Expected a keras.Model. Received: Dense"):
        dkm_tf.share_weights(keras.layers.Dense(3), 4)
