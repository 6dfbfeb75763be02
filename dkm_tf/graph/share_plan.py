"""Which weights :func:`dkm_tf.share_weights` clusters, in layer order, and which layers it
skips (with the reason).

A weight is planned once: a layer wrapped by two ``TimeDistributed`` layers (``td_a =
TimeDistributed(d)``, ``td_b = TimeDistributed(d)``) holds one kernel that both list, and
clustering it twice (``inplace=True``, which keeps the tie) would count it twice in the size
report and write two palettes for one tensor; the second reader is skipped, naming the first.
"""

from __future__ import annotations

from dkm_tf.core.units import resolve_unit
from dkm_tf.graph.copying import iter_layers

__all__ = ["share_plan"]


def share_plan(model, defaults, overrides, seed, make_job):
    """``(jobs, skipped)``: ``make_job(layer name, attr, variable, shape, kind, unit, settings,
    seed)`` for every weight to cluster, ``(layer name, reason)`` for each layer left float."""
    from dkm_tf.graph import clusterable  # noqa: PLC0415 (imports keras)
    from dkm_tf.graph.composite import unsupported_reason  # noqa: PLC0415

    jobs, skipped, planned = [], [], {}
    for i, layer in enumerate(iter_layers(model)):
        if not layer.weights:
            continue
        if not clusterable.is_clusterable(layer):
            skipped.append((layer.name, unsupported_reason(
                layer, f"{type(layer).__name__} is not a supported kernel layer (supported: "
                       f"{', '.join(clusterable.SUPPORTED_LAYERS)})")))
            continue
        cfg = clusterable.resolve_layer_config(layer, defaults, overrides)
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
