"""Tied weights: a clusterable kernel read by another layer than its own.

Measured on the code before these tests (HEAD 4261ebe), tiny LM Embedding(50, 16) -> Dense(16,
tanh) -> output projection tied to the table, K=4, two epochs of fit at batch 1 and 4:

* tied head in a ``Lambda`` (``ops.matmul(h, ops.transpose(emb.embeddings))``):
  ``cluster_weights`` trained and stripped silently, the copy's Lambda reading the *original*
  model's float table: outputs 0.0050 / 0.0042 (hard, batch 1 / 4) off the model that uses
  the clustered table in both places, after strip too, while the palettes claimed
  ``emb/embeddings K=4``; ``share_weights`` (copy) 0.0032 off;
* a decoder layer holding the encoder Dense and reading its kernel, with a get_config that
  serialises it: the copy got its own fresh encoder, trained apart: 0.13 / 0.36 off (hard),
  0.13 / 0.24 (soft); ``share_weights`` kept two copies of the kernel;
* the same layers holding a non-serialisable reference: a TypeError about copying, not
  about the tie;
* ``dkm_retrain`` (3 epochs, lr 1e-2) of a classifier with a Lambda-tied head trained a copy
  whose head still read the original's table: 0.011 off its own table in both uses.

Now both copying entry points refuse before any work, naming the owner, the reader and the way
out. A layer called twice (a ReversibleEmbedding-like Embedding with ``call(x, reverse=True)``)
was and is right: one wrapper, both uses clustered (checked against numpy below), and
``share_weights(inplace=True)`` writes into the variable every reader reads.
"""

import keras
import numpy as np
import pytest
from keras import ops

import dkm_tf
from dkm_tf.graph.tied import tied_reads

V, D, T = 50, 16, 6


@keras.saving.register_keras_serializable(package="test_tied15")
class RevEmbedding(keras.layers.Embedding):
    """keras_hub's ReversibleEmbedding, reduced: reverse=True projects onto the vocabulary."""

    def call(self, inputs, reverse=False):
        if reverse:
            return ops.matmul(inputs, ops.transpose(self.embeddings))
        return super().call(inputs)

    def compute_output_spec(self, inputs, reverse=False):
        if reverse:
            return keras.KerasTensor((*inputs.shape[:-1], self.input_dim), self.compute_dtype)
        return super().compute_output_spec(inputs)


@keras.saving.register_keras_serializable(package="test_tied15")
class TiedHead(keras.layers.Layer):
    """Holds another layer of the model and reads its kernel / table."""

    def __init__(self, other=None, attr="embeddings", **kwargs):
        super().__init__(**kwargs)
        self.other, self.attr = other, attr

    def call(self, h):
        return ops.matmul(h, ops.transpose(getattr(self.other, self.attr)))

    def get_config(self):  # serialises the held layer: a copy gets a fresh one of its own
        return {**super().get_config(), "attr": self.attr,
                "other": keras.saving.serialize_keras_object(self.other)}

    @classmethod
    def from_config(cls, config):
        config["other"] = keras.saving.deserialize_keras_object(config["other"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="test_tied15")
class Composite(keras.layers.Layer):
    """Owns a Dense sublayer it calls itself (not a tie) and adds a loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(4)

    def build(self, shape):
        self.inner.build(shape)

    def call(self, x):
        self.add_loss(ops.sum(self.inner.kernel ** 2))
        return self.inner(x)


def _lm(head):
    keras.utils.set_random_seed(0)
    ids = keras.Input((T,), dtype="int32")
    emb = (RevEmbedding if head == "reversible" else keras.layers.Embedding)(V, D, name="emb")
    h = keras.layers.Dense(D, activation="tanh", name="mix")(emb(ids))
    if head == "reversible":
        out = emb(h, reverse=True)
    elif head == "lambda":
        out = keras.layers.Lambda(lambda t: ops.matmul(t, ops.transpose(emb.embeddings)),
                                  name="tied")(h)
    else:
        out = TiedHead(emb, name="tied")(h)
    return keras.Model(ids, out)


def _autoencoder():
    keras.utils.set_random_seed(0)
    x = keras.Input((12,))
    enc = keras.layers.Dense(D, activation="tanh", name="enc")
    return keras.Model(x, TiedHead(enc, attr="kernel", name="tied")(enc(x)))


def _ids(n):
    rng = np.random.default_rng(1)
    return rng.integers(0, V, (n, T)).astype("int32"), rng.integers(0, V, (n, T)).astype("int32")


def _np_lm(table, mix, ids):
    """The LM in numpy, the given table in both uses."""
    k, b = (ops.convert_to_numpy(w) for w in (mix.kernel, mix.bias))
    return np.tanh(table[ids] @ k + b) @ table.T


TIES = {"lambda": (lambda: _lm("lambda"), "emb", "embeddings", "read"),
        "layer": (lambda: _lm("layer"), "emb", "embeddings", "tracked"),
        "autoencoder": (_autoencoder, "enc", "kernel", "tracked")}


@pytest.mark.parametrize("case", sorted(TIES))
@pytest.mark.parametrize("assignment", ["hard", "soft"])
def test_cluster_weights_refuses_a_tied_reader(case, assignment):
    build, owner, attr, how = TIES[case]
    model = build()
    before = [w.copy() for w in model.get_weights()]
    soft = {"temperature": 0.05} if assignment == "soft" else {}
    with pytest.raises(ValueError, match="tied weights") as err:
        dkm_tf.cluster_weights(model, n_clusters=4, assignment=assignment, **soft)
    msg = str(err.value)
    assert f"{owner!r}.{attr} is {how} by layer 'tied'" in msg
    assert "reverse=True" in msg and "share_weights(model, inplace=True)" in msg
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # nothing done to the model


@pytest.mark.parametrize("case", ["lambda", "autoencoder"])
def test_share_weights_copy_refuses_a_tied_reader_in_place_is_exact(case):
    build, owner, _, _ = TIES[case]
    model = build()
    with pytest.raises(ValueError, match=r"share_weights\(inplace=False\) copies the model"):
        dkm_tf.share_weights(model, n_clusters=4)
    res = dkm_tf.share_weights(model, n_clusters=4, inplace=True)  # the way out
    assert {p.layer_name for p in res.palettes} >= {owner}
    if case == "lambda":
        ids, _ = _ids(3)
        table = next(p.decode() for p in res.palettes if p.layer_name == "emb")
        want = _np_lm(table, model.get_layer("mix"), ids)
        np.testing.assert_allclose(ops.convert_to_numpy(model(ids)), want, atol=1e-5)
        assert len(np.unique(table)) <= 4


@pytest.mark.parametrize("assignment", ["hard", "soft"])
@pytest.mark.parametrize("batch", [1, 4])
def test_layer_called_twice_trains_and_strips_on_the_clustered_table(assignment, batch):
    """A ReversibleEmbedding-like layer: both uses see the shared table, in fit and after."""
    model = _lm("reversible")
    soft = {"temperature": 0.05} if assignment == "soft" else {}
    cm = dkm_tf.cluster_weights(model, n_clusters=4, assignment=assignment, **soft)
    ids, y = _ids(8)
    cm.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cm.fit(ids, y, batch_size=batch, epochs=1, verbose=0)
    wrapper = cm.get_layer("cluster_emb")
    table = ops.convert_to_numpy(wrapper.shared_kernels()["embeddings"])
    mix = cm.get_layer("cluster_mix")
    k = ops.convert_to_numpy(mix.shared_kernels()["kernel"])
    b = ops.convert_to_numpy(mix.layer.bias)
    want = np.tanh(table[ids[:batch]] @ k + b) @ table.T
    got = ops.convert_to_numpy(cm(ids[:batch]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain, palettes = dkm_tf.strip_clustering(cm)
    out = ops.convert_to_numpy(plain(ids[:batch]))
    stripped = ops.convert_to_numpy(plain.get_layer("emb").embeddings)
    np.testing.assert_allclose(out, _np_lm(stripped, plain.get_layer("mix"), ids[:batch]),
                               atol=1e-5)
    if assignment == "hard":  # soft snaps to the nearest centroid at strip (documented)
        np.testing.assert_allclose(out, got, atol=1e-6)
    assert [p.layer_name for p in palettes].count("emb") == 1
    assert len(np.unique(stripped)) <= 4


def test_no_tie_in_ordinary_models():
    """No false alarm: shared layers, nested models, RNN, attention, a composite layer."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 8))
    shared = keras.layers.Dense(8, name="shared")
    x = shared(shared(inp))
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MultiHeadAttention(2, 4)(x, x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))(x)
    x = Composite(name="comp")(x)
    nested = keras.Sequential([keras.Input((6, 4)), keras.layers.Conv1D(3, 2, name="conv")])
    model = keras.Model(inp, nested(x))
    bn = model.layers[3]
    stats = [ops.convert_to_numpy(v).copy() for v in bn.non_trainable_weights]
    n_losses = len(model.losses)
    assert tied_reads(model) == []
    assert tied_reads(_lm("reversible")) == []
    for v, s in zip(bn.non_trainable_weights, stats):  # the audit updated nothing
        np.testing.assert_array_equal(ops.convert_to_numpy(v), s)
    assert len(model.losses) == n_losses  # its add_loss went to the audit's scope
    with pytest.warns(UserWarning, match="comp .Composite"):  # not clustered inside: said
        cm, report = dkm_tf.cluster_weights(model, n_clusters=4, return_report=True)
    assert {n for n, _, _ in report.clustered} >= {"shared", "conv"}


def test_tied_reads_lists_owner_reader_and_how():
    assert tied_reads(_lm("lambda")) == [("emb", "embeddings", "tied", "reads")]
    assert tied_reads(_lm("layer")) == [("emb", "embeddings", "tied", "tracks")]
    assert tied_reads(_autoencoder()) == [("enc", "kernel", "tied", "tracks")]


def test_dkm_retrain_refuses_a_tied_reader_before_training():
    keras.utils.set_random_seed(0)
    ids = keras.Input((T,), dtype="int32")
    emb = keras.layers.Embedding(V, D, name="emb")
    h = keras.layers.Dense(D, activation="tanh", name="mix")(
        keras.layers.GlobalAveragePooling1D()(emb(ids)))
    out = keras.layers.Lambda(lambda t: ops.matmul(t, ops.transpose(emb.embeddings)),
                              name="tied")(h)
    model = keras.Model(ids, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, _ = _ids(8)
    with pytest.raises(ValueError, match="'emb'.embeddings is read by layer 'tied'"):
        dkm_tf.dkm_retrain(model, (x, np.arange(8) % V), n_clusters=4, epochs=1)


def test_energy_lists_the_reverse_call_of_a_tied_embedding_as_not_charged():
    """Measured before: the ``reverse=True`` call (a 16 x 50 matmul per token, 4,800 MACs per
    sample of 6 tokens) was listed as "a table lookup, no MACs", like the lookup call."""
    report = dkm_tf.energy.estimate(_lm("reversible"))
    reasons = dict(report.skipped)
    assert reasons["emb"] == "Embedding: a table lookup, no MACs"
    assert "not a table lookup" in reasons["emb#2"] and "not charged" in reasons["emb#2"]
    assert f"(None, {T}, {D}) -> (None, {T}, {V})" in reasons["emb#2"]


class WithLayersAttr(keras.layers.Layer):
    """A custom block keeping its own sublayers in a public ``layers`` list."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.layers = [keras.layers.Dense(8, name="in1"), keras.layers.Dense(8, name="in2")]

    def call(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_block_reading_its_own_public_sublayers_is_no_tie():
    """Review of b969289: refused as "'in1'.kernel is tracked by layer 'block'"; worked
    before (the sublayers' kernels clustered by share_weights, left by cluster_weights)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8,))
    model = keras.Model(x, keras.layers.Dense(2, name="out")(WithLayersAttr(name="block")(x)))
    assert tied_reads(model) == []
    shared = dkm_tf.share_weights(model, n_clusters=4, verbose=False)
    assert sorted(p.layer_name for p in shared.palettes) == ["in1", "in2", "out"]
    with pytest.warns(UserWarning, match="block"):
        dkm_tf.cluster_weights(model, n_clusters=4)


def test_a_user_module_named_keras_something_is_audited(tmp_path, monkeypatch):
    """Review of b969289: layers of any module starting with "keras" (keras_hub, keras_cv, a
    user's keras_blocks.py) were never called by the check: a tie through an untracked
    reference went unseen."""
    (tmp_path / "keras_blocks15.py").write_text(
        "import keras\nfrom keras import ops\n\n\n"
        "class TiedOut(keras.layers.Layer):\n"
        "    def __init__(self, emb=None, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self._get = lambda: emb  # an untracked reference\n\n"
        "    def call(self, h):\n"
        "        return ops.matmul(h, ops.transpose(self._get().embeddings))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import keras_blocks15  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    ids = keras.Input((T,), dtype="int32")
    emb = keras.layers.Embedding(V, D, name="emb")
    h = keras.layers.Dense(D, activation="tanh", name="mix")(emb(ids))
    model = keras.Model(ids, keras_blocks15.TiedOut(emb, name="tied")(h))
    assert tied_reads(model) == [("emb", "embeddings", "tied", "reads")]
