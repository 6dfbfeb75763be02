"""Which weights :func:`dkm_tf.share_weights` clusters, in layer order, and which layers it
skips (with the reason).

A weight is planned once: a layer wrapped by two ``TimeDistributed`` layers (``td_a =
TimeDistributed(d)``, ``td_b = TimeDistributed(d)``) holds one kernel that both list, and
clustering it twice (``inplace=True``, which keeps the tie) would count it twice in the size
report and write two palettes for one tensor; the second reader is skipped, naming the first.
Readers that ``overrides`` gives different settings (``{"d": None, "td": {...}}``) are
refused: one reader's settings would be applied and the other's reported.
"""

from __future__ import annotations

from dkm_tf.core.units import resolve_unit
from dkm_tf.graph.copying import iter_layers

__all__ = ["share_plan"]


def share_plan(model, defaults, overrides, seed, make_job):
    """``(jobs, skipped)``: ``make_job(layer name, attr, variable, shape, kind, unit, settings,
    seed)`` for every weight to cluster, ``(layer name, reason)`` for each layer left float."""
    from dkm_tf.graph import clusterable  # noqa: PLC0415 (imports keras)
    from dkm_tf.graph.composite import layer_kind, unsupported_reason  # noqa: PLC0415

    jobs, skipped, planned, plan = [], [], {}, []
    for i, layer in enumerate(iter_layers(model)):
        if not layer.weights:
            continue
        if not clusterable.is_clusterable(layer):
            # TimeDistributed(LayerNormalization): the wrapped layer named (it read as if
            # TimeDistributed itself were not supported, beside "TimeDistributed (of any...)")
            kind = layer_kind(layer)
            skipped.append((layer.name, unsupported_reason(
                layer, f"{kind} is not a supported kernel layer (supported: "
                       f"{', '.join(clusterable.SUPPORTED_LAYERS)})")))
            continue
        plan.append((i, layer, clusterable.resolve_layer_config(layer, defaults, overrides)))
    _check_tied_settings(plan)
    for i, layer, cfg in plan:
        if cfg is None:
            skipped.append((layer.name, "excluded by overrides"))
            continue
        for attr, var, kind in clusterable.clusterable_weights(layer):
            if id(var) in planned:  # one variable, two layers (TimeDistributed of one layer)
                skipped.append((layer.name, f"its {attr} is the weight {planned[id(var)]} "
                                            "(the same variable), clustered there once"))
                continue
            planned[id(var)] = f"{layer.name}/{attr}"
            shape = tuple(var.shape)
            wcfg = clusterable.weight_config(layer, kind, cfg, overrides)  # depthwise default
            jobs.append(make_job(layer.name, attr, var, shape, kind,
                                 resolve_unit(wcfg["unit"], kind, shape), wcfg, seed + i))
    return jobs, skipped


def _check_tied_settings(plan):
    """Refuse a variable whose readers (``d`` and ``TimeDistributed(d)``) ``overrides``
    resolves differently: it is clustered once, so one reader's settings (or None) would be
    reported while the other's were applied (``{"d": None, "td": {...}}`` reported d
    "excluded by overrides" with its kernel clustered as td's). An excluded quantized layer
    is passed over: it holds no float kernel (listing its weights would refuse it), and a
    reader of its variables that is not excluded is refused as quantized when planned."""
    from dkm_tf.graph import clusterable  # noqa: PLC0415 (imports keras)
    from dkm_tf.graph.quantized import quantized_layers  # noqa: PLC0415

    first = {}
    for _, layer, cfg in plan:
        if cfg is None and quantized_layers(layer):
            continue
        for attr, var, _ in clusterable.clusterable_weights(layer):
            seen = first.setdefault(id(var), (layer, attr, cfg))
            if seen[0] is not layer and _settings(seen[2]) != _settings(cfg):
                raise ValueError(
                    f"Invalid value for argument `overrides`: layers {seen[0].name!r} "
                    f"({seen[1]}) and {layer.name!r} ({attr}) read the same variable, "
                    f"clustered once, but get different settings ({_settings(seen[2])} and "
                    f"{_settings(cfg)}). Give both layers the same entry (or None for both).")


def _settings(cfg):
    return None if cfg is None else dict(cfg)
