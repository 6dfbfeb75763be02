"""GroupQueryAttention and keras.layers.Pipeline through clustering (probe 18b).

Measured before (2026-12-06): `share_weights`, `cluster_weights` and `attach_regularizer`
skipped a GroupQueryAttention ("layer type not supported") while they cluster a
MultiHeadAttention's four projections: its q/k/v/output EinsumDense kernels (most of the
model's weights) stayed float. `cluster_weights` skipped a `keras.layers.Pipeline` of Dense
layers ("layer type not supported") while `share_weights` and `attach_regularizer` clustered
inside it.
"""

import warnings

import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy
from dkm_tf.graph.clusterable import get_weight

keras = pytest.importorskip("keras")
L = keras.layers
_PROJ = ("query_dense.kernel", "key_dense.kernel", "value_dense.kernel", "output_dense.kernel")


def _gqa_model(use_gate=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 8))
    x = L.GroupQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=2,
                              use_gate=use_gate, name="att")(inp, inp)
    return keras.Model(inp, L.Dense(3, name="out")(L.Flatten()(x)))


def _x(n, shape=(5, 8)):
    return np.random.RandomState(1).randn(n, *shape).astype("float32")


def _check_palettes(model, palettes, layers):
    for p in palettes:
        w = np.asarray(get_weight(layers[p.layer_name], p.weight_name))
        np.testing.assert_array_equal(w, p.decode())
        assert len(np.unique(w)) <= 4


@pytest.mark.parametrize("use_gate", [False, True])
def test_share_weights_clusters_group_query_attention(use_gate, tmp_path):
    m = _gqa_model(use_gate)
    shared = dkm_tf.share_weights(m, n_clusters=4)
    names = ("gate_dense.kernel",) * use_gate + _PROJ
    # old: only out/kernel; ('att', 'GroupedQueryAttention is not a supported kernel layer')
    assert [(p.layer_name, p.weight_name) for p in shared.palettes] == [
        *(("att", n) for n in names), ("out", "kernel")]
    assert shared.skipped == []
    layers = {n: shared.model.get_layer(n) for n in ("att", "out")}
    _check_palettes(shared.model, shared.palettes, layers)
    e = energy.estimate(shared.model, palettes=shared.palettes)
    assert {r.shape.name: r.n_clusters for r in e.layers if r.n_clusters} == {
        **{f"att/{n}": 4 for n in names}, "out": 4}
    assert e.paper_total < e.baseline.paper_total
    for batch in (1, 3):
        path = tmp_path / f"g{batch}.tflite"  # to_tflite verifies the file against Keras
        dkm_tf.export.to_tflite(shared.model, str(path), palettes=shared.palettes,
                                sample_inputs=_x(batch))
    f = energy.estimate(str(tmp_path / "g1.tflite"))
    assert sorted(r.n_clusters for r in f.layers if r.n_clusters) == [4] * (len(names) + 1)


def test_cluster_fit_strip_and_attach_on_group_query_attention():
    m = _gqa_model()
    x, y = _x(6), np.arange(6) % 3
    c, report = dkm_tf.cluster_weights(m, n_clusters=4, return_report=True)
    assert [n for n, _, _ in report.clustered] == ["att", "out"] and report.skipped == ()
    c.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    c.fit(x, y, epochs=1, batch_size=3, verbose=0)
    plain, palettes = dkm_tf.strip_clustering(c)
    assert [p.weight_name for p in palettes] == [*_PROJ, "kernel"]
    _check_palettes(plain, palettes, {n: plain.get_layer(n) for n in ("att", "out")})
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(c(x)), rtol=1e-5, atol=1e-6)
    m2 = _gqa_model()
    with pytest.warns(UserWarning, match=r"\['att'\].*not saved with the model"):
        regs = dkm_tf.attach_regularizer(m2, 4, include_dense=True)  # old: silent loss on save
    assert set(regs) == {f"att/{n}/kernel" for n in ("query", "key", "value",
                                                     "attention_output")} | {"out/kernel"}
    assert regs.skipped == () and len(m2.losses) == 5  # old: att skipped, 1 loss


def test_cluster_weights_wraps_the_layers_of_a_pipeline(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = L.Pipeline([L.Dense(6, activation="relu", name="pd"), L.Dense(5, name="pd2")],
                   name="pipe")(inp)
    m = keras.Model(inp, L.Dense(3, name="out")(h))
    x, y = _x(6, (8,)), np.arange(6) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # old: "left 1 layer(s) ... pipe"
        c, report = dkm_tf.cluster_weights(m, n_clusters=4, return_report=True)
    assert [n for n, _, _ in report.clustered] == ["pd", "pd2", "out"] and report.skipped == ()
    assert all(isinstance(la, dkm_tf.ClusterWeights) for la in c.get_layer("pipe").layers)
    assert [p.n_clusters for p in dkm_tf.palettes_of(c)] == [4, 4, 4]  # k-means ran
    c.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    c.fit(x, y, epochs=1, batch_size=3, verbose=0)
    path = str(tmp_path / "c.keras")
    c.save(path)
    np.testing.assert_array_equal(np.asarray(dkm_tf.load_model(path)(x)), np.asarray(c(x)))
    plain, palettes = dkm_tf.strip_clustering(c)
    inner = {la.name: la for la in plain.get_layer("pipe").layers}
    assert [type(la).__name__ for la in inner.values()] == ["Dense", "Dense"]
    _check_palettes(plain, palettes, {**inner, "out": plain.get_layer("out")})
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(c(x)), rtol=1e-5, atol=1e-6)
    e = energy.estimate(plain, palettes=palettes)
    assert {r.shape.name: r.n_clusters for r in e.layers} == {"pd": 4, "pd2": 4, "out": 4}


def test_custom_layer_holding_a_group_query_attention_gets_working_advice():
    class Block(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.att = L.GroupQueryAttention(head_dim=4, num_query_heads=4,
                                             num_key_value_heads=2)

        def call(self, x):
            return self.att(x, x)

    class Advised(Block):  # the method the skip reason gives, as written there
        def get_clusterable_weights(self):
            return [("att.query_dense.kernel", self.att._query_dense.kernel, "einsum:1,2"),
                    ("att.key_dense.kernel", self.att._key_dense.kernel, "einsum:1,2"),
                    ("att.value_dense.kernel", self.att._value_dense.kernel, "einsum:1,2"),
                    ("att.output_dense.kernel", self.att._output_dense.kernel, "einsum:2")]

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 8))
    m = keras.Model(inp, L.Dense(2, name="out")(Block(name="blk")(inp)))
    (reason,) = [r for n, r in dkm_tf.share_weights(m, 4).skipped if n == "blk"]
    assert "self.att._query_dense.kernel, 'einsum:1,2')" in reason  # old: no weights named
    m2 = keras.Model(inp, Advised(name="blk")(inp))
    shared = dkm_tf.share_weights(m2, 4)
    assert [p.weight_name for p in shared.palettes] == [f"att.{p}" for p in _PROJ]
    _check_palettes(shared.model, shared.palettes, {"blk": shared.model.get_layer("blk")})
