"""preserve_sparsity: a pruned model's exact zeros survive clustering, fine-tuning and export.

The zeros get a fixed codebook entry 0 on top of K centroids of the non-zero weights
(dkm_tf.core.codebook). Checked against numpy references: the k-means of the non-zero values,
the zero mask before and after 100 training steps, the penalty and its gradient, and the
index / codebook bit counts with K + 1 entries.
"""

import math
import os

import keras
import numpy as np
import pytest
from testing import gradients, tf_backend_only, to_numpy

import dkm_tf
import dkm_tf.export as ex
from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.kmeans import assignment_entropy, cluster_values
from dkm_tf.core.palette import Palette, cluster_tensor, size_report
from dkm_tf.training.regularizer import SpectralKMeansRegularizer

L = keras.layers
K = 4


def pruned_model(seed=0, structured=False):
    """conv + dense, 50 % of every kernel set to exactly zero; ``{layer name: zero mask}``."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, name="conv"),
                              L.Flatten(name="flat"), L.Dense(10, name="fc")], name="pruned")
    rng = np.random.default_rng(seed)
    masks = {}
    for layer in (model.get_layer("conv"), model.get_layer("fc")):
        k = to_numpy(layer.kernel)
        if structured and k.ndim == 4:  # whole kernel rows (last spatial axis) zero
            mask = np.broadcast_to(rng.random((3, 1, 1, 8)) < 0.5, k.shape).copy()
        else:
            mask = rng.random(k.shape) < 0.5
        k[mask] = 0.0
        layer.kernel.assign(k)
        masks[layer.name] = mask
    return model, masks


def data(n=800, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def shared(wrapper):
    return keras.ops.convert_to_numpy(wrapper.shared_kernels()["kernel"])


def wrappers(model):
    return {w.layer.name: w for w in model.layers if isinstance(w, dkm_tf.ClusterWeights)}


@pytest.fixture(scope="module")
def finetuned():
    """cluster_weights(preserve_sparsity=True), then 100 Adam steps on random data."""
    model, masks = pruned_model()
    wrapped = dkm_tf.cluster_weights(model, K, preserve_sparsity=True)
    before = {n: (shared(w), keras.ops.convert_to_numpy(w._slots[0].codebook))
              for n, w in wrappers(wrapped).items()}
    x, y = data()
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 100 steps
    return model, masks, wrapped, before, x


def test_initial_codebook_is_kmeans_of_nonzero_values_plus_zero(finetuned):
    model, masks, _, before, _ = finetuned
    for name, (kernel, codebook) in before.items():
        w = to_numpy(model.get_layer(name).kernel)
        ref_cb, _ = cluster_values(w[w != 0], K)  # k-means of the non-zero values only
        assert codebook.shape == (1, K + 1, 1)
        assert codebook[0, 0, 0] == 0.0
        np.testing.assert_allclose(np.sort(codebook[0, 1:, 0]), np.sort(ref_cb), rtol=1e-6)
        np.testing.assert_array_equal(kernel == 0, masks[name])


def test_zeros_stay_exactly_zero_through_finetuning(finetuned):
    _, masks, wrapped, before, _ = finetuned
    for name, w in wrappers(wrapped).items():
        kernel = shared(w)
        np.testing.assert_array_equal(kernel == 0, masks[name])  # the same mask
        assert np.unique(kernel[kernel != 0]).size <= K
        cb = keras.ops.convert_to_numpy(w._slots[0].codebook)
        assert cb[0, 0, 0] == 0.0  # the zero entry never trained
        assert np.max(np.abs(cb[0, 1:] - before[name][1][0, 1:])) > 1e-3  # the others did


def test_without_preserve_sparsity_the_zeros_move():
    """The measured problem: plain k-means puts the zeros in clusters with non-zero centres."""
    model, masks = pruned_model()
    wrapped = dkm_tf.cluster_weights(model, K)
    for name, w in wrappers(wrapped).items():
        assert not np.array_equal(shared(w) == 0, masks[name])


def test_strip_gives_palettes_with_the_zero_entry(finetuned):
    _, masks, wrapped, _, x = finetuned
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    assert [p.name for p in palettes] == ["conv/kernel", "fc/kernel"]
    for p in palettes:
        kernel = to_numpy(plain.get_layer(p.layer_name).kernel)
        assert p.preserve_sparsity and p.requested_clusters == K and p.n_clusters <= K + 1
        assert np.all(p.codebook[:, 0] == 0)
        np.testing.assert_array_equal(p.decode(), kernel)
        np.testing.assert_array_equal(  # indices enumerate units (out, in, kh, kw)
            p.indices == 0, units_lib.to_units(masks[p.layer_name], p.layout)[..., 0])
    np.testing.assert_allclose(plain.predict(x[:16], verbose=0),
                               wrapped.predict(x[:16], verbose=0), atol=1e-5)
    assert all(p.preserve_sparsity for p in dkm_tf.palettes_of(wrapped))


@tf_backend_only()
def test_palettized_export_verifies(finetuned, tmp_path):
    """Three ways: outputs (litert, run here), stored index tensors, file size."""
    _, _, wrapped, _, x = finetuned
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    path = tmp_path / "pruned.tflite"
    report = ex.to_tflite(plain, str(path), format="palettized", palettes=palettes,
                          sample_inputs=x[:8], keep_float=None)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    ref = plain.predict(x[:8], verbose=0)
    for s, r in zip(x[:8], ref):
        it.set_tensor(i, s[None])
        it.invoke()
        np.testing.assert_allclose(it.get_tensor(o)[0], r, atol=1e-5)
    info = ex.inspect_tflite(str(path))
    assert sorted(p["K"] for p in info.palettized) == sorted(p.n_clusters for p in palettes)
    assert {p["storage"] for p in info.palettized} == {"int16"}
    assert os.path.getsize(path) == report.bytes < report.float_bytes


def test_reassign_keeps_zeros():
    model, masks = pruned_model()
    wrapped = dkm_tf.cluster_weights(model, K, latent=True, preserve_sparsity=True)
    x, y = data(160)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.5),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    wrapped.fit(x, y, batch_size=8, epochs=1, verbose=0,
                callbacks=[dkm_tf.ReassignClusters(every_n_epochs=1)])
    for name, w in wrappers(wrapped).items():
        assert w.reassign_indices() >= 0
        np.testing.assert_array_equal(shared(w) == 0, masks[name])
        latent = keras.ops.convert_to_numpy(w._slots[0].variable)
        assert np.any(latent[masks[name]] != 0)  # the latent moved, the shared zero did not


def test_share_weights_keeps_the_mask():
    model, masks = pruned_model()
    clustered, palettes, _ = dkm_tf.share_weights(model, K, preserve_sparsity=True)
    for p in palettes:
        kernel = to_numpy(clustered.get_layer(p.layer_name).kernel)
        orig = to_numpy(model.get_layer(p.layer_name).kernel)
        np.testing.assert_array_equal(kernel == 0, masks[p.layer_name])
        assert np.unique(kernel[kernel != 0]).size == K and p.n_clusters == K + 1
        ref_cb, ref_idx = cluster_values(orig[orig != 0], K, seed=0 if p.layer_name == "conv"
                                         else 2)  # share_weights seeds layer i with seed + i
        np.testing.assert_allclose(kernel[kernel != 0], ref_cb[ref_idx], rtol=1e-6)
        np.testing.assert_array_equal(p.decode(), kernel)
    per_channel = dkm_tf.share_weights(model, K, granularity="per_channel",
                                       preserve_sparsity=True)
    for p in per_channel.palettes:
        kernel = to_numpy(per_channel.model.get_layer(p.layer_name).kernel)
        np.testing.assert_array_equal(kernel == 0, masks[p.layer_name])
        assert all(np.unique(c[c != 0]).size <= K for c in np.moveaxis(kernel, -1, 0))


def test_vector_units_need_whole_zero_units():
    model, _ = pruned_model()
    with pytest.raises(ValueError, match="partly zero"):
        dkm_tf.cluster_weights(model, K, unit="row", preserve_sparsity=True)
    model, masks = pruned_model(structured=True)
    wrapped = dkm_tf.cluster_weights(model, K, unit="row", preserve_sparsity=True)
    conv = wrappers(wrapped)["conv"]
    np.testing.assert_array_equal(shared(conv) == 0, masks["conv"])
    assert conv.palettes()[0].unit_dim == 3


def test_bad_arguments():
    model, _ = pruned_model()
    with pytest.raises(ValueError, match="Received: preserve_sparsity=1"):
        dkm_tf.cluster_weights(model, K, preserve_sparsity=1)
    with pytest.raises(ValueError, match="Received: sparsity=0.5"):
        dkm_tf.share_weights(model, K, sparsity=0.5, preserve_sparsity=True)
    with pytest.raises(ValueError, match="Received: sparsity=0.5"):
        cluster_tensor(np.ones((3, 3)), kind="dense", n_clusters=2, sparsity=0.5,
                       preserve_sparsity=True)
    with pytest.raises(ValueError, match="preserve_sparsity"):
        SpectralKMeansRegularizer(K, sparsity=0.5, preserve_sparsity=True)
    layout = cluster_tensor(np.ones((3, 3)), kind="dense", n_clusters=2).layout
    with pytest.raises(ValueError, match="entry 0"):
        Palette("l", "kernel", np.ones((1, 2, 1)), np.zeros((1, 9), int), layout,
                preserve_sparsity=True)


def _grad(reg, var):
    return float(reg(var)), gradients(lambda: reg(var), [var])[0]


@pytest.mark.parametrize("relaxation, unit, k", [("hard", "scalar", K), ("spectral", "row", 2)])
def test_regularizer_does_not_pull_zeros_away(relaxation, unit, k):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    mask = rng.random(w.shape) < 0.5
    if unit == "row":  # whole rows (the last spatial axis) zero; K = 2 < d = 3 singular vectors
        mask = np.broadcast_to(mask[:, :1], w.shape).copy()
    w[mask] = 0.0
    var = keras.Variable(w)
    lam = 0.5
    reg = SpectralKMeansRegularizer(k, lam, relaxation, unit=unit, preserve_sparsity=True)
    reg.refresh(var)
    var.assign(w + np.where(mask, 0.0, 0.01 * rng.normal(size=w.shape)).astype(np.float32))
    penalty, grad = _grad(reg, var)
    assert np.all(grad[mask] == 0.0)
    assert np.count_nonzero(grad[~mask]) > 0.9 * np.count_nonzero(~mask)
    if relaxation == "hard":  # numpy reference: K clusters of the non-zero weights
        v = to_numpy(var).reshape(-1)
        a = reg.assignment
        assert a.max() == K and np.array_equal(a == K, mask.reshape(-1))
        means = np.array([v[a == j].mean() for j in range(K)] + [0.0])
        np.testing.assert_allclose(penalty, 0.5 * lam * np.sum((v - means[a]) ** 2), rtol=1e-4)
        np.testing.assert_allclose(grad.reshape(-1), lam * (v - means[a]), rtol=1e-4, atol=1e-7)
    # the same weight without preserve_sparsity: the zeros sit in non-zero clusters
    plain = SpectralKMeansRegularizer(K, lam, "hard", unit="scalar")
    plain.refresh(w)
    _, g = _grad(plain, keras.Variable(w))
    assert np.count_nonzero(g[mask]) > 0.5 * mask.sum()


def test_attach_regularizer_preserve_sparsity():
    model, masks = pruned_model()
    regs = dkm_tf.attach_regularizer(model, K, 1e-3, include_dense=True, unit="scalar",
                                     preserve_sparsity=True)
    assert len(regs) == 2 and all(r.preserve_sparsity for r in regs.values())
    for layer in (model.get_layer("conv"), model.get_layer("fc")):
        _, g = _grad(layer.kernel.regularizer, layer.kernel)
        assert np.all(g[masks[layer.name]] == 0.0)
        assert SpectralKMeansRegularizer.from_config(
            layer.kernel.regularizer.get_config()).preserve_sparsity


def test_size_accounting_numpy_reference():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(40, 30)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0.0
    p = cluster_tensor(w, kind="dense", n_clusters=6, granularity="per_channel",
                       preserve_sparsity=True, layer_name="fc")
    g, e, n = 30, 7, w.size  # 30 channels, K + 1 = 7 entries
    assert p.codebook.shape == (g, e, 1) and p.bit_width == math.ceil(math.log2(e)) == 3
    hist_bits = sum(40 * assignment_entropy(row, e) for row in p.indices)
    ref = {"log2": n * math.log2(e), "packed": n * 3, "entropy": hist_bits}
    for coding, bits in ref.items():
        np.testing.assert_allclose(p.index_bits(coding), bits, rtol=1e-12)
        np.testing.assert_allclose(p.compression_ratio(coding),
                                   n * 32 / (bits + g * e * 32), rtol=1e-12)
    row = size_report([p]).rows[0]
    assert row["K"] == e and row["bits"] == 3 and row["preserve_sparsity"]
    np.testing.assert_allclose(row["cr_entropy"], n * 32 / (hist_bits + g * e * 32), rtol=1e-12)
    assert "6+z" in size_report([p]).summary()
    np.testing.assert_array_equal(p.decode() == 0, w == 0)
    back = Palette.from_dict(p.to_dict())
    assert back.preserve_sparsity and np.array_equal(back.decode(), p.decode())


def test_codebook_helpers():
    units = np.array([[[0.0, 0.0], [1.0, 2.0], [0.0, 3.0]]])
    with pytest.raises(ValueError, match="1 of 3 units"):
        codebook_lib.zero_units(units, "x")
    cb, idx, used = codebook_lib.kmeans_keeping_zeros(np.zeros((2, 5, 1)), 3)
    assert used == 1 and np.all(cb == 0) and np.all(idx == 0)
    cb = np.array([[0.0], [-1.0], [2.0]])
    new = codebook_lib.nearest_keeping_zeros(np.array([[0.1], [0.0], [1.9], [-0.2]]), cb,
                                             np.array([1, 0, 2, 2]))
    assert new.tolist() == [1, 0, 2, 1]  # 0.1 never joins the zero entry


def test_compress_keeps_a_pruned_models_zeros_with_every_method():
    """``preserve_sparsity`` reaches finetune, dkm_retrain and share_weights via compress."""
    import dkm_tf  # noqa: PLC0415

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    for layer in (model.get_layer("c"), model.get_layer("d")):
        k = to_numpy(layer.kernel)
        k[np.abs(k) < np.median(np.abs(k))] = 0.0
        layer.kernel.assign(k)
    masks = {n: to_numpy(model.get_layer(n).kernel) == 0 for n in ("c", "d")}
    rng = np.random.default_rng(0)
    data = (rng.random((32, 6, 6, 1), dtype=np.float32), rng.integers(0, 3, 32))
    for method in ("wr", "finetune", "dkm+finetune"):
        result = dkm_tf.compress(model, data, data, method=method, n_clusters=3,
                                 finetune_epochs=1, dkm_epochs=1, verbose=0,
                                 preserve_sparsity=True)
        for name, mask in masks.items():
            kernel = to_numpy(result.model.get_layer(name).kernel)
            np.testing.assert_array_equal(kernel == 0, mask, err_msg=f"{method}/{name}")
            assert np.unique(kernel[kernel != 0]).size <= 3, (method, name)
