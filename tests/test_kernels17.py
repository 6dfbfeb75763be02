"""Kernel clustering (Son et al., ECCV 2018) on architectures the other kernel tests do not
cover: mixed precision, clustered models nested in other models, transforms=8 with non-square
kernels, channels_first twins, grouped / dilated / strided / mixed-size convs.

Every clustered kernel is checked against a numpy reference ``s T_t(mu[l])`` built here from
the palette's fields (:func:`_decoded`), and outputs at batch 1 and batch 3.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.core import kernel_codebook as kc  # noqa: E402
from dkm_tf.graph.copying import iter_layers  # noqa: E402
from dkm_tf.training.kernel_clustering import ClusterKernels  # noqa: E402

L = keras.layers


def _decoded(p):
    """Numpy reference kernel (kh, kw, cin, cout) of a kernel palette, from its raw fields."""
    kh, kw, cin, cout = p.layout.kernel_shape
    cb = np.asarray(p.codebook, np.float32)[0].reshape(-1, kh, kw)
    idx = np.asarray(p.indices).reshape(cout, cin)
    s = np.asarray(p.scales, np.float32).reshape(cout, cin)
    t = None if p.transforms is None else np.asarray(p.transforms).reshape(cout, cin)
    out = np.zeros((kh, kw, cin, cout), np.float32)
    for o in range(cout):
        for i in range(cin):
            proto = cb[idx[o, i]]
            if t is not None:
                tt = int(t[o, i])
                proto = proto[:, ::-1] if tt & 1 else proto
                proto = proto[::-1, :] if tt & 2 else proto
                proto = np.rot90(proto, 1) if tt & 4 else proto
            out[:, :, i, o] = s[o, i] * proto
    return out


def _check_kernels(model, palettes):
    layers = {lay.name: lay for lay in iter_layers(model)}
    assert palettes
    for p in palettes:
        kernel = keras.ops.convert_to_numpy(layers[p.layer_name].kernel)
        np.testing.assert_array_equal(kernel, _decoded(p), err_msg=p.layer_name)


def _x(shape, n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _np(y):
    return np.asarray(keras.ops.convert_to_numpy(y), np.float32)


@pytest.fixture
def mixed_policy():
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(old)


def test_mixed_float16_clustered_model_computes_its_stripped_kernels(mixed_policy, tmp_path):
    """Under mixed_float16 the wrapper formed s T_t(mu) from float16 copies of mu and s (the
    model's autocast scope also reached a loaded model's variables): ~1/3 of the float16
    kernel weights were one float16 step off the stripped model's, outputs 5.6e-4 apart."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(8, 3, name="c"),
                          L.Conv2D(8, 3, name="c2"), L.Flatten(),
                          L.Dense(2, dtype="float32", name="d")])
    cm = dkm_tf.cluster_weights(m, 4, unit="kernel", codebook="shared", transforms=2)
    x = _x((10, 10, 3))
    plain, pals = dkm_tf.strip_clustering(cm)
    _check_kernels(plain, pals)
    for xb in (x[:1], x):  # the clustered model computes the stripped one, bit for bit
        np.testing.assert_array_equal(_np(cm(xb)), _np(plain(xb)))
    cm.compile(keras.optimizers.SGD(0.01), "mse")
    cm.fit(x, np.zeros((3, 2), np.float32), epochs=1, verbose=0)
    path = str(tmp_path / "k.keras")
    cm.save(path)
    loaded = dkm_tf.load_model(path)
    plain, pals = dkm_tf.strip_clustering(loaded)
    _check_kernels(plain, pals)
    np.testing.assert_array_equal(_np(loaded(x)), _np(cm(x)))
    np.testing.assert_array_equal(_np(loaded(x)), _np(plain(x)))


@pytest.mark.parametrize("outer_kind", ["functional", "sequential"])
def test_clustered_model_nested_in_another_is_stripped_with_palettes(outer_kind):
    """A clustered model used as a layer of another model: palettes_of gave [] and
    strip_clustering returned it with its ClusterKernels wrappers, silently."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(6, 3, name="c"),
                          L.Conv2D(5, (3, 1), name="c31")])
    cm = dkm_tf.cluster_weights(m, 4, unit="kernel", codebook="shared", transforms=2)
    if outer_kind == "functional":
        inp = keras.Input((8, 8, 3))
        outer = keras.Model(inp, L.Dense(2, name="fc")(L.Flatten()(cm(inp))))
    else:
        outer = keras.Sequential([keras.Input((8, 8, 3)), cm, L.Flatten(),
                                  L.Dense(2, name="fc")])
    assert [p.layer_name for p in dkm_tf.palettes_of(outer)] == ["c", "c31"]
    plain, pals = dkm_tf.strip_clustering(outer)
    assert [p.layer_name for p in pals] == ["c", "c31"]
    assert not any(isinstance(lay, ClusterKernels) for lay in iter_layers(plain))
    _check_kernels(plain, pals)
    x = _x((8, 8, 3))
    for xb in (x[:1], x):
        np.testing.assert_allclose(_np(plain(xb)), _np(outer(xb)), rtol=0, atol=1e-6)


def test_transforms_8_refuses_non_square_kernels_before_any_work(monkeypatch):
    """transforms=8 with a 3x1 conv in the model: the square group was clustered first, then
    an error that did not name the layer."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c3"),
                          L.Conv2D(4, (3, 1), name="c31")])
    calls = []
    real = kc.cluster_kernels
    monkeypatch.setattr(kc, "cluster_kernels", lambda *a, **k: calls.append(1) or real(*a, **k))
    for fn in (dkm_tf.share_weights, dkm_tf.cluster_weights):
        with pytest.raises(ValueError, match=r"`transforms`.*non-square: c31 \(3x1\).*"
                                             r"transforms=8"):
            fn(m, 4, unit="kernel", codebook="shared", transforms=8)
    assert not calls
    # leaving the 3x1 conv float works, and says so
    r = dkm_tf.share_weights(m, 4, unit="kernel", codebook="shared", transforms=8,
                             overrides={"c31": None})
    assert [p.layer_name for p in r.palettes] == ["c3"]
    assert dict(r.skipped)["c31"] == "excluded by overrides"
    _check_kernels(r.model, r.palettes)


def test_grouped_dilated_strided_mixed_sizes_and_reasons():
    """Grouped (kernel cin/groups), dilated, strided, 5x5, 3x1 and 1x3 convs share per-size
    codebooks; depthwise, separable, transposed and 1x1 convs stay float with a reason."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((14, 14, 3)), L.Conv2D(6, 3, groups=3, name="g"),
        L.Conv2D(6, 3, dilation_rate=2, name="dil"), L.DepthwiseConv2D(3, name="dw"),
        L.Conv2D(6, 3, strides=2, padding="same", name="s2"), L.Conv2D(4, 1, name="pw"),
        L.Conv2D(4, 5, padding="same", name="c5"),
        L.SeparableConv2D(4, 3, padding="same", name="sep"),
        L.Conv2D(4, (3, 1), padding="same", name="c31"),
        L.Conv2D(4, (1, 3), padding="same", name="c13"), L.Conv2DTranspose(3, 3, name="tr")])
    before = [w.copy() for w in m.get_weights()]
    for via in ("share", "train"):
        if via == "share":
            r = dkm_tf.share_weights(m, 4, unit="kernel", codebook="shared", transforms=4)
            model, pals, skipped = r.model, r.palettes, dict(r.skipped)
        else:
            cm, rep = dkm_tf.cluster_weights(m, 4, unit="kernel", codebook="shared",
                                             transforms=4, return_report=True)
            skipped = {n: why for n, _, why in rep.skipped}
            model, pals = dkm_tf.strip_clustering(cm)
            x = _x((14, 14, 3))
            for xb in (x[:1], x):
                np.testing.assert_allclose(_np(model(xb)), _np(cm(xb)), rtol=0, atol=1e-5)
        by = {p.layer_name: p for p in pals}
        assert set(by) == {"g", "dil", "s2", "c5", "c31", "c13"}
        assert {by[n].codebook_id for n in ("g", "dil", "s2")} == {"kernel:3x3"}
        assert by["g"].layout.kernel_shape == (3, 3, 1, 6)  # cin 3 / 3 groups
        assert by["c31"].codebook_id == "kernel:3x1" and by["c13"].codebook_id == "kernel:1x3"
        assert "1x1" in skipped["pw"]
        for n, kind in (("dw", "DepthwiseConv2D"), ("sep", "SeparableConv2D"),
                        ("tr", "Conv2DTranspose")):
            assert kind in skipped[n]
        _check_kernels(model, pals)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))


@pytest.mark.parametrize("via", ["share", "train"])
def test_channels_first_twin_gives_the_same_clusters(cf_runs, via):
    """Keras keeps (kh, kw, cin, cout) kernels in both layouts: a channels_first twin (BN on
    axis 1, folded) gets the same codebook, indices, transforms and scales."""
    outs, pals = {}, {}
    for fmt in ("channels_last", "channels_first"):
        keras.utils.set_random_seed(1)
        shape = (10, 10, 3) if fmt == "channels_last" else (3, 10, 10)
        m = keras.Sequential([
            keras.Input(shape), L.Conv2D(4, 3, data_format=fmt, name="c"),
            L.BatchNormalization(axis=-1 if fmt == "channels_last" else 1, name="bn"),
            L.Conv2D(5, 3, data_format=fmt, name="c2")])
        rng = np.random.default_rng(3)
        m.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4).astype("f"),
                                       rng.normal(size=4).astype("f"),
                                       rng.normal(size=4).astype("f"),
                                       rng.uniform(0.5, 2, 4).astype("f")])
        x = _x((10, 10, 3))
        x = x if fmt == "channels_last" else x.transpose(0, 3, 1, 2)
        if via == "share":
            r = dkm_tf.share_weights(m, 4, unit="kernel", codebook="shared", transforms=2)
            model, pals[fmt] = r.model, r.palettes
        else:
            model, pals[fmt] = dkm_tf.strip_clustering(dkm_tf.cluster_weights(
                m, 4, unit="kernel", codebook="shared", transforms=2))
        _check_kernels(model, pals[fmt])
        y = _np(model(x))
        outs[fmt] = y if fmt == "channels_last" else y.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(outs["channels_first"], outs["channels_last"], rtol=0,
                               atol=1e-5)
    for p, q in zip(pals["channels_last"], pals["channels_first"]):
        np.testing.assert_array_equal(p.indices, q.indices)
        np.testing.assert_array_equal(p.transforms, q.transforms)
        np.testing.assert_array_equal(p.scales, q.scales)
        np.testing.assert_array_equal(p.codebook, q.codebook)


@pytest.mark.parametrize("policy", ["float16", "bfloat16"])
def test_low_precision_kernels_are_refused_with_the_layer_named(policy):
    """A float16 / bfloat16 kernel held s T(mu) rounded (bfloat16: up to 9e-4 off
    palette.decode(), which the result claims to hold exactly); now a clear error."""
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c"),
                          L.Conv2D(4, 3, name="low", dtype=policy)])
    for fn in (dkm_tf.share_weights, dkm_tf.cluster_weights):
        with pytest.raises(ValueError, match=rf"float32.*layer 'low' with a {policy} kernel"):
            fn(m, 4, unit="kernel", codebook="shared")
    r = dkm_tf.share_weights(m, 4, unit="kernel", codebook="shared", overrides={"low": None})
    assert dict(r.skipped)["low"] == "excluded by overrides"
    _check_kernels(r.model, r.palettes)
