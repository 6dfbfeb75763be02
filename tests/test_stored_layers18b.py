"""`energy.estimate("m.keras")` of shared models of each clusterable kind (probe 18b).

Measured before (2026-12-06): the palettes a `.keras` file holds were inferred from
`layer.kernel` only, so RNN cells' kernels and recurrent kernels (LSTM, GRU, SimpleRNN,
StackedRNNCells, Bidirectional), separable pointwise kernels and attention projections were
charged as float with no note: a StackedRNNCells(LSTM, GRU) model shared with K = 4 read
28,008.2 (paper metric) from its file vs 17,748.2 with its palettes given; an LSTM 17,680.7 vs
11,080.7; a MultiHeadAttention 11,886.5 vs 8,286.5. The traced (subclassed) reader listed
GroupQueryAttention's repeat of its key / value heads as "unsupported TensorFlow op Tile".
"""

import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

keras = pytest.importorskip("keras")
L = keras.layers


def _seq(shape, *layers, dtype="float32"):
    inp = keras.Input(shape, dtype=dtype)
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


def _mha():
    inp = keras.Input((5, 8))
    return keras.Model(inp, L.MultiHeadAttention(2, 4, name="mha")(inp, inp))


def _gqa():
    inp = keras.Input((5, 8))
    x = L.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2,
                              name="gqa")(inp, inp)
    return keras.Model(inp, x)


_CASES = {  # name: (model, records expected charged from the file)
    "dense": (lambda: _seq((12,), L.Dense(16, name="d1"), L.Dense(4, name="d2")),
              {"d1", "d2"}),
    "conv": (lambda: _seq((8, 8, 3), L.Conv2D(8, 3, name="c")), {"c"}),
    "lstm": (lambda: _seq((5, 6), L.LSTM(8, name="lstm")),
             {"lstm/cell.kernel", "lstm/cell.recurrent_kernel"}),
    "gru": (lambda: _seq((5, 6), L.GRU(8, name="gru")),
            {"gru/cell.kernel", "gru/cell.recurrent_kernel"}),
    "stacked": (lambda: _seq((5, 6), L.RNN([L.LSTMCell(8), L.GRUCell(6)], name="st")),
                {f"st/cell.cells.{i}.{w}" for i in (0, 1) for w in ("kernel",
                                                                     "recurrent_kernel")}),
    "bidirectional": (lambda: _seq((5, 6), L.Bidirectional(L.SimpleRNN(8), name="bi")),
                      {f"bi/{s}_layer.cell.{w}" for s in ("forward", "backward")
                       for w in ("kernel", "recurrent_kernel")}),
    "embedding": (lambda: _seq((5,), L.Embedding(50, 8, name="emb"), L.Flatten(),
                               L.Dense(3, name="d"), dtype="int32"), {"d"}),
    "mha": (_mha, {f"mha/{p}_dense.kernel" for p in ("query", "key", "value", "output")}),
    "gqa": (_gqa, {f"gqa/{p}_dense.kernel" for p in ("query", "key", "value", "output")}),
}


@pytest.mark.parametrize("kind", sorted(_CASES))
def test_keras_file_estimate_equals_the_palettes_estimate(kind, tmp_path):
    build, expected = _CASES[kind]
    keras.utils.set_random_seed(0)
    shared = dkm_tf.share_weights(build(), n_clusters=4)
    path = str(tmp_path / "m.keras")
    shared.model.save(path)
    given = energy.estimate(shared.model, palettes=shared.palettes)
    read = energy.estimate(path)
    charged = {row.shape.name: row.n_clusters for row in read.layers if row.n_clusters}
    assert charged == dict.fromkeys(expected, 4)  # old: the RNN / attention ones missing
    np.testing.assert_allclose(read.paper_total, given.paper_total, rtol=1e-12)
    np.testing.assert_allclose(read.hierarchy_total, given.hierarchy_total, rtol=1e-12)


def test_small_per_channel_depthwise_palette_is_named_not_silently_float(tmp_path):
    keras.utils.set_random_seed(0)
    m = _seq((8, 8, 4), L.SeparableConv2D(8, 3, name="sep"), L.DepthwiseConv2D(3, name="dw"))
    shared = dkm_tf.share_weights(m, n_clusters=4)
    path = str(tmp_path / "m.keras")
    shared.model.save(path)
    read = energy.estimate(path)
    assert {r.shape.name: r.n_clusters for r in read.layers if r.n_clusters} == {
        "sep/pointwise": 4}
    # 3x3 depthwise, per channel K = 4: 57 % of the float bits, no sure sign of a palette;
    # old: charged as float with no word
    (note,) = [n for n in read.notes if n.startswith("charged as float")]
    assert "sep/depthwise: at most 4 distinct" in note and "dw: at most 4 distinct" in note
    from dkm_tf.pipeline import save_palettes  # noqa: PLC0415

    save_palettes(shared.palettes, path)  # the advice works
    beside = energy.estimate(path)
    given = energy.estimate(shared.model, palettes=shared.palettes)
    np.testing.assert_allclose(beside.paper_total, given.paper_total, rtol=1e-12)


def test_same_named_rnns_of_one_size_that_differ_are_not_charged(tmp_path):
    def block(name):
        inp = keras.Input((5, 6))
        return keras.Model(inp, L.LSTM(8, return_sequences=True, name="rnn")(inp), name=name)

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 6))
    a, b = block("a"), block("b")
    m = keras.Model(inp, b(L.Dense(6)(a(inp))))
    cell = a.get_layer("rnn").cell
    levels = np.array([-0.3, -0.1, 0.1, 0.3], "float32")
    rng = np.random.default_rng(0)
    for var in (cell.kernel, cell.recurrent_kernel):
        var.assign(rng.choice(levels, size=var.shape))
    path = str(tmp_path / "m.keras")
    m.save(path)
    read = energy.estimate(path)
    # a/rnn holds 4 values, b/rnn is float: records are matched by name and size, so neither
    assert not any(r.n_clusters for r in read.layers if r.shape.layer == "rnn")
    assert any("2 layers are named 'rnn'" in n and "rnn/cell.kernel" in n for n in read.notes)


def test_traced_group_query_attention_lists_no_tile():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.att = L.GroupQueryAttention(head_dim=4, num_query_heads=4,
                                             num_key_value_heads=2)

        def call(self, x):
            return self.att(x, x)

    m = Sub()
    m(np.zeros((1, 4, 8), "float32"))
    r = energy.estimate(m, input_shape=(4, 8))
    assert r.macs == 2048  # 2,144 of the Functional twin less its 96-MAC head
    assert not [s for s in r.skipped if "unsupported" in s[1]]  # old: "... op Tile" twice


def test_keras_file_of_an_unstripped_clustered_model_charges_its_wrappers(tmp_path):
    keras.utils.set_random_seed(0)
    m = _seq((5, 6), L.LSTM(8, name="lstm"), L.Dense(3, name="d"))
    c = dkm_tf.cluster_weights(m, n_clusters=4)
    path = str(tmp_path / "c.keras")
    c.save(path)
    read = energy.estimate(path)
    given = energy.estimate(c, palettes=dkm_tf.palettes_of(c))
    # old: 17,848.3, all float with no note (the wrappers hold codebooks + indices)
    np.testing.assert_allclose(read.paper_total, given.paper_total, rtol=1e-12)
    assert {r.shape.layer: r.n_clusters for r in read.layers if r.n_clusters} == {
        "lstm": 4, "d": 4}
    assert any("ClusterWeights wrappers stored in the file" in n for n in read.notes)
