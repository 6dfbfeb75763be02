"""Output-aware codebook update for post-training weight sharing (``share_weights(refine=...)``).

k-means (plain or Fisher-weighted) chooses the centroids that best approximate the *weights*.
What matters is the layer's *output*. With the assignments fixed, a layer whose pre-activation
output is linear in its kernel (Dense, convolutions, EinsumDense, Embedding) has an output
error that is a quadratic function of the K centroids, so the centroids that minimise it are
the solution of a K x K least-squares problem. For calibration inputs, writing ``M_k`` for the
0/1 mask of the weights in cluster k and ``lin(X, M)`` for the layer's pre-activation output
without bias,

    Z_k = lin(X_q, M_k),        T = lin(X_f, W) + b,
    min_{c, b'}  || sum_k c_k Z_k + b' - T ||^2

where ``X_f`` are the layer's inputs in the float model, ``X_q`` its inputs in the clustered
model with every earlier layer already updated (sequential, as GPTQ, Frantar et al. 2023, §3,
so each layer also absorbs the error of the ones before it), ``W`` and ``b`` the float kernel
and bias, and ``b'`` the new bias. A 1-D bias over the output channels is solved jointly
(closed form: ``b'_j = mean_j(T - sum_k c_k Z_k)``, the empirical bias correction of Nagel et
al., ICCV 2019, §4.2); otherwise the bias is kept. With per-channel means ``S``, the centroids
solve ``(G - S S^T / n + lam I) c = H - S s_T / n + lam c0`` (``G_kl = <Z_k, Z_l>``,
``H_k = <Z_k, T>``), a ridge ``lam`` (1e-6 of the mean diagonal) towards the k-means centroids
``c0`` keeping empty or collinear clusters where they were. The update is the codebook update
step of GPTVQ (van Baalen et al., 2024, §3.3), in closed form.

Candidates and the guard. A layer-wise fit is not the model's error, so each layer tries a few fits
and keeps the one that gives the **model's** outputs the lowest error against the float model's on
the calibration inputs (mean KL(float || clustered) when the outputs are probability distributions,
else the mean squared error), and only if that error is below the one before the update (else the
k-means codebook stays, and the note says so): the error of the model's outputs never rises, layer
after layer, on the calibration inputs. On other inputs it may: a small calibration set is
over-fitted (the digits CNN at K=4: a held-out KL of 0.039-0.26 on 1-8 samples against plain
k-means' 0.037 and 0.024-0.027 on 16; HED 64 x 64, K=16: 0.176 on one sample, 0.048 plain, 0.040 on
four). Judging the fits on held-out calibration samples did not catch it (a fit on 1-4 of 2-8
samples passed on the others); so with one sample the k-means codebooks stay, and below
:data:`MIN_SAMPLES` the notes say how few samples there were. The fits tried: all pre-activation
outputs counted; for a layer with a fused ReLU (or ReLU6), also the fit that leaves out the output
elements the activation clips in both the float and the k-means model (both pre-activations <= 0,
or both >= 6), whose error never reaches the next layer; and with ``refine="gptq"``, each of these
also with the weights of a Dense or Conv2D kernel re-assigned to the k-means centroids by GPTQ
(:mod:`dkm_tf.graph.gptq`, error feedback through the inverse Hessian of the same layer-wise loss).
``refine="gptq"`` tries a superset of ``"outputs"``'s fits, so on a single layer its model error is
never above it. Cost: one forward pass of the calibration inputs per fit tried and per layer, plus
the layer's own K + 2 evaluations.

A ``TimeDistributed`` of such a layer is fitted as the layer it wraps, its inputs those of the
wrapper with the time axis folded into the batch (as the wrapper calls it): the same fit as
the plain layer's on those inputs (two Dense(relu) -> Dense layers at K = 4 on 32 samples of 3
steps: output MSE 6.72 with k-means, 4.93 refined, 4.69 with GPTQ; until 2026-12-07 it was
left at k-means, "a weight inside a TimeDistributed").

Applies to the palettes of those layers: one codebook per tensor, or one per output channel
(per-channel Dense / conv kernels, depthwise kernels), where the fit decouples into one solve
per channel, each with its channel's bias. Vector units (rows or k x k kernels of d weights)
are the same problem with K d unknowns: ``M_kj`` is the mask of coordinate j of the units in
cluster k, and the solve is K d x K d (GPTQ's re-assignment is for scalar units only). Any
other palette (a separable conv's per-channel depthwise kernel, whose channels all reach every
output through the pointwise kernel; scaled or transformed kernel units; a float16 kernel; a
layer that is not linear in its kernel) is left as k-means made it, and its note says why; so
is every layer whose update would not lower the model's output error. The notes give the
errors before and after. Every calibration sample counts equally: ``data=(x, y,
sample_weight)``, which ``weighting="fisher"`` takes, is refused (repeat samples to weigh them).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core import units as units_lib
from dkm_tf.graph import calibration
from dkm_tf.graph.clusterable import get_weight
from dkm_tf.graph.refine_check import REFINES, check_refine
from dkm_tf.graph.refine_targets import calls_in, gptq_palette, pair_layers

__all__ = ["LINEAR_LAYERS", "MIN_SAMPLES", "REFINES", "check_refine", "few_samples_note",
           "refine_codebooks"]
# layers whose pre-activation output is linear in each of their kernels (the others fixed)
LINEAR_LAYERS = ("Dense", "EinsumDense", "Embedding", "Conv1D", "Conv2D", "Conv3D",
                 "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D",
                 "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")
RIDGE = 1e-6
# calibration samples below which the fits over-fitted them (module docstring): a note says so
MIN_SAMPLES = 16
_CLIPS = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0)}  # fused activations that clip


def _twin(layer, x):
    """A copy of ``layer`` without its activation, built on ``x``: its pre-activation."""
    cfg = dict(layer.get_config())
    if "activation" in cfg:
        cfg["activation"] = None
    cfg["name"] = f"{layer.name}_refine_twin"
    twin = type(layer).from_config(cfg)
    twin(x[:1])
    if [tuple(v.shape) for v in twin.weights] != [tuple(v.shape) for v in layer.weights]:
        raise ValueError("its copy creates different weights")
    return twin


def _call(twin, x, values):
    import keras  # noqa: PLC0415

    with keras.StatelessScope(state_mapping=list(zip(twin.weights, values))):
        return keras.ops.convert_to_numpy(twin(x)).astype(np.float64)


def _channels_last(y, layer):
    if getattr(layer, "data_format", "channels_last") == "channels_first" and y.ndim > 2:
        y = np.moveaxis(y, 1, -1)
    return y.reshape(-1, y.shape[-1])


def _why_not(pal, layer, var):
    if type(layer).__name__ not in LINEAR_LAYERS:
        owner = get_weight(layer, pal.weight_name.rpartition(".")[0]) if "." in \
            pal.weight_name else None  # MultiHeadAttention's value_dense: linear, but inside
        if type(owner).__name__ in LINEAR_LAYERS:
            return (f"{pal.weight_name} is a weight inside a {type(layer).__name__}, not of "
                    "a linear layer of the model's graph")
        return f"{type(layer).__name__} is not linear in its kernel"
    if pal.codebook.shape[0] != 1 and (type(layer).__name__ == "EinsumDense" or (
            type(layer).__name__.startswith("SeparableConv")
            and pal.weight_name == "depthwise_kernel")):
        return ("per-channel codebooks are updated only where each feeds one output channel "
                "(not a separable conv's depthwise kernel or an EinsumDense)")
    if pal.preserve_sparsity or pal.scales is not None or pal.n_transforms != 1:
        return "palettes with a fixed zero, scales or transforms are not updated"
    if str(var.dtype) != "float32":
        return f"a {var.dtype} kernel is not updated"
    return None


def _clip(layer):
    """The clipping range of the layer's fused ReLU / ReLU6, or None."""
    return _CLIPS.get(getattr(getattr(layer, "activation", None), "__name__", ""))


def _codes(pal):
    """``pal``'s unknown of each kernel weight, ``index * d + coordinate``, in the kernel's
    layout and C order (1 or 2 bytes a weight for K d <= 65,536: fast to compare)."""
    idx = pal.indices[:, :, None]
    if pal.unit_dim > 1:
        idx = idx.astype(np.min_scalar_type(pal.codebook.shape[1] * pal.unit_dim)) \
            * pal.unit_dim + np.arange(pal.unit_dim, dtype=np.min_scalar_type(pal.unit_dim))
    return np.ascontiguousarray(units_lib.from_units(idx, pal.layout))


def _mask(code, i):
    """The 0/1 float32 kernel of unknown ``i`` (the palette decoded with codebook entry i at 1
    and every other at 0, bit for bit), made when needed: one kernel at a time, not K."""
    out = np.empty(code.shape, np.float32)
    np.equal(code, i, out=out)
    return out


def _fits(pals, layer_f, layer_q, twin, xf, xq, batch_size, clips):
    """Least-squares fits of palettes ``pals`` (same weight, other assignments), one per
    output weighting of ``clips`` (None: every output counts; a clipping range: the outputs
    a fused ReLU clips in both models do not), from one pass over the calibration inputs:
    ``[[(codebook (G, K), bias or None, bias slot, SSE before, SSE after), ...], ...]``
    (G = 1, or one codebook per output channel: the fit decouples into one per channel)."""
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

    def lin(xs, m):  # the output with kernel m (and the bias solved for at 0)
        vals = list(base)
        vals[slot] = m
        return _call(twin, xs, vals)

    probe = xq[:min(batch_size, 8)]  # linearity: lin(X, -W) - off = -(lin(X, W) - off)
    off = lin(probe, zero)
    a, b = lin(probe, kernel) - off, lin(probe, -kernel) - off
    if not np.allclose(a, -b, rtol=1e-4, atol=1e-6 * (np.abs(a).max() + 1e-30)):
        raise ValueError("its output is not linear in the kernel")
    if b_slot is not None and _channels_last(a, layer_q).shape[-1] != b_old.shape[0]:
        base[b_slot], b_slot, b_old = b_old.astype(base[b_slot].dtype), None, None  # kept
    groups, n_centroids, d = pals[0].codebook.shape
    k = n_centroids * d  # the fit's unknowns per codebook: K centroids of d values
    codes = [_codes(p) for p in pals]
    stats = [[[0.0] * 6 for _ in clips] for _ in pals]  # G, H, TT, S, T_sum, N per channel
    # float64 outputs held at once: K masks per palette, target, offset, weights
    chunk = calibration.chunk(a.size / len(probe) * (k * len(pals) + 4), batch_size)
    for lo in range(0, len(xq), chunk):
        xs_q = xq[lo:lo + chunk]
        off = lin(xs_q, zero)  # what the kernel does not produce (a kept bias)
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
        for code, pal_stats in zip(codes, stats):
            z = np.stack([_channels_last(lin(xs_q, _mask(code, i)) - off, layer_q)
                          for i in range(k)])
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


def _solve(stats, c0, b_slot, b_old):
    """The fit of :func:`_fits` from its per-channel sums, starting from centroids ``c0``."""
    g, h, tt, s, t_sum, n = stats
    groups, k = c0.shape

    def sse(cm, bvec):  # cm: (C, K), the centroids that reach each output channel
        e = np.einsum("ck,ckl,cl->c", cm, g, cm) - 2 * np.einsum("ck,ck->c", cm, h) + tt
        if bvec is not None:
            e = e + 2 * bvec * (np.einsum("ck,kc->c", cm, s) - t_sum) + n * bvec * bvec
        return max(float(e.sum()), 0.0)

    inv = np.where(n > 0, 1.0 / np.where(n > 0, n, 1.0), 0.0)  # channels never counted:
    a_ch, r_ch = g, h  # their bias is kept
    if b_slot is not None:
        a_ch = g - np.einsum("kc,lc->ckl", s, s) * inv[:, None, None]
        r_ch = h - (s * (t_sum * inv)).T
    if groups == 1:
        a_ch, r_ch = a_ch.sum(0, keepdims=True), r_ch.sum(0, keepdims=True)
    lam = RIDGE * np.maximum(np.trace(a_ch, axis1=1, axis2=2) / k, 1e-30)
    c = np.linalg.solve(a_ch + lam[:, None, None] * np.eye(k),
                        (r_ch + lam[:, None] * c0)[..., None])[..., 0]
    per_ch = (lambda cb: np.broadcast_to(cb, (len(t_sum), k))) if groups == 1 else (
        lambda cb: cb)
    if b_slot is None:
        return c, None, None, sse(per_ch(c0), None), sse(per_ch(c), None)
    b_new = np.where(n > 0, (t_sum - np.einsum("ck,kc->c", per_ch(c), s)) * inv, b_old)
    return c, b_new, b_slot, sse(per_ch(c0), b_old), sse(per_ch(c), b_new)


def few_samples_note(n):
    """The note of a calibration set of ``n`` samples too small for the fits (None if not)."""
    if n >= MIN_SAMPLES:
        return None
    return (f"refine calibrated on {n} sample(s): fits on fewer than {MIN_SAMPLES} over-fitted "
            "them in our measurements (the digits CNN at K=4 on 1-8 samples: a held-out KL "
            "up to 7x plain k-means'; HED on 1: an error 0.176 vs 0.048), though each kept "
            "fit lowers the error on those samples; give more, or check on held-out data"
            + ("; with one sample the k-means codebooks are kept" if n == 1 else ""))


def refine_codebooks(float_model, model, palettes, x, *, method="outputs", batch_size=64,
                     verbose=False):
    """Update each eligible palette's codebook (and its layer's bias) on the layer outputs.

    ``method``: ``"outputs"`` or ``"gptq"`` (also try GPTQ's assignment of Dense and Conv2D
    kernels); the fit that lowers the model's output error most is kept (see the module
    docstring), or none.

    Args:
        float_model: the float model (BatchNormalization folded like ``model``).
        model: its clustered copy; its kernels (and biases) are overwritten in layer order.
        palettes: ``model``'s palettes, in layer order.
        x: calibration inputs (an array with a leading sample axis).
        batch_size: samples per forward pass.
        verbose: print one line per palette.

    Returns:
        The palettes, the updated ones with their new codebook and a note. With one
        calibration sample every codebook stays as k-means made it (a fit on one sample
        over-fits it: :func:`few_samples_note`), and the notes say so; with fewer than
        :data:`MIN_SAMPLES` the updated ones' notes say how few.
    """
    few = few_samples_note(len(x))
    if len(x) < 2:
        if verbose:
            print(f"  output refine not applied: {few}", flush=True)
        return [dataclasses.replace(p, note="; ".join(filter(None, (
            p.note, "output refine not applied: one calibration sample (a fit on it over-fits "
            "it: HED's held-out error 0.176 vs k-means' 0.048); give "
            f"{MIN_SAMPLES} or more")))) for p in palettes]
    ref = calibration.outputs(float_model, x, batch_size)
    err = calibration.output_error(calibration.outputs(model, x, batch_size), ref)
    out = []
    for pal, (layer_f, layer_q) in zip(palettes, pair_layers(float_model, model, palettes)):
        calls = calls_in(model, layer_q) if layer_q is not None else 1
        graph_f, graph_q, steps, weight_name = layer_f, layer_q, 0, pal.weight_name
        while type(layer_q).__name__ == "TimeDistributed" and layer_f is not None \
                and pal.weight_name.startswith("layer."):  # fitted as the layer it wraps
            layer_f, layer_q, steps = layer_f.layer, layer_q.layer, steps + 1
            pal = dataclasses.replace(pal, weight_name=pal.weight_name[len("layer."):])
        var = get_weight(layer_q, pal.weight_name) if layer_q is not None else None
        why = "layer not found" if var is None or layer_f is None else _why_not(pal, layer_q,
                                                                                  var)
        if why is None and calls > 1:  # the fit would see the inputs of its first call only
            why = f"the layer is called {calls} times (shared layer)"
        cands = []
        if why is None:
            try:  # a TimeDistributed's inputs, time folded into the batch: its layer's
                xf, xq = (_fold(calibration.layer_inputs(m, la, x, batch_size), steps)
                          for m, la in ((float_model, graph_f), (model, graph_q)))
                assigned = [(pal, "")]
                if method == "gptq":
                    g_pal, gwhy = gptq_palette(pal, layer_f, layer_q, xq, batch_size)
                    assigned = [(pal, f"k-means assignment ({gwhy})" if gwhy else
                                 "k-means assignment")] + ([(g_pal, "GPTQ assignment")]
                                                           if g_pal is not None else [])
                clips = (None, _clip(layer_q)) if _clip(layer_q) else (None,)
                fits = _fits([p for p, _ in assigned], layer_f, layer_q, _twin(layer_q, xq),
                             xf, xq, batch_size, clips)
                for (p, label), pal_fits in zip(assigned, fits):
                    for clip, fit in zip(clips, pal_fits):
                        what = ", ".join(filter(None, (label, "clipped outputs left out"
                                                       if clip else "")))
                        cands.append((p, what, fit))
            except (ValueError, AttributeError, TypeError) as e:
                why = f"its inputs or outputs could not be evaluated ({e})"
        if not cands:
            note = f"output refine not applied: {why}"
        else:
            pal, err, note = _pick(model, layer_q, var, pal, cands, x, ref, err, batch_size)
            if few and note.startswith("output-refined"):
                note += f" (on {len(x)} calibration samples, fewer than {MIN_SAMPLES}: may " \
                        "over-fit them)"
        pal = dataclasses.replace(pal, weight_name=weight_name)  # a TimeDistributed's path
        if verbose:
            print(f"  {pal.name}: {note}", flush=True)
        out.append(dataclasses.replace(pal, note="; ".join(filter(None, (pal.note, note)))))
    return out


def _fold(xs, steps):
    """The inputs of a layer wrapped ``steps`` times in ``TimeDistributed``: its wrapper's
    inputs with each time axis folded into the batch (the wrapper calls it so)."""
    for _ in range(steps):
        xs = xs.reshape(-1, *xs.shape[2:])
    return xs


def _pick(model, layer, var, pal, cands, x, ref, err, batch_size):
    """Try each candidate update of ``layer``; keep the one with the lowest model output error
    (:func:`~dkm_tf.graph.calibration.output_error` against the float model's ``ref``) if it
    is below ``err``, else restore the layer. Returns ``(palette, error, note)``."""
    old = [v.numpy() for v in layer.weights]
    best = None
    for p, what, (c, b_new, b_slot, before, after) in cands:
        if after >= before:
            continue  # the fit did not even lower this layer's output error
        new = dataclasses.replace(p, codebook=c.astype(np.float32).reshape(p.codebook.shape))
        var.assign(new.decode().astype(np.float32))
        if b_slot is not None:
            layer.weights[b_slot].assign(b_new.astype(np.float32))
        e = calibration.output_error(calibration.outputs(model, x, batch_size), ref)
        if best is None or e < best[0]:
            what = f"codebook{' and bias' if b_slot is not None else ''}" + (
                f" ({what})" if what else "")
            best = (e, new, [v.numpy() for v in layer.weights], what, before, after)
        for v, value in zip(layer.weights, old):
            v.assign(value)
    if best is None:
        return pal, err, "output refine kept k-means centroids (no fit lowered the layer error)"
    e, new, values, what, before, after = best
    if e >= err:
        return pal, err, (f"output refine reverted: the {what} lowered the layer output SSE "
                          f"{before:.4g} -> {after:.4g} but not the model output error "
                          f"({err:.4g} -> {e:.4g})")
    for v, value in zip(layer.weights, values):
        v.assign(value)
    return new, e, (f"output-refined {what}: layer output SSE {before:.4g} -> {after:.4g}, "
                    f"model output error {err:.4g} -> {e:.4g}")
