"""The Deep k-Means penalty as a Keras regularizer.

Deep k-Means (Wu et al., ICML 2018, §2.2, eq. 4) re-trains a network with, on every conv layer,

    (λ/2) [Tr(WᵀW) − Tr(Fᵀ WᵀW F)]  =  (λ/2) ‖W − W F Fᵀ‖²_F,       FᵀF = I,

where W ∈ R^{d x N} holds the layer's N clustering units (columns of length d; the paper's
unit is one kernel row, d = s) and F ∈ R^{N x r} is held fixed between lazy updates ("every
5 epochs"). Two choices of F are offered (``relaxation``):

* ``"spectral"`` (the paper as written): F = the top-K right singular vectors of W. The
  penalty at an update is Σ_{i>K} σ_i², i.e. the sum of the N − K smallest eigenvalues of
  WᵀW. Because rank(W) ≤ d, it is **identically zero after each update whenever K ≥ rank(W)**
  (K ≥ s for row units, always for scalar units); between updates it only penalises W for
  leaving the previous row space. A warning says so.
* ``"hard"`` (un-relaxed eq. 1, the default): F = the normalised cluster-indicator matrix of
  k-means on the current units (F_nj = 1/√n_j). Then W F Fᵀ replaces each unit by the mean of
  its cluster, the penalty is (λ/2) Σ_n ‖w_n − c_{a(n)}(W)‖² (the k-means squared error at
  an update) and its gradient is λ (w_n − c_{a(n)}(W)).

The sparsity variant (§4.1.4) puts the ⌊pN⌋ units of smallest ℓ2 norm in an extra cluster
whose centre is fixed at zero (their penalty is (λ/2)‖w_n‖²) and uses K − 1 clusters (or
K − 1 singular vectors) for the rest. With ``preserve_sparsity=True`` the zero cluster is
instead the units exactly zero at the first refresh (a pruned weight's), on top of K clusters
of the others: its penalty gradient λ w_n is zero on them while they stay zero.

F lives in non-trainable variables owned by the regularizer (not by the layer, so the layer's
weights are unchanged) and is recomputed by :meth:`refresh`, which :class:`dkm_tf.RefreshKMeans`
calls on a schedule. ``get_config`` holds plain settings only; the state (F, the warm-start
centroids of the hard F-step, the preserved zeros, the step of the last scheduled refresh) is
saved with the model's weights by ``save_weights`` / ``save`` (so by ``BackupAndRestore`` and
``ModelCheckpoint``) and restored on load, like an optimizer's: see
:mod:`dkm_tf.training.regularizer_state`. Files without it load as before.
:func:`dkm_tf.attach_regularizer` (in :mod:`dkm_tf.training.attach`) puts one on every
conv kernel.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import keras
import numpy as np
from keras import ops

from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core.validate import check_n_clusters, check_seed, invalid, is_bool
from dkm_tf.training import regularizer_state as state_lib
from dkm_tf.training.segment import segment_sums

__all__ = ["RELAXATIONS", "SpectralKMeansRegularizer", "degenerate_message", "unit_geometry"]

RELAXATIONS = ("hard", "spectral")
_UNITS = ("auto", "scalar", "row", "kernel")
_EARLY = ("SpectralKMeansRegularizer state must be created before training {}: use "
          "dkm_tf.attach_regularizer, or pass dkm_tf.RefreshKMeans to fit().")


def unit_geometry(shape, unit):
    """How a weight of ``shape`` is cut into units: ``(unit, lead, unit_dim, trail)``.

    The units are those of :mod:`dkm_tf.core.units` (row = the last spatial axis of a kernel whose
    spatial axes come first, kernel = all spatial axes, scalar = one value). The unit axes
    are contiguous, so ``w.reshape(lead, unit_dim, trail)`` holds unit ``l * trail + m`` at
    ``[l, :, m]``: no transpose is ever needed. ``"auto"`` is ``"row"`` for kernels with
    spatial axes (rank >= 3) and ``"scalar"`` otherwise; a row or kernel of one value is
    reported as ``"scalar"``.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    spatial = tuple(range(ndim - 2)) if ndim >= 3 else ()
    if ndim == 0:
        raise ValueError("SpectralKMeansRegularizer needs a weight with at least one axis. "
                         "Received a scalar weight.")
    if unit in ("row", "kernel") and not spatial:
        raise invalid("unit", f"'scalar' or 'auto' for a weight of shape {shape} (it has no "
                       "spatial axes, so it has no kernel rows or 2-D kernels)", unit)
    if unit == "auto":
        unit = "row" if spatial else "scalar"
    size = int(np.prod(shape))
    if unit == "scalar":
        return unit, 1, 1, size
    first = spatial[-1] if unit == "row" else 0
    lead = int(np.prod(shape[:first]))
    d = int(np.prod(shape[first:spatial[-1] + 1]))
    return ("scalar" if d == 1 else unit), lead, d, size // (lead * d)


def _to_units_np(w, lead, d, trail):
    """(lead * trail, d) array of units, unit ``l * trail + m`` = ``w3[l, :, m]``."""
    return np.asarray(w).reshape(lead, d, trail).transpose(0, 2, 1).reshape(-1, d)


@keras.saving.register_keras_serializable(package="dkm_tf")
class SpectralKMeansRegularizer(keras.regularizers.Regularizer, state_lib.KerasSaveable):
    """Deep k-Means penalty (λ/2)‖W − W F Fᵀ‖² on one weight (Wu et al., ICML 2018, eq. 4).

    See the module docstring for the math. Each instance serves **one** weight (its F has
    that weight's shape); :func:`dkm_tf.attach_regularizer` creates one per kernel. F is
    computed by :meth:`refresh` (called by :func:`dkm_tf.attach_regularizer` and
    :class:`dkm_tf.RefreshKMeans`) or, failing that, at the first call on a variable; the
    penalty is zero until then. Each call also adds its value to :meth:`penalty_meter`, which
    RefreshKMeans reports as ``kmeans_penalty``.

    Checkpoints: the state (F, the hard F-step's warm-start centroids, the preserved zeros and
    ``refresh_step``, the optimizer step of the last RefreshKMeans refresh) is saved with the
    model, under the layer's ``kernel_regularizer`` entry, by ``save_weights`` and ``save``
    (``BackupAndRestore``, ``ModelCheckpoint``), and restored by ``load_weights`` /
    ``load_model``, so that a resumed fit trains with the F of the interrupted one. A file
    without it (older releases) leaves the state as it is (see regularizer_state.py).

    Args:
        n_clusters: K >= 1, clusters (``"hard"``) or singular vectors (``"spectral"``) per
            weight. K >= 2 when ``sparsity > 0`` (one cluster is the zero cluster).
        lam: λ >= 0. The paper's default is 1e-4 ("1e-4 to 1e-3 work almost equally well").
        relaxation: ``"hard"`` (cluster-indicator F, penalty = k-means SSE at each refresh)
            or ``"spectral"`` (F = top-K right singular vectors, the paper's text).
        unit: ``"auto"`` (rows for kernels with spatial axes, scalars for Dense and 1x1
            kernels, as the paper's code), ``"row"``, ``"kernel"`` or ``"scalar"``.
        sparsity: fraction p in [0, 1) of units (smallest ℓ2 norm) put in a cluster fixed
            at zero at each refresh (§4.1.4).
        seed: seed of the k-means at each refresh (``"hard"``).
        preserve_sparsity: the units exactly zero at the first refresh form the zero
            cluster, not counted in K (see the module docstring); not with ``sparsity``.
        base: optional regularizer added unchanged (e.g. an existing L2 weight decay).

    Example:
        >>> import keras
        >>> reg = SpectralKMeansRegularizer(n_clusters=8, lam=1e-4, relaxation="hard")
        >>> layer = keras.layers.Conv2D(16, 3, kernel_regularizer=reg)
    """

    def __init__(self, n_clusters, lam=1e-4, relaxation="hard", unit="auto", *,
                 sparsity=0.0, seed=0, base=None, preserve_sparsity=False):
        self.n_clusters = check_n_clusters(n_clusters)
        if isinstance(lam, bool) or not isinstance(lam, (int, float, np.number)) or not (
                math.isfinite(lam) and lam >= 0):
            raise invalid("lam", "a finite number >= 0", lam)
        if relaxation not in RELAXATIONS:
            raise invalid("relaxation", f"one of {list(RELAXATIONS)}", relaxation)
        if unit not in _UNITS:
            raise invalid("unit", f"one of {list(_UNITS)}", unit)
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.number)) or (
                not 0.0 <= sparsity < 1.0):
            raise invalid("sparsity", "a fraction in [0, 1)", sparsity)
        if sparsity > 0 and self.n_clusters < 2:
            raise invalid("n_clusters", "an integer >= 2 when sparsity > 0 (one cluster is "
                           "the fixed zero cluster)", n_clusters)
        if not is_bool(preserve_sparsity) or (preserve_sparsity and sparsity):  # np.bool_ too
            raise invalid("preserve_sparsity", "a bool (False when sparsity > 0)",
                          preserve_sparsity)
        self.preserve_sparsity, self._zeros = bool(preserve_sparsity), None
        self.lam = float(lam)
        self.relaxation = relaxation
        self.unit = unit
        self.sparsity = float(sparsity)
        self.seed = check_seed(seed)
        self.base = keras.regularizers.get(base)
        self._state = None
        self._codebook = None  # centroids of the last refresh (warm start of the next one)
        self.assignment = None  # cluster of each unit at the last refresh ("hard"; K = zero)
        self.projection = None  # F (N x r) of the last refresh ("spectral")
        self._warned = False
        self.refresh_step = -1  # optimizer step of the last RefreshKMeans refresh (-1: none)

    # ------------------------------------------------------------------ state
    def build(self, shape, name=None):
        """Create the state of a weight of ``shape`` (no-op when built), named by ``name``."""
        shape = tuple(int(s) for s in shape)
        if self._state is not None:
            if shape != self._state["shape"]:
                raise ValueError(
                    f"This SpectralKMeansRegularizer was built for a weight of shape "
                    f"{self._state['shape']} and cannot serve one of shape {shape}: it keeps "
                    "per-weight state, so use one instance per weight (attach_regularizer "
                    "does this).")
            return
        unit, lead, d, trail = unit_geometry(shape, self.unit)
        n = lead * trail
        tag = (name or "weight").replace("/", "_").replace(":", "_")

        def var(value, dtype, aggregation="none", suffix="", synchronization="auto"):
            return keras.Variable(value, dtype=dtype, trainable=False, aggregation=aggregation,
                                  synchronization=synchronization, name=f"dkm_{tag}_{suffix}")

        # penalty meters: per-replica sums read as their total, as Keras' metrics (mirrored,
        # updated by 2 replicas they doubled at every step: the first steps' mean, then inf)
        st = {"shape": shape, "unit": unit, "n": n, "d": d, "w3": (lead, d, trail),
              "ready": var(0.0, "float32", suffix="ready"),
              "total": var(0.0, "float32", "sum", "penalty_total", "on_read"),
              "count": var(0.0, "float32", "sum", "penalty_count", "on_read")}
        if self.relaxation == "spectral":  # F (N x r) as (lead, trail, r), and its transpose
            r = min(self.n_clusters, d, n)
            st["f"] = var(np.zeros((lead, trail, r), np.float32), "float32", suffix="f")
            st["ft"] = var(np.zeros((lead, r, trail), np.float32), "float32", suffix="ft")
        else:
            # segment of every weight in kernel order: cluster * d + position in the unit
            st["segment"] = var(np.zeros(n * d, np.int32), "int32", suffix="segment")
            st["scale"] = var(np.zeros((self.n_clusters + 1) * d, np.float32), "float32",
                              suffix="scale")
        self._state = st

    @property
    def built(self):
        return self._state is not None

    @property
    def resolved_unit(self):
        """The unit actually used (``"row"``, ``"kernel"`` or ``"scalar"``); None if unbuilt."""
        return None if self._state is None else self._state["unit"]

    def refresh(self, weight, *, name=None, warn=True):
        """Recompute F from the current value of ``weight`` (the lazy F-step).

        Args:
            weight: the regularized variable (or its value as an array).
            name: name used in messages (default: the variable's path).
            warn: warn (once per instance) when the spectral relaxation is degenerate.

        Returns:
            A dict: ``penalty`` (the penalty right after the update), ``rank`` (numerical
            rank of the unit matrix, spectral only), ``n_clusters`` (clusters or singular
            vectors in use) and ``degenerate`` (spectral with K >= rank).
        """
        name = name or getattr(weight, "path", None) or getattr(weight, "name", "weight")
        value = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight, np.float64)
        self.build(value.shape, name=name)
        st = self._state
        units = _to_units_np(value, *st["w3"])
        zero = self._zero_mask(units)
        rest = units if zero is None else units[~zero]
        k = self.n_clusters - (zero is not None and not self.preserve_sparsity)
        info = {"degenerate": False, "rank": None, "k": k}
        if self.relaxation == "spectral":
            q, s, _ = np.linalg.svd(rest, full_matrices=False)
            tol = (s[0] if s.size else 0.0) * max(rest.shape) * np.finfo(np.float32).eps
            rank = int(np.sum(s > tol))
            r = min(k, rank, st["f"].shape[2])
            f = np.zeros((st["n"], st["f"].shape[2]), np.float32)
            rows = np.arange(st["n"]) if zero is None else np.flatnonzero(~zero)
            f[rows, :r] = q[:, :r]
            f = f.reshape(st["f"].shape)
            st["f"].assign(f)
            st["ft"].assign(np.ascontiguousarray(f.transpose(0, 2, 1)))
            self.projection = f.reshape(st["n"], -1)
            sse = float(np.sum(s[r:] ** 2))
            info.update(rank=rank, n_clusters=r, degenerate=k >= rank)
        else:
            idx, means, sse = state_lib.hard_assignment(rest, k, self.seed, name,
                                                        self._codebook)
            self._codebook = means
            counts = np.bincount(idx, minlength=self.n_clusters)
            assign = np.full(st["n"], self.n_clusters, np.int32)
            assign[np.arange(st["n"]) if zero is None else ~zero] = idx
            scale = np.zeros(self.n_clusters + 1, np.float32)
            scale[:counts.size][counts > 0] = 1.0 / counts[counts > 0]
            self.assignment = assign
            lead, d, trail = st["w3"]
            segment = (assign.reshape(lead, 1, trail) * d
                       + np.arange(d, dtype=np.int32).reshape(1, d, 1))
            st["segment"].assign(segment.reshape(-1))
            st["scale"].assign(np.repeat(scale, st["d"]))
            info["n_clusters"] = int(np.count_nonzero(counts))
        if zero is not None:
            sse += float(np.sum(units[zero] ** 2))
        st["ready"].assign(1.0)
        info["penalty"] = 0.5 * self.lam * sse
        if warn and info["degenerate"] and not self._warned:
            warnings.warn(degenerate_message([(name, self, info)]), UserWarning, stacklevel=2)
            self._warned = True
        return info

    def _zero_mask(self, units):
        if self.preserve_sparsity:  # the exact zeros of the first refresh stay the zero cluster
            if self._zeros is None:
                self._zeros = codebook_lib.zero_units(units[None])[0]
            return self._zeros if self._zeros.any() else None
        n_zero = int(math.floor(self.sparsity * units.shape[0]))
        if n_zero == 0:
            return None
        mask = np.zeros(units.shape[0], bool)
        mask[np.argsort(np.sum(units ** 2, axis=1), kind="stable")[:n_zero]] = True
        return mask

    def _lazy_build(self, x):
        scope = contextlib.nullcontext()  # JAX / PyTorch: eager state
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf  # noqa: PLC0415  (lift state out of the trace)

            if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
                raise RuntimeError(_EARLY.format("under a distribution strategy"))
            scope = tf.init_scope()
        with scope:
            try:
                self.build(x.shape, name=getattr(x, "path", None))
            except ValueError as e:  # JAX's stateless scopes cannot create variables
                if isinstance(x, keras.Variable):
                    return False  # Keras' symbolic pass: RefreshKMeans builds it next
                raise RuntimeError(_EARLY.format(f"on {keras.backend.backend()}")) from e
            if isinstance(x, keras.Variable):
                return self.refresh(x)
            warnings.warn("SpectralKMeansRegularizer was first called on a tensor, not a "
                          "variable: its penalty is 0 until refresh() (or "
                          "dkm_tf.RefreshKMeans) computes F.", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ penalty
    def __call__(self, x):
        if self._state is None and self._lazy_build(x) is False:
            return ops.zeros((), x.dtype)  # Keras' symbolic pass on JAX (shapes only)
        st = self._state
        if tuple(x.shape) != st["shape"]:
            self.build(x.shape)  # raises the one-instance-per-weight error
        # target = W F Fᵀ (each unit's projection / cluster mean) without gradient: the exact
        # gradient of (λ/2)‖W − W F Fᵀ‖² is λ(W − W F Fᵀ), because I − F Fᵀ is a projector
        # (hard: the deviations within a cluster sum to zero), so only W − target needs one.
        # float32 for a float16 / bfloat16 weight: its cluster sums and sum of squares overflow
        acc = "float32" if keras.backend.standardize_dtype(x.dtype) in (
            "float16", "bfloat16") else x.dtype
        xa = ops.cast(x, acc)
        xs = ops.stop_gradient(xa)
        if self.relaxation == "spectral":
            w3 = ops.reshape(xs, st["w3"])  # (lead, d, trail); W F = sum_l w3[l] @ F[l]
            wf = ops.sum(ops.matmul(w3, ops.cast(st["f"], acc)), axis=0, keepdims=True)
            target = ops.reshape(ops.matmul(wf, ops.cast(st["ft"], acc)), st["shape"])
        else:
            segment, n_seg = st["segment"], (self.n_clusters + 1) * st["d"]
            sums = _segment_sum(ops.reshape(xs, (-1,)), segment, n_seg)
            means = sums * ops.cast(st["scale"], acc)
            target = ops.reshape(ops.take(means, segment, axis=0), st["shape"])
        penalty = (0.5 * self.lam) * ops.cast(st["ready"], acc) * ops.sum(ops.square(xa - target))
        st["total"].assign_add(ops.cast(ops.stop_gradient(penalty), "float32"))
        penalty = ops.cast(penalty, keras.backend.floatx())  # Keras sums losses in floatx
        st["count"].assign_add(1.0)
        if self.base is not None:
            penalty = penalty + ops.cast(self.base(x), penalty.dtype)
        return penalty

    def penalty_meter(self):
        """The ``(total, count)`` variables accumulating the penalty at each call."""
        return None if self._state is None else (self._state["total"], self._state["count"])

    # ------------------------------------------------------------------ checkpoints
    def _obj_type(self):
        return "Loss"  # Keras' saving walks it like a loss (a saveable with no sub-objects)

    def save_own_variables(self, store):
        """Write the state into ``store``, a Keras variable store (Keras calls it)."""
        state_lib.save(self, store)

    def load_own_variables(self, store):
        """Restore the state from ``store``; a store without it leaves this one as is."""
        state_lib.load(self, store)

    __reduce__ = object.__reduce__  # plain pickling (KerasSaveable would pickle a model)

    # ------------------------------------------------------------------ config
    def get_config(self):
        state_lib.warn_legacy_h5_save(self)  # F is state, not config; preserve_sparsity if set
        return {"n_clusters": self.n_clusters, "lam": self.lam, "relaxation": self.relaxation,
                "unit": self.unit, "sparsity": self.sparsity, "seed": self.seed,
                **({"preserve_sparsity": True} if self.preserve_sparsity else {}),
                "base": keras.regularizers.serialize(self.base) if self.base else None}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (f"SpectralKMeansRegularizer(n_clusters={self.n_clusters}, lam={self.lam}, "
                f"relaxation={self.relaxation!r}, unit={self.unit!r}, "
                f"sparsity={self.sparsity}, preserve_sparsity={self.preserve_sparsity})")


def _segment_sum(values, segment_ids, n_segments):
    """Sum of ``values`` per segment; on TensorFlow a row-wise weighted bincount, ~6x faster
    than unsorted_segment_sum on CPU for few segments and the same on every run
    (:func:`dkm_tf.training.segment.segment_sums`; float16 and bfloat16 are summed in float32
    and cast back)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        acc = tf.float32 if values.dtype in (tf.float16, tf.bfloat16) else values.dtype
        return tf.cast(segment_sums(values, segment_ids, n_segments, acc=acc), values.dtype)
    return ops.segment_sum(values, segment_ids, num_segments=n_segments)


def degenerate_message(items):
    """One warning text for ``[(weight_name, regularizer, refresh_info), ...]``."""
    lines = [f"  {name}: K={info['k']} >= rank {info['rank']} of its {reg._state['d']} x "
             f"{reg._state['n']} unit matrix ({reg._state['unit']} units)"
             for name, reg, info in items]
    return ("SpectralKMeansRegularizer(relaxation='spectral') is degenerate for "
            f"{len(items)} weight(s):\n" + "\n".join(lines) + "\nWith F the top-K right "
            "singular vectors of W (Deep k-Means eq. 4) and K >= rank(W), the penalty is "
            "exactly 0 after every F update and between updates only penalises W for leaving "
            "its previous row space; it does not pull units towards K centroids. Use "
            "relaxation='hard' (the un-relaxed eq. 1, penalty = k-means squared error) for "
            "that.")
