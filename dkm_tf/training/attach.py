"""Attaching the Deep k-Means penalty to the kernels of an existing model, and finding it again.

:func:`attach_regularizer` puts a :class:`~dkm_tf.training.regularizer.SpectralKMeansRegularizer`
on every conv kernel (and optionally every other clusterable weight: Dense, Embedding,
recurrent and attention) of a built model, in place, so the user's own
``compile`` / ``fit`` trains with it; :func:`refresh_regularizers` recomputes every F (what
:class:`dkm_tf.RefreshKMeans` calls); :func:`detach_regularizer` takes them off again.
"""

from __future__ import annotations

import contextlib
import warnings

import keras

from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import check_bool, check_n_clusters, check_seed, invalid
from dkm_tf.graph import clusterable, layer_features
from dkm_tf.graph.quantized import quantization_mode
from dkm_tf.graph.result_objects import check_not_a_result
from dkm_tf.training import regularizer as reg_lib
from dkm_tf.training.attach_report import AttachedRegularizers, weight_paths
from dkm_tf.training.attach_report import per_layer as _per_layer
from dkm_tf.training.attach_report import skipped_layers as _skipped
from dkm_tf.training.wrapper_kmeans import MAX_PADDED_ENTRIES

__all__ = ["AttachedRegularizers", "attach_regularizer", "detach_regularizer",
           "kmeans_regularizers", "refresh_regularizers", "strategy_scope"]

_CONV_KINDS = ("conv", "conv_t", "depthwise")
_FLOAT = "include_dense=False, or layers=[...] naming the float layers"
_REG_ATTR = {"kernel": "kernel_regularizer", "depthwise_kernel": "depthwise_regularizer",
             "pointwise_kernel": "pointwise_regularizer",
             "embeddings": "embeddings_regularizer",
             "recurrent_kernel": "recurrent_regularizer"}
# Their config holds one kernel_regularizer for all projections: per-weight penalties on
# their sublayers train, but are not saved with the model.
_CONFIG_LOSES_REGULARIZER = (keras.layers.MultiHeadAttention,
                             keras.layers.GroupQueryAttention)


def _selected(kind, include_dense):
    """Whether ``attach_regularizer`` regularizes a weight of this kind by default: conv
    kernels always; with ``include_dense`` every other kind :func:`dkm_tf.share_weights`
    clusters too (Dense, Embedding, recurrent, EinsumDense / attention, custom "vector")."""
    return kind in _CONV_KINDS or include_dense


def _check_padded(k, geometry, name, used=0):
    """Refuse a K above a weight's units whose (K + 1) x d state is huge, alone or with the
    ``used`` entries of the other weights' (returned: this one's, 0 when K <= units): the hard
    regularizer's per-cluster sums hold K + 1 entries even where only N units exist, and
    ``attach_regularizer(m, 2**31 - 1)`` had the process killed for memory."""
    _, lead, d, trail = geometry
    padded = (k + 1) * d if k > lead * trail else 0
    if used + padded > MAX_PADDED_ENTRIES:
        raise invalid("n_clusters", f"an integer <= {lead * trail:,} (the units of {name}): "
                      f"the regularizer's state would hold ({k:,} + 1) x {d} entries"
                      + (f" besides {used:,} of other weights" if used else ""), k)
    return padded


def _owner(layer, attr):
    """(object, ``*_regularizer`` attribute) that configures the weight at path ``attr``:
    ``"cell.recurrent_kernel"`` of an LSTM -> (its cell, ``"recurrent_regularizer"``); the
    layer's own ``kernel_regularizer`` is a read-only view of its cell's."""
    head, _, leaf = attr.rpartition(".")
    owner = clusterable.get_weight(layer, head) if head else layer
    reg_attr = _REG_ATTR.get(leaf)
    if leaf == "kernel" and isinstance(
            owner, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        reg_attr = "depthwise_regularizer"
    return owner, reg_attr


def _regularizer_slots(layer):
    """Writable (object, ``*_regularizer`` attribute) pairs of ``layer`` and its sublayers."""
    slots = [(layer, r) for r in sorted(set(_REG_ATTR.values()))]
    if layer.built and clusterable.is_clusterable(layer) and not isinstance(layer, keras.Model):
        with contextlib.suppress(TypeError, ValueError):
            slots += [_owner(layer, a) for a, _, _ in clusterable.clusterable_weights(layer)]
    return [(o, r) for o, r in slots
            if o is not None and r and not isinstance(getattr(type(o), r, None), property)]


def _unit_for(unit, kind, layer, attr, shape, named):
    """The regularizer's unit: scalars for a kernel without spatial axes (Dense, EinsumDense)
    when the whole model is regularized (as share_weights clusters them: rows of length 1);
    a layer named in ``layers`` with ``unit`` row or kernel is an error."""
    spatial = len(shape) >= 3 and not kind.startswith(units_lib.EINSUM_PREFIX)
    if unit in ("row", "kernel") and not spatial and not named:
        return "scalar"
    if not kind.startswith(units_lib.EINSUM_PREFIX):
        return unit
    if unit in ("row", "kernel"):
        raise invalid("unit", f"'scalar' or 'auto' for weight {attr!r} of layer {layer.name!r} "
                      f"(an EinsumDense kernel of shape {tuple(shape)}: no spatial axes)", unit)
    return "scalar"


def attach_regularizer(model, n_clusters, lam=1e-4, *, relaxation="hard", unit="auto",
                       layers=None, include_dense=False, sparsity=0.0, seed=0,
                       preserve_sparsity=False):
    """Put a :class:`dkm_tf.SpectralKMeansRegularizer` on the kernels of a built model, in place.

    After this, the user's own ``model.compile(...)`` / ``model.fit(...,
    callbacks=[dkm_tf.RefreshKMeans()])`` trains with the penalty (compile after attaching).
    Each kernel gets its own instance, created with its F already computed. An existing
    regularizer on a kernel is kept and added (``base``). The layer's ``*_regularizer``
    attribute is set too, so the model saves and loads (``.keras``) with the penalty.

    Args:
        model: a built Keras model.
        n_clusters: K, an int for all layers or a dict ``{layer name: K}`` (layers not in the
            dict are skipped when ``layers`` is None).
        lam: λ >= 0.
        relaxation: ``"hard"`` (default) or ``"spectral"``; see :mod:`dkm_tf.training.regularizer`.
        unit: ``"auto"`` (rows for k x k convs, scalars for 1x1 convs, Dense, Embedding,
            recurrent and attention kernels), ``"row"``, ``"kernel"`` or ``"scalar"``; with
            ``layers`` None, row or kernel units apply to kernels with spatial axes and the
            others get scalars (as :func:`dkm_tf.share_weights` clusters them).
        layers: layer names or layer objects to regularize (default: every conv-type layer,
            plus every other clusterable weight when ``include_dense``).
        include_dense: (default False; :func:`dkm_tf.dkm_retrain`'s is True) when ``layers``
            is None, also regularize every clusterable weight that
            is not a conv kernel, i.e. all that :func:`dkm_tf.share_weights` and
            :func:`dkm_tf.cluster_weights` cluster: Dense kernels, Embedding tables (their
            ``embeddings_regularizer``), custom layers' weights (``get_clusterable_weights``),
            the input and recurrent kernels of SimpleRNN/LSTM/GRU (also inside RNN and
            Bidirectional; their ``kernel_regularizer`` / ``recurrent_regularizer`` is set on
            the cell, so it is saved), and EinsumDense / MultiHeadAttention projections
            (MultiHeadAttention's config has one ``kernel_regularizer`` for its four
            projections, so those penalties are not saved with the model: a warning says
            so; attach again after loading).
        sparsity: fraction p of zero-centred units (§4.1.4); a float or ``{layer name: p}``.
        seed: k-means seed.
        preserve_sparsity: the kernels' exact zeros (a pruned model's) form a zero cluster on
            top of the K clusters, so the penalty does not pull them away from zero (its
            gradient there is 0). It does not stop the data loss from moving them: fine-tune
            with ``cluster_weights(..., preserve_sparsity=True)`` to keep them exactly zero.

    Returns:
        An :class:`AttachedRegularizers`: ``{variable path: regularizer}`` for the weights
        that got one (a dict), whose ``skipped`` lists every layer with weights left without
        a penalty and why: not a conv kernel with ``include_dense=False`` (Dense, Embedding,
        ...), not in ``layers``, no K in an ``n_clusters`` dict, or a layer type no k-means
        clusters (BatchNormalization, a custom layer without ``get_clusterable_weights``);
        ``summary()`` prints both.

    Raises:
        ValueError: bad λ / K / relaxation / unit / sparsity, a unit the layer's kernel does
            not have, or a layer name that is not in the model.
        TypeError: a requested layer has no kernel that can be regularized.
    """
    _check_model(model)
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; build it (call it on data or "
                         "give it an Input) before attach_regularizer.")
    check_bool("include_dense", include_dense)
    check_seed(seed)
    if sparsity is None or (isinstance(sparsity, dict) and None in sparsity.values()):
        raise invalid("sparsity", "a fraction in [0, 1) or a dict {layer name: fraction} "
                      "(0 for none)", sparsity)  # None was read as 0 without a word
    by_name = {}  # a name of layers in two nested models selects both, as n_clusters does
    for layer in clusterable.walk_layers(model):
        by_name.setdefault(layer.name, []).append(layer)
    for arg, value in (("n_clusters", n_clusters), ("sparsity", sparsity)):
        unknown = sorted(set(value) - set(by_name), key=str) if isinstance(value, dict) else []
        if unknown:
            classes = {type(lay).__name__ for lays in by_name.values() for lay in lays}
            raise ValueError(f"Invalid value for argument `{arg}`. Expected a value or a dict "
                             f"keyed by layer names of model {model.name!r}. Received keys "
                             f"that name no layer: {unknown}" + (
                                 " (layer class names, which share_weights' overrides take, "
                                 "are not keys here: name each layer)"
                                 if classes.intersection(unknown) else ""))
    for k in (n_clusters.values() if isinstance(n_clusters, dict) else [n_clusters]):
        if k is not None or not isinstance(n_clusters, dict):
            check_n_clusters(k)
    if layers is not None:
        if isinstance(layers, (str, keras.layers.Layer)) or not hasattr(layers, "__iter__"):
            raise TypeError("Invalid type for argument `layers`. Expected a list of layer "
                            f"names or layers. Received: layers={layers!r}")
        chosen = []
        for item in layers:
            if isinstance(item, str):
                if item not in by_name:
                    raise ValueError("Invalid value for argument `layers`. Expected names of "
                                     f"layers of model {model.name!r}. Received: layers={item!r}")
                chosen.extend(lay for lay in by_name[item] if lay not in chosen)
            elif item not in chosen:
                chosen.append(item)
        targets = []
        _check_features(model, chosen)
        for layer in chosen:
            try:
                weights = clusterable.clusterable_weights(layer)
            except TypeError as e:
                raise TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) has no kernel "
                                f"to regularize. {e}") from e
            targets.extend((layer, w) for w in weights)
    else:
        chosen = None
        if include_dense:  # Keras quantizes Dense, EinsumDense and Embedding only
            layer_features.check_not_quantized(model, "attach_regularizer", leave_float=_FLOAT)
        targets = [(layer, w) for layer in clusterable.walk_layers(model)
                   if clusterable.is_clusterable(layer) and not quantization_mode(layer)
                   for w in clusterable.clusterable_weights(layer)
                   if _selected(w[2], include_dense)]
    if not targets:
        kinds = sorted({type(layer).__name__ for layer in clusterable.walk_layers(model)
                        if clusterable.is_clusterable(layer)})
        raise ValueError(
            f"attach_regularizer found no kernel to regularize in model {model.name!r}: "
            + (f"its clusterable layers ({', '.join(kinds)}) are Dense/Embedding/recurrent/"
               "attention layers, which need include_dense=True (or name them in layers=[...])."
               if kinds and not include_dense else "it has no clusterable layer."
               + (" Its ClusterWeights layers already share their kernels: attach the "
                  "regularizer before dkm_tf.cluster_weights (or to the dkm_tf.strip_clustering"
                  " result)." if any(type(layer).__name__ == "ClusterWeights"
                                     for layer in clusterable.walk_layers(model)) else "")))
    _check_features(model, list({id(layer): layer for layer, _ in targets}.values()))
    attached, degenerate, unsaved, planned, paths = {}, [], [], [], weight_paths(model)
    padded = 0
    for layer, (attr, var, kind) in targets:  # a huge padded K refused before any k-means
        k = _per_layer(n_clusters, layer.name)
        geometry = None
        if k is not None and relaxation == "hard":
            with contextlib.suppress(ValueError):  # a bad unit: named with its layer below
                geometry = reg_lib.unit_geometry(var.shape, _unit_for(
                    unit, kind, layer, attr, var.shape, layers is not None))
        if geometry is not None:
            padded += _check_padded(k, geometry, f"{layer.name}/{attr}", padded)
    with strategy_scope(model):  # every F first: an error leaves the model as it was
        for layer, (attr, var, kind) in targets:
            k = _per_layer(n_clusters, layer.name)
            if k is None:
                continue
            existing = var.regularizer
            if isinstance(existing, reg_lib.SpectralKMeansRegularizer):
                existing = existing.base
            reg_unit = _unit_for(unit, kind, layer, attr, var.shape, layers is not None)
            reg = reg_lib.SpectralKMeansRegularizer(
                k, lam, relaxation, reg_unit, sparsity=_per_layer(sparsity, layer.name) or 0.0,
                seed=seed, base=existing, preserve_sparsity=preserve_sparsity)
            try:
                info = reg.refresh(var, warn=False)
            except ValueError as e:
                raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}), weight "
                                 f"{attr!r} of shape {tuple(var.shape)}: {e}") from e
            planned.append((layer, attr, var, reg, info))
        if not planned:
            names = sorted({lay.name for lay, _ in targets})
            raise ValueError(f"attach_regularizer: n_clusters={n_clusters!r} gives no K to "
                             f"any of the kernels it would regularize ({names}).")
        for layer, attr, var, reg, info in planned:
            var.regularizer = reg
            owner, reg_attr = _owner(layer, attr)
            if reg_attr and hasattr(owner, reg_attr):
                setattr(owner, reg_attr, reg)
            if isinstance(layer, _CONFIG_LOSES_REGULARIZER) and layer.name not in unsaved:
                unsaved.append(layer.name)
            attached[paths.get(id(var), var.path)] = reg
            if info["degenerate"]:
                degenerate.append((paths.get(id(var), var.path), reg, info))
                reg._warned = True
    if degenerate:
        warnings.warn(reg_lib.degenerate_message(degenerate), UserWarning, stacklevel=2)
    if unsaved:
        warnings.warn(f"attach_regularizer: the k-means penalties of {unsaved} "
                      "(MultiHeadAttention / GroupQueryAttention) train, but are not saved with "
                      "the model: its config holds one kernel_regularizer for all its "
                      "projections. Call "
                      "attach_regularizer again after loading.", UserWarning, stacklevel=2)
    _reset_compiled_functions(model)
    done = {id(var) for _, _, var, _, _ in planned}
    trainable = {id(v) for v in model.trainable_weights}  # Keras penalizes only these
    return AttachedRegularizers(attached, _skipped(model, done, chosen, n_clusters),
                                [paths.get(id(var), var.path) for _, _, var, _, _ in planned
                                 if id(var) not in trainable])


def detach_regularizer(model):
    """Remove every k-means regularizer from ``model`` (restoring any ``base`` regularizer).

    Args:
        model: a ``keras.Model``, changed in place (a compiled one re-traces its steps).

    Returns:
        The number of weights that had one.
    """
    _check_model(model)
    count = 0
    for layer in [model, *clusterable.walk_layers(model)]:
        for owner, reg_attr in _regularizer_slots(layer):
            if isinstance(getattr(owner, reg_attr, None), reg_lib.SpectralKMeansRegularizer):
                setattr(owner, reg_attr, getattr(owner, reg_attr).base)
    for var, reg in kmeans_regularizers(model):
        var.regularizer = reg.base
        count += 1
    _reset_compiled_functions(model)
    return count


def _reset_compiled_functions(model):
    # A traced train/test step captured the old regularizers; make fit/evaluate re-trace.
    for attr in ("train_function", "test_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def kmeans_regularizers(model):
    """``[(variable, regularizer)]`` for every weight of ``model`` with a k-means penalty.

    Args:
        model: a ``keras.Model``; frozen layers' weights count (unfrozen, they train again).
    """
    _check_model(model)
    return [(v, v.regularizer) for v in model.weights
            if isinstance(v.regularizer, reg_lib.SpectralKMeansRegularizer)]


def refresh_regularizers(model, *, warn=True):
    """Refresh F of every k-means regularizer of ``model`` (the lazy F-step of Wu et al., ICML
    2018, §2.2 eq. 4: F from each weight's current value); one aggregated degeneracy warning.

    Args:
        model: a ``keras.Model`` with k-means regularizers (:func:`attach_regularizer`).
        warn: True (default): one ``UserWarning`` naming the weights whose spectral relaxation
            is degenerate (K >= rank: zero penalty), once per regularizer; False: none.

    Returns:
        ``{variable path: refresh info}`` (see :meth:`SpectralKMeansRegularizer.refresh`).
    """
    warn = check_bool("warn", warn)  # "yes", 0 and None were accepted
    out, degenerate = {}, []
    with strategy_scope(model):
        found = list(kmeans_regularizers(model))  # a TypeError naming `model` first
        paths = weight_paths(model)
        for var, reg in found:
            info = reg.refresh(var, warn=False)
            path = paths.get(id(var), var.path)  # "a/fc/kernel" where two read "fc/kernel"
            out[path] = info
            if info["degenerate"] and not reg._warned:
                degenerate.append((path, reg, info))
                reg._warned = True
    if warn and degenerate:
        warnings.warn(reg_lib.degenerate_message(degenerate), UserWarning, stacklevel=2)
    _retrace_on_jax(model)
    return out


def _retrace_on_jax(model):
    """Re-trace the compiled steps after a refresh on the JAX backend: F is not model state,
    so a jitted JAX step holds the values it saw when traced as constants (TensorFlow reads the
    variables at each step; PyTorch runs eagerly). ``fit`` looks ``train_function`` up at
    every step, so re-making it mid-fit is safe."""
    if keras.backend.backend() != "jax":
        return
    for kind in ("train", "test", "predict"):
        if getattr(model, f"{kind}_function", None) is not None:
            getattr(model, f"make_{kind}_function")(force=True)  # traced at its next call


def _check_features(model, layers):
    """Refuse quantized or LoRA-enabled ``layers`` (the ones to regularize), before any work:
    no float kernel variable holds what they compute with."""
    layer_features.check_not_quantized(model, "attach_regularizer", layers, leave_float=_FLOAT)
    layer_features.refuse_lora(model, "attach_regularizer", "Attach the regularizer to a copy "
                               "with each LoRA merged into a plain kernel instead", layers)


def _check_model(model):
    if not isinstance(model, keras.Model):
        check_not_a_result(model)
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: model={model!r} of type {type(model).__name__}")


def strategy_scope(model):
    """The scope of the model's distribution strategy, so state is created like its weights."""
    if keras.backend.backend() != "tensorflow":  # tf.distribute strategies are TF-only
        return contextlib.nullcontext()
    import tensorflow as tf  # noqa: PLC0415

    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or tf.distribute.has_strategy() or (
            strategy is tf.distribute.get_strategy()):
        return contextlib.nullcontext()  # already in a scope, or the default strategy
    return strategy.scope()
