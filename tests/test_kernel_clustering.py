"""Kernel clustering with scaled units and shared codebooks (Son et al., ECCV 2018; issue 12).

Numpy references throughout: decoding is ``s T_t(mu[idx])`` computed here by hand, the centroid
gradient is the scale-weighted (inverse-transformed) sum of per-layer kernel gradients taken
with ``tf.GradientTape`` on the plain decoded model.
"""

from __future__ import annotations

import numpy as np
import pytest
from testing import gradients, to_numpy

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf.core import kernel_codebook as kc  # noqa: E402
from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.training.kernel_clustering import ClusterKernels, KernelCodebook  # noqa: E402


def _two_conv(seed=0, bn=False, extra=False):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    if bn:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    if extra:
        x = keras.layers.Conv2D(4, 1, name="pw")(x)
        x = keras.layers.Conv2D(5, 5, padding="same", name="c5")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(3, name="fc")(x)
    return keras.Model(inp, out)


def _x(n=4, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 8, 8, 3)).astype(np.float32)


def _decode_ref(cb, idx, t, s):
    """Numpy reference kernel (kh, kw, cin, cout) from kernel_factors-shaped arrays."""
    cin, cout = idx.shape
    out = np.zeros((*cb.shape[1:], cin, cout), np.float32)
    for i in range(cin):
        for o in range(cout):
            out[:, :, i, o] = s[i, o] * kc.apply_transform(cb[idx[i, o]],
                                                           0 if t is None else t[i, o])
    return out


# ----------------------------------------------------------------------------- numpy core
def test_scale_round_trip_and_exact_with_k_equal_n():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    w[:, :, 1, 2] = 0.0  # a zero kernel: scale 0, index 0
    lay = units_lib.layout_for(w.shape, "conv", "kernel", "per_tensor")
    for bits in (16, 8, 32):
        cb, (a,) = kc.cluster_kernels([w], 19, scale_bits=bits)  # 19 non-zero kernels
        dec = kc.decode_scaled(cb.reshape(1, cb.shape[0], -1), a.indices[None], lay,
                               a.scales[None])
        ref = _decode_ref(cb, a.indices.reshape(5, 4).T, None, a.scales.reshape(5, 4).T)
        np.testing.assert_array_equal(dec, ref)  # decode == s * mu[idx], exactly
        np.testing.assert_allclose(dec, w, rtol=0, atol=4e-7 * np.abs(w).max())
        assert a.scales.reshape(5, 4)[2, 1] == 0 and a.indices.reshape(5, 4)[2, 1] == 0
        if bits == 16:
            np.testing.assert_array_equal(a.scales.astype(np.float16).astype(np.float32),
                                          a.scales)
        if bits == 8:
            q = a.scales / a.scale_step
            np.testing.assert_allclose(q, np.round(q), atol=1e-4)
            assert np.abs(np.round(q)).max() <= 127
    # the normalised kernels: unit norm, positive centre tap (K = N: centroids = them)
    s = kc.kernel_scales(rng.standard_normal((50, 3, 3)))
    u = rng.standard_normal((50, 3, 3))
    s = kc.kernel_scales(u)
    n = u / s[:, None, None]
    np.testing.assert_allclose(np.sqrt((n ** 2).sum((1, 2))), 1.0, rtol=1e-12)
    assert np.all(n[:, 1, 1] > 0)
    assert kc.centre_tap(4, 4) == (1, 1) and kc.centre_tap(3, 5) == (1, 2)


def test_transforms_are_the_dihedral_group():
    x = np.arange(9.0).reshape(3, 3)
    outs = {kc.apply_transform(x, t).tobytes() for t in range(8)}
    assert len(outs) == 8  # eight distinct images of an asymmetric kernel
    np.testing.assert_array_equal(kc.apply_transform(x, 1), x[:, ::-1])
    np.testing.assert_array_equal(kc.apply_transform(x, 3), np.rot90(x, 2))
    np.testing.assert_array_equal(kc.apply_transform(x, 4), np.rot90(x))
    for t in range(8):
        np.testing.assert_array_equal(kc.inverse_transform(kc.apply_transform(x, t), t), x)


@pytest.mark.parametrize("n_t", [2, 4, 8])
def test_transform_assignment_picks_the_planted_transform(n_t):
    rng = np.random.default_rng(3)
    k, n = 3, 240
    mu = rng.standard_normal((k, 3, 3))
    mu[:, 1, 1] = np.abs(mu[:, 1, 1]) + 0.5
    mu /= np.sqrt((mu ** 2).sum((1, 2)))[:, None, None]
    lab, tt = rng.integers(0, k, n), rng.integers(0, n_t, n)
    s = rng.uniform(0.5, 2.0, n) * rng.choice([-1, 1], n)
    units = np.stack([s[j] * kc.apply_transform(mu[lab[j]], tt[j]) for j in range(n)])
    units += 1e-4 * rng.standard_normal(units.shape)
    w = units.reshape(4, 60, 3, 3).transpose(2, 3, 1, 0).astype(np.float32)  # (3,3,60,4)
    cb, (a,) = kc.cluster_kernels([w], k, transforms=n_t, seed=0)
    idx = a.indices.reshape(-1)
    t = a.transforms.reshape(-1)
    # units order is (cout, cin): unit j of `units` sits at cout=j // 60, cin=j % 60
    assert cb.shape[0] == k
    for c in range(k):  # one recovered centroid per planted one
        members = np.flatnonzero(lab == c)
        assert np.unique(idx[members]).size == 1
        # the recovered transform differs from the planted one by ONE group element g per
        # cluster (the centroid may be stored in another orientation): T_t = T_pl o g
        probe = np.arange(9.0).reshape(3, 3)
        rel = {kc.inverse_transform(kc.apply_transform(probe, t[j]), tt[j]).tobytes()
               for j in members}
        assert len(rel) == 1, (c, len(rel))
    dec = np.stack([a.scales[j] * kc.apply_transform(cb[idx[j]], t[j]) for j in range(n)])
    np.testing.assert_allclose(dec, units, atol=2e-3 * np.abs(units).max())


def test_size_accounting_matches_the_paper_vgg16():
    # methods §2.5: CIFAR VGG-16, 1,634,496 3x3 kernels, 24 bits/kernel, 4.91 MB, 12.0x
    for k, n_t in ((256, 1), (128, 2), (64, 4), (32, 8)):
        b = kc.kernel_bits(1_634_496, k, transforms=n_t)
        assert b["bits_per_kernel"] == 24.0
        assert abs(b["bytes"] / 1e6 - 4.91) < 0.01  # codebooks of 32..256 entries: 4.905..4.913
        assert round(b["ratio"], 1) == 12.0
    assert round(kc.kernel_bits(1_634_496, 512)["ratio"], 1) == 11.5
    assert abs(kc.kernel_bits(1_634_496, 512)["bytes"] / 1e6 - 5.12) < 0.01  # 5.126


# ----------------------------------------------------------------------------- post-training
def test_share_weights_shared_codebook_palettes_and_factors():
    m = _two_conv(extra=True)
    r = dkm_tf.share_weights(m, 8, unit="kernel", codebook="shared", transforms=2)
    by = {p.layer_name: p for p in r.palettes}
    assert set(by) == {"c1", "c2", "c5"}  # grouped by size: 3x3 shared, 5x5 its own
    assert by["c1"].codebook_id == by["c2"].codebook_id == "kernel:3x3"
    assert by["c5"].codebook_id == "kernel:5x5"
    np.testing.assert_array_equal(by["c1"].codebook, by["c2"].codebook)
    skipped = dict(r.skipped)
    assert "1x1" in skipped["pw"] and "Dense" in skipped["fc"]  # pass-through, reported
    for p in r.palettes:
        kernel = to_numpy(r.model.get_layer(p.layer_name).kernel)
        cb, idx, t, s = kc.kernel_factors(p)
        assert cb.shape[1:] == kernel.shape[:2] and idx.shape == kernel.shape[2:]
        np.testing.assert_array_equal(_decode_ref(cb, idx, t, s), kernel)
        np.testing.assert_array_equal(p.decode(), kernel)
        q = dkm_tf.Palette.from_dict(p.to_dict())  # round trip keeps scales and transforms
        np.testing.assert_array_equal(q.decode(), kernel)
        assert q.n_transforms == 2 and q.scale_bits == 16
    # sizes: N (log2 K + log2 T + 16) per palette, the shared codebook counted once
    rep = dkm_tf.size_report(r.palettes)
    n3 = by["c1"].n_units + by["c2"].n_units
    want = n3 * (3 + 1 + 16) + 8 * 9 * 32 + by["c5"].n_units * (3 + 1 + 16) + 8 * 25 * 32
    assert rep.totals["compressed_bits_log2"] == pytest.approx(want)
    # the other layers are untouched
    np.testing.assert_array_equal(to_numpy(r.model.get_layer("fc").kernel),
                                  to_numpy(m.get_layer("fc").kernel))


def test_codebook_groups_and_per_layer():
    m = _two_conv()
    r = dkm_tf.share_weights(m, 4, unit="kernel", codebook=[["c1"], ["c2"]])
    assert [p.codebook_id for p in r.palettes] == ["kernel:group0", "kernel:group1"]
    r = dkm_tf.share_weights(m, 4, unit="kernel", codebook=[["c2"]])
    assert [p.layer_name for p in r.palettes] == ["c2"]
    assert "no codebook group" in dict(r.skipped)["c1"]


# ----------------------------------------------------------------------------- fine-tuning
def _clustered(n_t=1, bn=False, bits=16):
    m = _two_conv(bn=bn)
    return dkm_tf.cluster_weights(m, 8, unit="kernel", codebook="shared", transforms=n_t,
                                  scale_bits=bits)


@pytest.mark.parametrize("n_t", [1, 4])
def test_shared_centroid_gradient_is_the_scale_weighted_member_sum(n_t):
    cm = _clustered(n_t)
    books = [lay for lay in cm.layers if isinstance(lay, KernelCodebook)]
    assert len(books) == 1
    x, y = _x(), np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    loss = float(keras.ops.mean((cm(x) - y) ** 2))
    g_cb, *g_s = gradients(lambda: keras.ops.mean((cm(x) - y) ** 2), [books[0].codebook] + [
        lay.scales for lay in cm.layers if isinstance(lay, ClusterKernels)])
    # reference: the plain model with the decoded kernels, dL/dW per layer
    plain, pals = dkm_tf.strip_clustering(cm)
    kernels = [plain.get_layer(n).kernel for n in ("c1", "c2")]
    loss2 = float(keras.ops.mean((plain(x) - y) ** 2))
    dws = gradients(lambda: keras.ops.mean((plain(x) - y) ** 2), kernels)
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    ref = np.zeros(g_cb.shape, np.float64)
    for p, dw, gs in zip(pals, dws, g_s):
        cb, idx, t, s = kc.kernel_factors(p)
        ds = np.zeros(idx.shape)
        for i in range(idx.shape[0]):
            for o in range(idx.shape[1]):
                tt = 0 if t is None else t[i, o]
                ref[idx[i, o]] += s[i, o] * kc.inverse_transform(dw[:, :, i, o], tt)
                ds[i, o] = np.sum(kc.apply_transform(cb[idx[i, o]], tt) * dw[:, :, i, o])
        np.testing.assert_allclose(to_numpy(gs), ds, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(to_numpy(tf.convert_to_tensor(g_cb)), ref, rtol=1e-4, atol=1e-7)
    assert np.abs(ref).max() > 1e-4  # the check is not vacuous


def test_shared_codebook_survives_keras_save_load(tmp_path):
    cm = _clustered(n_t=2)
    x = _x()
    path = str(tmp_path / "k.keras")
    cm.save(path)
    m2 = dkm_tf.load_model(path)
    books = [v for v in m2.trainable_variables if v.path.endswith("codebook")]
    assert len(books) == 1  # still ONE variable for both layers
    np.testing.assert_array_equal(to_numpy(books[0]), to_numpy([v for v in cm.trainable_variables
                                                     if v.path.endswith("codebook")][0]))
    np.testing.assert_allclose(np.asarray(m2(x)), np.asarray(cm(x)), rtol=0, atol=1e-6)
    # one gradient step on the loaded model moves the codebook of both layers together
    m2.compile(keras.optimizers.SGD(0.1), "mse")
    m2.train_on_batch(x, np.ones((4, 3), np.float32))
    _, pals = dkm_tf.strip_clustering(m2)
    np.testing.assert_array_equal(pals[0].codebook, pals[1].codebook)
    np.testing.assert_array_equal(pals[0].codebook[0].reshape(books[0].shape),
                                  to_numpy(books[0]))


@pytest.mark.parametrize("bits", [16, 8])
def test_finetune_keeps_kernels_on_the_shared_codebook(bits):
    cm = _clustered(n_t=2, bn=True, bits=bits)
    before = kc.kernel_factors(dkm_tf.palettes_of(cm)[0])[0]
    cm.compile(keras.optimizers.SGD(0.05), "mse")
    x = _x(16)
    cm.fit(x, np.ones((16, 3), np.float32), epochs=3, batch_size=4, verbose=0)
    x_eval = _x(4, seed=5)
    plain, pals = dkm_tf.strip_clustering(cm, fold_bn=False)
    assert [p.layer_name for p in pals] == ["c1", "c2"]
    cb0 = kc.kernel_factors(pals[0])[0]
    assert np.abs(cb0 - before).max() > 1e-4  # the codebook trained
    for p in pals:
        cb, idx, t, s = kc.kernel_factors(p)
        np.testing.assert_array_equal(cb, cb0)  # the SAME codebook in every layer
        kernel = to_numpy(plain.get_layer(p.layer_name).kernel)
        np.testing.assert_array_equal(_decode_ref(cb, idx, t, s), kernel)
        if bits == 16:
            np.testing.assert_array_equal(s.astype(np.float16).astype(np.float32), s)
        else:  # int8 fixed point: integer multiples of the layer's step, |q| <= 127
            q = s / float(to_numpy(cm.get_layer(f"cluster_{p.layer_name}").scale_step))
            np.testing.assert_allclose(q, np.round(q), atol=1e-3)
            assert np.abs(np.round(q)).max() <= 127
    np.testing.assert_allclose(np.asarray(plain(x_eval)), np.asarray(cm(x_eval)), atol=1e-5)
    # with BN folded into the scales the codebook stays shared and outputs are kept
    folded, fpals = dkm_tf.strip_clustering(cm)
    assert fpals[0].codebook_id == fpals[1].codebook_id
    np.testing.assert_array_equal(fpals[0].codebook, fpals[1].codebook)
    np.testing.assert_allclose(np.asarray(folded(x_eval)), np.asarray(cm(x_eval)),
                               rtol=1e-4, atol=1e-4)
    for p in fpals:
        np.testing.assert_array_equal(p.decode(), to_numpy(folded.get_layer(p.layer_name).kernel))


def test_cluster_weights_report_and_sequential():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="a"),
                          keras.layers.Conv2D(4, 1, name="p"), keras.layers.Conv2D(4, 3, name="b"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, name="d")])
    cm, rep = dkm_tf.cluster_weights(m, 4, unit="kernel", codebook="shared",
                                     return_report=True)
    assert [c[0] for c in rep.clustered] == ["a", "b"]
    reasons = {n: r for n, _, r in rep.skipped}
    assert "1x1" in reasons["p"] and "Dense" in reasons["d"]
    np.testing.assert_allclose(np.asarray(cm(_x())),
                               np.asarray(dkm_tf.strip_clustering(cm)[0](_x())), atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_bad_input():
    m = _two_conv()
    with pytest.raises(ValueError, match="`codebook`.*'layer', 'shared'.*bogus"):
        dkm_tf.share_weights(m, 4, unit="kernel", codebook="bogus")
    with pytest.raises(ValueError, match="`transforms`.*1, 2, 4, 8.*transforms=3"):
        dkm_tf.cluster_weights(m, 4, unit="kernel", codebook="shared", transforms=3)
    with pytest.raises(ValueError, match="`scale_bits`.*scale_bits=12"):
        dkm_tf.share_weights(m, 4, unit="kernel", codebook="shared", scale_bits=12)
    with pytest.raises(ValueError, match="`codebook`.*unit='kernel'"):
        dkm_tf.share_weights(m, 4, unit="scalar", codebook="shared")
    with pytest.raises(ValueError, match="`codebook`.*fc: "):
        dkm_tf.share_weights(m, 4, unit="kernel", codebook=[["c1", "fc"]])
    with pytest.raises(ValueError, match="`granularity`"):
        dkm_tf.cluster_weights(m, 4, unit="kernel", codebook="shared",
                               granularity="per_channel")
    with pytest.raises(ValueError, match="`transforms`.*non-square"):
        kc.cluster_kernels([np.ones((3, 5, 2, 2), np.float32)], 2, transforms=8)
    with pytest.raises(ValueError, match="one kernel size per group"):
        dkm_tf.share_weights(_two_conv(extra=True), 4, unit="kernel",
                             codebook=[["c1", "c5"]])
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no k x k Conv2D"):
        dkm_tf.share_weights(dense, 2, unit="kernel", codebook="shared")
    with pytest.raises(ValueError, match="`palette`"):
        kc.kernel_factors(dkm_tf.share_weights(dense, 2).palettes[0])


@pytest.mark.parametrize("n_t", [1, 2])
def test_k_above_a_groups_kernel_count_gets_one_centroid_per_kernel(n_t):
    """A small group (ResNet-18's 7x7 stem has 192 kernels, K=256) is capped at its kernel
    count, lossless, as the scalar path caps K at the distinct values; it used to fail."""
    m = _two_conv()  # c1: 3 x 6 = 18 kernels, c2: 6 x 8 = 48
    res = dkm_tf.share_weights(m, 19, unit="kernel", codebook=[["c1"], ["c2"]],
                               transforms=n_t)
    by = {p.layer_name: p for p in res.palettes}
    assert by["c1"].n_clusters <= 18 and "K=18 < n_clusters=19" in by["c1"].note
    assert by["c2"].n_clusters == 19 and "n_clusters=19" not in by["c2"].note
    kernel = to_numpy(m.get_layer("c1").kernel)
    np.testing.assert_allclose(by["c1"].decode(), kernel, rtol=0,
                               atol=2e-3 * np.abs(kernel).max())  # float16 scales only
    # fine-tuning with K above all 66 kernels: the wrapper holds the smaller codebook
    wrapped = dkm_tf.cluster_weights(m, 67, unit="kernel", codebook="shared", transforms=n_t)
    wrapped.compile("adam", "mse")
    wrapped.fit(_x(), np.zeros((4, 3), np.float32), epochs=1, verbose=0)
    plain, pals = dkm_tf.strip_clustering(wrapped)
    np.testing.assert_allclose(plain.predict(_x(), verbose=0), wrapped.predict(_x(), verbose=0),
                               atol=1e-5)
    for p in pals:
        np.testing.assert_array_equal(to_numpy(plain.get_layer(p.layer_name).kernel), p.decode())
        assert p.n_clusters <= 66


@pytest.mark.parametrize("bad", [True, 2.0])
def test_transforms_and_scale_bits_must_be_ints(bad):
    """True == 1 and 2.0 == 2 passed the choice check in cluster_kernels and share_weights."""
    with pytest.raises(ValueError, match=rf"`transforms`. Expected one of \[1, 2, 4, 8\] "
                                         rf"\(an int\). Received: transforms={bad!r}"):
        kc.cluster_kernels([np.ones((3, 3, 2, 2), np.float32)], 2, transforms=bad)
    with pytest.raises(ValueError, match=rf"transforms={bad!r}"):
        dkm_tf.share_weights(_two_conv(), 4, unit="kernel", codebook="shared", transforms=bad)
    with pytest.raises(ValueError, match=r"`scale_bits`.*\(an int\)"):
        dkm_tf.share_weights(_two_conv(), 4, unit="kernel", codebook="shared",
                             scale_bits=16.0 if bad is not True else True)
