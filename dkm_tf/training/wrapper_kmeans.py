"""k-means of one kernel into :class:`~dkm_tf.training.wrapper.ClusterWeights`' variables.

Pure numpy (thread-safe): :func:`dkm_tf.cluster_weights` runs :func:`kmeans_codebook` for all
layers in a thread pool while Keras copies the model; the wrapper runs it at build.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import kmeans_batched as batched_lib
from dkm_tf.core import units as units_lib

__all__ = ["check_finite", "check_padded_codebook", "index_dtype", "kmeans_codebook",
           "kmeans_layout", "nearest_indices"]

# entries of codebooks padded past the units they hold (K > M), per model (cluster_weights) or
# per wrapper built alone, above which K is refused (2**25 per weight took 0.4-2 GB each)
MAX_PADDED_ENTRIES = 2**24


def index_dtype(n_clusters):
    """Smallest integer dtype that holds indices in [0, n_clusters): uint8, int16 or int32."""
    if n_clusters <= 256:
        return "uint8"
    return "int16" if n_clusters <= 32768 else "int32"


def kmeans_layout(kernel_shape, kind, unit, granularity):
    """The :class:`~dkm_tf.core.units.UnitLayout` a wrapper uses for a weight of this shape."""
    unit = units_lib.resolve_unit(unit, kind, tuple(kernel_shape))
    return units_lib.layout_for(tuple(kernel_shape), kind, unit, granularity)


def check_padded_codebook(layout, n_clusters, preserve_sparsity=False, name=None, used=0):
    """Refuse a K above a weight's M units whose padded (G, K, d) codebook is huge, alone or
    with ``used`` entries the model's other padded codebooks hold; return its entries (0 when
    K <= M: no padding).

    The wrapper's codebook holds K centroids per group even where a group has only M < K
    units (the last centroid repeated), so ``cluster_weights(m, n_clusters=2**31 - 1)``
    allocated gigabytes and the process was killed, where ``share_weights`` keeps min(K, M).
    """
    g, m, d = layout.n_groups, layout.n_units, layout.unit_dim
    k = int(n_clusters) + bool(preserve_sparsity)
    padded = g * k * d if k > m + bool(preserve_sparsity) else 0
    if used + padded > MAX_PADDED_ENTRIES:
        others = f", with {used:,} entries of other padded codebooks" if used else ""
        raise ValueError(
            f"Invalid value for argument `n_clusters`. Expected an integer <= {m:,} (the units "
            f"per codebook of {name or 'this weight'}): K above them pads the wrapper's codebook "
            f"to {g:,} x {k:,} x {d} entries, all but {m:,} per group copies (share_weights "
            f"keeps min(K, units)){others}. Pass a smaller n_clusters or an override for this "
            f"layer. Received: n_clusters={n_clusters}")
    return padded


def kmeans_codebook(kernel, layout, n_clusters, *, init="kmeans++", seed=0, name=None,
                    kmeans_options=None, preserve_sparsity=False):
    """k-means of one kernel into the wrapper's variables: codebook (G, K, d), indices (G, M).

    Pure numpy (thread-safe): :func:`dkm_tf.cluster_weights` runs it for all layers in a
    thread pool while Keras copies the model. Group g uses ``seed + g``. When a group has
    fewer distinct units than K, its last centroid is repeated (no unit uses the copies).
    With ``preserve_sparsity`` the codebook is (G, K + 1, d), entry 0 the fixed zero.
    """
    check_padded_codebook(layout, n_clusters, preserve_sparsity, name)
    kernel = np.asarray(kernel)
    k, opts = n_clusters, dict(kmeans_options or {})
    if preserve_sparsity:
        return codebook_lib.kmeans_keeping_zeros(units_lib.to_units(kernel, layout), k, init=init,
                                                 seed=seed, name=name, kmeans_options=opts)[:2]
    if layout.n_groups == 1 and layout.unit_dim == 1:  # order-free: skip the float transpose
        cb, idx = kmeans_lib.cluster_values(kernel.reshape(-1), k, init=init, seed=seed,
                                            name=name, **opts)
        cb = np.asarray(cb, np.float32).reshape(-1)
        codebook = np.concatenate([cb, np.repeat(cb[-1:], k - cb.size)]).reshape(1, k, 1)
        idx = idx.astype(index_dtype(k)).reshape(kernel.shape)
        return codebook, units_lib.to_units(idx, layout)[..., 0]
    # per channel: scalar units of all groups in one batched k-means (core.kmeans_batched)
    cb, idx = batched_lib.cluster_groups(units_lib.to_units(kernel, layout), k, init=init,
                                         seed=seed, name=name, **opts)
    return np.concatenate([cb, np.repeat(cb[:, -1:], k - cb.shape[1], axis=1)], axis=1), idx


def check_finite(values, what):
    """Raise a ``ValueError`` when ``values`` holds NaN or Inf: a diverged fit (a NaN loss, e.g.
    stopped by ``keras.callbacks.TerminateOnNaN``) must not be snapped or re-assigned to finite
    centroids silently (the wrapped model outputs NaN; the result would not)."""
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise ValueError(
            f"{what} holds {bad} NaN/Inf value(s): training diverged (a NaN loss). Assigning "
            "them to centroids would hide it. Restore finite weights (e.g. from a checkpoint) "
            "and train with a lower learning rate.")


def nearest_indices(units, codebook, old, preserve_sparsity, what):
    """Indices (G, M) of the centroid of ``codebook`` (G, K, d) nearest to each of ``units``
    (G, M, d), per group; with ``preserve_sparsity`` units at the fixed zero (``old`` == 0)
    stay there. Non-finite units or centroids raise (:func:`check_finite`)."""
    check_finite(units, what)
    check_finite(codebook, f"{what}: its codebook")
    return np.stack([codebook_lib.nearest_keeping_zeros(units[g], codebook[g], old[g])
                     if preserve_sparsity else codebook_lib.nearest(units[g], codebook[g])
                     for g in range(codebook.shape[0])])
