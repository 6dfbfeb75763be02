"""Training fixes found by an adversarial probe (text models, reports, finetune's result).

* ``attach_regularizer(include_dense=True)`` regularizes Embedding tables too, as
  ``share_weights`` / ``cluster_weights`` cluster them (before: left out without a word, so
  ``dkm_retrain`` / ``compress(method="dkm")`` k-meant an untrained-for-clustering table);
  what it leaves out is listed, with the reason, in the ``skipped`` of its result.
* ``cluster_weights(..., unit="row")``: the report and the palettes say "scalar" for the
  weights clustered as scalars (Dense, Embedding, 1x1 kernels); the stored layout keeps "row".
* ``finetune``'s model saves and loads without Keras' optimizer-mismatch warning, and keeps
  the metrics the model was compiled with (as ``dkm_retrain`` does).
"""

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.core import palette as palette_lib  # noqa: E402

L = keras.layers
VOCAB, SEQ, K = 60, 12, 4


def _text_model(compiled=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((SEQ,), dtype="int32")
    h = L.Embedding(VOCAB, 8, name="emb")(inp)
    h = L.Conv1D(8, 3, activation="relu", name="conv")(h)
    h = L.Conv1D(6, 1, name="pw")(h)
    h = L.GlobalMaxPooling1D()(h)
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="fc")(h))
    if compiled:
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    return model


def _data(n=32):
    rs = np.random.RandomState(0)
    return rs.randint(0, VOCAB, (n, SEQ)).astype("int32"), rs.randint(0, 3, n).astype("int32")


# ------------------------------------------------------------------ 1. Embedding regularized
def test_include_dense_regularizes_the_embedding_with_the_kmeans_penalty():
    model = _text_model()
    lam = 0.5
    regs = dkm_tf.attach_regularizer(model, K, lam=lam, include_dense=True)
    emb = model.get_layer("emb")
    path = emb.embeddings.path
    assert sorted(regs) == sorted([path, "conv/kernel", "pw/kernel", "fc/kernel"])
    reg = regs[path]
    assert emb.embeddings.regularizer is reg and emb.embeddings_regularizer is reg
    assert reg.resolved_unit == "scalar" and not regs.skipped
    # penalty = (lam / 2) * k-means SSE of the table's values, computed here in numpy
    w = np.asarray(emb.embeddings, np.float64).reshape(-1)
    means = np.array([w[reg.assignment == k].mean() for k in range(K)])
    assert np.all(np.argmin(np.abs(w[:, None] - means[None]), axis=1) == reg.assignment)
    expected = 0.5 * lam * float(np.sum((w - means[reg.assignment]) ** 2))
    assert expected > 0
    np.testing.assert_allclose(float(reg(emb.embeddings)), expected, rtol=1e-5)
    per_weight = [float(r(v)) for v, r in dkm_tf.kmeans_regularizers(model)]
    np.testing.assert_allclose(float(sum(model.losses)), sum(per_weight), rtol=1e-5)
    assert float(sum(model.losses)) > expected  # the table's term is part of the loss


def test_what_attach_regularizer_leaves_out_is_reported_with_the_reason():
    model = _text_model()
    regs = dkm_tf.attach_regularizer(model, K)  # conv kernels only (the paper's default)
    assert sorted(regs) == ["conv/kernel", "pw/kernel"] and isinstance(regs, dict)
    assert regs.skipped == (("emb", "Embedding", "not a conv kernel (include_dense=False)"),
                            ("fc", "Dense", "not a conv kernel (include_dense=False)"))
    text = regs.summary()
    assert "regularized 2 weight(s), skipped 2 layer(s)" in text
    assert "  - emb (Embedding): not a conv kernel (include_dense=False)" in text
    assert "  + conv/kernel: K=4" in text and "row units" in text

    bn_model = keras.Sequential([keras.Input((6, 2)), L.Conv1D(4, 3, name="c"),
                                 L.BatchNormalization(name="bn"), L.Flatten(),
                                 L.Dense(2, name="d")])
    regs = dkm_tf.attach_regularizer(bn_model, {"c": 2}, include_dense=True)
    assert len(regs) == 1 and next(iter(regs)).endswith("c/kernel")
    assert dict((n, r) for n, _, r in regs.skipped) == {
        "bn": "layer type not supported (k-means does not cluster it either)",
        "d": "n_clusters gives it no K"}
    regs = dkm_tf.attach_regularizer(bn_model, 2, layers=["d"])
    assert ("c", "Conv1D", "not in layers") in regs.skipped


def test_dkm_retrain_trains_the_embedding_with_the_penalty():
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.extend(v.path for v, _ in dkm_tf.kmeans_regularizers(self.model))

    x, y = _data(16)
    dkm_tf.dkm_retrain(_text_model(), (x, y), n_clusters=K, lam=0.1, epochs=1, batch_size=8,
                       callbacks=[Spy()])
    assert "emb/embeddings" in seen and len(seen) == 4


# ------------------------------------------------------------------ 2. unit actually used
def test_report_and_palettes_say_scalar_where_row_units_hold_one_value():
    clustered, report = dkm_tf.cluster_weights(_text_model(), K, unit="row",
                                               return_report=True)
    used = {name: s["unit_used"] for name, _, s in report.clustered}
    assert used == {"emb": "scalar (row units need spatial kernel axes)", "conv": "row",
                    "pw": "scalar (its rows hold 1 value)",
                    "fc": "scalar (row units need spatial kernel axes)"}
    assert all(s["unit"] == "row" for _, _, s in report.clustered)  # the settings asked for
    text = report.summary()
    assert "  + fc (Dense): K=4, scalar (row units need spatial kernel axes), per_tensor" in text
    assert "  + conv (Conv1D): K=4, row, per_tensor" in text
    pals = {p.layer_name: p for p in dkm_tf.palettes_of(clustered)}
    assert repr(pals["emb"]) == ("Palette(emb/embeddings, K=4, unit=scalar(d=1), per_tensor, "
                                 f"N={VOCAB * 8})")
    assert "unit=row(d=3)" in repr(pals["conv"]) and "unit=scalar(d=1)" in repr(pals["fc"])
    # the stored layout is unchanged: old palettes.json files read and write the same
    for p in pals.values():
        assert p.layout.unit == "row"
        again = palette_lib.Palette.from_dict(p.to_dict())
        assert again.layout == p.layout and again.to_dict()["layout"]["unit"] == "row"
    rows = {r["name"]: r["unit"] for r in dkm_tf.size_report(list(pals.values())).rows}
    assert rows == {"emb/embeddings": "scalar", "conv/kernel": "row", "pw/kernel": "scalar",
                    "fc/kernel": "scalar"}
    _, report = dkm_tf.cluster_weights(_text_model(), K, unit="auto", return_report=True)
    assert {n: s["unit_used"] for n, _, s in report.clustered}["conv"] == "row (auto)"


# ------------------------------------------------------------------ 3. finetune's result
def _load_quietly(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = dkm_tf.load_model(path)
        b = keras.models.load_model(path)
    messages = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not messages, messages
    return a, b


def test_finetune_result_saves_and_loads_without_warnings_and_keeps_metrics(tmp_path):
    x, y = _data()
    model = _text_model(compiled=True)
    stripped, _, history = dkm_tf.finetune(model, (x, y), n_clusters=K, epochs=1,
                                           batch_size=16)
    assert "accuracy" in history.history  # the model's own metrics (as dkm_retrain keeps)
    assert isinstance(stripped.optimizer, keras.optimizers.SGD) and stripped.optimizer.built
    assert len(stripped.optimizer.variables) == 2  # no slots: the file holds the weights
    assert stripped.get_compile_config()["metrics"] == ["accuracy"]
    expected = stripped.predict(x, verbose=0)
    stripped.save(tmp_path / "ft.keras")
    for loaded in _load_quietly(tmp_path / "ft.keras"):
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
        assert "accuracy" in loaded.evaluate(x, y, verbose=0, return_dict=True)
    # not trained (epochs=0), not compiled: the default loss and accuracy, saved cleanly too
    plain, _, none = dkm_tf.finetune(_text_model(), None, n_clusters=K, epochs=0)
    assert none is None
    plain.save(tmp_path / "plain.keras")
    _load_quietly(tmp_path / "plain.keras")


def test_finetune_keeps_an_unregistered_custom_metric():
    def mean_prob(y_true, y_pred):
        return keras.ops.mean(keras.ops.max(y_pred, axis=-1))

    x, y = _data(16)
    model = _text_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=[mean_prob])
    _, _, history = dkm_tf.finetune(model, (x, y), n_clusters=K, epochs=1, batch_size=8)
    assert "mean_prob" in history.history
    _, history = dkm_tf.dkm_retrain(model, (x, y), n_clusters=K, epochs=1, batch_size=8)
    assert "mean_prob" in history.history
