"""Deep k-Means re-training: attach the penalty to a model, and the whole loop in one call."""

from __future__ import annotations

import warnings

import keras

from dkm_tf import callbacks as callbacks_lib
from dkm_tf import clusterable
from dkm_tf import regularizers as reg_lib
from dkm_tf._training import check_learning_rate, default_loss
from dkm_tf.posttrain import copy_model

__all__ = ["attach_regularizer", "detach_regularizer", "dkm_retrain"]

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
        relaxation: ``"hard"`` (default) or ``"spectral"``; see :mod:`dkm_tf.regularizers`.
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
    with reg_lib.strategy_scope(model):
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
    for var, reg in reg_lib.kmeans_regularizers(model):
        var.regularizer = reg.base
        count += 1
    _reset_compiled_functions(model)
    return count


def _reset_compiled_functions(model):
    # A traced train/test step captured the old regularizers; make fit/evaluate re-trace.
    for attr in ("train_function", "test_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def _split(data, name):
    if data is None:
        return None, None
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(f"Invalid value for argument `{name}`. Expected an (x, y) pair or "
                             f"a tf.data.Dataset. Received: a sequence of length {len(data)}")
        return tuple(data), None
    return None, data


def dkm_retrain(model, train_data, val_data=None, *, n_clusters, lam=1e-4, relaxation="hard",
                unit="auto", epochs=10, learning_rate=1e-4, batch_size=128, refresh_every=5,
                sparsity=0.0, include_dense=True, seed=0, callbacks=None, verbose=0):
    """Re-train a copy of ``model`` with the Deep k-Means penalty (Wu et al., ICML 2018, §2.4).

    Steps: clone the model (the input is never modified) → :func:`dkm_tf.attach_regularizer`
    → compile (the model's own loss and metrics when it is compiled, else sparse categorical
    cross-entropy, from logits unless the last layer is a softmax, with accuracy; Adam at
    ``learning_rate``) → ``fit`` with :class:`dkm_tf.RefreshKMeans` → remove the penalty.
    The final weight sharing (row-wise k-means, §1.6) is left to the caller.

    Args:
        model: a built Keras model (Sequential or Functional; cloned with
            ``keras.models.clone_model``).
        train_data: ``(x, y)`` arrays or a batched ``tf.data.Dataset``.
        val_data: optional ``(x, y)`` or dataset for validation.
        n_clusters: K, an int or ``{layer name: K}``.
        lam: λ of the penalty (λ/2)‖W − W F Fᵀ‖².
        relaxation: ``"hard"`` (cluster-indicator F) or ``"spectral"`` (the paper's text).
        unit: ``"auto"``, ``"row"``, ``"kernel"`` or ``"scalar"``.
        epochs: training epochs.
        learning_rate: Adam learning rate, a number or a Keras ``LearningRateSchedule``.
        batch_size: batch size for array data (ignored for datasets).
        refresh_every: F-step period in epochs (the paper's 5).
        sparsity: fraction p of zero-centred units, a float or ``{layer name: p}``.
        include_dense: also regularize Dense kernels (conv kernels always are).
        seed: k-means seed.
        callbacks: extra Keras callbacks.
        verbose: passed to ``fit``.

    Returns:
        ``(retrained_model, history)``: the trained copy with the k-means regularizers removed
        (any regularizer the layers had before is kept) and the ``History`` of ``fit``, whose
        logs include ``kmeans_penalty``.

    Raises:
        ValueError: bad ``epochs`` / ``learning_rate`` or regularizer settings.
        TypeError: a subclassed model (Keras cannot copy it; the message says what to do).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"Invalid value for argument `epochs`. Expected a positive integer. "
                         f"Received: epochs={epochs!r}")
    check_learning_rate(learning_rate)
    clone = copy_model(model)
    attach_regularizer(clone, n_clusters, lam, relaxation=relaxation, unit=unit,
                               include_dense=include_dense, sparsity=sparsity, seed=seed)
    if getattr(model, "compiled", False) and getattr(model, "loss", None) is not None:
        loss = model.loss
        metrics = (model.get_compile_config() or {}).get("metrics")
        metrics = keras.saving.deserialize_keras_object(metrics) if metrics else None
    else:
        loss, metrics = default_loss(clone), ["accuracy"]
    clone.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    (xy, train_ds), (val_xy, val_ds) = _split(train_data, "train_data"), _split(val_data,
                                                                                "val_data")
    refresh = callbacks_lib.RefreshKMeans(every_n_epochs=refresh_every)
    fit_kwargs = {"epochs": epochs, "verbose": verbose,
                  "callbacks": [refresh, *(callbacks or [])],
                  "validation_data": val_xy if val_xy is not None else val_ds}
    if xy is not None:
        history = clone.fit(xy[0], xy[1], batch_size=batch_size, shuffle=True, **fit_kwargs)
    else:
        history = clone.fit(train_ds, **fit_kwargs)
    detach_regularizer(clone)
    return clone, history
