"""Kernel clustering with scaled kernel units (Son, Nah, Lee, ECCV 2018), numpy only.

The unit is one 2-D spatial kernel ``w_oi = kernel[:, :, i, o]`` of a Keras conv kernel of shape
(kh, kw, cin, cout) (methods §2.2):

* scale ``s_oi = sign(w_oi[centre]) * ||w_oi||_2`` and normalised kernel ``w_oi / s_oi`` (unit
  norm, positive centre tap). The *centre* tap is ``((kh - 1) // 2, (kw - 1) // 2)``: the true
  centre for odd sizes; for even sizes the tap that TensorFlow's ``"same"`` padding aligns with
  the output pixel (it pads ``(k - 1) // 2`` before). A zero centre tap counts as positive. A
  zero kernel gets scale 0 and index 0 and is left out of k-means (the paper does the same
  for pruned kernels).
* k-means (:func:`dkm_tf.core.kmeans.vector_kmeans`) on the normalised kernels, K centroids
  ``mu_k`` shared by every kernel given (one layer, or a whole network: a shared codebook).
* Transform-invariant clustering (TIC, methods §2.3) with ``transforms = T`` in 1, 2, 4, 8:
  each kernel goes to the nearest pair (centroid, transform) ``T_t(mu_k)``; the update
  inverse-transforms every member to the centroid's orientation and averages. Transforms
  (:func:`apply_transform`): 0 identity, 1 hflip, 2 vflip, 3 rot180, 4..7 the same followed by
  a 90-degree turn (T = 8 needs square kernels). The stored index is ``k + K t``: log2 K +
  log2 T bits.
* After clustering each scale is refitted by least squares, ``s = <w, T_t(mu)> / ||mu||^2``
  (``refit_scales=True``; the paper keeps the norm and lets fine-tuning adjust it), then
  stored at ``scale_bits``: 16 (float16, the paper's), 8 (int8 fixed point with one float32
  step per layer, ``step = max |s| / 127``; a non-zero scale never rounds to 0: |q| >= 1, so
  one below half a step is raised to one whole step, noted) or 32 (float32). The kernels
  are normalised by their *stored* scale, so decoding is ``W_oi = s_oi T_t(mu_k)`` and
  with K = the number of kernels it gives the kernels back to float32 rounding.

Size (methods §2.5): ``N (log2 K + log2 T + b_s) + K h w 32`` bits, the codebook counted once
(:func:`kernel_bits`); the paper's CIFAR VGG-16 (1,634,496 3x3 kernels, K = 256, 16-bit
scales) comes to 24 bits per kernel, 4.91 MB, 12.0x.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.kernel_palette import (
    SCALE_BITS,
    TRANSFORM_COUNTS,
    apply_transform,
    decode_scaled,
    inverse_transform,
)
from dkm_tf.core.validate import (
    check_bool,
    check_choice,
    check_hw,
    check_int,
    check_n_clusters,
    check_seed,
    invalid,
    is_int,
)

__all__ = ["SCALE_BITS", "TRANSFORM_COUNTS", "KernelAssignment", "apply_transform",
           "centre_tap", "cluster_kernels", "decode_scaled", "inverse_transform",
           "kernel_bits", "kernel_factors", "kernel_scales", "quantize_scales"]

_CHUNK = 16_384


def _check_scale_bits(scale_bits):
    if not is_int(scale_bits):  # 16.0 == 16 would pass the choice
        raise invalid("scale_bits", f"one of {list(SCALE_BITS)} (an int)", scale_bits)
    check_choice("scale_bits", scale_bits, SCALE_BITS)
    return int(scale_bits)


def _check_transforms(transforms, kh, kw):
    if not is_int(transforms):  # True == 1 and 2.0 == 2 would pass the choice
        raise invalid("transforms", f"one of {list(TRANSFORM_COUNTS)} (an int)", transforms)
    check_choice("transforms", transforms, TRANSFORM_COUNTS)
    if transforms == 8 and kh != kw:
        raise invalid("transforms", f"1, 2 or 4 for non-square {kh}x{kw} kernels (8 includes "
                      "90-degree turns)", transforms)
    return int(transforms)


# ----------------------------------------------------------------------------- scales
def centre_tap(kh, kw):
    """The tap whose sign fixes a kernel's scale: ((kh - 1) // 2, (kw - 1) // 2)."""
    return (kh - 1) // 2, (kw - 1) // 2


def kernel_scales(kernels):
    """``s = sign(w[centre]) ||w||_2`` of kernels (N, kh, kw) (sign(0) taken as +1), float64."""
    k = np.asarray(kernels, np.float64)
    ci, cj = centre_tap(k.shape[-2], k.shape[-1])
    norm = np.sqrt(np.sum(k * k, axis=(-2, -1)))
    return np.where(k[..., ci, cj] < 0, -norm, norm)


def quantize_scales(scales, scale_bits=16):
    """Scales as stored: ``(values float32, step or None)``.

    16: float16 values (|s| <= 65504); 8: ``q = round(s / step)`` clipped to [-127, 127] with
    ``step = max |s| / 127`` (one per call, i.e. per layer) and |q| >= 1 for s != 0, values
    ``q step``; 32: float32.
    """
    check_choice("scale_bits", scale_bits, SCALE_BITS)
    s = np.asarray(scales, np.float64)
    if scale_bits == 32:
        return s.astype(np.float32), None
    if scale_bits == 16:
        if s.size and np.max(np.abs(s)) > 65504:
            raise ValueError(f"Invalid value for argument `scale_bits`. Expected 32 for kernel "
                             f"norms above float16's 65504. Received: scale_bits=16 with a "
                             f"largest norm of {np.max(np.abs(s)):.4g}")
        return s.astype(np.float16).astype(np.float32), None
    top = float(np.max(np.abs(s))) if s.size else 0.0
    step = np.float32(top / 127.0) if top > 0 else np.float32(1.0)
    q = np.clip(np.round(s / step), -127, 127)
    q = np.where((q == 0) & (s != 0), np.sign(s), q)
    return (q * step).astype(np.float32), float(step)


# ----------------------------------------------------------------------------- k-means
def _nearest(x, c):
    """Nearest row of c (J, d) for each row of x (N, d), with the squared distance.

    Float32 ``[x, 1] @ [-2 c^T; ||c||^2]`` in row blocks (one matmul per block; far faster
    than float64 ``x @ c.T`` for d = 9 on OpenBLAS); ties and rounding at 1e-7 relative.
    """
    ca = np.vstack([-2.0 * c.T, np.sum(c * c, axis=1)[None]]).astype(np.float32)
    idx = np.empty(x.shape[0], np.int64)
    best = np.empty(x.shape[0], np.float64)
    for s in range(0, x.shape[0], _CHUNK):
        blk = x[s:s + _CHUNK]
        xa = np.hstack([blk, np.ones((blk.shape[0], 1))]).astype(np.float32)
        d2 = xa @ ca
        j = np.argmin(d2, axis=1)
        idx[s:s + _CHUNK] = j
        best[s:s + _CHUNK] = d2[np.arange(j.size), j]
    return idx, np.maximum(best + np.sum(x * x, axis=1), 0.0)


def _tic_kmeans(units, k, n_t, init, seed, max_iter):
    """TIC k-means of units (N, kh, kw): codebook (K', kh, kw), centroid ids, transform ids."""
    n, kh, kw = units.shape
    flat = units.reshape(n, -1)
    # start from plain k-means of canonical orientations: each unit turned by the transform
    # whose image has the largest projection on a fixed random kernel r; the images of a
    # unit's orbit are the same set for every member, so they all turn to the same pose
    r = np.random.default_rng(seed).standard_normal((kh, kw))
    t = np.argmax([np.sum(inverse_transform(units, j) * r, axis=(1, 2)) for j in range(n_t)],
                  axis=0)
    canon = _canonical(units, t, n_t)
    cb, idx = kmeans_lib.vector_kmeans(canon.reshape(n, -1), k, init=init, seed=seed,
                                       max_iter=max_iter)
    cb = cb.astype(np.float64).reshape(-1, kh, kw)
    k = cb.shape[0]
    idx = idx.astype(np.int64)
    for it in range(max_iter + 1):
        table = np.concatenate([apply_transform(cb, j).reshape(k, -1) for j in range(n_t)])
        j, dist = _nearest(flat, table)
        new_idx, new_t = j % k, j // k
        if it and np.array_equal(new_idx, idx) and np.array_equal(new_t, t):
            break
        idx, t = new_idx, new_t
        if it == max_iter:
            break
        canon = _canonical(units, t, n_t)
        counts = np.bincount(idx, minlength=k)
        sums = np.stack([np.bincount(idx, weights=canon.reshape(n, -1)[:, d], minlength=k)
                         for d in range(kh * kw)], axis=1)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                       cb.reshape(k, -1))
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # re-seed empty clusters at the worst-fit units
            new[empty] = canon.reshape(n, -1)[np.argsort(dist)[::-1][:empty.size]]
        cb = new.reshape(k, kh, kw)
    used = np.flatnonzero(np.bincount(idx, minlength=k))
    remap = np.full(k, -1, np.int64)
    remap[used] = np.arange(used.size)
    return cb[used].astype(np.float32), remap[idx], t


def _canonical(units, t, n_t):
    """``T_t^-1(unit)`` per unit: every member turned back to its centroid's orientation."""
    out = np.empty_like(units)
    for j in range(n_t):
        m = t == j
        out[m] = inverse_transform(units[m], j)
    return out


@dataclasses.dataclass(frozen=True)
class KernelAssignment:
    """One conv kernel's share of a kernel codebook; arrays over units in (cout, cin) order.

    Attributes:
        kernel_shape: the Keras kernel shape (kh, kw, cin, cout).
        indices: int32 (cout * cin,) centroid ids (0 for a zero kernel).
        transforms: int32 (cout * cin,) transform ids, or None for T = 1.
        scales: float32 (cout * cin,) stored scales (0 for a zero kernel).
        scale_step: the int8 step of ``scale_bits=8``, else None.
    """

    kernel_shape: tuple
    indices: np.ndarray
    transforms: np.ndarray | None
    scales: np.ndarray
    scale_step: float | None = None


def _units_of(kernel):
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(f"Invalid value for argument `kernels`. Expected Conv2D kernels "
                         f"(kh, kw, cin, cout). Received: a kernel of shape {kernel.shape}")
    lay = units_lib.layout_for(kernel.shape, "conv", "kernel", "per_tensor")
    return units_lib.to_units(kernel, lay)[0].reshape(-1, *kernel.shape[:2])


def cluster_kernels(kernels, n_clusters, *, transforms=1, scale_bits=16, init="kmeans++",
                    seed=0, max_iter=50, refit_scales=True, name=None):
    """Cluster the spatial kernels of one or more conv kernels into ONE codebook.

    Args:
        kernels: list of Keras Conv2D kernels (kh, kw, cin, cout), all the same kh x kw.
        n_clusters: K; a group with fewer non-zero kernels gets one centroid per kernel (K'
            = their number, lossless), as the scalar path caps K at the distinct values.
        transforms: T in 1, 2, 4, 8 (TIC).
        scale_bits: 16, 8 or 32 (see :func:`quantize_scales`).
        init: k-means initialisation (:data:`dkm_tf.core.kmeans.INITS`).
        seed: random seed.
        max_iter: Lloyd iterations.
        refit_scales: least-squares scales after clustering (see the module docstring).
        name: what is clustered, for messages.

    Returns:
        ``(codebook, assignments)``: float32 (K', kh, kw) centroids (K' <= K when there are
        fewer distinct normalised kernels, lossless) and one :class:`KernelAssignment` per
        kernel, in order.
    """
    k = check_n_clusters(n_clusters)
    _check_scale_bits(scale_bits)
    check_choice("init", init, kmeans_lib.INITS)
    check_int("max_iter", max_iter, minimum=1)
    seed = check_seed(seed)  # None, True, [0] were accepted; "0" a raw numpy error
    refit_scales = check_bool("refit_scales", refit_scales)  # "no" was truthy: refitted
    if not isinstance(kernels, (list, tuple)) or not kernels:
        raise invalid("kernels", "a non-empty list of Conv2D kernels", kernels)
    per = [_units_of(w) for w in kernels]
    sizes = sorted({u.shape[1:] for u in per})
    if len(sizes) != 1:
        raise ValueError(f"Invalid value for argument `kernels`. Expected one kernel size per "
                         f"shared codebook (group convs by size). Received sizes {sizes}"
                         + (f" in {name}" if name else ""))
    kh, kw = sizes[0]
    n_t = _check_transforms(transforms, kh, kw)
    stored = []
    for u in per:  # normalise each kernel by its stored (quantised) scale
        q, step = quantize_scales(kernel_scales(u), scale_bits)
        stored.append((q, step))
    allu = np.concatenate([u.astype(np.float64) for u in per])
    alls = np.concatenate([q for q, _ in stored]).astype(np.float64)
    live = alls != 0
    n_live = int(live.sum())
    if not n_live:
        top = float(np.max(np.abs(kernel_scales(allu))))
        got = "only zero kernels" if top == 0 else (
            f"kernels of norms up to {top:.3g}, whose scales round to 0 at scale_bits="
            f"{scale_bits} (use scale_bits=32)")
        raise invalid("kernels", f"at least one non-zero {kh}x{kw} kernel"
                      + (f" in {name}" if name else ""), got)
    k = min(k, n_live)  # a small group (a 7x7 stem: 192 kernels) gets one centroid per kernel
    normed = allu[live] / alls[live][:, None, None]
    if n_t == 1:
        cb, idx_live = kmeans_lib.vector_kmeans(normed.reshape(n_live, -1), k, init=init,
                                                seed=seed, max_iter=max_iter, name=name)
        cb, t_live = cb.reshape(-1, kh, kw), np.zeros(n_live, np.int64)
    else:
        cb, idx_live, t_live = _tic_kmeans(normed, k, n_t, init, seed, max_iter)
    n_all = allu.shape[0]
    idx = np.zeros(n_all, np.int64)
    tid = np.zeros(n_all, np.int64)
    idx[live], tid[live] = idx_live, t_live
    out, start = [], 0
    for w, u, (q, step) in zip(kernels, per, stored):
        sl = slice(start, start + u.shape[0])
        start += u.shape[0]
        li, lt, scales = idx[sl], tid[sl], q
        if refit_scales:
            proto = _transformed(cb.astype(np.float64), li, lt, n_t)
            num = np.sum(proto * u, axis=(1, 2))
            den = np.maximum(np.sum(proto * proto, axis=(1, 2)), 1e-30)
            fit = np.where(q != 0, num / den, 0.0)
            scales, step = quantize_scales(fit, scale_bits)
        out.append(KernelAssignment(tuple(np.shape(w)), li.astype(np.int32),
                                    lt.astype(np.int32) if n_t > 1 else None,
                                    scales.astype(np.float32), step))
    return cb.astype(np.float32), out


def _transformed(cb, idx, t, n_t):
    """``T_t(cb[idx])`` per unit (N, kh, kw)."""
    proto = cb[idx]
    if n_t > 1:
        for j in range(1, n_t):
            m = t == j
            if m.any():
                proto[m] = apply_transform(proto[m], j)
    return proto


# ----------------------------------------------------------------------------- factors
def kernel_factors(palette):
    """The factors of a 2-D kernel palette, for a factorised convolution.

    Args:
        palette: a per-tensor ``unit="kernel"`` Conv2D :class:`~dkm_tf.core.palette.Palette`
            (kernel (kh, kw, cin, cout)), scaled and transformed or plain.

    Returns:
        ``(codebook, indices, transforms, scales)``: float32 (K, kh, kw), int32 (cin, cout),
        int32 (cin, cout) or None, float32 (cin, cout), such that ``palette.decode()[:, :, i,
        o] == scales[i, o] * apply_transform(codebook[indices[i, o]], transforms[i, o])``
        (t = 0 when None; scales are ones for an unscaled kernel palette). New arrays: an
        edit of one changes neither the palette nor the other results.

    Raises:
        ValueError: not a per-tensor kernel-unit Conv2D palette.
    """
    lay = getattr(palette, "layout", None)
    if (lay is None or lay.unit != "kernel" or lay.kind != "conv" or lay.granularity !=
            "per_tensor" or len(lay.kernel_shape) != 4):
        raise invalid("palette", "a per-tensor unit='kernel' Conv2D palette", palette)
    kh, kw, cin, cout = lay.kernel_shape
    cb = np.array(palette.codebook[0], np.float32).reshape(-1, kh, kw)  # copies, not views

    def cin_cout(a):  # units are in (cout, cin) order
        return np.asarray(a).reshape(cout, cin).T

    idx = cin_cout(palette.indices).astype(np.int32)
    t = getattr(palette, "transforms", None)
    s = getattr(palette, "scales", None)
    scales = (np.ones((cin, cout), np.float32) if s is None
              else np.array(cin_cout(s), np.float32, order="C"))
    return cb, np.ascontiguousarray(idx), None if t is None else np.ascontiguousarray(
        cin_cout(t).astype(np.int32)), scales


# ----------------------------------------------------------------------------- sizes
def kernel_bits(n_kernels, n_clusters, kernel_size=(3, 3), transforms=1, scale_bits=16,
                codebook_bits=32):
    """Bits of a kernel-clustered network (Son et al., ECCV 2018; methods.md §2.5).

    ``N (log2 K + log2 T + b_s) + K h w b``, the one shared codebook counted once.

    Args:
        n_kernels: N, the 2-D kernels clustered (cin x cout summed over the layers), >= 1.
        n_clusters: K, the codebook's kernels, >= 1.
        kernel_size: ``(h, w)`` or one int for a square kernel (as Keras' ``Conv2D`` takes it).
        transforms: T, one of 1, 2, 4, 8 (8, with 90-degree turns, needs a square kernel).
        scale_bits: b_s, bits of one stored per-kernel scale: 8, 16 or 32.
        codebook_bits: b, bits of one codebook entry, an integer in [1, 64] (default 32).

    Returns:
        dict with ``bits``, ``bytes``, ``bits_per_kernel``, ``original_bits`` (N h w 32) and
        ``ratio``.
    """
    n_kernels = check_int("n_kernels", n_kernels, minimum=1)
    k = check_n_clusters(n_clusters)
    if isinstance(kernel_size, np.ndarray) and kernel_size.ndim == 1:  # np.array([3, 3])
        kernel_size = tuple(kernel_size.tolist())
    kh, kw = check_hw("kernel_size", kernel_size)  # 0, (2, 2, 2), 2.5 were accepted
    transforms = _check_transforms(transforms, kh, kw)
    scale_bits = _check_scale_bits(scale_bits)  # -100 gave negative bytes
    codebook_bits = check_int("codebook_bits", codebook_bits, minimum=1, maximum=64)
    hw = kh * kw
    per = math.log2(k) + math.log2(transforms) + scale_bits
    bits = n_kernels * per + k * hw * codebook_bits
    orig = n_kernels * hw * 32
    return {"bits": bits, "bytes": bits / 8, "bits_per_kernel": per, "original_bits": orig,
            "ratio": orig / bits}
