"""The codebook refit of ``share_weights(refine=...)`` in bounded memory, with the same results.

bench/results/scale19.md: ``refine="gptq"`` on a 2048 x 2048 Dense took 41x the kernel's
bytes. The refit (``refine._fits``) decoded all K 0/1 masks of every candidate palette at once
(K = 16, k-means and GPTQ assignment: 32 float32 kernels); ``gptq_palette`` passed a float64
copy of the kernel and kept its Hessian alive while ``gptq_assign`` permuted it. Now one mask
at a time, from the indices in kernel order; the float32 kernel; the Hessian summed in place and
freed once permuted; GPTQ's float64 working copy made after the inverse.

The references below are the code before (commit ecf140a), copied: the new code gives the
same fits (codebooks, biases, slots, SSEs) and GPTQ indices bit for bit, and the same
palettes, notes and weights end to end.
"""

import dataclasses
import os
import tracemalloc

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import tf_backend_only  # noqa: E402

from dkm_tf.core import units as units_lib  # noqa: E402
from dkm_tf.graph import calibration, gptq, refine, refine_targets  # noqa: E402
from dkm_tf.graph.clusterable import get_weight  # noqa: E402
from dkm_tf.graph.refine import _call, _channels_last, _solve  # noqa: E402
from dkm_tf.graph.share import share_weights  # noqa: E402

pytestmark = tf_backend_only()  # gptq_palette reads weights with .numpy()


# ------------------------------------------------------------ the code before, as reference
def _old_fits(pals, layer_f, layer_q, twin, xf, xq, batch_size, clips):
    ids = [id(v) for v in layer_q.weights]
    slot = ids.index(id(get_weight(layer_q, pals[0].weight_name)))
    bias = getattr(layer_q, "bias", None)
    b_slot = ids.index(id(bias)) if bias is not None and len(bias.shape) == 1 else None
    float_vals = [np.asarray(v.numpy()) for v in layer_f.weights]
    base = [np.asarray(v.numpy()) for v in layer_q.weights]
    kernel = base[slot]
    zero = np.zeros_like(kernel)
    base[slot] = zero
    b_old = None
    if b_slot is not None:
        b_old = base[b_slot].astype(np.float64)
        base[b_slot] = np.zeros_like(base[b_slot])

    def lin(xs, m):
        vals = list(base)
        vals[slot] = m
        return _call(twin, xs, vals)

    probe = xq[:min(batch_size, 8)]
    off = lin(probe, zero)
    a, b = lin(probe, kernel) - off, lin(probe, -kernel) - off
    if not np.allclose(a, -b, rtol=1e-4, atol=1e-6 * (np.abs(a).max() + 1e-30)):
        raise ValueError("its output is not linear in the kernel")
    if b_slot is not None and _channels_last(a, layer_q).shape[-1] != b_old.shape[0]:
        base[b_slot], b_slot, b_old = b_old.astype(base[b_slot].dtype), None, None
    groups, n_centroids, d = pals[0].codebook.shape
    k = n_centroids * d
    masks = [[dataclasses.replace(p, codebook=np.repeat(
        np.eye(k, dtype=np.float32)[i].reshape(1, n_centroids, d), groups, 0)).decode()
        for i in range(k)] for p in pals]
    stats = [[[0.0] * 6 for _ in clips] for _ in pals]
    chunk = calibration.chunk(a.size / len(probe) * (k * len(pals) + 4), batch_size)
    for lo in range(0, len(xq), chunk):
        xs_q = xq[lo:lo + chunk]
        off = lin(xs_q, zero)
        t_full = _call(twin, xf[lo:lo + chunk], float_vals)
        t = _channels_last(t_full - off, layer_q)
        weights = []
        for clip in clips:
            if clip is None:
                weights.append(np.ones_like(t))
                continue
            p0 = _channels_last(lin(xs_q, kernel), layer_q) + (0.0 if b_old is None else b_old)
            t0 = _channels_last(t_full, layer_q)
            weights.append(1.0 - (((t0 <= clip[0]) & (p0 <= clip[0]))
                                  | ((t0 >= clip[1]) & (p0 >= clip[1]))))
        for pal_masks, pal_stats in zip(masks, stats):
            z = np.stack([_channels_last(lin(xs_q, m) - off, layer_q) for m in pal_masks])
            for w, st in zip(weights, pal_stats):
                wz = z * w
                for i, v in enumerate((np.einsum("kpc,lpc->ckl", wz, z),
                                       np.einsum("kpc,pc->ck", wz, t), (w * t * t).sum(0),
                                       wz.sum(1), (w * t).sum(0), w.sum(0))):
                    st[i] = st[i] + v
    if groups not in (1, t.shape[-1]):
        raise ValueError(f"its {groups} codebooks are not one per output channel "
                         f"({t.shape[-1]})")
    return [[_solve(st, p.codebook.reshape(groups, k).astype(np.float64), b_slot, b_old)
             for st in pal_stats] for p, pal_stats in zip(pals, stats)]


def _old_gptq_assign(kernel, h, codebook, damp=gptq.DAMP, block=gptq.BLOCK):
    kernel, h = np.asarray(kernel), np.asarray(h, np.float64)
    book = np.asarray(codebook, np.float64)
    if book.ndim == 2:
        cols = np.arange(kernel.shape[1])

        def nearest(row):
            return np.argmin(np.abs(row[:, None] - book), axis=1)

        def value(row_idx):
            return book[cols, row_idx]
    else:
        order = np.argsort(book)
        cb = book[order]

        def nearest(row):
            return np.searchsorted((cb[:-1] + cb[1:]) / 2.0, row, side="left")

        def value(row_idx):
            return cb[row_idx]
    d = kernel.shape[0]
    dead = np.diag(h) == 0
    diag = np.where(dead, 1.0, np.diag(h))
    perm = np.argsort(-diag, kind="stable")
    w = kernel[perm].astype(np.float64, copy=False)
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(d)] = diag[perm]
    h[np.diag_indices(d)] += damp * float(np.mean(np.diag(h)))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    out = np.empty(w.shape, np.int32)
    for b0 in range(0, d, block):
        b1 = min(b0 + block, d)
        err = np.zeros((b1 - b0, w.shape[1]))
        for i in range(b0, b1):
            q = out[perm[i]] = nearest(w[i])
            e = (w[i] - value(q)) / u[i, i]
            w[i + 1:b1] -= np.outer(u[i, i + 1:b1], e)
            err[i - b0] = e
        w[b1:] -= u[b0:b1, b1:].T @ err
    return out if book.ndim == 2 else order.astype(np.int32)[out]


def _old_gptq_palette(pal, layer_f, layer_q, xq, batch_size):
    if pal.unit_dim != 1:
        return None, f"GPTQ assigns scalar units only, not {pal.layout.unit} units"
    kernel = np.asarray(get_weight(layer_f, pal.weight_name).numpy(), np.float64)
    if type(layer_q).__name__ == "Dense":
        def rows(xs):
            return xs.reshape(-1, kernel.shape[0])
    else:
        def rows(xs):
            return gptq.im2col(xs, layer_q.kernel_size, layer_q.strides,
                               layer_q.dilation_rate, layer_q.padding)
    chunk = calibration.chunk(rows(xq[:1]).size, batch_size)
    h = sum(gptq.hessian(rows(xq[lo:lo + chunk])) for lo in range(0, len(xq), chunk))
    book = pal.codebook[:, :, 0].astype(np.float64)
    idx = _old_gptq_assign(kernel.reshape(-1, kernel.shape[-1]), h,
                           book[0] if book.shape[0] == 1 else book)
    units = units_lib.to_units(idx.reshape(kernel.shape), pal.layout)[:, :, 0]
    return dataclasses.replace(pal, indices=units.astype(pal.indices.dtype)), ""


# ------------------------------------------------------------------------------ problems
def _model(kind, seed):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if kind == "embedding":
        inp = keras.Input((5,), dtype="int32")
        h = keras.layers.Embedding(30, 6, name="t")(inp)
        out = keras.layers.Dense(3)(keras.layers.Flatten()(h))
        return keras.Model(inp, out), rng.integers(0, 30, (9, 5)).astype(np.int32)
    if kind == "dense":
        inp = keras.Input((12,))
        h = keras.layers.Dense(10, activation="relu", name="t")(inp)
        x = rng.normal(size=(9, 12)).astype(np.float32)
    else:  # conv (scalar or k x k kernel units)
        inp = keras.Input((7, 7, 3))
        h = keras.layers.Conv2D(5, 3, strides=2, padding="same", activation="relu",
                                name="t")(inp)
        h = keras.layers.Flatten()(h)
        x = rng.normal(size=(9, 7, 7, 3)).astype(np.float32)
    model = keras.Model(inp, keras.layers.Dense(3)(h))
    model.get_layer("t").bias.assign(rng.normal(size=(model.get_layer("t").bias.shape[0],))
                                     .astype(np.float32) * 0.1)
    return model, x


def _problem(kind, k, n, kw, seed=0):
    """What refine_codebooks gives ``_fits`` for layer "t": palettes, layers, twin, inputs."""
    model, x = _model(kind, seed)
    x = x[:n]
    res = share_weights(model, k, **kw)
    pal = next(p for p in res.palettes if p.layer_name == "t")
    layer_f, layer_q = model.get_layer("t"), res.model.get_layer("t")
    xf = calibration.layer_inputs(model, layer_f, x, 64)
    xq = calibration.layer_inputs(res.model, layer_q, x, 64)
    return pal, layer_f, layer_q, xf, xq


def _same(a, b):
    """Bit for bit: arrays (dtype and bytes), floats, None, nested lists / tuples."""
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for u, v in zip(a, b):
            _same(u, v)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), (a, b)


CASES = [  # kind, K, samples, share_weights options
    ("dense", 16, 1, {}), ("dense", 16, 9, {}), ("dense", 2, 9, {"granularity": "per_channel"}),
    ("conv", 16, 1, {}), ("conv", 2, 9, {"granularity": "per_channel"}),
    ("conv", 2, 4, {"unit": "kernel"}), ("embedding", 16, 9, {}), ("embedding", 2, 1, {}),
]


@pytest.mark.parametrize("small_steps", [False, True])
@pytest.mark.parametrize(("kind", "k", "n", "kw"), CASES)
def test_fits_and_gptq_indices_equal_the_code_before_bit_for_bit(kind, k, n, kw, small_steps,
                                                                 monkeypatch):
    if small_steps:  # one sample per step: several chunks summed (fits and Hessian)
        monkeypatch.setattr(calibration, "MEMORY", 64)
    pal, layer_f, layer_q, xf, xq = _problem(kind, k, n, kw)
    pals = [pal]
    if kind != "embedding" and pal.unit_dim == 1:
        g_new, why = refine_targets.gptq_palette(pal, layer_f, layer_q, xq, 64)
        g_old, _ = _old_gptq_palette(pal, layer_f, layer_q, xq, 64)
        assert why == "" and g_new.indices.dtype == pal.indices.dtype
        _same(g_new.indices, g_old.indices)
        pals.append(g_new)
    clips = (None, (0.0, np.inf)) if kind != "embedding" else (None,)
    twin = refine._twin(layer_q, xq)
    new = refine._fits(pals, layer_f, layer_q, twin, xf, xq, 64, clips)
    old = _old_fits(pals, layer_f, layer_q, twin, xf, xq, 64, clips)
    assert len(new) == len(pals) and all(len(f) == len(clips) for f in new)
    _same(new, old)


@pytest.mark.parametrize(("kind", "n"), [("dense", 3), ("conv", 9)])
def test_share_weights_gptq_end_to_end_equals_the_code_before(kind, n, monkeypatch):
    model, x = _model(kind, 3)
    new = share_weights(model, 16, refine="gptq", data=x[:n])
    monkeypatch.setattr(refine, "_fits", _old_fits)
    monkeypatch.setattr(refine, "gptq_palette", _old_gptq_palette)
    old = share_weights(model, 16, refine="gptq", data=x[:n])
    assert any("GPTQ assignment" in p.note for p in new.palettes)
    for p, q in zip(new.palettes, old.palettes, strict=True):
        assert p.note == q.note
        _same([p.codebook, p.indices], [q.codebook, q.indices])
    for v, w in zip(new.model.weights, old.model.weights, strict=True):
        _same(np.asarray(v.numpy()), np.asarray(w.numpy()))


# ------------------------------------------------------------------------------- memory
def _traced_peak(fn):
    """(result, peak bytes of numpy allocations while ``fn()`` runs, above those before)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_refit_and_gptq_memory_is_a_few_kernels_not_k():
    """A 512 x 512 Dense (1 MiB float32), K = 16, the k-means and the GPTQ palette (numpy's
    allocations, tracemalloc): the code before held 32 masks in ``_fits`` (measured 43x the
    kernel) and 11x in ``gptq_palette``; now 11.5x (4x of it the per-channel K x K sums,
    C K^2: not the kernel's size) and 8x (the d_in x d_in Hessian is 2x here: GPTQ's own)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((512,))
    model = keras.Model(inp, keras.layers.Dense(512, activation="relu", name="t")(inp))
    x = np.random.default_rng(1).normal(size=(8, 512)).astype(np.float32)
    res = share_weights(model, 16)
    pal, layer_f, layer_q = res.palettes[0], model.get_layer("t"), res.model.get_layer("t")
    xf = calibration.layer_inputs(model, layer_f, x, 64)
    xq = calibration.layer_inputs(res.model, layer_q, x, 64)
    twin = refine._twin(layer_q, xq)
    kernel_bytes = 512 * 512 * 4
    (g_pal, _), g_peak = _traced_peak(
        lambda: refine_targets.gptq_palette(pal, layer_f, layer_q, xq, 64))
    fits, f_peak = _traced_peak(lambda: refine._fits(
        [pal, g_pal], layer_f, layer_q, twin, xf, xq, 64, (None, (0.0, np.inf))))
    assert len(fits) == 2
    assert f_peak < 16 * kernel_bytes, f"_fits: {f_peak / kernel_bytes:.1f}x the kernel"
    assert g_peak < 9.5 * kernel_bytes, f"gptq_palette: {g_peak / kernel_bytes:.1f}x the kernel"
