"""Review of session 23's ``compress`` / Fisher changes (R2).

- ``compress(...).model`` compiled with an unregistered custom loss saved a file that Keras
  could not load back ("Could not locate function 'myloss'"; the uncompiled copy of the code
  before loaded): such a model now stays uncompiled, with a note naming the loss; a registered
  custom loss still compiles and loads.
- A subclassed model's ``([x1, x2], y, w)`` with ``w`` of shape ``(N, 1)`` (the documented
  form) was read as three inputs: it now means what ``([x1, x2], y, w.ravel())`` means; a
  loose ``(x, y, w)`` with ``w`` of shape ``(N, 1)`` (ambiguous: a 3-input model takes it too)
  says how to pass it.
"""

import keras
import numpy as np
import pytest

import dkm_tf


def _myloss(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


@keras.saving.register_keras_serializable(package="test_review23_r2")
def registered_loss(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


def _classifier(loss):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(3)])
    m.compile("adam", loss)
    r = np.random.default_rng(0)
    return m, r.normal(size=(64, 6)).astype("float32"), r.integers(0, 3, 64)


def test_unregistered_custom_loss_leaves_the_result_uncompiled_and_loadable(tmp_path):
    m, x, y = _classifier(_myloss)
    r = dkm_tf.compress(m, (x, y), n_clusters=4, verbose=0)
    assert not r.model.compiled
    assert any("loss '_myloss' is custom code" in n and "not compiled" in n
               for n in r.notes), r.notes
    path = str(tmp_path / "c.keras")
    r.model.save(path)
    back = keras.models.load_model(path)  # failed: Could not locate function '_myloss'
    np.testing.assert_array_equal(back.predict(x, verbose=0), r.model.predict(x, verbose=0))


def test_registered_custom_loss_is_compiled_and_loads(tmp_path):
    m, x, y = _classifier(registered_loss)
    r = dkm_tf.compress(m, (x, y), n_clusters=4, verbose=0)
    assert r.model.compiled and not any("not compiled" in n for n in r.notes)
    path = str(tmp_path / "c.keras")
    r.model.save(path)
    back = keras.models.load_model(path)
    got = back.evaluate(x, y, verbose=0, batch_size=64)
    ref = np.mean([-np.log(np.exp(z[c]) / np.exp(z).sum())
                   for z, c in zip(r.model.predict(x, verbose=0).astype(np.float64), y)])
    np.testing.assert_allclose(got, ref, rtol=1e-5)


class Sub(keras.Model):
    def __init__(self):
        super().__init__()
        self.h = keras.layers.Dense(6, activation="relu")
        self.o = keras.layers.Dense(3)

    def call(self, x):
        return self.o(self.h(x))


def _sub():
    keras.utils.set_random_seed(0)
    m = Sub()
    m(np.zeros((1, 5), "float32"))
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    r = np.random.default_rng(1)
    return (m, r.normal(size=(10, 5)).astype("float32"), r.integers(0, 3, 10),
            r.uniform(0.1, 2.0, 10))


class Sub2(keras.Model):
    """Two inputs, taken as a list."""

    def __init__(self):
        super().__init__()
        self.h = keras.layers.Dense(6, activation="relu")
        self.o = keras.layers.Dense(3)

    def call(self, inputs):
        return self.o(self.h(keras.ops.concatenate(inputs, axis=-1)))


def test_subclassed_list_x_with_column_weights_equals_flat_weights():
    keras.utils.set_random_seed(0)
    m = Sub2()
    r = np.random.default_rng(1)
    x = [r.normal(size=(10, 3)).astype("float32"), r.normal(size=(10, 2)).astype("float32")]
    m(x)
    m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y, w = r.integers(0, 3, 10), r.uniform(0.1, 2.0, 10)
    ref = dkm_tf.fisher_importance(m, (x, y, w), labels="data")
    got = dkm_tf.fisher_importance(m, (x, y, w[:, None]), labels="data")  # was: 3 inputs
    assert set(got) == set(ref) and len(ref) == 2  # the two kernels
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6)
    flat = dkm_tf.fisher_importance(m, (x, y), labels="data")
    assert any(not np.allclose(flat[k], ref[k], rtol=1e-3) for k in ref)  # weights count


@pytest.mark.parametrize("labels", ["data", "model"])
def test_subclassed_loose_column_weights_say_how_to_pass_them(labels):
    m, x, y, w = _sub()
    with pytest.raises(ValueError, match=r"read as three inputs.*shape \(N,\).*\[x\], y, w"):
        dkm_tf.fisher_importance(m, (x, y, w[:, None]), labels=labels)
