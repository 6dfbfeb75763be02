"""What :func:`dkm_tf.attach_regularizer` reports: the weights that got a k-means penalty
(keyed by a path unique in the model), the layers left without one and why, and the frozen
weights whose penalty Keras does not apply while they are frozen."""

from __future__ import annotations

import collections

import keras

from dkm_tf.graph import clusterable
from dkm_tf.graph.composite import unsupported_reason
from dkm_tf.graph.layer_paths import layer_paths

__all__ = ["AttachedRegularizers", "per_layer", "skipped_layers", "weight_paths"]

FROZEN = "frozen: no penalty while trainable=False"


class AttachedRegularizers(dict):
    """What :func:`attach_regularizer` returns: ``{variable path: regularizer}`` of the weights
    that got a penalty (:func:`weight_paths`: ``"a/fc/kernel"`` where layers of two nested
    models share the path ``fc/kernel``), plus ``skipped``: tuples ``(layer_name, layer_type,
    reason)`` of the layers with weights left without one (all of them, or the weights the
    reason names), and ``frozen``: the paths of the weights that were not trainable when
    attached (Keras adds no penalty for them until they are unfrozen)."""

    def __init__(self, attached=(), skipped=(), frozen=()):
        super().__init__(attached)
        self.skipped = tuple(skipped)
        self.frozen = tuple(frozen)

    def summary(self):
        lines = [f"regularized {len(self)} weight(s), skipped {len(self.skipped)} layer(s)"]
        lines += [f"  + {path}: K={reg.n_clusters}, lam={reg.lam:g}, {reg.resolved_unit} units"
                  + (f" ({FROZEN})" if path in self.frozen else "")
                  for path, reg in self.items()]
        lines += [f"  - {name} ({kind}): {reason}" for name, kind, reason in self.skipped]
        return "\n".join(lines)


def skipped_layers(model, done, chosen, n_clusters):
    """``(layer name, type, reason)`` of every layer with weights not (all) in ``done``."""
    out = []
    for layer in clusterable.walk_layers(model):
        if not layer.weights or isinstance(layer, (keras.Model, keras.layers.Pipeline)):
            continue
        kind = type(layer).__name__
        if not clusterable.is_clusterable(layer):
            out.append((layer.name, kind, unsupported_reason(
                layer, "layer type not supported (k-means does not cluster it either)")))
            continue
        try:
            weights = clusterable.clusterable_weights(layer)
        except (TypeError, ValueError) as e:
            out.append((layer.name, kind, str(e)))
            continue
        missing = [(attr, wkind) for attr, var, wkind in weights if id(var) not in done]
        if not missing:
            continue
        if chosen is not None and layer not in chosen:
            reason = "not in layers"
        elif per_layer(n_clusters, layer.name) is None:
            reason = "n_clusters gives it no K"
        else:  # include_dense=True selects every clusterable weight
            reason = "not a conv kernel (include_dense=False)"
        if len(missing) < len(weights):
            reason = f"{', '.join(a for a, _ in missing)}: {reason}"
        out.append((layer.name, kind, reason))
    return out


def per_layer(value, layer_name):
    if isinstance(value, dict):
        return value.get(layer_name)
    return value


def weight_paths(model):
    """``{id(variable): path}`` of the weights of ``model``: ``variable.path``, or where
    several weights share it (nested blocks built from their own ``keras.Input`` each name
    their kernel ``fc/kernel``) the layer's path through the nested models instead of its
    name (``"a/fc/kernel"``, :func:`~dkm_tf.graph.layer_paths.layer_paths`)."""
    weights = list(model.weights)
    count = collections.Counter(v.path for v in weights)
    out = {id(v): v.path for v in weights}
    for path, layer in layer_paths(model):
        for v in layer.weights:
            if count[v.path] > 1 and id(v) in out:
                head, sep, tail = v.path.partition("/")
                out[id(v)] = f"{path}/{tail}" if sep and head == layer.name else f"{path}/{v.name}"
    return out
