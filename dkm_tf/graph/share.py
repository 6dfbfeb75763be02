"""Post-training weight sharing: k-means on every clusterable kernel, no re-training.

This is the paper's "Deep k-Means WR" baseline (Wu et al., ICML 2018, §4: "without
re-training"): each kernel is replaced by its k-means reconstruction ``codebook[indices]``.
The model given is never modified; a copy is returned with the Palettes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np

from dkm_tf.core import palette as palette_lib
from dkm_tf.core.kmeans import INITS, KMEANS_THREADS
from dkm_tf.core.units import GRANULARITIES, UNIT_CHOICES, resolve_unit
from dkm_tf.core.validate import check_choice, check_n_clusters
from dkm_tf.graph.copying import _copy_model, _NotACopyError, copy_layer, iter_layers

__all__ = ["ShareResult", "share_weights"]


@dataclasses.dataclass
class ShareResult:
    """What :func:`share_weights` returns.

    Attributes:
        model: a copy of the input model whose clustered kernels hold ``codebook[indices]``.
        palettes: list of :class:`~dkm_tf.core.palette.Palette`, one per clustered tensor.
        skipped: list of ``(layer_name, reason)`` for layers with weights left unclustered.
    """

    model: object
    palettes: list
    skipped: list

    def __iter__(self):  # allows ``model, palettes, skipped = share_weights(...)``
        return iter((self.model, self.palettes, self.skipped))


@dataclasses.dataclass
class _ShareJob:
    """k-means of one weight for :func:`share_weights` (pure numpy: runs in any thread)."""

    layer_name: str
    attr: str
    var: object
    kernel: np.ndarray
    kind: str
    unit: str
    cfg: dict
    seed: int

    def run(self):
        return palette_lib.cluster_tensor(
            self.kernel, kind=self.kind, n_clusters=int(self.cfg["n_clusters"]), unit=self.unit,
            granularity=self.cfg["granularity"], init=self.cfg["init"], seed=self.seed,
            layer_name=self.layer_name, weight_name=self.attr,
            sparsity=float(self.cfg["sparsity"]))


def _share_plan(model, defaults, overrides, seed):
    """The weights :func:`share_weights` clusters (layer order) and the layers it skips."""
    from dkm_tf.graph import clusterable  # noqa: PLC0415 (imports keras)

    jobs, skipped = [], []
    for i, layer in enumerate(iter_layers(model)):
        if not layer.weights:
            continue
        if not clusterable.is_clusterable(layer):
            skipped.append((layer.name, f"{type(layer).__name__} is not a supported kernel layer "
                                        f"(supported: {', '.join(clusterable.SUPPORTED_LAYERS)})"))
            continue
        cfg = clusterable.resolve_layer_config(layer, defaults, overrides)
        if cfg is None:
            skipped.append((layer.name, "excluded by overrides"))
            continue
        for attr, var, kind in clusterable.clusterable_weights(layer):
            kernel = np.asarray(var.numpy())
            jobs.append(_ShareJob(layer.name, attr, var, kernel, kind,
                                  resolve_unit(cfg["unit"], kind, kernel.shape), cfg, seed + i))
    return jobs, skipped


def share_weights(model, n_clusters=16, *, unit="scalar", granularity="per_tensor",
                  init="kmeans++", seed=0, overrides=None, sparsity=0.0, verbose=False,
                  inplace=False):
    """Cluster every supported kernel of a model with k-means (no re-training).

    Args:
        model: a built Sequential or Functional Keras model (not modified unless
            ``inplace``), or with ``inplace=True`` any built Keras model, subclassed ones
            included.
        n_clusters: K, centroids per codebook.
        unit: ``"scalar"``, ``"row"``, ``"kernel"`` (see :mod:`dkm_tf.core.units`) or ``"auto"``
            (the paper's choice: ``row`` for k x k convs, ``scalar`` for 1x1 convs and dense).
        granularity: ``"per_tensor"`` or ``"per_channel"``.
        init: k-means init, one of ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        seed: random seed (layer i uses ``seed + i``).
        overrides: dict keyed by layer name or class name with settings to change
            (``{"fc2": {"n_clusters": 64}}``) or ``None`` to leave a layer unclustered.
        sparsity: fraction of units per tensor fixed to an all-zero centroid (Deep k-Means'
            sparsity-promoting variant, §4.1.4); the rest share K - 1 centroids.
        verbose: print one line per clustered tensor.
        inplace: write the clustered values into ``model`` itself instead of a copy (needed
            for subclassed models, which Keras cannot clone; also saves the copy's memory).

    Returns:
        A :class:`ShareResult` ``(model, palettes, skipped)``; ``model`` is the input itself
        when ``inplace``.

    Raises:
        ValueError: invalid settings, or NaN/Inf in a kernel (the message names the layer).
        TypeError: the model cannot be copied (subclassed) and ``inplace`` is False.
    """
    check_n_clusters(n_clusters)
    check_choice("unit", unit, UNIT_CHOICES)
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("init", init, INITS)
    if not isinstance(inplace, bool):
        raise TypeError(f"Invalid type for argument `inplace`. Expected a bool. "
                        f"Received: inplace={inplace!r}")
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: {type(model).__name__}")
    defaults = {"n_clusters": n_clusters, "unit": unit, "granularity": granularity,
                "init": init, "sparsity": sparsity}
    jobs, skipped = _share_plan(model, defaults, overrides, seed)
    if inplace:
        palettes = []
        for job in jobs:
            palettes.append(job.run())
            job.var.assign(palettes[-1].decode().astype(job.kernel.dtype))
        clone = model
    else:  # k-means in a thread pool while Keras copies the model; each copied layer is
        # built directly with its clustered values (no copy of the old kernel, no assign)
        workers = min(KMEANS_THREADS, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers, "dkm_tf-kmeans") as pool:
            futures = {id(j.var): pool.submit(j.run)
                       for j in sorted(jobs, key=lambda j: -j.kernel.size)}

            def clone_function(layer):
                if not any(id(v) in futures for v in layer.weights):
                    return copy_layer(layer)
                try:  # k-means errors (NaN weights, ...) are not copy failures
                    values = [futures[id(v)].result().decode().astype(v.dtype)
                              if id(v) in futures else v.numpy() for v in layer.weights]
                except Exception as e:
                    raise _NotACopyError from e
                return copy_layer(layer, values)

            try:
                clone = _copy_model(model, clone_function)
            finally:
                for f in futures.values():
                    f.cancel()
            palettes = [futures[id(j.var)].result() for j in jobs]
    if verbose:
        for job, pal in zip(jobs, palettes):
            print(f"  clustered {pal.name}: {job.kernel.size:,} weights -> K={pal.n_clusters} "
                  f"({job.unit}, d={pal.unit_dim}, {job.cfg['granularity']})", flush=True)
    return ShareResult(clone, palettes, skipped)
