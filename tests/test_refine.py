"""share_weights(refine="outputs"): least-squares codebook + bias update on layer outputs.

Checked against an independent numpy least squares (dense and strided conv, sequential
inputs) and, for refine="gptq", an unblocked inverse-Hessian (OBQ-form) GPTQ and a loop
convolution, for exactly <= K stored values equal to the palettes, lower layer-output error, the
layers it leaves alone (reported), BatchNormalization folding, a palettized export, and bad
input.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import tf_backend_only, to_numpy  # noqa: E402

from dkm_tf.graph import gptq  # noqa: E402
from dkm_tf.graph.share import share_weights  # noqa: E402


# --------------------------------------------------------------------- independent reference
def ls_codebook(z, t, bias_free, p0=None):
    """argmin_c,b ||sum_k c_k z_k + b - t||^2 by numpy lstsq; z (K, P, C), t (P, C). With the
    k-means model's pre-activations ``p0`` (a ReLU layer), elements where both ``t`` and ``p0``
    are <= 0 do not count (the ReLU zeroes them in both)."""
    k, p, c = z.shape
    keep = np.ones((p, c)) if p0 is None else 1.0 - ((t <= 0) & (p0 <= 0))
    z, t = z * keep, t * keep
    cols = [z[i].reshape(-1) for i in range(k)]
    if bias_free:
        for j in range(c):  # one indicator column per output channel
            e = np.zeros((p, c))
            e[:, j] = keep[:, j]
            cols.append(e.reshape(-1))
    sol = np.linalg.lstsq(np.stack(cols, 1), t.reshape(-1), rcond=None)[0]
    return sol[:k], (sol[k:] if bias_free else None)


def masks(kernel, pal):
    """0/1 masks of the weights of each cluster, read off a k-means-clustered kernel."""
    return [(kernel == c).astype(np.float64) for c in pal.codebook[0, :, 0]]


def conv_nhwc(x, w, stride, padding):
    """Plain numpy 2-D convolution (NHWC, HWIO), 'valid' or 'same' (TF's padding rule)."""
    n, h, wd, _ = x.shape
    kh, kw, _, co = w.shape
    if padding == "same":
        ho, wo = -(-h // stride), -(-wd // stride)
        ph = max((ho - 1) * stride + kh - h, 0)
        pw = max((wo - 1) * stride + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, ho, wo, co))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w)
    return out


def obq_assign(w, h, codebook, damp=0.01):
    """GPTQ in its OBQ form (Frantar et al. 2023, eq. 2-3): rows in order of decreasing H_ii;
    after each, the remaining rows absorb its error through the inverse Hessian, which then
    loses that row and column (Schur complement). Explicit inverse, no Cholesky, no blocks."""
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    hinv = np.linalg.inv(h)
    left = list(np.argsort(-np.diag(h), kind="stable"))  # damping shifts all H_ii equally
    idx = np.zeros(w.shape, np.int64)
    while left:
        i, rest = left[0], left[1:]
        book = codebook if codebook.ndim == 2 else np.broadcast_to(codebook, (w.shape[1],
                                                                              codebook.size))
        idx[i] = np.argmin(np.abs(w[i][:, None] - book), axis=1)
        err = w[i] - book[np.arange(w.shape[1]), idx[i]]
        w[rest] -= np.outer(hinv[rest, i] / hinv[i, i], err)
        hinv = hinv - np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
        left = rest
    return idx


@pytest.mark.parametrize("seed,per_column", [(0, False), (1, False), (2, False), (3, True)])
def test_gptq_assign_equals_the_obq_form(seed, per_column):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 20)) * rng.uniform(0.2, 2.0, size=20)  # unequal H_ii
    w = rng.normal(size=(20, 5))
    codebook = np.array([0.4, -1.1, 0.0, 1.3])  # unsorted on purpose
    if per_column:  # one codebook per output column (per-channel palettes)
        codebook = codebook * rng.uniform(0.5, 1.5, size=(5, 1))
    h = gptq.hessian(x)
    got = gptq.gptq_assign(w, h, codebook, block=7)  # blocks end inside the rows
    want = obq_assign(w, h, codebook)
    np.testing.assert_array_equal(got, want)
    # it beats nearest-centroid rounding on the layer's outputs
    book = codebook if per_column else np.broadcast_to(codebook, (5, 4))
    near = np.argmin(np.abs(w[..., None] - book), axis=-1)

    def decoded(idx):
        return book[np.arange(5), idx]

    assert np.sum((x @ (decoded(got) - w)) ** 2) < np.sum((x @ (decoded(near) - w)) ** 2)


@pytest.mark.parametrize("stride,dilation,padding", [(1, 1, "same"), (2, 1, "valid"),
                                                     (1, 2, "same"), (2, 1, "same")])
def test_im2col_times_the_kernel_is_keras_conv(stride, dilation, padding):
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(3, 3, strides=stride, dilation_rate=dilation, padding=padding,
                               use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 8, 7, 2)).astype(np.float32)
    y = np.asarray(conv(x))
    cols = gptq.im2col(x, (3, 3), (stride, stride), (dilation, dilation), padding)
    got = cols @ to_numpy(conv.kernel).reshape(-1, 3)
    np.testing.assert_allclose(got, y.reshape(-1, 3), rtol=1e-5, atol=1e-5)
    if dilation == 1:
        np.testing.assert_allclose(got.reshape(y.shape),
                                   conv_nhwc(x, to_numpy(conv.kernel), stride, padding),
                                   rtol=1e-5, atol=1e-5)


def test_refine_gptq_reassigns_and_never_does_worse_than_outputs_on_one_layer():
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,))
    model = keras.Model(inp, keras.layers.Dense(6, name="d")(inp))
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(128, 3)) @ rng.normal(size=(3, 12))  # correlated inputs
         + 0.1 * rng.normal(size=(128, 12))).astype(np.float32)
    plain = share_weights(model, 3)
    outs = share_weights(model, 3, refine="outputs", data=x)
    res = share_weights(model, 3, refine="gptq", data=x)
    assert "GPTQ assignment" in res.palettes[0].note, res.palettes[0].note
    assert not np.array_equal(res.palettes[0].indices, plain.palettes[0].indices)
    ref = model.predict(x, verbose=0)

    def mse(result):
        return np.mean((result.model.predict(x, verbose=0) - ref) ** 2)

    # gptq tries a superset of outputs' candidates, each kept only if the model error drops
    assert mse(res) <= mse(outs) * (1 + 1e-6) < mse(plain)
    kernel = to_numpy(res.model.get_layer("d").kernel)
    np.testing.assert_array_equal(kernel, res.palettes[0].decode())
    assert np.unique(kernel).size <= 3


@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_model_output_error_never_above_kmeans(refine):
    model = _dense_model(seed=2)
    x = np.random.default_rng(3).normal(size=(32, 6)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    plain = share_weights(model, 2)
    res = share_weights(model, 2, refine=refine, data=x)
    assert (np.mean((res.model.predict(x, verbose=0) - ref) ** 2)
            <= np.mean((plain.model.predict(x, verbose=0) - ref) ** 2) * (1 + 1e-6))
    for pal in res.palettes:  # updated or restored, the stored kernel is the palette
        np.testing.assert_array_equal(to_numpy(res.model.get_layer(pal.layer_name).kernel),
                                      pal.decode())


def test_relu_fit_leaves_out_what_the_relu_clips_in_both_models():
    from dkm_tf.graph import refine as refine_lib

    model = _dense_model()
    x = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    plain = share_weights(model, 3)
    layer_f, layer_q = model.get_layer("d1"), plain.model.get_layer("d1")
    twin = refine_lib._twin(layer_q, x)
    (_, (c, b, _, before, after)), = refine_lib._fits(
        [plain.palettes[0]], layer_f, layer_q, twin, x, x, 64,
        (None, refine_lib._clip(layer_q)))
    w, b1 = _values(layer_f)
    k1 = to_numpy(layer_q.kernel)
    xf = x.astype(np.float64)
    m1 = masks(k1, plain.palettes[0])
    want_c, want_b = ls_codebook(np.stack([xf @ m for m in m1]), xf @ w + b1, True,
                                 xf @ k1 + b1)
    np.testing.assert_allclose(c[0], want_c, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b, want_b, rtol=1e-4, atol=1e-6)
    assert after < before


def _dense_model(seed=0):
    """Weights drawn by numpy (Keras' initialisers draw differently on each backend)."""
    inp = keras.Input((6,))
    h = keras.layers.Dense(5, activation="relu", name="d1")(inp)
    out = keras.layers.Dense(3, name="d2")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, v.shape).astype(np.float32) for v in model.weights])
    return model


def _values(layer):
    return [np.asarray(to_numpy(v), np.float64) for v in layer.weights]


# --------------------------------------------------------------------- numerics
def test_dense_codebooks_and_biases_equal_numpy_least_squares_sequentially():
    model = _dense_model()
    x = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    plain = share_weights(model, 3)
    res = share_weights(model, 3, refine="outputs", data=x)
    w1, b1 = _values(model.get_layer("d1"))
    w2, b2 = _values(model.get_layer("d2"))
    p1, p2 = res.palettes
    # the assignments are k-means's (unchanged); only the centroids move
    np.testing.assert_array_equal(p1.indices, plain.palettes[0].indices)
    xf = x.astype(np.float64)
    m1 = masks(to_numpy(plain.model.get_layer("d1").kernel), plain.palettes[0])
    m2 = masks(to_numpy(plain.model.get_layer("d2").kernel), plain.palettes[1])
    k1 = to_numpy(plain.model.get_layer("d1").kernel)
    # d1 has a ReLU: its fit counts every output, or leaves out what the ReLU clips in both
    # models, whichever gave the model's outputs the lower error (the note says which)
    assert "output-refined codebook and bias" in p1.note, p1.note
    masked = "clipped outputs left out" in p1.note
    c1, nb1 = ls_codebook(np.stack([xf @ m for m in m1]), xf @ w1 + b1, True,
                          xf @ k1 + b1 if masked else None)
    np.testing.assert_allclose(p1.codebook[0, :, 0], c1, rtol=1e-4, atol=1e-6)
    q1, qb1 = _values(res.model.get_layer("d1"))
    np.testing.assert_allclose(qb1, nb1, rtol=1e-4, atol=1e-6)
    # layer 2 sees the clustered layer 1's outputs and fits the float layer 2's outputs
    hq, hf = np.maximum(xf @ q1 + qb1, 0), np.maximum(xf @ w1 + b1, 0)
    c2, nb2 = ls_codebook(np.stack([hq @ m for m in m2]), hf @ w2 + b2, True)
    np.testing.assert_allclose(p2.codebook[0, :, 0], c2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_values(res.model.get_layer("d2"))[1], nb2, rtol=1e-4,
                               atol=1e-6)
    # stored kernels are the palettes, <= K values; the model's output error went down
    for pal in res.palettes:
        kernel = to_numpy(res.model.get_layer(pal.layer_name).kernel)
        np.testing.assert_array_equal(kernel, pal.decode())
        assert np.unique(kernel).size <= 3
        assert "output-refined codebook and bias" in pal.note
    ref = model.predict(x, verbose=0)
    err_plain = np.mean((plain.model.predict(x, verbose=0) - ref) ** 2)
    err_refined = np.mean((res.model.predict(x, verbose=0) - ref) ** 2)
    assert err_refined < err_plain


@pytest.mark.parametrize("stride,padding,use_bias", [(1, "same", True), (2, "valid", False)])
def test_conv_codebook_equals_numpy_least_squares(stride, padding, use_bias):
    keras.utils.set_random_seed(3)
    inp = keras.Input((7, 7, 2))
    out = keras.layers.Conv2D(4, 3, strides=stride, padding=padding, use_bias=use_bias,
                              name="c")(inp)  # linear: the fit is the model's error
    model = keras.Model(inp, out)
    if use_bias:
        model.get_layer("c").bias.assign(np.linspace(-0.2, 0.3, 4).astype(np.float32))
    x = np.random.default_rng(2).normal(size=(9, 7, 7, 2)).astype(np.float32)
    res = share_weights(model, 4, refine="outputs", data=x)
    plain = share_weights(model, 4)
    pal = res.palettes[0]
    kq = to_numpy(plain.model.get_layer("c").kernel)
    vals = _values(model.get_layer("c"))
    xf = x.astype(np.float64)
    t = conv_nhwc(xf, vals[0], stride, padding) + (vals[1] if use_bias else 0.0)
    m = masks(to_numpy(plain.model.get_layer("c").kernel), plain.palettes[0])
    z = np.stack([conv_nhwc(xf, mk, stride, padding) for mk in m])
    p0 = conv_nhwc(xf, kq, stride, padding) + (vals[1] if use_bias else 0.0)
    assert "output-refined codebook" in pal.note, pal.note
    masked = "clipped outputs left out" in pal.note
    c, nb = ls_codebook(z.reshape(4, -1, 4), t.reshape(-1, 4), use_bias,
                        p0.reshape(-1, 4) if masked else None)
    np.testing.assert_allclose(pal.codebook[0, :, 0], c, rtol=1e-4, atol=1e-6)
    if use_bias:
        np.testing.assert_allclose(to_numpy(res.model.get_layer("c").bias), nb, rtol=1e-4,
                                   atol=1e-6)
    np.testing.assert_array_equal(to_numpy(res.model.get_layer("c").kernel), pal.decode())


@pytest.mark.parametrize("unit", ["row", "kernel"])
def test_vector_unit_codebook_equals_numpy_least_squares(unit):
    """Rows (d=3) or whole 3x3 kernels (d=9): K x d unknowns, one basis per (cluster, j)."""
    import dkm_tf

    keras.utils.set_random_seed(6)
    inp = keras.Input((7, 7, 2))
    out = keras.layers.Conv2D(4, 3, padding="same", name="c")(inp)
    model = keras.Model(inp, out)
    model.get_layer("c").bias.assign(np.linspace(-0.2, 0.3, 4).astype(np.float32))
    x = np.random.default_rng(7).normal(size=(12, 7, 7, 2)).astype(np.float32)
    plain = share_weights(model, 3, unit=unit)
    res = share_weights(model, 3, unit=unit, refine="outputs", data=x)
    pal, pal0 = res.palettes[0], plain.palettes[0]
    d = pal0.unit_dim
    assert d == (3 if unit == "row" else 9) and "output-refined codebook and bias" in pal.note
    units = dkm_tf.to_units(to_numpy(plain.model.get_layer("c").kernel), pal0.layout)
    units = units.reshape(-1, d)
    book = pal0.codebook[0]  # (K, d), read the membership off the clustered kernel
    member = np.array([np.flatnonzero((book == u).all(1))[0] for u in units])
    w, b = _values(model.get_layer("c"))
    xf = x.astype(np.float64)
    t = conv_nhwc(xf, w, 1, "same") + b
    z = []
    for k in range(3):
        for j in range(d):
            basis = np.zeros_like(units)
            basis[member == k, j] = 1.0
            mk = dkm_tf.from_units(basis.reshape(1, -1, d), pal0.layout)
            z.append(conv_nhwc(xf, np.asarray(mk, np.float64), 1, "same"))
    c, nb = ls_codebook(np.stack(z).reshape(3 * d, -1, 4), t.reshape(-1, 4), True)
    np.testing.assert_allclose(pal.codebook[0], c.reshape(3, d), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(res.model.get_layer("c").bias), nb, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(res.model.get_layer("c").kernel), pal.decode())
    np.testing.assert_array_equal(pal.indices, pal0.indices)  # assignment unchanged
    gptq = share_weights(model, 3, unit=unit, refine="gptq", data=x).palettes[0]
    assert "GPTQ assigns scalar units only" in gptq.note


# --------------------------------------------------------------------- what it leaves alone
def depthwise_nhwc(x, w):
    """Plain numpy 'valid' depthwise convolution, multiplier 1 (w: kh, kw, C, 1)."""
    return np.stack([conv_nhwc(x[..., c:c + 1], w[:, :, c:c + 1, :], 1, "valid")[..., 0]
                     for c in range(x.shape[-1])], -1)


@pytest.mark.parametrize("layer", ["dense", "depthwise"])
def test_per_channel_codebooks_equal_numpy_least_squares_per_channel(layer):
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(5)
    if layer == "dense":
        inp = keras.Input((7,))
        out = keras.layers.Dense(3, name="l")(inp)
        x = rng.normal(size=(50, 7)).astype(np.float32)
    else:
        inp = keras.Input((6, 6, 3))
        out = keras.layers.DepthwiseConv2D(3, name="l")(inp)
        x = rng.normal(size=(10, 6, 6, 3)).astype(np.float32)
    model = keras.Model(inp, out)
    model.get_layer("l").bias.assign(np.linspace(-0.3, 0.3, 3).astype(np.float32))
    kw = {"granularity": "per_channel"} if layer == "dense" else {}
    plain = share_weights(model, 3, **kw)
    res = share_weights(model, 3, refine="outputs", data=x, **kw)
    pal = res.palettes[0]
    assert pal.codebook.shape[0] == 3 and "output-refined codebook and bias" in pal.note
    w, b = _values(model.get_layer("l"))
    kq = to_numpy(plain.model.get_layer("l").kernel)
    xf = x.astype(np.float64)
    op = (lambda m: xf @ m) if layer == "dense" else (lambda m: depthwise_nhwc(xf, m))
    t = (op(w) + b).reshape(-1, 3)
    for ch in range(3):  # each output channel has its own K centroids and bias
        book = plain.palettes[0].codebook[ch, :, 0]
        sel = np.zeros_like(kq)  # dense: column ch; depthwise: channel ch (multiplier 1)
        sel[(..., ch) if layer == "dense" else (slice(None), slice(None), ch)] = 1.0
        m = [((kq == v) * sel).astype(np.float64) for v in book]
        z = np.stack([op(mk).reshape(-1, 3)[:, ch:ch + 1] for mk in m])
        want_c, want_b = ls_codebook(z, t[:, ch:ch + 1], True)
        np.testing.assert_allclose(pal.codebook[ch, :, 0], want_c, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(to_numpy(res.model.get_layer("l").bias)[ch], want_b[0],
                                   rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(res.model.get_layer("l").kernel), pal.decode())


def test_layers_and_palettes_it_cannot_update_are_reported():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 5, 3))
    h = keras.layers.SeparableConv2D(4, 3, name="sep")(inp)  # depthwise: per channel
    h = keras.layers.Reshape((9, 4))(h)
    out = keras.layers.LSTM(3, name="rnn")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).normal(size=(6, 5, 5, 3)).astype(np.float32)
    res = share_weights(model, 4, refine="outputs", data=x)
    notes = {p.name: p.note for p in res.palettes}
    # a per-channel codebook whose channel feeds every output (through the pointwise kernel)
    assert ("output refine not applied: per-channel codebooks are updated only where"
            in notes["sep/depthwise_kernel"])
    assert "output refine not applied" not in notes["sep/pointwise_kernel"]
    rnn = [n for name, n in notes.items() if name.startswith("rnn/")]
    assert rnn and all("LSTM is not linear in its kernel" in n for n in rnn)
    for pal in res.palettes:  # untouched or updated, the stored weights are the palettes
        layer = res.model.get_layer(pal.layer_name)
        stored = [v for v in layer.weights if v.path.endswith(pal.weight_name.split(".")[-1])
                  or v.path.endswith(pal.weight_name)]
        assert any(np.array_equal(to_numpy(v), pal.decode()) for v in stored), pal.name


def test_embedding_and_nested_models():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4, 8)), keras.layers.Dense(3, name="inner")],
                             name="sub")
    inp = keras.Input((4,), dtype="int32")
    h = keras.layers.Embedding(20, 8, name="emb")(inp)
    out = keras.layers.Dense(2, name="head")(inner(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).integers(0, 20, size=(16, 4)).astype(np.int32)
    res = share_weights(model, 4, refine="gptq", data=x)
    notes = {p.name: p.note for p in res.palettes}
    assert "output refine not applied" not in notes["emb/embeddings"]  # linear in its table
    assert "output-refined codebook and bias" in notes["head/kernel"]
    # a layer inside a nested model: its inputs are the nested model's, computed first
    assert "output refine not applied" not in notes["inner/kernel"], notes["inner/kernel"]
    # a nested model called twice: its layers' inputs are ambiguous, reported
    shared = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, name="twice")],
                              name="shared")
    a = keras.Input((3,))
    two = keras.Model(a, keras.layers.Dense(2, name="out")(shared(shared(a))))
    res2 = share_weights(two, 2, refine="outputs", data=np.ones((4, 3), np.float32))
    note = {p.name: p.note for p in res2.palettes}["twice/kernel"]
    assert "not applied: its inputs or outputs could not be evaluated" in note
    assert "called 2 times" in note
    for pal in res.palettes:
        assert np.unique(pal.decode()).size <= 4


@tf_backend_only()
@pytest.mark.parametrize("refine", ["outputs", "gptq"])
def test_batchnorm_is_folded_first_and_the_refined_model_exports_palettized(tmp_path, refine):
    from dkm_tf.export import to_tflite

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(3, name="fc")(h)
    model = keras.Model(inp, out)
    bn = model.get_layer("bn")
    bn.set_weights([np.full(4, 1.5), np.full(4, 0.1), np.linspace(-0.2, 0.2, 4),
                    np.full(4, 0.5)])
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)
    res = share_weights(model, 4, refine=refine, data=x)
    assert res.folded == [("conv", "bn")]
    assert all("output-refined" in p.note for p in res.palettes)
    ref = model.predict(x, verbose=0)
    plain = share_weights(model, 4)
    assert (np.mean((res.model.predict(x, verbose=0) - ref) ** 2)
            < np.mean((plain.model.predict(x, verbose=0) - ref) ** 2))
    report = to_tflite(res.model, tmp_path / "m.tflite", "palettized", res.palettes, x[:4])
    assert report.comparisons and all(c.ok for c in report.comparisons)


# --------------------------------------------------------------------- bad input
def test_bad_refine_arguments_raise_before_any_work():
    model = _dense_model()
    x = np.zeros((4, 6), np.float32)
    before = [to_numpy(v).copy() for v in model.weights]
    with pytest.raises(ValueError, match="argument `refine`.*'outputs'.*Received: refine='yes'"):
        share_weights(model, 3, refine="yes", data=x)
    with pytest.raises(ValueError, match="argument `data`.*needed by refine='outputs'"):
        share_weights(model, 3, refine="outputs")
    with pytest.raises(ValueError, match="argument `refine`.*inplace=True"):
        share_weights(model, 3, refine="outputs", data=x, inplace=True)
    with pytest.raises(ValueError, match="argument `refine`.*sparsity"):
        share_weights(model, 3, refine="outputs", data=x, sparsity=0.5)
    with pytest.raises(ValueError, match="argument `data`.*fit model.*shape \\(4, 5\\)"):
        share_weights(model, 3, refine="outputs", data=np.zeros((4, 5), np.float32))
    a, b = keras.Input((2,)), keras.Input((3,))
    two = keras.Model([a, b], keras.layers.Dense(1)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="argument `refine`.*exactly one input"):
        share_weights(two, 3, refine="outputs", data=x)
    with pytest.raises(ValueError, match="argument `data`.*None unless"):
        share_weights(model, 3, data=x)  # data without a use for it is still refused
    for v, b in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(v), b)


def test_data_as_x_y_tuple_and_with_fisher_weighting():
    model = _dense_model()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    a = share_weights(model, 3, refine="outputs", data=(x, None))
    b = share_weights(model, 3, refine="outputs", data=x)
    for pa, pb in zip(a.palettes, b.palettes):
        np.testing.assert_array_equal(pa.codebook, pb.codebook)
    c = share_weights(model, 3, refine="outputs", weighting="fisher", data=x)
    assert all("fisher-weighted" in p.note and "output-refined" in p.note for p in c.palettes)
