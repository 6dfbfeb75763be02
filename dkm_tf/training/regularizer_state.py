"""The state of a :class:`~dkm_tf.training.regularizer.SpectralKMeansRegularizer` in checkpoints,
and its hard F-step.

A k-means regularizer keeps state between its lazy F-steps (Wu et al., ICML 2018, §2.2): F
itself (the cluster segment map and scales for ``"hard"``, the singular vectors for
``"spectral"``), the centroids of the last refresh (the warm start of the next hard F-step),
the preserved zero units (``preserve_sparsity``) and the training step of the last scheduled
refresh (:class:`dkm_tf.RefreshKMeans` uses it to resume on schedule). None of it is a weight
of the layer, so that the layer, its weights and its config stay exactly Keras' own.

Keras saves an object's state when the object is reachable from the model through attributes
and is a ``KerasSaveable`` with ``save_own_variables`` / ``load_own_variables`` (as layers and
optimizers are). The regularizer is reachable (``layer.kernel_regularizer``), so it saves
itself there: ``model.save_weights`` (``keras.callbacks.BackupAndRestore``,
``ModelCheckpoint(save_weights_only=True)``) and ``model.save`` (``.keras``) write its arrays
under ``<layer path>/kernel_regularizer/vars`` (or ``depthwise_regularizer``, ...), and
loading puts them back, building the state when the regularizer was created from a config. A
file written before this existed has no such entry: the regularizer is then left as it is
(unbuilt until its first refresh), as before. A state of another relaxation or weight shape
raises ValueError (Keras' ``load_weights(..., skip_mismatch=True)`` turns it into a warning).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core import kmeans as kmeans_lib

try:  # the base class Keras' saving walks into (layers, optimizers, metrics and losses use it)
    from keras.src.saving.keras_saveable import KerasSaveable
except ImportError:  # pragma: no cover - a Keras without it: the state is not saved
    KerasSaveable = object

__all__ = ["KerasSaveable", "load", "save"]

_VERSION = 1


def save(reg, store):
    """Write the state of ``reg`` into a Keras variable store (nothing when it is unbuilt)."""
    st = reg._state  # noqa: SLF001
    if st is None:
        return
    store["version"] = np.array([_VERSION], np.int64)
    store["shape"] = np.array(st["shape"], np.int64)
    store["ready"] = np.array([float(st["ready"].numpy())], np.float32)
    store["refresh_step"] = np.array([reg.refresh_step], np.int64)
    for key in ("f", "segment", "scale"):
        if key in st:
            store[key] = np.asarray(st[key].numpy())
    if reg._codebook is not None:  # noqa: SLF001
        store["codebook"] = np.asarray(reg._codebook, np.float64)  # noqa: SLF001
    if reg._zeros is not None:  # noqa: SLF001
        store["zeros"] = np.asarray(reg._zeros, np.uint8)  # noqa: SLF001


def load(reg, store):
    """Restore the state written by :func:`save` (a store without it leaves ``reg`` as is)."""
    if store is None or "shape" not in store:
        return
    version = int(np.asarray(store["version"]).reshape(-1)[0]) if "version" in store else 0
    need = ("f",) if reg.relaxation == "spectral" else ("segment", "scale")
    missing = [k for k in need if k not in store]
    if version > _VERSION or missing:
        raise ValueError(
            f"Cannot restore the state of {reg!r} from this file: it was saved "
            + (f"by a newer dkm_tf (state version {version} > {_VERSION})." if version > _VERSION
               else f"without {missing} (another relaxation?)."))
    shape = tuple(int(s) for s in np.asarray(store["shape"]).reshape(-1))
    if reg.built and shape != reg._state["shape"]:  # noqa: SLF001
        raise ValueError(f"Cannot restore the state of {reg!r}: it was saved for a weight of "
                         f"shape {shape}, and this one serves a weight of shape "
                         f"{reg._state['shape']}.")  # noqa: SLF001
    reg.build(shape)
    st = reg._state  # noqa: SLF001
    for key in need:
        value = np.asarray(store[key])
        if value.shape != tuple(st[key].shape):
            raise ValueError(f"Cannot restore the state of {reg!r}: `{key}` has shape "
                             f"{value.shape} in the file, {tuple(st[key].shape)} here.")
        st[key].assign(value)
    if reg.relaxation == "spectral":
        f = np.asarray(store["f"], np.float32)
        st["ft"].assign(np.ascontiguousarray(f.transpose(0, 2, 1)))
        reg.projection = f.reshape(st["n"], -1)
    else:
        lead, d, trail = st["w3"]
        segment = np.asarray(store["segment"]).reshape(lead, d, trail)
        reg.assignment = (segment[:, 0, :] // d).reshape(-1).astype(np.int32)
    st["ready"].assign(float(np.asarray(store["ready"]).reshape(-1)[0]))
    reg.refresh_step = int(np.asarray(store["refresh_step"]).reshape(-1)[0])
    reg._codebook = np.array(store["codebook"], np.float64) if "codebook" in store else None  # noqa: SLF001
    reg._zeros = np.asarray(store["zeros"]).astype(bool) if "zeros" in store else None  # noqa: SLF001


# --------------------------------------------------------------------------- hard F-step
_BLOCK = 1 << 18  # units per block of the F-step's passes over a big weight


def cluster_means(x, idx, k):
    """Per-cluster means of the units ``x`` and the counts (empty clusters: zero means).
    Block by block: ``np.bincount`` makes int64 / float64 copies of what it is given."""
    counts, sums = np.zeros(k, np.int64), np.zeros((k, x.shape[1]))
    for s in range(0, x.shape[0], _BLOCK):
        i = idx[s:s + _BLOCK]
        counts += np.bincount(i, minlength=k)
        for j in range(x.shape[1]):
            sums[:, j] += np.bincount(i, weights=x[s:s + _BLOCK, j], minlength=k)
    return sums / np.maximum(counts, 1)[:, None], counts


def _nearest_sse(x, c):
    """int32 nearest-centroid indices of the units ``x`` and the total squared distance."""
    idx, err = np.empty(x.shape[0], np.int32), 0.0
    for s in range(0, x.shape[0], _BLOCK):
        j, dist = kmeans_lib._nearest(x[s:s + _BLOCK], c, 65_536)  # noqa: SLF001
        idx[s:s + _BLOCK], err = j, err + float(dist.sum())
    return idx, err


def _sse(x, means, idx):
    return sum(float(np.sum((x[s:s + _BLOCK] - means[idx[s:s + _BLOCK]]) ** 2))
               for s in range(0, x.shape[0], _BLOCK))


def hard_assignment(x, k, seed, name, previous=None, max_iter=20):
    """k-means of the units ``x``: ``(indices, cluster means, SSE)``.

    A fresh k-means (:func:`dkm_tf.cluster_values`) competes with Lloyd iterations started at
    the ``previous`` refresh's centroids; the lower SSE wins, so an F-step never raises the
    objective and assignments stay stable between refreshes. Indices stay int32 and every
    pass over the units runs in blocks (a 16.8 M-weight kernel took 22x its bytes).
    """
    _, idx = kmeans_lib.cluster_values(x, k, seed=seed, name=name)
    candidates = [idx]
    if previous is not None and previous.shape[1] == x.shape[1]:
        c, prev_err = previous, np.inf
        for _ in range(max_iter):
            j, err = _nearest_sse(x, c)
            if err >= prev_err * (1 - 1e-7):
                break
            prev_err, (c, counts) = err, cluster_means(x, j, c.shape[0])
            c = np.where(counts[:, None] > 0, c, previous)
        candidates.append(j)
    best = None
    for j in candidates:
        n = int(j.max()) + 1
        remap = (np.cumsum(np.bincount(j, minlength=n) > 0) - 1).astype(np.int32)
        j = remap[j]  # drop empty clusters (numbered in order, as np.unique's inverse)
        means, _ = cluster_means(x, j, int(remap[-1]) + 1)
        err = _sse(x, means, j)
        if best is None or err < best[2]:
            best = (j, means, err)
    return best


# ------------------------------------------------------------------ legacy .h5 files
def warn_legacy_h5_save(reg):
    """Log (logger ``"dkm_tf"``, level WARNING) that a legacy ``.h5`` model file
    (``model.save("m.h5")``) is about to drop the state of ``reg`` (nothing when ``reg`` is
    unbuilt or no such file is being written).

    Keras' legacy HDF5 format stores the model config and the layers' weights only: no
    ``save_own_variables``, so F, the warm-start centroids and ``refresh_step`` are lost, and
    the loaded regularizer rebuilds F from the loaded weights at its first call (another
    penalty: 7.399e-5 saved, 7.480e-5 loaded, measured on a conv after two epochs of
    ``RefreshKMeans``). Keras writes that file inside its legacy-config scope, where the
    regularizer's ``get_config`` is called: ``get_config`` calls this (a ``.keras`` file or
    ``save_weights`` keeps the state and never sets that scope).
    """
    import logging  # noqa: PLC0415

    from keras.src.backend.common import global_state  # noqa: PLC0415

    if reg._state is None or not global_state.get_global_attribute(  # noqa: SLF001
            "use_legacy_config", False):
        return
    # logged, not warnings.warn: Keras has opened (truncated) the file when get_config runs,
    # so a warning raised as an error (-W error) left an unreadable 800-byte file
    logging.getLogger("dkm_tf").warning(
        f"{reg!r}: a legacy .h5 model file does not store the k-means state (F of the last "
        f"refresh at step {reg.refresh_step}, warm-start centroids, preserved zeros); once "
        "loaded, the regularizer recomputes F from the loaded weights at its first call, so "
        "the penalty and the next hard F-step differ from the saved model's. Save a .keras "
        "file (model.save('m.keras')) or weights (model.save_weights('m.weights.h5')) to keep "
        "it.")
