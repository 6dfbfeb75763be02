"""Attaching the Deep k-Means penalty to the kernels of an existing model, and finding it again.

:func:`attach_regularizer` puts a :class:`~dkm_tf.training.regularizer.SpectralKMeansRegularizer`
on every conv (and optionally Dense) kernel of a built model, in place, so the user's own
``compile`` / ``fit`` trains with it; :func:`refresh_regularizers` recomputes every F (what
:class:`dkm_tf.RefreshKMeans` calls); :func:`detach_regularizer` takes them off again.
"""

from __future__ import annotations

import contextlib
import warnings

import keras

from dkm_tf.graph import clusterable
from dkm_tf.training import regularizer as reg_lib

__all__ = ["attach_regularizer", "detach_regularizer", "kmeans_regularizers",
           "refresh_regularizers", "strategy_scope"]

_CONV_KINDS = ("conv", "conv_t", "depthwise")
_REG_ATTR = {"kernel": "kernel_regularizer", "depthwise_kernel": "depthwise_regularizer",
             "pointwise_kernel": "pointwise_regularizer",
             "embeddings": "embeddings_regularizer"}


def _per_layer(value, layer_name):
    if isinstance(value, dict):
        return value.get(layer_name)
    return value


def attach_regularizer(model, n_clusters, lam=1e-4, *, relaxation="hard", unit="auto",
                       layers=None, include_dense=False, sparsity=0.0, seed=0):
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
        unit: ``"auto"`` (rows for k x k convs, scalars for 1x1 convs and Dense),
            ``"row"``, ``"kernel"`` or ``"scalar"``.
        layers: layer names or layer objects to regularize (default: every conv-type layer,
            plus Dense when ``include_dense``).
        include_dense: also regularize Dense kernels when ``layers`` is None.
        sparsity: fraction p of zero-centred units (§4.1.4); a float or ``{layer name: p}``.
        seed: k-means seed.

    Returns:
        ``{variable path: regularizer}`` for the weights that got one.

    Raises:
        ValueError: bad λ / K / relaxation / unit / sparsity, a unit the layer's kernel does
            not have, or a layer name that is not in the model.
        TypeError: a requested layer has no kernel that can be regularized.
    """
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; build it (call it on data or "
                         "give it an Input) before attach_regularizer.")
    if layers is not None:
        by_name = {layer.name: layer for layer in clusterable.walk_layers(model)}
        chosen = []
        for item in layers:
            if isinstance(item, str):
                if item not in by_name:
                    raise ValueError("Invalid value for argument `layers`. Expected names of "
                                     f"layers of model {model.name!r}. Received: layers={item!r}")
                item = by_name[item]
            chosen.append(item)
        targets = []
        for layer in chosen:
            try:
                weights = clusterable.clusterable_weights(layer)
            except TypeError as e:
                raise TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) has no kernel "
                                f"to regularize. {e}") from e
            targets.extend((layer, w) for w in weights)
    else:
        kinds = _CONV_KINDS + (("dense",) if include_dense else ())
        targets = [(layer, w) for layer in clusterable.walk_layers(model)
                   if clusterable.is_clusterable(layer)
                   for w in clusterable.clusterable_weights(layer) if w[2] in kinds]
    attached, degenerate = {}, []
    with strategy_scope(model):
        for layer, (attr, var, _kind) in targets:
            k = _per_layer(n_clusters, layer.name)
            if k is None:
                continue
            existing = var.regularizer
            if isinstance(existing, reg_lib.SpectralKMeansRegularizer):
                existing = existing.base
            reg = reg_lib.SpectralKMeansRegularizer(
                k, lam, relaxation, unit, sparsity=_per_layer(sparsity, layer.name) or 0.0,
                seed=seed, base=existing)
            try:
                info = reg.refresh(var, warn=False)
            except ValueError as e:
                raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}), weight "
                                 f"{attr!r} of shape {tuple(var.shape)}: {e}") from e
            var.regularizer = reg
            reg_attr = _REG_ATTR.get(attr)
            if attr == "kernel" and isinstance(
                    layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
                reg_attr = "depthwise_regularizer"
            if reg_attr and hasattr(layer, reg_attr):
                setattr(layer, reg_attr, reg)
            attached[var.path] = reg
            if info["degenerate"]:
                degenerate.append((var.path, reg, info))
                reg._warned = True
    if degenerate:
        warnings.warn(reg_lib.degenerate_message(degenerate), UserWarning, stacklevel=2)
    _reset_compiled_functions(model)
    return attached


def detach_regularizer(model):
    """Remove every k-means regularizer from ``model`` (restoring any ``base`` regularizer).

    Returns:
        The number of weights that had one.
    """
    count = 0
    for layer in [model, *clusterable.walk_layers(model)]:
        for reg_attr in set(_REG_ATTR.values()):
            if isinstance(getattr(layer, reg_attr, None), reg_lib.SpectralKMeansRegularizer):
                setattr(layer, reg_attr, getattr(layer, reg_attr).base)
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
    """``[(variable, regularizer)]`` for every weight of ``model`` with a k-means penalty."""
    return [(v, v.regularizer) for v in model.trainable_weights
            if isinstance(v.regularizer, reg_lib.SpectralKMeansRegularizer)]


def refresh_regularizers(model, *, warn=True):
    """Refresh F of every k-means regularizer of ``model``; one aggregated degeneracy warning.

    Returns:
        ``{variable path: refresh info}`` (see :meth:`SpectralKMeansRegularizer.refresh`).
    """
    out, degenerate = {}, []
    with strategy_scope(model):
        for var, reg in kmeans_regularizers(model):
            info = reg.refresh(var, warn=False)
            out[var.path] = info
            if info["degenerate"] and not reg._warned:
                degenerate.append((var.path, reg, info))
                reg._warned = True
    if warn and degenerate:
        warnings.warn(reg_lib.degenerate_message(degenerate), UserWarning, stacklevel=2)
    return out


def strategy_scope(model):
    """The scope of the model's distribution strategy, so state is created like its weights."""
    import tensorflow as tf  # noqa: PLC0415

    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or tf.distribute.has_strategy() or (
            strategy is tf.distribute.get_strategy()):
        return contextlib.nullcontext()  # already in a scope, or the default strategy
    return strategy.scope()
