"""``compress`` returns its model compiled as the given one, and Fisher sample weights of
shape ``(N, 1)`` (session 23, helper b).

``compress(...).model`` came back uncompiled (``"wr"`` / ``"dkm"``): ``evaluate`` needed a
``compile``, and ``to_tflite(result.model, format="int8")`` of a regressor compiled with
``"mse"`` checked the arg-max of its file again ("top-1 agreement"). It is now compiled with
the given model's loss, ``loss_weights`` and metrics (a built plain SGD, as ``finetune``
returns its model). ``weighting="fisher"`` refused Keras' ``(N, 1)`` sample weights; they now
mean what ``(N,)`` means, and other shapes are refused naming theirs. Tiny models, fixed seeds.
"""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402


def _regressor(loss_weights=None):
    """Two outputs (3 and 1 units), compiled with mse / mae, ``loss_weights`` and a metric."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(12, activation="relu", name="h")(inp)
    a = keras.layers.Dense(3, name="a")(h)
    b = keras.layers.Dense(1, name="b")(h)
    m = keras.Model(inp, [a, b])
    m.compile(optimizer=keras.optimizers.Adam(2e-3), loss=["mse", "mae"],
              loss_weights=loss_weights, metrics=[["mae"], ["mse"]])
    return m


def _data(n=64, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 6)).astype("float32")
    return x, [2 * x[:, :3] + 0.5, x[:, 3:4] - x[:, 4:5]]


def test_the_compressed_model_keeps_the_compiled_loss_weights_and_metrics(tmp_path):
    m, (x, y) = _regressor(loss_weights=[0.25, 3.0]), _data()
    r = dkm_tf.compress(m, (x, y), method="wr", n_clusters=4, verbose=0)
    c = r.model
    assert c.compiled and r.notes == []
    assert isinstance(c.optimizer, keras.optimizers.SGD)
    assert float(c.optimizer.learning_rate) == pytest.approx(2e-3)
    pa, pb = (np.asarray(p, np.float64) for p in c.predict(x, verbose=0))
    mse = np.mean((pa - y[0]) ** 2)
    mae = np.mean(np.abs(pb - y[1]))
    got = c.evaluate(x, y, verbose=0, return_dict=True, batch_size=len(x))
    np.testing.assert_allclose(got["loss"], 0.25 * mse + 3.0 * mae, rtol=1e-5)  # weighted
    np.testing.assert_allclose(got["a_mae"], np.mean(np.abs(pa - y[0])), rtol=1e-5)
    np.testing.assert_allclose(got["b_mse"], np.mean((pb - y[1]) ** 2), rtol=1e-5)
    path = str(tmp_path / "c.keras")
    c.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no optimizer-mismatch warning when loaded back
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        back = keras.models.load_model(path)
    assert back.compiled


def test_dkm_returns_its_model_compiled_with_the_loss_it_trained_with():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile(keras.optimizers.Adam(1e-3), "mae", metrics=["mse"])
    x, y = _data()[0], _data()[1][0]
    c = dkm_tf.compress(m, (x, y), method="dkm", n_clusters=4, dkm_epochs=1, verbose=0).model
    p = np.asarray(c.predict(x, verbose=0), np.float64)
    got = c.evaluate(x, y, verbose=0, return_dict=True, batch_size=len(x))
    np.testing.assert_allclose(got["loss"], np.mean(np.abs(p - y)), rtol=1e-5)
    np.testing.assert_allclose(got["mse"], np.mean((p - y) ** 2), rtol=1e-5)


def test_an_uncompiled_model_comes_back_uncompiled():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    r = dkm_tf.compress(m, (_data()[0], None), n_clusters=4, verbose=0)
    assert not r.model.compiled and r.notes == []


def test_int8_export_of_a_compressed_regressor_is_checked_as_a_regressor(tmp_path):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("adam", "mse")
    x = _data()[0]
    r = dkm_tf.compress(m, (x, None), n_clusters=8, verbose=0)
    assert r.model.loss == "mse"
    rep = dkm_tf.export.to_tflite(r.model, str(tmp_path / "m.tflite"), format="int8",
                                  sample_inputs=x[:16])
    assert any("no top-1 check (compiled with loss 'mse'" in n for n in rep.notes)


def _mlp():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def _fisher(m, data, **kw):
    imp = dkm_tf.fisher_importance(m, data, **kw)
    return [imp[id(layer.kernel)] for layer in m.layers]


@pytest.mark.parametrize("labels", ["model", "data"])
def test_fisher_sample_weights_of_shape_n_1_mean_what_n_means(labels):
    import tensorflow as tf  # noqa: PLC0415

    m = _mlp()
    r = np.random.default_rng(0)
    x, y = r.normal(size=(10, 5)).astype("float32"), r.integers(0, 3, 10)
    w = r.integers(1, 4, 10).astype("float32")
    flat = _fisher(m, (x, y, w), labels=labels)
    rep = _fisher(m, (np.repeat(x, w.astype(int), 0), np.repeat(y, w.astype(int))),
                  labels=labels)  # integer weights: the repeated data
    column = _fisher(m, (x, y, w[:, None]), labels=labels)
    ds = tf.data.Dataset.from_tensor_slices((x, y, w[:, None])).batch(4)
    batched = _fisher(m, ds, labels=labels)
    for f, g, c, d in zip(flat, rep, column, batched):
        np.testing.assert_allclose(f, g, rtol=1e-4, atol=1e-12)
        np.testing.assert_allclose(c, f, rtol=1e-6, atol=0)
        np.testing.assert_allclose(d, f, rtol=1e-6, atol=0)
    a = dkm_tf.share_weights(m, 4, weighting="fisher", data=(x, y, w[:, None]))
    b = dkm_tf.share_weights(m, 4, weighting="fisher", data=(x, y, w))
    for p, q in zip(a.palettes, b.palettes):
        np.testing.assert_array_equal(p.codebook, q.codebook)
        np.testing.assert_array_equal(p.indices, q.indices)


def test_other_sample_weight_shapes_are_refused_naming_the_shape():
    m = _mlp()
    x, y = np.ones((10, 5), "float32"), np.zeros(10, "int64")
    for bad, shape in ((np.ones((10, 2)), r"\(10, 2\)"), (np.ones((10, 1, 1)), r"\(10, 1, 1\)"),
                       (np.ones((1, 10)), r"\(1, 10\)")):
        with pytest.raises(ValueError, match=r"`data`.*shape \(10,\) or \(10, 1\).*"
                                             rf"sample_weight of shape {shape}"):
            dkm_tf.fisher_importance(m, (x, y, bad))
