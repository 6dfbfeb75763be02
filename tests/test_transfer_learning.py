"""Transfer learning with cluster_weights: a layer's own regularizer and constraint while
clustered, frozen layers and nested frozen bases (flags kept, unfreezing works), and the
copy of a Lambda layer holding a Python lambda. Found by an adversarial probe;
backend-neutral (also JAX)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import to_numpy  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.training.clustering import cluster_weights, strip_clustering  # noqa: E402

L = keras.layers


def _data(n=64, d_in=8, d_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d_in)).astype("float32"),
            rng.standard_normal((n, d_out)).astype("float32"))


def _frozen_base_model():
    """A frozen nested base (one Dense) under a trainable head: stage 1 of transfer learning."""
    keras.utils.set_random_seed(0)
    base_in = keras.Input((8,))
    base = keras.Model(base_in, L.Dense(16, name="d1")(base_in), name="base")
    base.trainable = False
    inp = keras.Input((8,))
    return keras.Model(inp, L.Dense(3, name="head")(base(inp, training=False)))


def _fit(model, x, y, epochs=2, lr=1e-2):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)


def test_kernel_regularizer_applies_to_the_shared_kernel_in_fit():
    """The replaced kernel is non-trainable, so Keras dropped its L2 penalty: ``losses`` was
    []. The wrapper now applies it to codebook[indices]; a k-means penalty (attach_regularizer)
    on the same kernel is not applied (the kernel is clustered), its base L2 is."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = L.Dense(8, kernel_regularizer=keras.regularizers.L2(0.5), name="l2")(inp)
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    x, y = _data()
    dkm_tf.attach_regularizer(model, 4, lam=1.0, include_dense=True, layers=["l2"])
    wrapped = cluster_weights(model, 4)
    wrapper = wrapped.get_layer("cluster_l2")
    wrapped(x[:2])
    shared = to_numpy(wrapper.shared_kernels()["kernel"])
    expected = 0.5 * float(np.sum(shared ** 2))
    assert [pytest.approx(float(to_numpy(v)), rel=1e-5) for v in wrapped.losses] == [expected]
    # the trainer adds it to the loss it reports (and trains on)
    wrapped.compile(optimizer="sgd", loss="mse")
    total = wrapped.evaluate(x, y, batch_size=len(x), verbose=0)
    mse = float(np.mean((to_numpy(wrapped(x)) - y) ** 2))
    assert total == pytest.approx(mse + expected, rel=1e-4)
    # a frozen wrapper adds none, as Keras does for frozen layers
    wrapper.trainable = False
    wrapped(x[:2])
    assert wrapped.losses == []


def test_nonneg_constraint_holds_through_fine_tuning():
    """The optimizer updated only the codebook, which had no constraint: the NonNeg kernel
    went negative. The codebook now carries it."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    out = L.Dense(4, use_bias=False, kernel_constraint=keras.constraints.NonNeg(), name="nn")(inp)
    model = keras.Model(inp, out)
    layer = model.get_layer("nn")
    layer.kernel.assign(np.abs(to_numpy(layer.kernel)) + 0.1)
    x = np.random.default_rng(0).standard_normal((64, 4)).astype("float32")
    wrapped = cluster_weights(model, 3)
    assert isinstance(wrapped.get_layer("cluster_nn")._slots[0].codebook.constraint,
                      keras.constraints.NonNeg)
    _fit(wrapped, x, -3.0 * x, epochs=3, lr=0.1)  # the loss pulls every weight below zero
    plain, _ = strip_clustering(wrapped)
    kernel = to_numpy(plain.get_layer("nn").kernel)
    assert kernel.min() >= 0.0
    assert len(np.unique(kernel)) <= 3


def test_norm_constraint_warns_that_it_is_not_enforced():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    h = L.Dense(8, kernel_constraint=keras.constraints.MaxNorm(0.5), name="mx")(inp)
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    with pytest.warns(UserWarning, match=r"'mx'.*MaxNorm.*not enforced while it is clustered"):
        cluster_weights(model, 4)


def test_unfreezing_a_wrapper_keeps_the_replaced_kernel_frozen():
    """Keras' trainable setter made the replaced kernel trainable again: every fit warned
    'Gradients do not exist for variables [d1/kernel]'. A latent kernel still follows."""
    wrapped = cluster_weights(_frozen_base_model(), 4)
    base = wrapped.get_layer("base")
    wrapper = base.get_layer("cluster_d1")
    base.trainable = False
    base.trainable = True
    for layer in base.layers:
        layer.trainable = True
    trainable = {v.path for v in wrapped.trainable_weights}
    assert wrapper.layer.kernel.path not in trainable
    assert wrapper._slots[0].codebook.path in trainable
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(wrapped, x, y, epochs=1)
    latent = cluster_weights(_frozen_base_model(), 4, latent=True).get_layer("base")
    latent.trainable = True
    assert latent.get_layer("cluster_d1").layer.kernel.trainable


def test_nested_frozen_base_keeps_its_flag_and_unfreezes():
    """clone_model(recursive=True) dropped the nested model's trainable=False, so the stage-2
    ``base.trainable = True`` was a no-op and the base's codebooks never trained."""
    model = _frozen_base_model()
    wrapped = cluster_weights(model, 4)
    assert wrapped.get_layer("base").trainable is False
    assert strip_clustering(wrapped)[0].get_layer("base").trainable is False
    assert dkm_tf.share_weights(model, 4).model.get_layer("base").trainable is False
    wrapper = wrapped.get_layer("base").get_layer("cluster_d1")
    codebook = wrapper._slots[0].codebook
    assert codebook.path not in {v.path for v in wrapped.trainable_weights}
    wrapped.get_layer("base").trainable = True
    assert codebook.path in {v.path for v in wrapped.trainable_weights}
    before = to_numpy(codebook).copy()
    _fit(wrapped, *_data())
    assert np.abs(to_numpy(codebook) - before).max() > 1e-4


def test_report_marks_frozen_layers():
    _, report = cluster_weights(_frozen_base_model(), 4, return_report=True)
    frozen = {name: s["frozen"] for name, _, s in report.clustered}
    assert frozen == {"d1": True, "head": False}
    lines = {line.split()[1]: line for line in report.summary().splitlines()[1:]}
    assert "frozen (trainable=False)" in lines["d1"]
    assert "frozen" not in lines["head"]


def test_lambda_layer_of_a_python_lambda_is_copied_with_its_live_function():
    # old: TypeError "Layer 'lam' (Lambda) cannot be copied from its config: ... safe mode"
    # for every copy (cluster_weights, share_weights, strip_clustering); now the copy reuses
    # the user's in-memory lambda (nothing decoded), outputs equal at lossless K
    keras.utils.set_random_seed(0)
    fn = lambda t: t * 2.0  # noqa: E731
    inp = keras.Input((8,))
    h = L.Lambda(fn, name="lam")(L.Dense(8, name="d")(inp))
    model = keras.Model(inp, L.Dense(3, name="head")(h))
    x = np.random.default_rng(0).standard_normal((3, 8)).astype("float32")
    want = to_numpy(model(x))
    clustered = cluster_weights(model, 64)  # >= 64 weights per kernel: lossless
    stripped, _ = strip_clustering(clustered)
    shared = dkm_tf.share_weights(model, 64).model
    for copy in (clustered, stripped, shared):
        assert copy.get_layer("lam").function is fn
        assert copy.get_layer("lam") is not model.get_layer("lam")
        for xs in (x[:1], x):
            np.testing.assert_allclose(to_numpy(copy(xs)), want[:len(xs)], rtol=0, atol=1e-6)


def _conv_pair(**conv_kwargs):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 4))
    x = L.Conv2D(6, 3, name="c1", **conv_kwargs)(inp)
    x = L.Conv2D(6, 3, name="c2", **conv_kwargs)(x)
    return keras.Model(inp, L.Dense(2)(L.Flatten()(x)))


def test_kernel_clustering_applies_the_regularizer_and_stays_frozen_when_unfrozen():
    """unit="kernel" (ClusterKernels) replaces the conv kernel as ClusterWeights does: its
    regularizer applies to the shared kernel, unfreezing leaves the replaced kernel out."""
    from dkm_tf.training.kernel_clustering import ClusterKernels

    model = _conv_pair(kernel_regularizer=keras.regularizers.L2(0.5))
    cm = cluster_weights(model, 4, unit="kernel", codebook="shared")
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    cm(x)
    wrappers = [lay for lay in cm.layers if isinstance(lay, ClusterKernels)]
    assert len(wrappers) == 2 and len(cm.losses) == 2
    books = {lay.name: lay for lay in cm.layers if type(lay).__name__ == "KernelCodebook"}
    for w, loss in zip(wrappers, cm.losses):
        book = books[next(iter(books))] if len(books) == 1 else books[w.codebook_id]
        kernel = to_numpy(w.shared_kernel(book.codebook))
        assert float(to_numpy(loss)) == pytest.approx(0.5 * float(np.sum(kernel ** 2)),
                                                      rel=1e-5)
    for w in wrappers:
        w.trainable = False
        w.trainable = True
        assert not w.layer.kernel.trainable
        assert all(v is not w.layer.kernel for v in cm.trainable_weights)


def test_kernel_clustering_warns_about_a_kernel_constraint():
    with pytest.warns(UserWarning, match="not enforced while it is clustered with unit='kernel'"):
        cluster_weights(_conv_pair(kernel_constraint=keras.constraints.NonNeg()), 4,
                        unit="kernel", codebook="shared")
