"""Forward kernels of :class:`~dkm_tf.training.wrapper.ClusterWeights`: hard gather, soft DKM.

Hard assignment (the default) gathers ``codebook[indices]`` (:func:`gather_codebook`).

Soft assignment is differentiable k-means (DKM; Cho, Alizadeh-Vahid, Adya, Rastegari, ICLR
2022, §3, arXiv 2108.12659). Clustering is attention: for the units ``w_i`` of a weight (one
problem per group) and centroids ``c_j``,

    d_ij = ||w_i - c_j||            (the Euclidean distance, paper §3.1: D = -f(W, C))
    A = softmax_j(-d_ij / tau)       (row-wise: each unit's attention over the K centroids)
    c_j <- sum_i a_ij w_i / sum_i a_ij

iterated inside the forward pass until ``max |C - C_new| <= tol`` (paper: 1e-4) or for at most
``max_iter`` iterations (paper: 5), warm-started from the previous step's centroids (stored in
the wrapper's codebook variable, without gradient; only training calls of a trainable wrapper
move it: a frozen one keeps it, as a frozen BatchNormalization keeps its statistics). The
layer then uses ``W_tilde = A C``.
There is no regularizer and no learnable codebook. After training, :func:`snap` assigns each
unit to its nearest centroid (the paper's inference rule), so the stripped kernel has at most
K distinct units.

Gradient (a deliberate deviation, see :func:`dkm_assign`): the paper back-propagates through
every iteration; here the iterations up to the fixed point C* run without gradient (a while
loop that usually stops after one or two steps thanks to the warm start) and only the last
step ``A = A(w, C*)``, ``C = A^T w / colsum(A)``, ``W_tilde = A C`` is differentiated, so the
gradient reaches the (trainable) float kernel through A and C of that step. This is one-step
("Jacobian-free") differentiation of a fixed point: about ``max_iter`` times cheaper in
time and memory. ``dkm_assign(..., full_backprop=True)`` is the paper's unrolled version
(tested against the same numpy reference).

Memory: a step holds an (M x K) attention per group, computed per layer in chunks of at most
:data:`CHUNK` units x centroids elements, so no tensor spans the model; autodiff keeps one
such attention per clustered weight until the backward pass (``max_iter`` with
``full_backprop``), except on TensorFlow above :data:`~.soft_bounded.KEEP_ATTENTION` elements,
where the last step recomputes it chunk by chunk in the backward pass, and many chunks run
in a loop (:mod:`~.soft_bounded`); :func:`snap` never holds more than one chunk.

The temperature ``tau`` lives in a non-trainable variable of each wrapper, so
:class:`TemperatureSchedule` can change it between epochs without re-tracing.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import check_choice, invalid
from dkm_tf.training import soft_bounded as bounded
from dkm_tf.training.segment import segment_sums
from dkm_tf.training.wrapper_kmeans import check_finite

try:  # switches Keras' autocasting of float variables (mixed precision) off inside a block
    from keras.src.backend import AutocastScope as _AutocastScope
except ImportError:  # pragma: no cover - a Keras without it: variables are read as they come
    import contextlib

    def _AutocastScope(_dtype):  # noqa: N802
        return contextlib.nullcontext()

__all__ = ["ASSIGNMENTS", "TemperatureSchedule", "check_soft_settings", "dkm_assign",
           "gather_codebook", "snap"]

ASSIGNMENTS = ("hard", "soft")
SCHEDULES = ("constant", "linear", "exponential")
MAX_ITER = 5  # DKM paper §3.1: at most 5 iterations per forward pass
TOL = 1e-4  # DKM paper §3.1: |C - C_new| <= 1e-4
CHUNK = 1 << 22  # max unit x centroid elements of one attention block


def check_soft_settings(assignment, temperature, *, latent=False, preserve_sparsity=False):
    """Validate ``assignment`` / ``temperature`` (eagerly, Keras' message pattern)."""
    check_choice("assignment", assignment, ASSIGNMENTS)
    if assignment == "hard":
        if temperature is not None:
            raise invalid("temperature", "None with assignment='hard' (the temperature is the "
                          "softness of assignment='soft')", temperature)
        return None
    _check_temperature("temperature", temperature)
    if latent:
        raise invalid("latent", "False with assignment='soft' (the soft forward pass already "
                      "trains the float kernel)", latent)
    if preserve_sparsity:
        raise invalid("preserve_sparsity", "False with assignment='soft' (not supported)",
                      preserve_sparsity)
    return float(temperature)


def _check_temperature(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not float(value) > 0:
        raise invalid(name, "a finite number > 0 (DKM's softmax temperature tau, e.g. 1e-4 "
                      "for weights of scale ~0.05)", value)
    return float(value)


# ---------------------------------------------------------------------- hard: gather
_TF_GATHER = []


def gather_codebook(values, indices):
    """``values[indices]`` for a 1-D tensor of codebook values; differentiable in ``values``.

    The gradient is the exact one, ``grad[k] = sum of upstream[i] over indices[i] == k`` (the
    Deep Compression centroid update). With TensorFlow it is computed with a row-wise weighted
    ``bincount`` (:func:`dkm_tf.training.segment.segment_sums`: the same bits on every run):
    TF's default gather gradient (IndexedSlices densified by ``UnsortedSegmentSum``) is about
    6x slower on CPU for large kernels and K << N (7.5 ms against 1.2 ms for 400k weights,
    K = 16). Other backends use ``ops.take``.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.take(values, indices, axis=0)
    if not _TF_GATHER:
        import tensorflow as tf  # noqa: PLC0415

        @tf.custom_gradient
        def _gather(v, i):
            def grad(upstream):
                acc = tf.float64 if upstream.dtype == tf.float64 else tf.float32
                sums = segment_sums(upstream, i, v.shape[0], acc=acc)
                return tf.cast(sums, v.dtype), None
            return tf.gather(v, i), grad

        _TF_GATHER.append(_gather)
    return _TF_GATHER[0](values, indices)


# ---------------------------------------------------------------------- soft: DKM
def _distance(w, c):
    """Euclidean distances (G, m, K) between units w (G, m, d) and centroids c (G, K, d)."""
    if w.shape[-1] == 1:  # |w - c|: exact, gradient 0 (not NaN) where w == c
        return ops.abs(w - ops.transpose(c, (0, 2, 1)))
    sq = (ops.sum(w * w, axis=-1)[:, :, None] - 2.0 * ops.einsum("gmd,gkd->gmk", w, c)
          + ops.sum(c * c, axis=-1)[:, None, :])
    # clamp: no NaN gradient at distance 0 (clip keeps sq's dtype; Keras' torch maximum
    # returns float32 for float64 operands, which broke the float64 snap at strip)
    return ops.sqrt(ops.clip(sq, 1e-24, 1e30))


def _chunks(m, k):
    step = max(1, CHUNK // max(k, 1))
    return [(s, min(s + step, m)) for s in range(0, m, step)]


def _attention(w, c, tau):
    z = -_distance(w, c) / tau  # softmax written out: TF's kernel is slow for a small last axis
    e = ops.exp(z - ops.stop_gradient(ops.max(z, axis=-1, keepdims=True)))  # shift-invariant
    return e / ops.sum(e, axis=-1, keepdims=True)


def _update(w, c, tau, parts):
    """One DKM step: ``A = attention(w, c)``, ``c_new = A^T w / colsum(A)`` (empty: keep c)."""
    num, den, blocks = 0.0, 0.0, []
    for lo, hi in parts:
        wc = w[:, lo:hi]
        a = _attention(wc, c, tau)  # (G, m, K)
        blocks.append(a)
        num = num + ops.einsum("gmk,gmd->gkd", a, wc)
        den = den + ops.sum(a, axis=1)
    c_new = ops.where(den[..., None] > 1e-30, num / ops.clip(den, 1e-30, 1e30)[..., None], c)
    return c_new, blocks


def dkm_assign(w, c, temperature, *, max_iter=MAX_ITER, tol=TOL, full_backprop=False):
    """The DKM forward pass on units ``w`` (G, M, d) from centroids ``c`` (G, K, d).

    Up to ``max_iter - 1`` steps run without gradient until ``max |C - C_new| <= tol`` (a
    while loop: a warm-started C usually stops after one or two), then one last step is
    differentiated: ``A = attention(w, C*)``, ``C = A^T w / colsum(A)``, ``W_tilde = A C``, so
    the gradient reaches w through A and C of that step (the fixed point's earlier iterations
    are treated as constant: one-step, "Jacobian-free" differentiation of the fixed point, about
    ``max_iter`` times cheaper in time and memory than the paper's backpropagation through every
    iteration). ``full_backprop=True`` unrolls all ``max_iter`` steps under the tape instead
    (the paper's; converged groups are frozen with ``where``, since a data-dependent loop is not
    reverse-differentiable on JAX).

    Returns:
        ``(w_tilde, c_final, steps)``: the attention-weighted units (G, M, d), the centroids of
        the last step (the next call's warm start) and the number of steps taken. ``c``
        gets no gradient.
    """
    c = ops.stop_gradient(ops.convert_to_tensor(c, dtype=w.dtype))
    tau = (ops.cast(temperature, w.dtype) if hasattr(temperature, "dtype")
           else ops.convert_to_tensor(temperature, dtype=w.dtype))
    parts = _chunks(w.shape[1], c.shape[1])
    if full_backprop:
        return _unrolled(w, c, tau, parts, max_iter, tol)
    ws = ops.stop_gradient(w)

    def cond(c, moving, steps):
        return ops.logical_and(moving, steps < max_iter - 1)

    def body(c, moving, steps):
        c_new = bounded.centroids(ws, c, tau, parts, _attention)[0]  # no chunk list kept
        return c_new, ops.max(ops.abs(c_new - c)) > tol, steps + 1

    c, _, steps = ops.while_loop(cond, body, (c, ops.convert_to_tensor(True),
                                              ops.convert_to_tensor(0, "int32")))
    c = ops.stop_gradient(c)
    if bounded.recomputes(w, c):  # big tensors: no (M x K) attention kept for the backward
        return (*bounded.last_step(w, c, tau, parts, _attention), steps + 1)
    c_new, blocks = _update(w, c, tau, parts)
    outs = [ops.einsum("gmk,gkd->gmd", a, c_new) for a in blocks]
    w_tilde = outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=1)
    return w_tilde, c_new, steps + 1


def _unrolled(w, c, tau, parts, max_iter, tol):
    g = w.shape[0]
    done = ops.zeros((g,), dtype="bool")
    moved = ops.zeros((), dtype="int32")
    for _ in range(max_iter):
        c_new = _update(w, c, tau, parts)[0]
        step = ops.max(ops.abs(c_new - c), axis=(1, 2))
        moved = moved + ops.cast(ops.any(ops.logical_not(done)), "int32")
        c = ops.where(done[:, None, None], c, c_new)
        done = ops.logical_or(done, step <= tol)
    outs = [ops.einsum("gmk,gkd->gmd", _attention(w[:, lo:hi], c, tau), c) for lo, hi in parts]
    w_tilde = outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=1)
    return w_tilde, c, moved


_XLA = {}


def _compiled_assign(w, c, tau):
    """``dkm_assign`` as the wrapper calls it; on TensorFlow compiled with XLA, which fuses its
    element-wise chain (3.4x faster forward + backward for 400k weights, K = 2, on CPU)."""
    def assign(w, c, tau):
        return dkm_assign(w, c, tau, max_iter=MAX_ITER, tol=TOL)[:2]

    if keras.backend.backend() != "tensorflow":
        return assign(w, c, tau)
    import tensorflow as tf  # noqa: PLC0415

    key = (tuple(w.shape), tuple(c.shape), str(w.dtype))
    if key not in _XLA:  # a fixed signature: symbolic arguments need no trace-type lookup
        spec = [tf.TensorSpec(key[0], w.dtype), tf.TensorSpec(key[1], w.dtype),
                tf.TensorSpec((), w.dtype)]
        _XLA[key] = tf.function(assign, jit_compile=True, autograph=False,
                                input_signature=spec)
    return _XLA[key](w, ops.cast(c, w.dtype), ops.cast(tau, w.dtype))


def soft_kernel(wrapper, slot, update=False):
    """The DKM kernel of one slot; with ``update`` (training steps) stores the final
    centroids as the next step's warm start. Inference leaves the state alone.

    The iteration always runs in float32 (float64 for float64 variables): under a mixed
    policy Keras would autocast the variables to float16 / bfloat16, where the distance
    clamps (1e-24, 1e-30) flush to 0 and a small tau rounds or overflows (NaN losses,
    non-finite gradients). Only the result is cast to the wrapper's compute dtype.
    """
    layout = slot.layout
    with _AutocastScope(None):  # read (cast) here: the variables' own values, not the
        # autocast copies (convert_to_tensor would return the variable, read later)
        acc = "float64" if slot.variable.dtype == "float64" else "float32"
        w, codebook, tau = [ops.cast(v, acc) for v in (
            slot.variable, slot.codebook, wrapper.temperature_variable)]
    if tuple(layout.perm) != tuple(range(len(layout.perm))):
        w = ops.transpose(w, layout.perm)
    w = ops.reshape(w, (layout.n_groups, layout.n_units, layout.unit_dim))
    w_tilde, c = _compiled_assign(w, codebook, tau)
    if update:
        slot.codebook.assign(ops.cast(ops.stop_gradient(c), slot.codebook.dtype))
    kernel = ops.reshape(w_tilde, slot.t_shape)
    if slot.inv_perm != tuple(range(len(slot.inv_perm))):
        kernel = ops.transpose(kernel, slot.inv_perm)
    return ops.cast(kernel, wrapper.compute_dtype)


def snap(wrapper):
    """Hard assignment at the end of soft training: each unit to its nearest centroid.

    The centroids are first brought to the fixed point of the current weights (the same
    iteration as the forward pass, in numpy). Returns ``[(codebook, indices)]`` per clustered
    weight, numpy arrays from which :meth:`ClusterWeights.palettes` and
    :func:`dkm_tf.strip_clustering` build kernels with at most K distinct units per group.
    The wrapper's variables are left alone: asking for palettes mid-training changes nothing.
    """
    tau = float(keras.ops.convert_to_numpy(wrapper.temperature_variable))
    out = []
    for s in wrapper._slots:  # noqa: SLF001
        units = units_lib.to_units(keras.ops.convert_to_numpy(s.variable), s.layout)
        check_finite(units, f"Layer {wrapper.name!r}: the soft-clustered {s.attr!r}")
        units = units.astype(np.float64)
        c = bounded.fixed_point(ops.convert_to_tensor(units),
                                keras.ops.convert_to_numpy(s.codebook).astype(np.float64),
                                ops.convert_to_tensor(tau, "float64"),
                                _chunks(units.shape[1], s.codebook.shape[1]), _attention,
                                MAX_ITER, TOL)  # one attention chunk at a time, no W_tilde
        c = keras.ops.convert_to_numpy(c)
        idx = np.stack([codebook_lib.nearest(units[g], c[g]) for g in range(c.shape[0])])
        out.append((c.astype(keras.ops.convert_to_numpy(s.codebook).dtype),
                    idx.astype(keras.ops.convert_to_numpy(s.indices).dtype)))
    return out


@keras.saving.register_keras_serializable(package="dkm_tf")
class TemperatureSchedule(keras.callbacks.Callback):
    """Sets the DKM temperature of every soft :class:`~dkm_tf.ClusterWeights` each epoch.

    ``tau(e) = start`` (``"constant"``), ``start + (end - start) e / (epochs - 1)``
    (``"linear"``) or ``start (end / start)^(e / (epochs - 1))`` (``"exponential"``) at epoch
    e = 0 .. epochs - 1, and ``end`` after that (with ``epochs=1`` the first epoch is the last:
    ``end`` from epoch 0). Lowering tau moves the soft assignment towards the hard one used
    at inference (DKM anneals nothing by default: it tunes a constant tau).

    Args:
        start: tau at the first epoch (> 0).
        end: tau at the last epoch (> 0; default ``start``; ``"constant"``: None or ``start``).
        epochs: number of epochs of the ramp (>= 1).
        schedule: ``"constant"``, ``"linear"`` or ``"exponential"``.
    """

    def __init__(self, start, end=None, epochs=1, schedule="exponential"):
        super().__init__()
        self.start = _check_temperature("start", start)
        self.end = self.start if end is None else _check_temperature("end", end)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise invalid("epochs", "an integer >= 1", epochs)
        self.epochs = int(epochs)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        if self.schedule == "constant" and self.end != self.start:
            raise invalid("end", f"None or start={self.start!r} with schedule='constant' (use "
                          "'linear' or 'exponential' to reach another tau)", end)

    def get_config(self):
        """The constructor's arguments as a dict (``TemperatureSchedule(**config)``)."""
        return {"start": self.start, "end": self.end, "epochs": self.epochs,
                "schedule": self.schedule}

    @classmethod
    def from_config(cls, config):
        """The callback of :meth:`get_config`'s ``config`` (``keras.saving`` round trips)."""
        return cls(**config)

    def value(self, epoch):
        """tau at ``epoch`` (0-based)."""
        if self.schedule == "constant" or self.epochs == 1:
            return self.start if self.schedule == "constant" else self.end
        f = min(epoch, self.epochs - 1) / (self.epochs - 1)
        if self.schedule == "linear":
            return self.start + (self.end - self.start) * f
        return self.start * (self.end / self.start) ** f

    def on_train_begin(self, logs=None):
        self._soft_layers()  # a model without soft layers is refused before any epoch

    def on_epoch_begin(self, epoch, logs=None):
        tau = self.value(epoch)
        for lay in self._soft_layers():
            lay.temperature_variable.assign(tau)

    def _soft_layers(self):
        found = [lay for lay in self.model._flatten_layers(include_self=False)  # noqa: SLF001
                 if getattr(lay, "assignment", None) == "soft"]
        if not found:
            raise ValueError("TemperatureSchedule: the model has no ClusterWeights layer with "
                             "assignment='soft' (dkm_tf.cluster_weights(model, ..., "
                             "assignment='soft', temperature=...)).")
        return found
