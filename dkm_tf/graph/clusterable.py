"""Which weights of which Keras layers can be clustered, and with what settings.

Built-in support (``isinstance`` checks, so subclasses count):

==========================  ==========================================  ===========
layer                       clusterable weights                        layout kind
==========================  ==========================================  ===========
Dense, EinsumDense-free     ``kernel``                                 dense
Conv1D/2D/3D                ``kernel``                                 conv
Conv1D/2D/3DTranspose       ``kernel``                                 conv_t
DepthwiseConv1D/2D          ``kernel``                                 depthwise
SeparableConv1D/2D          ``depthwise_kernel``, ``pointwise_kernel`` depthwise, conv
Embedding                   ``embeddings``                             embedding
==========================  ==========================================  ===========

**Protocol for your own layers.** A layer is clusterable when it defines
``get_clusterable_weights()`` returning a list of ``(attribute_name, variable, kind)`` tuples,
where ``kind`` is one of :data:`dkm_tf.core.units.KINDS` and says how the weight is laid out
(``"dense"`` for an (in, out) matrix, ``"conv"`` for ``(*k, in, out)``, ...).
"""

from __future__ import annotations

import keras

from dkm_tf.core import units as units_lib

__all__ = ["SUPPORTED_LAYERS", "LayerConfig", "clusterable_weights", "is_clusterable",
           "resolve_layer_config", "walk_layers"]

_L = keras.layers
# (class, [(attribute, kind), ...]); order matters: subclasses first.
_REGISTRY = (
    (_L.SeparableConv1D, (("depthwise_kernel", "depthwise"), ("pointwise_kernel", "conv"))),
    (_L.SeparableConv2D, (("depthwise_kernel", "depthwise"), ("pointwise_kernel", "conv"))),
    (_L.DepthwiseConv1D, (("kernel", "depthwise"),)),
    (_L.DepthwiseConv2D, (("kernel", "depthwise"),)),
    (_L.Conv1DTranspose, (("kernel", "conv_t"),)),
    (_L.Conv2DTranspose, (("kernel", "conv_t"),)),
    (_L.Conv3DTranspose, (("kernel", "conv_t"),)),
    (_L.Conv1D, (("kernel", "conv"),)),
    (_L.Conv2D, (("kernel", "conv"),)),
    (_L.Conv3D, (("kernel", "conv"),)),
    (_L.Dense, (("kernel", "dense"),)),
    (_L.Embedding, (("embeddings", "embedding"),)),
)
SUPPORTED_LAYERS = tuple(cls.__name__ for cls, _ in _REGISTRY)


def walk_layers(model):
    """Every layer below ``model`` (nested models included), depth first, each once.

    Shared layers appear once; nested models appear before their own layers. Uses only the
    public ``layers`` attribute, so a wrapper's inner layer is not listed.
    """
    seen, out = set(), []

    def walk(layer):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                walk(sub)

    walk(model)
    return out


def is_clusterable(layer):
    """True for supported layer types and layers implementing ``get_clusterable_weights``."""
    return hasattr(layer, "get_clusterable_weights") or any(
        isinstance(layer, cls) for cls, _ in _REGISTRY)


def clusterable_weights(layer):
    """The clusterable weights of a built layer: a list of ``(name, variable, kind)``.

    Raises:
        TypeError: the layer is not clusterable (the message lists what is supported).
        ValueError: the layer is not built, or its protocol method returns a bad kind.
    """
    if hasattr(layer, "get_clusterable_weights"):
        out = []
        for item in layer.get_clusterable_weights():
            name, var, kind = item if len(item) == 3 else (*item, "dense")
            if kind not in units_lib.KINDS:
                raise ValueError(f"Layer {layer.name!r}: get_clusterable_weights() returned kind "
                                 f"{kind!r} for {name!r}; expected one of {list(units_lib.KINDS)}.")
            out.append((name, var, kind))
        return out
    for cls, weights in _REGISTRY:
        if isinstance(layer, cls):
            if not layer.built:
                raise ValueError(f"Layer {layer.name!r} is not built; build the model first "
                                 "(call it on data or give it an input shape).")
            return [(attr, getattr(layer, attr), kind) for attr, kind in weights]
    raise TypeError(
        f"Layer {layer.name!r} of type {type(layer).__name__} cannot be clustered. Supported "
        f"layers: {', '.join(SUPPORTED_LAYERS)}, or any layer that implements "
        "get_clusterable_weights() (see dkm_tf.graph.clusterable)."
    )


class LayerConfig(dict):
    """Clustering settings of one layer: n_clusters, unit, granularity, init."""


def resolve_layer_config(layer, defaults, overrides=None):
    """Settings for ``layer``: defaults, then overrides by type name, then by layer name.

    Args:
        layer: a Keras layer.
        defaults: dict with ``n_clusters``, ``unit``, ``granularity``, ``init``.
        overrides: optional dict keyed by layer name or layer class name; a value is a dict of
            settings to change, or ``None`` to leave that layer unclustered.

    Returns:
        A :class:`LayerConfig`, or None when an override says to skip the layer.
    """
    cfg = LayerConfig(defaults)
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise TypeError("Invalid type for argument `overrides`. Expected a dict keyed by layer "
                        f"name or class name. Received: {type(overrides).__name__}")
    for key in (type(layer).__name__, layer.name):
        if key in overrides:
            if overrides[key] is None:
                return None
            unknown = set(overrides[key]) - set(defaults)
            if unknown:
                raise ValueError(f"Unknown setting(s) {sorted(unknown)} in overrides[{key!r}]. "
                                 f"Allowed: {sorted(defaults)}.")
            cfg.update(overrides[key])
    return cfg
