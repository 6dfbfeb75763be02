"""Keras training features through dkm_tf's training entry points (probe of session 21).

Multi-output compile state (``loss_weights``, loss dicts keyed by output layer names) kept by
``finetune`` / ``dkm_retrain``; sample weights: honoured in a dataset and (since session 22) by
the Fisher weighting; optimizer features (EMA, AdamW, gradient
accumulation) keep <= K shared values per palette, and the stripped model equals the
clustered one. Tiny Dense models, fixed seeds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dkm_tf  # noqa: E402

K = 4


def _data(n=48, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 6)).astype("float32")
    y = ((x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)).astype("int64")
    return x, y


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _two_heads(dict_outputs=True, keyed=True, weights=(1.0, 0.0)):
    """A two-head classifier compiled with ``loss_weights`` (head b weighs 0)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h")(i)
    a, b = keras.layers.Dense(3, name="a")(h), keras.layers.Dense(3, name="b")(h)
    m = keras.Model(i, {"a": a, "b": b} if dict_outputs else [a, b])
    if keyed:  # by output (layer) name
        m.compile("adam", loss={"a": _sce(), "b": _sce()},
                  loss_weights={"a": weights[0], "b": weights[1]})
    else:
        m.compile("adam", loss=[_sce(), _sce()], loss_weights=list(weights))
    return m


def _reference_loss(m, x, y, epochs):
    """Keras' own: cluster_weights, then compile with the model's loss and loss_weights."""
    keras.utils.set_random_seed(0)
    c = dkm_tf.cluster_weights(m, K, seed=0)
    names = dict(zip(m.output_names, c.output_names))
    loss, weights = m.loss, m.get_compile_config()["loss_weights"]
    if isinstance(loss, dict) and not isinstance(m.output, dict):  # keyed by layer names
        loss = {names[k]: v for k, v in loss.items()}
        weights = {names[k]: v for k, v in weights.items()}
    c.compile(keras.optimizers.Adam(1e-3), loss=loss, loss_weights=weights)
    return c.fit(x, y, batch_size=32, epochs=epochs, verbose=0).history["loss"]


@pytest.mark.parametrize("dict_outputs,keyed", [(True, True), (False, False), (False, True)])
def test_finetune_trains_with_the_models_loss_weights(dict_outputs, keyed):
    # loss_weights were dropped (the sum of both heads trained: 2.72 for Keras' 1.31); a
    # list-output model compiled with a loss dict keyed by layer names failed inside fit
    # after the k-means ("Expected keys ['cluster_a', 'cluster_b'] in loss dict")
    x, y = _data()
    labels = {"a": y, "b": 2 - y} if dict_outputs else [y, 2 - y]
    stripped, palettes, hist = dkm_tf.finetune(_two_heads(dict_outputs, keyed), (x, labels),
                                               n_clusters=K, epochs=2, seed=0)
    ref = _reference_loss(_two_heads(dict_outputs, keyed), x, labels, 2)
    np.testing.assert_allclose(hist.history["loss"], ref, rtol=1e-5, atol=1e-6)
    assert stripped.get_compile_config()["loss_weights"] == (
        {"a": 1.0, "b": 0.0} if keyed else [1.0, 0.0])
    assert all(len(np.unique(p.codebook)) <= K for p in palettes)
    # the stripped model evaluates with the weighted loss: head a's loss alone
    out = stripped.evaluate(x, labels, verbose=0, return_dict=True)
    pred = stripped.predict(x, verbose=0)
    pa = pred["a"] if dict_outputs else pred[0]
    z = pa - pa.max(1, keepdims=True)
    ce = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    np.testing.assert_allclose(out["loss"], ce, rtol=1e-4)


def test_dkm_retrain_trains_with_the_models_loss_weights():
    x, y = _data()
    model = _two_heads()
    model.compile("adam", loss=model.loss, loss_weights={"a": 1.0, "b": 0.0},
                  weighted_metrics={"a": ["accuracy"]})
    m, hist = dkm_tf.dkm_retrain(model, (x, {"a": y, "b": 2 - y}), n_clusters=K,
                                 epochs=1, lam=0.0, include_dense=True)
    assert "a_accuracy" in hist.history  # the compiled weighted_metrics (were dropped)
    # with lam=0 the loss is 1 * a_loss + 0 * b_loss (it was their sum)
    np.testing.assert_allclose(hist.history["loss"], hist.history["a_loss"], rtol=1e-5)
    assert hist.history["b_loss"][0] > 0.1
    assert m.get_compile_config()["loss_weights"] == {"a": 1.0, "b": 0.0}


def _classifier():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("adam", _sce())
    return m


def test_fisher_takes_sample_weights():
    # (x, y, sample_weight) was read as x and the unweighted Fisher returned; then refused;
    # now the weighted mean (tests/test_fisher_weights22c.py checks it against numpy)
    x, y = _data()
    sw = np.linspace(0.1, 3, len(x)).astype("float32")
    m = _classifier()
    for labels in ("model", "data"):
        got = dkm_tf.fisher_importance(m, (x, y, sw), labels=labels)
        plain = dkm_tf.fisher_importance(m, (x, y), labels=labels)
        assert all(not np.allclose(got[k], plain[k], rtol=1e-3) for k in got)
    a = dkm_tf.share_weights(m, K, weighting="fisher", data=(x, y, sw))
    assert all(len(np.unique(p.codebook)) <= K for p in a.palettes)
    dkm_tf.cluster_weights(m, K, weighting="fisher", data=(x, y, sw))


def test_sample_weights_in_a_dataset_are_honoured_and_a_triple_is_refused_with_a_hint():
    import tensorflow as tf  # noqa: PLC0415

    x, y = _data()
    sw = np.linspace(0.1, 3, len(x)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(16)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    keras.utils.set_random_seed(0)
    model.compile("adam", _sce(), weighted_metrics=["accuracy"])
    stripped, _, hist = dkm_tf.finetune(model, ds, n_clusters=K, epochs=1, seed=0)
    keras.utils.set_random_seed(0)
    c = dkm_tf.cluster_weights(model, K, seed=0)
    c.compile(keras.optimizers.Adam(1e-3), _sce())
    ref = c.fit(ds, epochs=1, verbose=0, shuffle=False).history["loss"]
    np.testing.assert_allclose(hist.history["loss"], ref, rtol=1e-6)
    # the compiled weighted_metrics are kept (they were dropped: no weighted accuracy at all)
    assert "accuracy" in hist.history  # Keras' name for a lone weighted metric
    hit = stripped.predict(x, verbose=0).argmax(1) == y
    got = stripped.evaluate(ds, verbose=0, return_dict=True)["accuracy"]
    np.testing.assert_allclose(got, (hit * sw).sum() / sw.sum(), rtol=1e-5)
    assert abs(hit.mean() - (hit * sw).sum() / sw.sum()) > 0.01  # a test that tells them apart
    with pytest.raises(ValueError, match=r"`train_data`.*length 3; to weigh samples, pass a "
                                         r"tf.data.Dataset of \(x, y, sample_weight\)"):
        dkm_tf.finetune(model, (x, y, sw), n_clusters=K, epochs=1)


_EMA = lambda: keras.optimizers.Adam(0.01, use_ema=True)  # noqa: E731


@pytest.mark.parametrize("optimizer,latent", [
    (_EMA, False), (_EMA, True),
    (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5), False),
    (lambda: keras.optimizers.Adam(0.01, gradient_accumulation_steps=2, global_clipnorm=0.1),
     True),
], ids=["ema", "ema-latent", "adamw", "accumulation+clip-latent"])
def test_optimizer_features_keep_the_sharing(optimizer, latent):
    x, y = _data()
    c = dkm_tf.cluster_weights(_classifier(), K, latent=latent)
    c.compile(optimizer(), _sce())
    cb = [dkm_tf.ReassignClusters(1)] if latent else []
    c.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=cb)
    stripped, palettes = dkm_tf.strip_clustering(c)
    for layer in stripped.layers:
        assert len(np.unique(keras.ops.convert_to_numpy(layer.kernel))) <= K
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(stripped(x)),
                                  keras.ops.convert_to_numpy(c(x)))


def test_finetune_takes_label_dicts_keyed_by_a_list_output_models_layer_names():
    # Keras takes y={"a": ..., "b": ...} for a model of outputs [a, b]; finetune failed
    # inside fit after the k-means ("Expected float32, but got a of type 'str'"): the
    # clustered outputs are named cluster_a / cluster_b
    import tensorflow as tf  # noqa: PLC0415

    x, y = _data()
    as_list, as_dict = [y, 2 - y], {"a": y, "b": 2 - y}
    losses = []
    for labels in (as_list, as_dict):
        ds = tf.data.Dataset.from_tensor_slices(  # a list would be stacked: a tuple
            (x, tuple(labels) if isinstance(labels, list) else labels)).batch(16)
        for data in ((x, labels), ds):
            losses.append(dkm_tf.finetune(_two_heads(False, False), data, val_data=data,
                                          n_clusters=K, epochs=1, seed=0)[2].history)
    for ref, got in zip(losses[:2], losses[2:]):
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-6)
        np.testing.assert_allclose(got["val_loss"], ref["val_loss"], rtol=1e-6)
