"""Optional periodic re-assignment of cluster indices during hard-weight-sharing fine-tuning.

Design. With plain hard sharing (Deep Compression's rule) every weight *is* its centroid, so
"nearest centroid of the current kernel" is the index it already has, and re-running k-means
on the decoded kernel returns the same clusters: re-assignment has nothing to act on. It
becomes meaningful only with a latent float kernel that keeps its own per-weight gradient,
which :class:`~dkm_tf.training.wrapper.ClusterWeights` keeps with ``latent=True`` through
``codebook[indices] + (w - stop_gradient(w))`` (forward value = the shared kernel; the
centroids get the summed member gradients, each latent weight its own). Every
``every_n_epochs`` epochs, this callback moves each unit to the centroid nearest to its latent
weight (per group), as tfmot does on every step; the centroids keep their trained values.
"""

from __future__ import annotations

import keras
import numpy as np

from dkm_tf.training.wrapper import ClusterWeights

__all__ = ["ReassignClusters", "cluster_wrappers"]


def cluster_wrappers(model):
    """All :class:`ClusterWeights` layers of a model (nested and subclassed models too)."""
    if isinstance(model, ClusterWeights):
        return [model]
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, ClusterWeights)]


@keras.saving.register_keras_serializable(package="dkm_tf")
class ReassignClusters(keras.callbacks.Callback):
    """Re-assign each unit to its nearest centroid every few epochs (``latent=True`` only).

    A fit resumed at epoch e > 0 (``BackupAndRestore``, or ``load_weights`` of a
    ``ModelCheckpoint`` and ``fit(..., initial_epoch=e)``) first redoes the re-assignment due at
    the end of epoch e - 1, which a checkpoint callback listed before this one did not save, so
    it ends where the uninterrupted fit ends.

    Args:
        every_n_epochs: re-assign after every this many epochs (>= 1).
        verbose: print the number of changed indices after each re-assignment.

    Attributes:
        history: list of ``(epoch, changed_indices)`` pairs, one per re-assignment.

    Raises:
        ValueError: at the start of training, when the model has no ClusterWeights layer or one
            of them has no latent kernel (the message names them).

    Example:
        >>> clustered = dkm_tf.cluster_weights(model, n_clusters=8, latent=True)  # doctest: +SKIP
        >>> clustered.fit(x, y, callbacks=[dkm_tf.ReassignClusters(2)])  # doctest: +SKIP
    """

    def __init__(self, every_n_epochs=1, verbose=0):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, (int, np.integer)) \
                or every_n_epochs < 1:
            raise ValueError("Invalid value for argument `every_n_epochs`. Expected an integer "
                             f">= 1. Received: every_n_epochs={every_n_epochs!r}")
        if not isinstance(verbose, (int, np.integer, np.bool_)) or not 0 <= verbose <= 2:
            raise ValueError("Invalid value for argument `verbose`. Expected an integer in "
                             f"[0, 2] (or a bool). Received: verbose={verbose!r}")
        self.every_n_epochs = int(every_n_epochs)
        self.verbose = int(verbose)
        self.history = []
        self._starting = False

    def get_config(self):
        """The constructor's arguments as a dict (``ReassignClusters(**config)`` rebuilds it)."""
        return {"every_n_epochs": self.every_n_epochs, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        """The callback of :meth:`get_config`'s ``config`` (``keras.saving`` round trips)."""
        return cls(**config)

    def on_train_begin(self, logs=None):
        wrappers = cluster_wrappers(self.model)
        if not wrappers:
            raise ValueError("ReassignClusters: the model has no ClusterWeights layer; cluster "
                             "it first with dkm_tf.cluster_weights(model, ..., latent=True).")
        missing = [w.name for w in wrappers if not w.latent]
        if missing:
            raise ValueError(
                f"ReassignClusters: layers {missing} have no latent kernel, so re-assignment "
                "would change nothing (each weight already equals its centroid). Cluster with "
                "latent=True, e.g. dkm_tf.cluster_weights(model, ..., latent=True).")
        self._starting = True

    def on_epoch_begin(self, epoch, logs=None):
        """A fit that starts at epoch e > 0 (``BackupAndRestore``, ``initial_epoch`` after
        ``load_weights``) redoes the re-assignment due at the end of epoch e - 1: a checkpoint
        callback listed before this one saved the state before it. Re-assigning is idempotent
        (units already at their nearest centroid stay), so a checkpoint that holds it is kept."""
        if self._starting:
            self._starting = False
            if epoch > 0 and epoch % self.every_n_epochs == 0:
                self._reassign(epoch - 1)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs == 0:
            self._reassign(epoch)

    def _reassign(self, epoch):
        # every layer planned first: a NaN in a later one changes no index at all
        plans = [w.reassign_plan() for w in cluster_wrappers(self.model)]
        changed = sum(ClusterWeights.assign_reassign_plan(p) for p in plans)
        self.history.append((epoch, changed))
        if self.verbose:
            print(f"ReassignClusters: epoch {epoch + 1}: {changed} indices changed")
