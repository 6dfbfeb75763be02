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
from dkm_tf.core.loss_kind import keep_source_loss
from dkm_tf.core.units import GRANULARITIES, UNIT_CHOICES
from dkm_tf.core.validate import (
    check_bool,
    check_choice,
    check_n_clusters,
    check_number,
    check_seed,
    is_bool,
)
from dkm_tf.graph.copying import _copy_model, _NotACopyError, copy_layer, iter_layers
from dkm_tf.graph.heartbeat import Heartbeat
from dkm_tf.graph.layer_names import wrapped_layer
from dkm_tf.graph.pipelines import map_pipeline, once_per_layer
from dkm_tf.graph.result_objects import check_not_a_result
from dkm_tf.graph.share_plan import share_plan
from dkm_tf.graph.untracked import no_weights_reason, untracked_skipped

__all__ = ["ShareResult", "share_weights"]


@dataclasses.dataclass
class ShareResult:
    """What :func:`share_weights` returns.

    Attributes:
        model: a copy of the input model whose clustered kernels hold ``codebook[indices]``.
        palettes: list of :class:`~dkm_tf.core.palette.Palette`, one per clustered tensor.
        skipped: list of ``(layer_name, reason)`` for layers with weights left unclustered (a
            layer a ``Lambda`` calls that the model does not track: ``graph.untracked``).
        folded: list of ``(layer_name, bn_name)``: BatchNormalization layers folded into the
            kernel before them ahead of clustering (see ``fold_bn``).
        lora_merged: names of the LoRA-enabled layers whose effective kernel (LoRA merged)
            was clustered; the returned copy holds them as plain layers.
    """

    model: object
    palettes: list
    skipped: list
    folded: list = dataclasses.field(default_factory=list)
    lora_merged: list = dataclasses.field(default_factory=list)

    def __iter__(self):  # allows ``model, palettes, skipped = share_weights(...)``
        return iter((self.model, self.palettes, self.skipped))


@dataclasses.dataclass
class _ShareJob:
    """k-means of one weight for :func:`share_weights` (pure numpy: runs in any thread)."""

    layer_name: str
    attr: str
    var: object
    shape: tuple  # the kernel's; its values are read in run(), one job at a time
    kind: str
    unit: str
    cfg: dict
    seed: int
    importance: object = None  # Fisher importance of the weight (weighting="fisher")

    @property
    def size(self):
        return int(np.prod(self.shape))

    def run(self):
        if self.importance is not None:
            from dkm_tf.graph.sensitivity import weighted_palette  # noqa: PLC0415

            pal = weighted_palette(
                np.asarray(self.var.numpy()), self.importance, kind=self.kind,
                n_clusters=int(self.cfg["n_clusters"]), unit=self.unit,
                granularity=self.cfg["granularity"], seed=self.seed,
                layer_name=self.layer_name, weight_name=self.attr)
        else:
            pal = palette_lib.cluster_tensor(
            np.asarray(self.var.numpy()), kind=self.kind, n_clusters=int(self.cfg["n_clusters"]),
            unit=self.unit,
            granularity=self.cfg["granularity"], init=self.cfg["init"], seed=self.seed,
            layer_name=self.layer_name, weight_name=self.attr,
            sparsity=float(self.cfg["sparsity"]),
            preserve_sparsity=bool(self.cfg["preserve_sparsity"]))
        note = getattr(self.cfg, "note", "")  # a default changed a setting: say which
        change = {"note": "; ".join(filter(None, (note, pal.note)))}
        if str(getattr(self.var, "dtype", "")) in ("bfloat16", "float16"):
            # the kernel is stored rounded: so is the codebook, so decode() == stored weights
            change["codebook"] = pal.codebook.astype(str(self.var.dtype)).astype(np.float32)
        return dataclasses.replace(pal, **change)


def share_weights(model, n_clusters=16, *, unit="scalar", granularity="per_tensor",
                  init="kmeans++", seed=0, overrides=None, sparsity=0.0, verbose=False,
                  inplace=False, preserve_sparsity=False, fold_bn=None, weighting=None,
                  data=None, loss=None, codebook="layer", transforms=1, scale_bits=16,
                  refine=None):
    """Cluster every supported kernel of a model with k-means (no re-training).

    Args:
        model: a built Sequential or Functional Keras model (not modified unless
            ``inplace``), or with ``inplace=True`` any built Keras model, subclassed ones
            included.
        n_clusters: K, centroids per codebook.
        unit: ``"scalar"``, ``"row"``, ``"kernel"`` (see :mod:`dkm_tf.core.units`) or ``"auto"``
            (the paper's choice: ``row`` for k x k convs, ``scalar`` for 1x1 convs and dense).
        granularity: ``"per_tensor"`` or ``"per_channel"``. Depthwise kernels get per-channel
            codebooks either way unless an ``overrides`` entry for their layer or its class
            sets ``"granularity"``: one codebook across their channels wrecks them
            (measured on MobileNetV2; see :func:`dkm_tf.graph.clusterable.weight_config`);
            their palettes' note says so.
        init: k-means init, one of ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        seed: random seed (layer i uses ``seed + i``).
        overrides: dict keyed by layer name or class name with settings to change
            (``{"fc2": {"n_clusters": 64}}``) or ``None`` to leave a layer unclustered
            (``{"DepthwiseConv2D": {"granularity": "per_tensor"}}`` clusters depthwise
            kernels per tensor, an entry without ``"granularity"`` keeps them per channel,
            ``{"DepthwiseConv2D": None}`` leaves them float). A key naming no layer, only
            models (a nested model: name its layers), or with settings only layers never
            clustered (BatchNormalization) raises: it would be ignored. A name shared by
            layers of several nested models applies to each of them.
        sparsity: fraction of units per tensor fixed to an all-zero centroid (Deep k-Means'
            sparsity-promoting variant, §4.1.4); the rest share K - 1 centroids.
        verbose: print one line per clustered tensor, and a heartbeat line every 15 s while
            k-means runs (:mod:`dkm_tf.graph.heartbeat`).
        inplace: write the clustered values into ``model`` itself instead of a copy (needed
            for subclassed models, which Keras cannot clone; also saves the copy's memory).
        preserve_sparsity: keep the weights' exact zeros (a pruned model's): they get a fixed
            zero entry on top of K centroids of the non-zero units (see
            :mod:`dkm_tf.core.codebook`). Cannot be combined with ``sparsity``.
        fold_bn: fold each BatchNormalization that directly follows a conv or dense layer into
            its kernel and bias first (:func:`dkm_tf.graph.batchnorm.fold_batch_norm`), so the
            palettes describe the kernels the TFLite converter stores (it folds them too) and
            a palettized export matches them. ``None`` (default): True, or False with
            ``inplace=True`` (folding changes the layer graph, so it needs a copy).
        weighting: ``None`` (plain k-means) or ``"fisher"``: sensitivity-weighted k-means,
            each weight counted by its diagonal Fisher information ``F`` plus ``mean(F)``
            (the true Fisher: expectation over the model's own class probabilities of the
            squared per-sample gradient of log p; SqueezeLLM §4.1; see
            :mod:`dkm_tf.graph.sensitivity`). Its k-means has its own k-means++ init and
            no fixed zero centroid: ``init`` must be ``"kmeans++"``, and ``overrides`` may not
            set another ``init``, nor (also with ``refine``) ``sparsity``/``preserve_sparsity``.
        data: samples ``x`` (or ``(x, y)``; labels are not needed) for ``weighting="fisher"``
            (a few hundred suffice; each costs one gradient pass per class), or ``(x, y,
            sample_weight)`` (or a tf.data.Dataset of such batches) for the weighted mean of
            the Fisher (``refine`` refuses weights). One sample is tried first: data that does
            not fit the model raises before any work.
        loss: the loss for ``weighting="fisher"``, a cross-entropy of the model's output
            (checked); default the compiled model's loss.
        codebook: ``"layer"`` (one codebook per tensor, default), or with ``unit="kernel"``
            scaled kernel clustering (Son et al., ECCV 2018): ``"shared"`` (one codebook per
            kernel size for the whole network) or a list of groups of layer names; see
            :mod:`dkm_tf.graph.kernel_share` (1x1 convs and dense layers stay float, reported).
        transforms: 1, 2, 4 or 8: transform-invariant kernel clustering (``unit="kernel"``).
        scale_bits: 16 (float16), 8 (int8 with a per-layer step) or 32: stored per-kernel
            scales of scaled kernel clustering.
        refine: ``None``, ``"outputs"`` or ``"gptq"``: after k-means, move each codebook
            (per tensor or per output channel; scalar or vector units) and its layer's bias to the
            least-squares fit of the float layer's outputs on ``data``, layer by layer, each
            layer fed by the already clustered ones, keeping a fit only if it lowers the
            model's output error (:mod:`dkm_tf.graph.refine`; still <= K values).
            ``"gptq"`` also tries GPTQ's error-feedback assignment of Dense and Conv2D
            scalar weights (:mod:`dkm_tf.graph.gptq`). Needs ``data`` (inputs only) and
            ``inplace=False``; the palettes' notes say what was updated, or why not.

    Returns:
        A :class:`ShareResult` ``(model, palettes, skipped)``; ``model`` is the input itself
        when ``inplace``.

    Raises:
        ValueError: invalid settings, or NaN/Inf in a kernel (the message names the layer),
            or (when folding) a BatchNormalization with non-finite statistics or called with
            ``training=True``.
        TypeError: the model cannot be copied (subclassed) and ``inplace`` is False.
    """
    defaults = {"n_clusters": n_clusters, "unit": unit, "granularity": granularity,
                "init": init, "sparsity": sparsity, "preserve_sparsity": preserve_sparsity}
    _check_settings(defaults)
    check_seed(seed)
    inplace = check_bool("inplace", inplace)  # numpy bools too; 1 refused
    verbose = check_bool("verbose", verbose)  # "yes", 1 and None were accepted
    if (fold_bn is not None and not is_bool(fold_bn)) or (fold_bn and inplace):
        raise ValueError("Invalid value for argument `fold_bn`. Expected None or a bool, and "
                         "not True with inplace=True (folding changes the layer graph). "
                         f"Received: fold_bn={fold_bn!r} with inplace={inplace!r}")
    fold_bn = None if fold_bn is None else bool(fold_bn)
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        check_not_a_result(model)  # fold_batch_norm's FoldResult, a (model, palettes) tuple
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: {type(model).__name__}")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built, so it has no weights to cluster: "
                         "build it first (call it on data or give it an Input).")
    from dkm_tf.graph import layer_features  # noqa: PLC0415 (imports keras)
    from dkm_tf.graph.tied import CLONE_WHY, check_no_tied_reads  # noqa: PLC0415

    if not inplace:  # in place, the shared values go into the variable every reader reads
        check_no_tied_reads(model, "share_weights", CLONE_WHY.format(
            entry="share_weights(inplace=False)", extra=""))

    layer_features.check_not_quantized(model, "share_weights", overrides=overrides)
    if inplace:
        layer_features.refuse_lora(
            model, "share_weights(inplace=True)", "Pass inplace=False (the returned copy holds "
            "each merged kernel, clustered); a subclassed model, which cannot be copied, needs "
            "its layers created without enable_lora and each kernel assigned the LoRA layer's "
            "merged layer.kernel")
    paths, (work, merged) = layer_features.lora_paths(model), layer_features.merge_lora(model)
    result = _share(work, n_clusters, unit, granularity, init, seed, overrides, sparsity,
                    verbose, inplace, preserve_sparsity, fold_bn, weighting, data,
                    loss, codebook, transforms, scale_bits, refine)
    result.palettes, result.lora_merged = layer_features.lora_note(result.palettes, paths), merged
    result.skipped = [*result.skipped, *((n, r) for n, _, r in untracked_skipped(model))]
    keep_source_loss(model, result.model)  # the copy's loss for to_tflite's int8 check
    return result


def _share(model, n_clusters, unit, granularity, init, seed, overrides, sparsity, verbose,
           inplace, preserve_sparsity, fold_bn, weighting, data, loss, codebook, transforms,
           scale_bits, refine):
    """:func:`share_weights` once its model is checked (and any LoRA merged)."""
    defaults = {"n_clusters": n_clusters, "unit": unit, "granularity": granularity,
                "init": init, "sparsity": sparsity, "preserve_sparsity": preserve_sparsity}
    from dkm_tf.graph import kernel_share  # noqa: PLC0415 (unit="kernel" with a scope)

    if kernel_share.kernel_route(unit, codebook, transforms, scale_bits,
                                 granularity=(granularity, "per_tensor"),
                                 sparsity=(sparsity, 0.0),
                                 preserve_sparsity=(preserve_sparsity, False),
                                 weighting=(weighting, None), refine=(refine, None)):
        result = ShareResult(*kernel_share.share_kernels(
            model, n_clusters, codebook=codebook, transforms=transforms,
            scale_bits=scale_bits, init=init, seed=seed, overrides=overrides,
            verbose=verbose, inplace=inplace, fold_bn=fold_bn))
        # the per-layer path's words for a BN left float (its fold plan read only if any)
        if fold_bn is not False and not inplace and result.skipped:
            from dkm_tf.graph.bn_fate import batch_norm_fate, stays_float  # noqa: PLC0415

            why = batch_norm_fate(model)[1]
            result.skipped = [(n, stays_float(why[n]) if n in why else r)
                              for n, r in result.skipped]
        return result
    from dkm_tf.graph.clusterable import check_overrides  # noqa: PLC0415 (imports keras)

    overrides = check_overrides(model, overrides, defaults, _check_settings)
    from dkm_tf.graph import sensitivity  # noqa: PLC0415 (imports keras)
    from dkm_tf.graph.refine import check_refine, refine_codebooks  # noqa: PLC0415

    calib = check_refine(model, refine, data, inplace, preserve_sparsity or sparsity)
    fisher = sensitivity.check_weighting(model, weighting, data, loss,
                                         preserve_sparsity or sparsity,
                                         data_used=calib is not None)
    check_override_options(defaults, overrides, weighting, refine)
    folding = None
    if fold_bn is not False and not inplace:
        from dkm_tf.graph.batchnorm import maybe_fold  # noqa: PLC0415 (imports keras)

        folding = maybe_fold(model)
        if folding.folded:  # already a fresh copy: cluster it in place (unless refine
            model, inplace = folding.model, calib is None  # compares it with the float one)
    jobs, skipped = share_plan(model, defaults, overrides, seed, _ShareJob)
    if not jobs and not any(r == "excluded by overrides" for _, r in skipped):
        wrapped = any(wrapped_layer(la) is not None for la in iter_layers(model))
        raise ValueError(f"share_weights found no weight to cluster in model {model.name!r}: "
                         + ("it is a clustered model (ClusterWeights layers): its palettes are "
                            "dkm_tf.strip_clustering(model); share_weights takes the plain "
                            "result. " if wrapped else "")
                         + (f"its layers with weights are not supported: {skipped}" if skipped
                            else no_weights_reason(model)))
    if fisher:  # on the model that is clustered (BatchNormalization folded: same function)
        imp = sensitivity.fisher_importance(model, fisher[0], fisher[1],
                                            variables=[j.var for j in jobs])
        jobs = [dataclasses.replace(j, importance=imp[id(j.var)]) for j in jobs]
    if folding is not None:  # say why a BatchNormalization was left unfolded
        from dkm_tf.graph.bn_fate import stays_float  # noqa: PLC0415 (cluster_weights' words)

        why = dict(folding.skipped)
        skipped = [(n, stays_float(why[n]) if n in why else r) for n, r in skipped]
    beat = Heartbeat(verbose, len(jobs))  # a line every 15 s while k-means runs
    runs = {id(j.var): beat.track(f"{j.layer_name}/{j.attr}", j.size, j.run) for j in jobs}
    if inplace:
        with beat:
            palettes = [runs[id(j.var)]() for j in jobs]  # all k-means first: an error
        for job, pal in zip(jobs, palettes):  # changes nothing
            job.var.assign(pal.decode().astype(job.var.dtype, copy=False))
        clone = model
    else:  # k-means in a thread pool while Keras copies the model; each copied layer is
        # built directly with its clustered values (no copy of the old kernel, no assign)
        workers = min(KMEANS_THREADS, os.cpu_count() or 1)
        with beat, concurrent.futures.ThreadPoolExecutor(workers, "dkm_tf-kmeans") as pool:
            futures = {id(j.var): pool.submit(runs[id(j.var)])
                       for j in sorted(jobs, key=lambda j: -j.size)}

            @once_per_layer  # a Pipeline (or its layers) used twice, or also inside another
            def clone_function(layer):  # Pipeline, stays one layer (before 2026-12-06: two)
                new = map_pipeline(layer, clone_function)
                if new is not None:
                    return new
                if not any(id(v) in futures for v in layer.weights):
                    return copy_layer(layer)
                try:  # k-means errors (NaN weights, ...) are not copy failures
                    values = [futures[id(v)].result().decode().astype(v.dtype, copy=False)
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
        for layer_name, bn_name in folding.folded if folding is not None else ():
            print(f"  folded BatchNormalization {bn_name} into {layer_name}", flush=True)
        for job, pal in zip(jobs, palettes):
            print(f"  clustered {pal.name}: {job.size:,} weights -> K={pal.n_clusters} "
                  f"({job.unit}, d={pal.unit_dim}, {job.cfg['granularity']})", flush=True)
    if calib is not None:
        palettes = refine_codebooks(model, clone, palettes, calib, method=refine, verbose=verbose)
    return ShareResult(clone, palettes, skipped, [] if folding is None else list(folding.folded))


def _check_settings(cfg):
    """Check one layer's settings (the defaults or the defaults updated by an override)."""
    check_n_clusters(cfg["n_clusters"])
    check_choice("unit", cfg["unit"], UNIT_CHOICES)
    check_choice("granularity", cfg["granularity"], GRANULARITIES)
    check_choice("init", cfg["init"], INITS)
    check_number("sparsity", cfg["sparsity"], "a fraction in [0, 1)", low=0, high=1,
                 high_open=True)
    check_bool("preserve_sparsity", cfg["preserve_sparsity"])
    if cfg["preserve_sparsity"] and cfg["sparsity"]:
        raise ValueError("Invalid value for argument `sparsity`. Expected 0 with "
                         "preserve_sparsity=True (one keeps existing zeros, the other creates "
                         f"zeros). Received: sparsity={cfg['sparsity']}")


def check_override_options(defaults, overrides, weighting, refine):
    """Refuse settings that ``weighting`` / ``refine`` would silently ignore: Fisher-weighted
    k-means has no fixed zero centroid and its own k-means++ init; ``refine`` moves every
    centroid, a fixed zero one included. The defaults' sparsity is checked by them."""
    if weighting is not None and defaults["init"] != "kmeans++":
        raise ValueError("Invalid value for argument `init`. Expected 'kmeans++' with "
                         f"weighting={weighting!r} (Fisher-weighted k-means uses its own "
                         f"k-means++ init). Received: init={defaults['init']!r}")
    for key, value in overrides.items():
        for name, plain in (("sparsity", 0), ("preserve_sparsity", False), ("init", "kmeans++")):
            if not value or value.get(name, plain) == plain:
                continue
            if weighting is not None or (refine is not None and name != "init"):
                other = (f"weighting={weighting!r}" if weighting is not None
                         else f"refine={refine!r}")
                raise ValueError(
                    f"Invalid value for argument `overrides[{key!r}]`. Expected {name}="
                    f"{plain!r} (or no {name!r}) with {other}: it would be ignored (Fisher-"
                    "weighted k-means has no fixed zero centroid and its own k-means++ init; "
                    f"refine moves every centroid). Received: overrides[{key!r}]={value!r}")
