"""Energy of subclassed models built from `ClusterWeights` wrappers (read by tracing).

A wrapper runs its layer's op on a computed kernel (``codebook[indices]``), which the traced
reader could not attribute to a layer: the conv was named by its name scope
(``net_1/cluster_c1_1/c1_1``, no palette's name) and the dense MatMul was only listed in
`skipped` ("matmul without a variable kernel"), its MACs not charged. The wrappers are now
read as their wrapped layers, as the Functional reader reads them: both layers are charged
(hand count: conv 6·6·8·3·3 = 2,592 MACs, dense 288·4 = 1,152) under the names their
palettes carry, the same records as the unwrapped twin and the same energy as a Functional
model of the same wrappers.
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

L = keras.layers
CONV_MACS, DENSE_MACS = 6 * 6 * 8 * 3 * 3, 288 * 4  # 2,592 and 1,152
WANT = [("c1", "c1", "conv", CONV_MACS), ("fc", "fc", "dense", DENSE_MACS)]


class _Net(keras.Model):
    def __init__(self, wrap=True, assignment="hard", **kw):
        super().__init__(**kw)
        extra = {"temperature": 0.05} if assignment == "soft" else {}

        def w(layer, **k):
            return dkm_tf.ClusterWeights(layer, n_clusters=4, assignment=assignment, **extra,
                                         **k) if wrap else layer

        self.c1 = w(L.Conv2D(8, 3, activation="relu", name="c1"))
        self.f = L.Flatten()
        self.d = w(L.Dense(4, name="fc"))

    def call(self, x):
        return self.d(self.f(self.c1(x)))


def _net(wrap=True, assignment="hard"):
    keras.utils.set_random_seed(0)
    model = _Net(wrap, assignment, name="net")
    model(np.zeros((1, 8, 8, 1), np.float32))
    return model


def _records(report):
    return [(r.shape.name, r.shape.layer, r.shape.kind, r.shape.macs) for r in report.layers]


@pytest.mark.parametrize("assignment", ["hard", "soft"])
def test_subclassed_cluster_weights_charges_both_layers(assignment):
    model = _net(assignment=assignment)
    rep = energy.estimate(model, input_shape=(8, 8, 1))
    # old: [("net_1/cluster_c1_1/c1_1", ..., 2592)] only; skipped held the fc MatMul ("matmul
    # without a variable kernel") and the gather's IdentityN / nested calls
    assert _records(rep) == WANT
    assert rep.skipped == ()
    assert rep.macs == CONV_MACS + DENSE_MACS
    plain = energy.estimate(_net(wrap=False), input_shape=(8, 8, 1))
    assert _records(rep) == _records(plain)  # read as its unwrapped twin


def test_subclassed_cluster_weights_estimate_with_its_palettes():
    model = _net()
    palettes = dkm_tf.palettes_of(model)
    assert sorted(p.layer_name for p in palettes) == ["c1", "fc"]
    # old: ValueError "... names layer 'c1' ... Known layers: ['net_1/cluster_c1_1/c1_1']"
    rep = energy.estimate(model, input_shape=(8, 8, 1), palettes=palettes)
    assert [(r.shape.name, r.n_clusters) for r in rep.layers] == [("c1", 4), ("fc", 4)]
    # the same wrappers in a Functional model (read layer by layer, not traced), batch 1
    i = keras.Input((8, 8, 1), batch_size=1)
    functional = keras.Model(i, model.d(model.f(model.c1(i))))
    ref = energy.estimate(functional, palettes=dkm_tf.palettes_of(functional))
    assert [(r.shape.layer, r.shape.kind, r.shape.macs, r.n_clusters) for r in ref.layers] == \
        [(r.shape.layer, r.shape.kind, r.shape.macs, r.n_clusters) for r in rep.layers]
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)
    assert rep.hierarchy_total == pytest.approx(ref.hierarchy_total, rel=1e-12)
    assert rep.baseline.paper_total == pytest.approx(ref.baseline.paper_total, rel=1e-12)


def test_wrappers_restored_after_reading_and_after_a_failed_trace():
    model = _net()
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    want = np.asarray(model(x))
    with pytest.raises(ValueError, match="Could not trace model"):
        energy.estimate(model, input_shape=(2, 2, 1))  # a 3x3 conv on 2x2: the trace fails
    assert _records(energy.estimate(model, input_shape=(8, 8, 1))) == WANT  # old: conv only
    for wrapper in (model.c1, model.d):
        assert "call" not in vars(wrapper)
    np.testing.assert_array_equal(np.asarray(model(x)), want)  # still the clustered kernels
    decoded = model.d.shared_kernels()["kernel"]
    assert len(np.unique(np.asarray(decoded))) <= 4


def test_dynamic_functional_with_wrappers_traced():
    keras.utils.set_random_seed(0)
    i = keras.Input((None, None, 1))
    h = dkm_tf.ClusterWeights(L.Conv2D(8, 3, name="c1"), n_clusters=4)(i)
    model = keras.Model(i, dkm_tf.ClusterWeights(L.Dense(4, name="fc"), n_clusters=4)(h))
    model(np.zeros((1, 8, 8, 1), np.float32))
    rep = energy.estimate(model, input_shape=(8, 8, 1), palettes=dkm_tf.palettes_of(model))
    # dense over 6x6 positions of 8 channels: 36 * 8 * 4
    assert _records(rep) == [("c1", "c1", "conv", CONV_MACS),
                             ("fc", "fc", "dense", 6 * 6 * 8 * 4)]  # old: conv only
    assert rep.skipped == ()


def test_subclassed_nested_in_functional_with_wrappers():
    inner = _net()
    i = keras.Input((8, 8, 1))
    model = keras.Model(i, inner(i))
    rep = energy.estimate(model, palettes=dkm_tf.palettes_of(model))
    assert _records(rep) == WANT  # old: conv only, named by its scope
    assert [r.n_clusters for r in rep.layers] == [4, 4]


def test_shared_wrapper_called_twice_in_a_subclassed_model():
    class Twice(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.d = dkm_tf.ClusterWeights(L.Dense(8, name="fc"), n_clusters=4)

        def call(self, x):
            return self.d(self.d(x))

    keras.utils.set_random_seed(0)
    model = Twice(name="twice")
    model(np.zeros((1, 8), np.float32))
    rep = energy.estimate(model, input_shape=(8,), palettes=dkm_tf.palettes_of(model))
    # old: no records; skipped: both MatMuls ("matmul without a variable kernel")
    assert _records(rep) == [("fc", "fc", "dense", 64), ("fc#2", "fc", "dense", 64)]
    assert [r.n_clusters for r in rep.layers] == [4, 4]
