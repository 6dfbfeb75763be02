"""Session 26: the training methods train an uncompiled ``share_weights`` /
``strip_clustering`` copy with the loss it carries from its source (they trained it with the
default cross-entropy: a copy of an "mse" regressor with 0 / 1 targets was fitted to a binary
cross-entropy of its logits, silently), and that loss survives ``save`` / ``load_model``."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402

L = keras.layers


def _data(n=48):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 5)).astype("float32")
    y = (x[:, :1] + 0.3 * x[:, 1:2] > 0).astype("float32")  # 0 / 1 targets: read as labels too
    return x, y


_TRAINED = []  # the regressor's trained weights: fitted once, a fresh copy per test


def _regressor():
    """A one-unit Dense regressor compiled with "mse", trained a few steps on seeded data."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    out = L.Dense(1, name="o")(L.Dense(12, activation="relu", name="h")(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    if not _TRAINED:
        x, y = _data()
        model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        _TRAINED.append(model.get_weights())
    model.set_weights(_TRAINED[0])
    return model


def _mse(model, x, y):
    out = np.asarray(model.predict(x, verbose=0), np.float64)
    return float(np.mean((out - y.astype(np.float64)) ** 2))


def _bce_logits(model, x, y):
    z = np.asarray(model.predict(x, verbose=0), np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


@pytest.mark.parametrize("make", ["share_weights", "strip_clustering"])
def test_finetune_trains_a_copy_with_its_source_mse(make):
    """One full-batch epoch: the loss fit minimised is the MSE of the clustered start model's
    outputs (numpy), not the binary cross-entropy of its logits."""
    model, (x, y) = _regressor(), _data()
    if make == "share_weights":
        copy = dkm_tf.share_weights(model, 8).model
    else:
        clustered = dkm_tf.cluster_weights(model, 8)
        clustered.compile("adam", "mse")  # as a user trains it; its stripped copy is not
        copy = dkm_tf.strip_clustering(clustered)[0]
    assert not copy.compiled
    start, _, _ = dkm_tf.finetune(copy, (x, y), n_clusters=4, epochs=0, seed=0)
    want, bce = _mse(start, x, y), _bce_logits(start, x, y)
    assert abs(want - bce) > 0.05  # the two losses tell apart here
    tuned, _, history = dkm_tf.finetune(copy, (x, y), n_clusters=4, epochs=1, seed=0,
                                        batch_size=len(x), learning_rate=1e-4)
    assert history.history["loss"][0] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert tuned.loss == "mse"
    assert tuned.evaluate(x, y, verbose=0) == pytest.approx(_mse(tuned, x, y), rel=1e-4)


def test_compress_trains_a_copy_with_its_source_loss_and_says_so():
    """compress(copy, method="finetune" / "dkm") of an "mse" regressor's copy: the returned
    model is compiled with "mse" and a note names the loss and why."""
    model, (x, y) = _regressor(), _data()
    copy = dkm_tf.share_weights(model, 8).model
    for method in ("finetune", "dkm"):
        result = dkm_tf.compress(copy, (x, y), method=method, n_clusters=4, finetune_epochs=1,
                                 dkm_epochs=1, batch_size=16, verbose=0)
        said = [n for n in result.notes if n.startswith("trained with the loss 'mse'")]
        assert len(said) == 1 and "copied from" in said[0], result.notes
        compressed = result.model
        if not compressed.compiled:  # "dkm": share_weights' copy of the re-trained model
            compressed.compile(loss=dkm_tf.core.loss_kind.source_loss(compressed))
        assert compressed.loss == "mse"
        assert compressed.evaluate(x, y, verbose=0) == pytest.approx(
            _mse(compressed, x, y), rel=1e-4)


def test_dkm_retrain_trains_a_copy_with_its_source_loss():
    model, (x, y) = _regressor(), _data()
    copy = dkm_tf.share_weights(model, 8).model
    retrained, _ = dkm_tf.dkm_retrain(copy, (x, y), n_clusters=4, epochs=1, lam=0.0,
                                      batch_size=len(x), learning_rate=1e-6)
    assert retrained.loss == "mse"
    assert retrained.evaluate(x, y, verbose=0) == pytest.approx(_mse(retrained, x, y), rel=1e-4)


def test_plain_uncompiled_model_keeps_the_default_cross_entropy():
    model, (x, y) = _regressor(), _data()
    plain = keras.Model.from_config(model.get_config())  # uncompiled, carries no loss
    plain.set_weights(model.get_weights())
    assert not plain.compiled
    tuned, _, _ = dkm_tf.finetune(plain, (x, y), n_clusters=4, epochs=1, seed=0)
    assert isinstance(tuned.loss, keras.losses.BinaryCrossentropy)
    result = dkm_tf.compress(plain, (x, y), method="finetune", n_clusters=4,
                             finetune_epochs=1, verbose=0)
    assert not any(n.startswith("trained with the loss") for n in result.notes)


def _saved_copy(tmp_path, loss="mse"):
    model = _regressor()
    if loss != "mse":
        model.compile("adam", loss)
    copy = dkm_tf.share_weights(model, 8).model
    path = str(tmp_path / "copy.keras")
    copy.save(path)
    return model, copy, path


def test_saved_copy_keeps_its_source_loss(tmp_path):
    """copy.save + dkm_tf.load_model: the loaded copy is read (Fisher refusal, notes) and
    trained as the copy was; it came back as a plain uncompiled model before."""
    from dkm_tf.core.loss_kind import source_loss

    _, copy, path = _saved_copy(tmp_path)
    loaded = dkm_tf.load_model(path)
    assert not loaded.compiled and source_loss(loaded) == "mse"
    x, y = _data()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), copy.predict(x, verbose=0))
    result = dkm_tf.compress(loaded, (x, None), (x, None), method="wr", n_clusters=4,
                             verbose=0)
    assert not any("classifier of logits" in n for n in result.notes), result.notes
    assert source_loss(result.model) == "mse"
    tuned, _, history = dkm_tf.finetune(loaded, (x, y), n_clusters=4, epochs=1, seed=0,
                                        batch_size=len(x), learning_rate=1e-4)
    start, _, _ = dkm_tf.finetune(loaded, (x, y), n_clusters=4, epochs=0, seed=0)
    assert tuned.loss == "mse"
    assert history.history["loss"][0] == pytest.approx(_mse(start, x, y), rel=1e-4, abs=1e-6)
    again = str(tmp_path / "again.keras")
    loaded.save(again)  # saved again, still carried
    assert source_loss(dkm_tf.load_model(again)) == "mse"
    plain = keras.models.load_model(path)  # Keras alone: loads, no custom objects needed
    assert not plain.compiled and source_loss(plain) is None
    assert source_loss(dkm_tf.load_model(path, compile=False)) is None


def test_saved_copy_keeps_a_loss_object(tmp_path):
    """A Keras loss object comes back as such; a Huber of delta 0.25 is not saved at all
    (Keras 3.15 saves no delta: it would load back as delta 1.0, a silently other loss)."""
    from dkm_tf.core.loss_kind import source_loss

    _, _, path = _saved_copy(tmp_path, keras.losses.MeanAbsoluteError())
    assert isinstance(source_loss(dkm_tf.load_model(path)), keras.losses.MeanAbsoluteError)
    huber = keras.losses.Huber(delta=0.25)
    _, copy, path = _saved_copy(tmp_path, huber)
    assert source_loss(copy) is huber
    assert source_loss(dkm_tf.load_model(path)) is None


def test_saved_copy_with_a_custom_loss(tmp_path):
    """An unregistered loss function is not saved (the file loads as before); a registered one
    that is not registered where it loads gives a warning naming what to do."""
    from dkm_tf.core.loss_kind import source_loss

    def my_unregistered(y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)

    _, copy, path = _saved_copy(tmp_path, my_unregistered)
    assert source_loss(copy) is my_unregistered
    assert source_loss(dkm_tf.load_model(path)) is None

    @keras.saving.register_keras_serializable(package="h26trainloss")
    def my_registered(y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred), axis=-1)

    try:
        _, _, path = _saved_copy(tmp_path, my_registered)
        assert source_loss(dkm_tf.load_model(path)) is my_registered
    finally:
        keras.saving.get_custom_objects().pop("h26trainloss>my_registered", None)
    with pytest.warns(UserWarning, match="could not be restored.*custom_objects"):
        loaded = dkm_tf.load_model(path)
    assert source_loss(loaded) is None
    loaded = dkm_tf.load_model(path, custom_objects={"h26trainloss>my_registered": my_registered})
    assert source_loss(loaded) is my_registered


def test_finetune_notes_lost_kernel_scales_in_its_palettes_not_a_warning():
    """dkm_tf.finetune let cluster_weights' "float16 scale underflows" UserWarning escape
    (an error where warnings are errors) where compress turns it into a note; it is now in
    the returned palette's note. cluster_weights itself still warns."""
    import warnings

    from test_silent225 import _tiny_kernel_model

    model = _tiny_kernel_model((1e-8,), classifier=True)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6, 6, 4)).astype("float32"), rng.integers(0, 3, 16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=UserWarning)
        _, palettes, _ = dkm_tf.finetune(model, (x, y), n_clusters=8, unit="kernel", epochs=1,
                                         kernel_options={"codebook": "shared"})
    assert [p.note for p in palettes] == [
        "kernel codebook kernel:3x3 (fine-tuned); kernel scales of 'c' at the start of "
        "fine-tuning: 1 of 16 kernel(s): float16 scale underflows to 0 (decoded as zero "
        "kernels); scale_bits=32 keeps them"]
    _, palettes, _ = dkm_tf.finetune(model, (x, y), n_clusters=8, unit="kernel", epochs=1,
                                     kernel_options={"codebook": "shared", "scale_bits": 32})
    assert "scale" not in palettes[0].note
    with pytest.warns(UserWarning, match="cluster_weights: layer 'c'"):
        dkm_tf.cluster_weights(model, 8, unit="kernel", codebook="shared")


def _log_softmax_head():
    keras.utils.set_random_seed(0)
    i = keras.Input((6,))
    z = L.Dense(3, name="o")(L.Dense(16, activation="relu", name="h")(i))
    return keras.Model(i, L.Activation("log_softmax")(z))


def test_cli_and_compress_read_log_softmax_rows_as_class_scores(tmp_path):
    """`dkm-tf compress --model` (and compress) noted a log_softmax output as "read as a
    classifier of logits because it is not compiled", where to_tflite's int8 check reads its
    rows (exp sums to 1) as class scores; a linear output is still noted."""
    from test_silent25 import LOGITS, X, _cli, _head

    model = _log_softmax_head()
    rows = model.predict(X, verbose=0)
    np.testing.assert_allclose(np.exp(rows.astype(np.float64)).sum(-1), 1.0, atol=1e-5)
    report = _cli(tmp_path / "a", model, "--notflite")
    assert not [n for n in report["notes"] if n.startswith(LOGITS)], report["notes"]
    report = _cli(tmp_path / "b", _head(), "--notflite")
    assert len([n for n in report["notes"] if n.startswith(LOGITS)]) == 1
    r = dkm_tf.compress(model, (X, None), (X[:16], None), n_clusters=2, verbose=0)
    assert r.metric == "agreement with the float model"
    assert not [n for n in r.notes if n.startswith(LOGITS)], r.notes


def test_cli_reads_a_saved_copys_source_loss(tmp_path):
    """dkm-tf compress --model of a saved copy of a 3-unit "mse" regressor read it as a
    classifier of logits (an arg-max "agreement", with the note); it now reads the loss the
    copy carries, as it reads a compiled file's."""
    from test_silent25 import LOGITS, _cli, _head

    from dkm_tf.core.custom_code import compiled_loss_name

    copy = dkm_tf.share_weights(_head(loss="mse"), 8).model
    copy.save(tmp_path / "c.keras")
    assert compiled_loss_name(tmp_path / "c.keras") == "mse"
    report = _cli(tmp_path / "a", copy, "--notflite")
    assert not [n for n in report["notes"] if n.startswith(LOGITS)], report["notes"]
    assert any("a regressor" in n for n in report["notes"]), report["notes"]
