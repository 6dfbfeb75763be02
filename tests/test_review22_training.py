"""Review of session 22's training changes (class weights, sample-weighted Fisher).

- ``class_weight`` with per-position labels ``(N, T)`` under a loss not known to be sparse (a
  custom function wrapping sparse cross-entropy) took the arg-max over the T positions as
  each sample's class: the sample weights reaching ``fit`` were one per sample, read from
  positions (``[1, 1, 1, 1, 1, 0.2, 1, 1]`` where row 0's per-position weights are
  ``[5, 1, 1, 1, 1]``). Refused before any k-means now.
- ``fisher_importance`` of a 2-input model given ``(x1, x2, y)`` read it as ``x=x1, y=x2,
  sample_weight=y`` and failed with a shape error that named no cause; refused naming the
  forms to use.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
import dkm_tf  # noqa: E402


def _tagger(loss):
    keras.utils.set_random_seed(0)
    i = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, 8)(i)
    m = keras.Model(i, keras.layers.Dense(3, activation="softmax")(h))
    m.compile(optimizer="adam", loss=loss)
    return m


def _masked_sce(t, p):
    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(t, p), axis=-1)


def test_class_weight_with_per_position_labels_needs_a_known_sparse_loss(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 10, (8, 5)), rng.integers(0, 3, (8, 5))
    cw = {0: 1.0, 1: 5.0, 2: 0.2}
    ran = []
    import dkm_tf.training.finetune as finetune_module  # noqa: PLC0415

    monkeypatch.setattr(finetune_module, "cluster_weights", lambda *a, **k: ran.append(1))
    with pytest.raises(ValueError, match=r"`class_weight`.*shape \(8, 5\).*_masked_sce.*"
                                         r"SparseCategoricalCrossentropy"):
        dkm_tf.finetune(_tagger(_masked_sce), (x, y), n_clusters=4, epochs=1,
                        class_weight=cw)
    assert ran == []
    monkeypatch.undo()
    fitted = []
    fit = keras.Model.fit

    def spy(self, *args, **kwargs):
        fitted.append(kwargs.get("sample_weight"))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    dkm_tf.finetune(_tagger("sparse_categorical_crossentropy"), (x, y), n_clusters=4,
                    epochs=1, class_weight=cw)  # a known sparse loss: one weight a position
    np.testing.assert_array_equal(fitted[0], np.array([1.0, 5.0, 0.2], np.float32)[y])


def test_fisher_of_a_two_input_model_refuses_three_loose_arrays():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,)), keras.Input((4,))
    h = keras.layers.Concatenate()([a, b])
    m = keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(
        keras.layers.Dense(6, name="fc")(h)))
    m.compile(loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(6, 4)).astype("float32")
    y = rng.integers(0, 3, 6)
    with pytest.raises(ValueError, match=r"`data`.*2 inputs.*\(\[x1, \.\.\., x2\], y, "
                                         r"sample_weight\).*shape \(6, 4\)"):
        dkm_tf.fisher_importance(m, (x1, x2, y), labels="data")
    got = dkm_tf.fisher_importance(m, ([x1, x2], y, np.ones(6)), labels="data")
    want = dkm_tf.fisher_importance(m, ([x1, x2], y), labels="data")
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6)
