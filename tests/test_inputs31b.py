"""Session 31: a model with an optional input (``keras.Input(optional=True)``) keeps it in its
compressed copies.

``keras.models.clone_model`` makes each new ``Input`` without ``optional``, so the copies of
``share_weights`` / ``cluster_weights`` / ``strip_clustering`` / ``compress`` /
``fold_batch_norm`` / kernel clustering (``unit="kernel"``), and of a nested model's inputs,
refused the None the original took: "The input 'm' is not optional". Now they take it, and
compute what numpy computes from their own weights, with None and with an array.
"""

import keras
import numpy as np
import pytest

import dkm_tf

L = keras.layers


@keras.saving.register_keras_serializable(package="test_inputs31b")
class AddIfGiven(L.Layer):
    """``x + m``, or ``x`` where the optional ``m`` is None."""

    def call(self, x, m=None):
        return x if m is None else x + m


def _dense(nested=False):
    keras.utils.set_random_seed(0)
    x, m = keras.Input((5,), name="x"), keras.Input((5,), name="m", optional=True)
    out = L.Dense(3, name="o")(L.Dense(8, activation="relu", name="d")(AddIfGiven()(x, m)))
    model = keras.Model([x, m], out, name="inner")
    if nested:
        x2, m2 = keras.Input((5,), name="x2"), keras.Input((5,), name="m2", optional=True)
        model = keras.Model([x2, m2], L.Dense(2, name="top")(model([x2, m2])), name="outer")
    return model


def _conv():
    keras.utils.set_random_seed(0)
    x, m = keras.Input((6, 6, 1), name="x"), keras.Input((6, 6, 1), name="m", optional=True)
    h = L.BatchNormalization(name="bn")(L.Conv2D(4, 3, name="c")(AddIfGiven()(x, m)))
    return keras.Model([x, m], L.Dense(3, name="o")(L.Flatten()(L.Activation("relu")(h))))


def _w(model, name):
    return [np.asarray(v, np.float64) for v in model.get_layer(name).get_weights()]


def _numpy_dense(model, x, m, nested=False):
    inner = model.get_layer("inner") if nested else model
    h = x if m is None else x + m
    (wd, bd), (wo, bo) = _w(inner, "d"), _w(inner, "o")
    out = np.maximum(h @ wd + bd, 0) @ wo + bo
    if nested:
        wt, bt = _w(model, "top")
        out = out @ wt + bt
    return out


def _numpy_conv(model, x, m):
    h = (x if m is None else x + m)[..., 0]
    patches = np.stack([h[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)], -1)
    wc, bc = _w(model, "c")
    y = patches @ wc.reshape(9, 4) + bc
    if "bn" in [la.name for la in model.layers]:
        g, b, mean, var = _w(model, "bn")
        y = (y - mean) / np.sqrt(var + model.get_layer("bn").epsilon) * g + b
    wo, bo = _w(model, "o")
    return np.maximum(y, 0).reshape(len(x), -1) @ wo + bo


def _check(model, ref, x, m, tol=1e-4):
    for given in (None, m):
        for batch in (1, len(x)):
            got = model.predict([x, given], batch_size=batch, verbose=0)
            want = ref(model, x, given)
            assert np.max(np.abs(got - want)) <= tol * max(1.0, np.max(np.abs(want))), batch


def _data(shape, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *shape)).astype(np.float32),
            rng.normal(size=(n, *shape)).astype(np.float32))


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("how", ["share_weights", "cluster_weights", "strip", "compress"])
def test_dense_copies_take_none_for_the_optional_input(nested, how, tmp_path):
    model = _dense(nested)
    x, m = _data((5,))
    assert model.predict([x, None], verbose=0).shape == (12, 2 if nested else 3)
    if how == "share_weights":
        copy = dkm_tf.share_weights(model, n_clusters=4)
    elif how == "cluster_weights":
        copy = dkm_tf.cluster_weights(model, n_clusters=4)
    elif how == "strip":
        copy, _ = dkm_tf.strip_clustering(dkm_tf.cluster_weights(model, n_clusters=4))
    else:
        y = np.arange(12) % 2
        copy = dkm_tf.compress(model, ([x, None], y), ([x, None], y), method="finetune",
                               n_clusters=4, finetune_epochs=1, verbose=0).model
    copy = getattr(copy, "model", copy)
    if how != "cluster_weights":  # a wrapped copy computes from its latent weights
        _check(copy, lambda mod, a, b: _numpy_dense(mod, a, b, nested), x, m)
        kernel = _w(copy.get_layer("inner") if nested else copy, "d")[0]
        assert np.unique(kernel).size <= 4
    else:
        copy.predict([x, None], verbose=0)  # was: "The input 'm' is not optional"
    if how in ("compress", "share_weights"):  # saved and loaded: still optional
        copy.save(tmp_path / "c.keras")
        back = dkm_tf.load_model(tmp_path / "c.keras")
        np.testing.assert_allclose(back.predict([x, None], verbose=0),
                                   copy.predict([x, None], verbose=0), rtol=0, atol=1e-6)


def test_kernel_unit_and_folded_batch_norm_keep_the_optional_input():
    model = _conv()
    x, m = _data((6, 6, 1))
    _check(model, _numpy_conv, x, m)
    folded = dkm_tf.fold_batch_norm(model)
    folded = getattr(folded, "model", folded)
    assert "bn" not in [la.name for la in folded.layers]
    _check(folded, _numpy_conv, x, m)
    shared = dkm_tf.share_weights(model, n_clusters=4, unit="kernel")
    shared = getattr(shared, "model", shared)
    _check(shared, _numpy_conv, x, m)
