"""Keras masking and variable-length sequences through weight sharing, fine-tuning, export and
the energy estimate.

Padded inputs: rows of true lengths 6, 4, 2 and 1 with zeros after them. With a mask, the
output of a padded row equals the output of the same row cut to its length (a model with a
``None`` time axis runs both), to float precision: that is the reference the compressed
models must keep. Each model is also checked to depend on the mask (the same weights without
it give other outputs), so a copy that lost the mask would fail.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import run_tflite_batch, run_tflite_per_sample, tf_backend_only  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.energy import sequence_reader  # noqa: E402
from dkm_tf.energy.keras_reader import read_keras_model  # noqa: E402

L = keras.layers
T, V, E = 6, 20, 5
LENGTHS = (6, 4, 2, 1)
TRUNC_ATOL = 1e-6  # padded row vs the row cut to its length (float32 round-off: ~1e-8)


def _ids(t=T):
    rng = np.random.default_rng(0)
    x = np.zeros((len(LENGTHS), t), np.int32)
    for i, n in enumerate(LENGTHS):
        x[i, :n] = rng.integers(1, V, n)
    return x


def _floats(t=T):
    rng = np.random.default_rng(0)
    x = np.zeros((len(LENGTHS), t, 3), np.float32)
    for i, n in enumerate(LENGTHS):
        x[i, :n] = rng.normal(size=(n, 3)) + 0.1
    return x


def _rnn(kind):
    return {"lstm": lambda: L.LSTM(6, name="rnn"), "gru": lambda: L.GRU(6, name="rnn"),
            "bilstm": lambda: L.Bidirectional(L.LSTM(4), name="rnn")}[kind]()


def _model(kind, t=None, mask=True, seed=0):
    """A padded-sequence model; ``mask=False``: the same weights' layers without the mask."""
    keras.utils.set_random_seed(seed)
    if kind == "masking":
        inp = keras.Input((t, 3))
        h = L.LSTM(6, name="rnn")(L.Masking(0.0)(inp) if mask else inp)
        return keras.Model(inp, L.Dense(3, name="head")(h), name=kind)
    inp = keras.Input((t,), dtype="int32")
    h = L.Embedding(V, E, mask_zero=mask, name="emb")(inp)
    if kind == "gap":
        h = L.GlobalAveragePooling1D()(L.Dense(6, name="proj")(h))
    elif kind == "mha":
        h = L.GlobalAveragePooling1D()(L.MultiHeadAttention(2, 3, name="mha")(h, h))
    else:
        h = _rnn(kind)(h)
    return keras.Model(inp, L.Dense(3, name="head")(h), name=kind)


def _data(kind, t=T):
    return _floats(t) if kind == "masking" else _ids(t)


def _few_values(model, levels=6):
    """Round every weight to <= ``levels`` values: K = levels shares it losslessly."""
    for w in model.weights:
        v = keras.ops.convert_to_numpy(w)
        s = float(np.max(np.abs(v))) or 1.0
        w.assign(np.round(v / s * (levels // 2 - 1)) / (levels // 2 - 1) * s)
    return model


def _out(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def _padding_error(model, x):
    """max |output of a padded row - output of the row cut to its true length|."""
    full = _out(model, x)
    return max(float(np.max(np.abs(full[i] - _out(model, x[i:i + 1, :n])[0])))
               for i, n in enumerate(LENGTHS))


def _mask_matters(model, kind, x):
    twin = _model(kind, mask=False)
    twin.set_weights(model.get_weights())
    assert np.max(np.abs(_out(twin, x) - _out(model, x))) > 1e-3, "the mask changes nothing"


@pytest.mark.parametrize("kind", ["lstm", "bilstm", "masking", "mha"])
def test_share_weights_keeps_the_mask(kind):
    model, x = _few_values(_model(kind)), _data(kind)
    _mask_matters(model, kind, x)
    lossless, _, skipped = dkm_tf.share_weights(model, n_clusters=6)
    assert skipped == []
    np.testing.assert_allclose(_out(lossless, x), _out(model, x), atol=1e-6)
    shared, _, _ = dkm_tf.share_weights(model, n_clusters=4)
    assert np.max(np.abs(_out(shared, x) - _out(model, x))) > 1e-4  # K=4 is lossy here
    assert _padding_error(shared, x) < TRUNC_ATOL


@pytest.mark.parametrize("kind", ["bilstm", "masking"])
def test_cluster_fit_strip_keep_the_mask(kind):
    model, x = _few_values(_model(kind)), _data(kind)
    wrapped = dkm_tf.cluster_weights(model, n_clusters=6)
    np.testing.assert_allclose(_out(wrapped, x), _out(model, x), atol=1e-6)
    if kind != "masking":  # a wrapped Embedding(mask_zero=True) still emits its mask
        emb = wrapped.get_layer("cluster_emb")
        mask = keras.ops.convert_to_numpy(emb.compute_mask(x))
        np.testing.assert_array_equal(mask, x != 0)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(emb(x)._keras_mask), x != 0)
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    y = np.random.default_rng(1).normal(size=(len(x), 3)).astype("float32")
    wrapped.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert _padding_error(wrapped, x) < TRUNC_ATOL
    stripped, _ = dkm_tf.strip_clustering(wrapped)
    np.testing.assert_allclose(_out(stripped, x), _out(wrapped, x), atol=1e-6)
    assert _padding_error(stripped, x) < TRUNC_ATOL


class SeqTagger(keras.Model):
    """Subclassed: the mask reaches the LSTM only through the wrapped Embedding's output."""

    def __init__(self, wrap, assignment="hard"):
        super().__init__()
        soft = {"temperature": 1e-3} if assignment == "soft" else {}

        def w(layer):
            return dkm_tf.ClusterWeights(layer, n_clusters=64, assignment=assignment,
                                         **soft) if wrap else layer

        self.emb = w(L.Embedding(V, E, mask_zero=True, name="emb"))
        self.rnn = w(L.LSTM(6, name="rnn"))
        self.head = w(L.Dense(3, name="head"))

    def call(self, x):
        return self.head(self.rnn(self.emb(x)))


@pytest.mark.parametrize("assignment", ["hard", "soft"])
def test_wrapper_in_subclassed_model_propagates_the_mask(assignment):
    x = _ids()
    keras.utils.set_random_seed(0)
    model = SeqTagger(True, assignment)
    model(x[:1])
    assert model.emb.supports_masking
    assert _padding_error(model, x) < TRUNC_ATOL
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, np.ones((len(x), 3), "float32"), epochs=2, batch_size=2, verbose=0)
    assert _padding_error(model, x) < TRUNC_ATOL
    got = model.predict(x, verbose=0)  # the traced (tf.function) path too
    cut = np.concatenate([model.predict(x[i:i + 1, :n], verbose=0)
                          for i, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(got, cut, atol=TRUNC_ATOL)


def test_attach_regularizer_and_fit_keep_the_mask():
    model, x = _model("gap"), _ids()
    dkm_tf.attach_regularizer(model, 4, include_dense=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, np.ones((len(x), 3), "float32"), epochs=2, batch_size=2, verbose=0)
    assert _padding_error(model, x) < TRUNC_ATOL


def _tagger(seed=0):
    """Embedding(mask_zero) -> LSTM(return_sequences) -> Dense: class scores per token."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None,), dtype="int32")
    h = L.LSTM(6, return_sequences=True, name="rnn")(
        L.Embedding(V, E, mask_zero=True, name="emb")(inp))
    model = keras.Model(inp, L.Dense(3, name="tags")(h))
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _prefix_padding_error(model, x):
    full = _out(model, x)
    return max(float(np.max(np.abs(full[i, :n] - _out(model, x[i:i + 1, :n])[0])))
               for i, n in enumerate(LENGTHS))


def test_finetune_sequence_tagger_takes_one_label_per_token():
    # Keras' fit takes (samples, T) class ids for a (samples, T, C) output; finetune and
    # dkm_retrain refused them as "not (samples,) or (samples, 1)" (and hinted argmax(-1))
    x = np.tile(_ids(), (4, 1))
    tags = (x % 3).astype("int32")
    model = _tagger()
    stripped, palettes, _ = dkm_tf.finetune(model, (x, tags), n_clusters=4, epochs=1,
                                            batch_size=8)
    assert palettes and _prefix_padding_error(stripped, _ids()) < TRUNC_ATOL
    dkm_tf.finetune(model, (x, tags[..., None].astype("float32")), n_clusters=4, epochs=0)
    with pytest.raises(ValueError, match=r"Expected labels y of shape \(samples, None\) or "
                                         r"\(samples, None, 1\).*Received: y of shape "
                                         r"\(16, 6, 3\)"):
        dkm_tf.finetune(model, (x, np.eye(3, dtype="float32")[tags]), n_clusters=4)
    with pytest.raises(ValueError, match=r"class labels in \[0, 2\].*from 0 to 5"):
        dkm_tf.dkm_retrain(model, (x, np.where(tags == 2, 5, tags)), n_clusters=4)
    with pytest.raises(ValueError, match="whole numbers"):
        dkm_tf.finetune(model, (x, tags + np.float32(0.5)), n_clusters=4)


def test_per_token_labels_of_another_length_are_refused_before_any_work():
    # review fix: only the rank was compared, so (samples, 4) labels for a (samples, 6, C)
    # output passed the check and Keras failed in fit, after the clustering had started
    keras.utils.set_random_seed(0)
    inp = keras.Input((T,), dtype="int32")
    h = L.LSTM(6, return_sequences=True, name="rnn")(L.Embedding(V, E, name="emb")(inp))
    model = keras.Model(inp, L.Dense(3, name="tags")(h))
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.tile(_ids(), (2, 1))
    for bad in ((x % 3)[:, :4], (x % 3)[:, :1], (x % 3)[:, :4, None]):
        with pytest.raises(ValueError, match=rf"Expected labels y of shape \(samples, {T}\).*"
                                             rf"Received: y of shape \({len(x)}, "):
            dkm_tf.finetune(model, (x, bad), n_clusters=4)
    dkm_tf.finetune(model, (x, x % 3), n_clusters=4, epochs=0)  # the right length is taken


@tf_backend_only()
@pytest.mark.parametrize("kind,fmt", [("gru", "float"), ("gru", "palettized"),
                                      ("mha", "palettized"), ("masking", "int8")])
def test_tflite_file_honours_the_mask_on_padded_rows(kind, fmt, tmp_path):
    model, x = _model(kind, t=T), _data(kind)
    shared, palettes, _ = dkm_tf.share_weights(model, n_clusters=4)
    report = dkm_tf.export.to_tflite(shared, tmp_path / "m.tflite", fmt,
                                     palettes if fmt == "palettized" else None, x)
    want = _out(shared, x)
    got = run_tflite_per_sample(report.path, x)  # batch 1, one padded row at a time
    np.testing.assert_allclose(got, want, atol=1e-5 * np.max(np.abs(want)))
    if report.dynamic_batch:
        with open(report.path, "rb") as f:
            np.testing.assert_allclose(run_tflite_batch(f.read(), x), want,
                                       atol=1e-5 * np.max(np.abs(want)))
    twin = _model(kind, t=T, mask=False)  # what a file that dropped the mask computes
    twin.set_weights(shared.get_weights())
    assert np.max(np.abs(_out(twin, x) - got)) > 1e-3


def _sequence_models():
    """(name, Functional model at fixed T, its recurrent layer) for the traced reader."""
    out = []
    for name, make in [
            ("lstm", lambda: L.LSTM(6, name="rnn")),
            ("gru_seq_state", lambda: L.GRU(6, return_sequences=True, return_state=True,
                                             name="rnn")),
            ("stacked", lambda: L.RNN([L.LSTMCell(4), L.SimpleRNNCell(3)], name="rnn")),
            ("bi_sum", lambda: L.Bidirectional(L.GRU(4, return_sequences=True),
                                               merge_mode="sum", name="rnn"))]:
        keras.utils.set_random_seed(0)
        inp = keras.Input((T,), dtype="int32")
        layer = make()
        h = layer(L.Embedding(V, E, mask_zero=True, name="emb")(inp))
        h = h[0] if isinstance(h, (list, tuple)) else h
        out.append((name, keras.Model(inp, L.Dense(3, name="head")(h)), layer))
    return out


def test_traced_sequence_records_equal_the_keras_readers():
    for name, model, layer in _sequence_models():
        shapes, _ = read_keras_model(model)
        want = [s for s in shapes if s.layer == "rnn"]
        got, reason = sequence_reader.traced_records(layer, (1, T, E), keras)
        assert reason is None and got == want and want, name
        renamed, _ = sequence_reader.traced_records(layer, (1, T, E), keras,
                                                    unique=lambda n: n + "#2")
        assert [r.name for r in renamed] == [r.name + "#2" for r in want]
        layers = list(model._flatten_layers(include_self=False))  # noqa: SLF001
        ids = sequence_reader.traced_sequence_layers(layers, keras)
        assert ids == {id(layer)}, name  # a Bidirectional's two sides are charged with it
    records, reason = sequence_reader.traced_records(layer, (1, T), keras)
    assert records == [] and "not found" in reason


def test_traced_estimate_charges_every_step():
    keras.utils.set_random_seed(0)
    functional = _model("lstm", t=T)
    dynamic = _model("lstm", t=None)
    keras.utils.set_random_seed(0)
    subclassed = SeqTagger(False)
    subclassed(_ids()[:1])
    want = dkm_tf.energy.estimate(functional)
    for model in (dynamic, subclassed):
        got = dkm_tf.energy.estimate(model, input_shape=(T,))
        assert [(r.name, r.macs) for r in got.layers] == [(r.name, r.macs)
                                                          for r in want.layers]
        assert got.paper_total == pytest.approx(want.paper_total, rel=1e-12)
