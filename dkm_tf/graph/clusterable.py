"""Which weights of which Keras layers can be clustered, and with what settings.

Built-in support (``isinstance`` checks, so subclasses count):

===========================  ==================================================  ============
layer                        clusterable weights (attribute paths)               layout kind
===========================  ==================================================  ============
Dense                        ``kernel``                                          dense
Conv1D/2D/3D                 ``kernel``                                          conv
Conv1D/2D/3DTranspose        ``kernel``                                          conv_t
DepthwiseConv1D/2D           ``kernel``                                          depthwise
SeparableConv1D/2D           ``depthwise_kernel``, ``pointwise_kernel``          depthwise, conv
Embedding                    ``embeddings``                                      embedding
EinsumDense                  ``kernel`` (any rank)                               einsum:<out>
MultiHeadAttention           ``query_dense.kernel``, ``key_dense.kernel``,       einsum:<out>
                             ``value_dense.kernel``, ``output_dense.kernel``
GroupQueryAttention          the same paths (its ``_query_dense``, ...; with     einsum:<out>
                             ``use_gate``, ``gate_dense.kernel`` first)
SimpleRNN, LSTM, GRU         ``cell.kernel``, ``cell.recurrent_kernel``          dense
RNN(cell or list of cells)   ``cell.kernel``, ... / ``cell.cells.<i>.kernel``    dense
Bidirectional(any of these)  ``forward_layer.<path>``, ``backward_layer.<path>``  as wrapped
TimeDistributed(any)         ``layer.<path>``                                    as wrapped
===========================  ==================================================  ============

A ``TimeDistributed`` layer is clustered as the layer it wraps (one codebook per weight, the
weight counted once: the wrapper applies the same kernel at every step); its palettes carry
the wrapper's name (``"td_conv/layer.kernel"``) and ``overrides`` key it by the wrapper's name
or ``"TimeDistributed"``, and, below those, by the wrapped layer's class or name
(``"Conv2D"``, as for a plain one: :func:`override_keys`). A DepthwiseConv2D inside one gets
the per-channel default of a plain one.

A weight is named by its **attribute path** from the layer: dotted attribute names, with an
integer for a list position (``"cell.cells.1.recurrent_kernel"``); :func:`get_weight` follows
it. Recurrent kernels (``(units, gates * units)``) and input kernels (``(in, gates *
units)``) are plain (in, out) matrices: kind ``"dense"``, one output channel per gate unit.
An EinsumDense kernel's kind lists the kernel axes that appear in the einsum's output (its
output channels): ``"einsum:1,2"`` for an attention query kernel of shape (d_model, heads,
head_dim), ``"einsum:2"`` for the output projection (heads, head_dim, d_model); see
:func:`dkm_tf.core.units.einsum_kind`. ConvLSTM and other cells are not supported.

**Protocol for your own layers.** A layer is clusterable when it defines
``get_clusterable_weights()`` returning a list of ``(attribute_name, variable, kind)`` tuples,
where ``kind`` is one of :data:`dkm_tf.core.units.KINDS` (or an ``"einsum:<axes>"`` kind) and
says how the weight is laid out (``"dense"`` for an (in, out) matrix, ``"conv"`` for
``(*k, in, out)``, ...). A custom RNN cell can implement it too, and is then clustered inside
``keras.layers.RNN`` / ``Bidirectional``.
"""

from __future__ import annotations

import difflib

import keras

from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import invalid_type
from dkm_tf.graph.layer_config import DEPTHWISE_NOTE, LayerConfig, override_keys, weight_config
from dkm_tf.graph.layer_names import check_name_or_class, wrapped_layer
from dkm_tf.graph.layer_walk import walk_layers
from dkm_tf.graph.quantized import check_not_quantized

__all__ = ["DEPTHWISE_NOTE", "SUPPORTED_LAYERS", "LayerConfig", "check_has_clusterable",
           "check_overrides", "clusterable_weights", "get_weight", "is_clusterable",
           "override_keys", "resolve_layer_config", "skipped_by_overrides", "walk_layers",
           "weight_config"]

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
_CELLS = (_L.SimpleRNNCell, _L.LSTMCell, _L.GRUCell)
_MHA_PROJECTIONS = ("query_dense", "key_dense", "value_dense", "output_dense")
# GroupQueryAttention keeps its projections private (`_query_dense`, ...); their paths are
# named as MultiHeadAttention's (`query_dense.kernel`, the energy records' names), and
# get_weight follows them to the private attribute
_GQA = (_L.GroupQueryAttention,) if hasattr(_L, "GroupQueryAttention") else ()
_GQA_PROJECTIONS = ("gate_dense", *_MHA_PROJECTIONS)  # gate_dense only with use_gate=True
SUPPORTED_LAYERS = (*(cls.__name__ for cls, _ in _REGISTRY), "EinsumDense",
                    "MultiHeadAttention", "GroupQueryAttention", "SimpleRNN", "LSTM", "GRU",
                    "RNN (SimpleRNN/LSTM/GRU cells, StackedRNNCells)", "Bidirectional",
                    "TimeDistributed (of any of these)")


def get_weight(layer, path):
    """The weight at attribute path ``path`` of ``layer`` (``"cell.cells.0.kernel"``), or None
    when a step of the path does not exist."""
    obj = layer
    for part in path.split("."):
        if part.isdigit():
            seq = obj if isinstance(obj, (list, tuple)) else None
            obj = seq[int(part)] if seq is not None and int(part) < len(seq) else None
        elif _GQA and isinstance(obj, _GQA) and part in _GQA_PROJECTIONS:
            obj = getattr(obj, f"_{part}", None)  # GroupQueryAttention's private projections
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _einsum_kind(layer):
    """The layout kind of an EinsumDense kernel: its axes that appear in the output."""
    spec = layer.equation.replace(" ", "")
    inputs, _, output = spec.partition("->")
    parts = inputs.split(",")
    if len(parts) != 2 or "." in parts[1]:
        raise TypeError(f"Layer {layer.name!r} (EinsumDense): cannot cluster the kernel of "
                        f"equation {layer.equation!r} (expected 'input,kernel->output' with no "
                        "ellipsis in the kernel).")
    return units_lib.einsum_kind(i for i, ch in enumerate(parts[1]) if ch in output)


def _unsupported(layer, what=""):
    return TypeError(
        f"Layer {layer.name!r} of type {type(layer).__name__} cannot be clustered{what}. "
        f"Supported layers: {', '.join(SUPPORTED_LAYERS)}, or any layer (or RNN cell) that "
        "implements get_clusterable_weights() (see dkm_tf.graph.clusterable).")


def _protocol_weights(layer):
    out = []
    for item in layer.get_clusterable_weights():
        name, var, kind = item if len(item) == 3 else (*item, "dense")
        if not units_lib.is_kind(kind):
            raise ValueError(f"Layer {layer.name!r}: get_clusterable_weights() returned kind "
                             f"{kind!r} for {name!r}; expected one of {list(units_lib.KINDS)} "
                             "or 'einsum:<output axes>'.")
        units_lib.check_kind(kind, var.shape, f"Layer {layer.name!r}: weight {name!r}")
        out.append((name, var, kind))
    return out


def _prefixed(prefix, weights):
    return [(f"{prefix}.{name}", var, kind) for name, var, kind in weights]


def _cell_weights(rnn, cell):
    """Clusterable weights of an RNN cell, paths relative to the cell."""
    if hasattr(cell, "get_clusterable_weights"):
        return _protocol_weights(cell)
    if isinstance(cell, _L.StackedRNNCells):
        return [w for i, c in enumerate(cell.cells) for w in _prefixed(f"cells.{i}",
                                                                          _cell_weights(rnn, c))]
    if isinstance(cell, _CELLS):
        return [("kernel", cell.kernel, "dense"), ("recurrent_kernel", cell.recurrent_kernel,
                                                   "dense")]
    raise _unsupported(rnn, f": its cell {type(cell).__name__} is not a SimpleRNNCell, "
                            "LSTMCell, GRUCell, StackedRNNCells of them, or a cell with "
                            "get_clusterable_weights()")


def _structured_weights(layer):
    """Weights of the layers whose kernels sit in sublayers (RNN, Bidirectional,
    TimeDistributed, MHA), or None for other layers."""
    if isinstance(layer, _L.Bidirectional):
        return (_prefixed("forward_layer", clusterable_weights(layer.forward_layer))
                + _prefixed("backward_layer", clusterable_weights(layer.backward_layer)))
    if isinstance(layer, _L.TimeDistributed):
        return _prefixed("layer", clusterable_weights(layer.layer))
    if isinstance(layer, _L.RNN):
        return _prefixed("cell", _cell_weights(layer, layer.cell))
    if isinstance(layer, _L.MultiHeadAttention):
        return [(f"{p}.kernel", getattr(layer, p).kernel, _einsum_kind(getattr(layer, p)))
                for p in _MHA_PROJECTIONS]
    if _GQA and isinstance(layer, _GQA):
        subs = [(p, getattr(layer, f"_{p}", None)) for p in _GQA_PROJECTIONS]
        return [(f"{p}.kernel", sub.kernel, _einsum_kind(sub)) for p, sub in subs
                if sub is not None]
    if isinstance(layer, _L.EinsumDense):
        return [("kernel", layer.kernel, _einsum_kind(layer))]
    return None


def is_clusterable(layer):
    """True for supported layer types and layers implementing ``get_clusterable_weights``.

    Args:
        layer: any Keras layer, built or not. An RNN counts when its cell is supported; a
            Bidirectional when both of its layers are, a TimeDistributed when the layer it
            wraps is.
    """
    if hasattr(layer, "get_clusterable_weights") or any(
            isinstance(layer, cls) for cls, _ in _REGISTRY):
        return True
    if isinstance(layer, _L.Bidirectional):
        return is_clusterable(layer.forward_layer) and is_clusterable(layer.backward_layer)
    if isinstance(layer, _L.TimeDistributed):
        return is_clusterable(layer.layer)
    if isinstance(layer, _L.RNN):
        return _cell_supported(layer.cell)
    if isinstance(layer, _L.EinsumDense):
        spec = layer.equation.partition("->")[0].split(",")
        return len(spec) == 2 and "." not in spec[1]
    return isinstance(layer, (_L.MultiHeadAttention, *_GQA))


def _explain(layer):
    """Raise the specific error of an unsupported RNN cell or einsum equation, if any."""
    if isinstance(layer, _L.Bidirectional):
        for side in (layer.forward_layer, layer.backward_layer):
            if not is_clusterable(side):
                _explain(side)
    if isinstance(layer, _L.TimeDistributed) and not is_clusterable(layer.layer):
        _explain(layer.layer)
    if isinstance(layer, _L.RNN):
        _cell_weights(layer, layer.cell)
    if isinstance(layer, _L.EinsumDense):
        _einsum_kind(layer)


def _cell_supported(cell):
    if hasattr(cell, "get_clusterable_weights") or isinstance(cell, _CELLS):
        return True
    return isinstance(cell, _L.StackedRNNCells) and all(_cell_supported(c) for c in cell.cells)


def clusterable_weights(layer):
    """The clusterable weights of a built layer: a list of ``(path, variable, kind)``.

    Args:
        layer: a built ``keras.layers.Layer`` that :func:`is_clusterable` accepts. ``path`` is
            a weight's attribute path from it (:func:`get_weight`), ``kind`` its layout kind.

    Raises:
        TypeError: the layer is not clusterable (the message lists what is supported).
        ValueError: the layer is not built or quantized, or its protocol method returns a bad kind.
    """
    if not isinstance(layer, keras.layers.Layer):
        raise invalid_type("layer", "a keras.layers.Layer", layer)
    if hasattr(layer, "get_clusterable_weights"):
        return _protocol_weights(layer)
    if not is_clusterable(layer):
        _explain(layer)
        raise _unsupported(layer)
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} is not built; build the model first "
                         "(call it on data or give it an input shape).")
    check_not_quantized(layer, f"Clustering layer {layer.name!r}")
    structured = _structured_weights(layer)
    if structured is not None:
        return structured
    for cls, weights in _REGISTRY:
        if isinstance(layer, cls):
            return [(attr, getattr(layer, attr), kind) for attr, kind in weights]
    raise _unsupported(layer)  # pragma: no cover - is_clusterable said yes


def resolve_layer_config(layer, defaults, overrides=None):
    """Settings for ``layer``: defaults, then overrides by type name, then by layer name (for
    a TimeDistributed / Bidirectional, the wrapped layer's first: :func:`override_keys`).

    Args:
        layer: a Keras layer.
        defaults: dict with ``n_clusters``, ``unit``, ``granularity``, ``init``.
        overrides: optional dict keyed by layer name or layer class name; a value is a dict of
            settings to change, or ``None`` to leave that layer unclustered.

    Returns:
        A :class:`LayerConfig`, or None when an override says to skip the layer. A
        DepthwiseConv1D/2D layer gets per-channel codebooks unless an ``overrides`` entry for
        it or its class sets ``"granularity"`` (see :func:`weight_config`).
    """
    cfg, overrides = LayerConfig(defaults), overrides or {}
    if not isinstance(overrides, dict):
        raise invalid_type("overrides", "a dict keyed by layer name or class name", overrides)
    if skipped_by_overrides(layer, overrides):
        return None
    for key in override_keys(layer):  # the wrapped layer's class and name under a wrapper's
        if overrides.get(key) is not None:  # a class's None under a named layer's settings
            unknown = set(overrides[key]) - set(defaults)
            if unknown:
                raise ValueError(f"Unknown setting(s) {sorted(unknown)} in overrides[{key!r}]. "
                                 f"Allowed: {sorted(defaults)}.")
            cfg.update(overrides[key])
    inner = layer
    while isinstance(inner, _L.TimeDistributed):  # a TimeDistributed(DepthwiseConv2D) too
        inner = inner.layer
    depthwise_only = next((all(kind == "depthwise" for _, kind in weights)
                           for cls, weights in _REGISTRY if isinstance(inner, cls)), False)
    return weight_config(layer, "depthwise", cfg, overrides) if depthwise_only else cfg


def skipped_by_overrides(layer, overrides):
    """Whether ``overrides`` leaves ``layer`` float: its name's None, else its class's (the
    highest of :func:`override_keys` present decides)."""
    present = [key for key in override_keys(layer) if key in (overrides or {})]
    return bool(present) and overrides[present[-1]] is None


def check_overrides(model, overrides, defaults, check_settings=None):
    """Check per-layer ``overrides`` before any work; return them as a dict (``{}`` for None).

    Every key must name a layer of ``model`` or a layer class in it (``model`` itself if a
    layer), each value None or a dict of settings among ``defaults`` (``check_settings`` checks
    the defaults updated by it). A key that would be ignored is refused: a typo (close matches
    listed), one naming only models (nested or not, ``"Functional"``: their layers would get
    the defaults), one giving settings to layers never clustered (``"BatchNormalization"``),
    or one that is a layer's name and others' class (a Conv2D ``"Dense"``: it applied to all;
    the layers a TimeDistributed wraps count as its own: :func:`check_name_or_class`).

    Raises:
        TypeError: ``overrides`` is not a dict, or a value is neither None nor a dict.
        ValueError: a key that would be ignored, or an unknown or invalid setting.
    """
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise invalid_type("overrides", "a dict keyed by layer name or class name", overrides)
    for key, value in overrides.items():
        if value is not None and not isinstance(value, dict):
            raise invalid_type(f"overrides[{key!r}]",
                               f"None or a dict of settings among {sorted(defaults)}", value)
        unknown = sorted(set(value or ()) - set(defaults), key=str)
        if unknown:
            raise ValueError(f"Invalid value for argument `overrides[{key!r}]`: Unknown "
                             f"setting(s) {unknown}. Expected settings among {sorted(defaults)}.")
        if value and check_settings is not None:
            try:
                check_settings({**defaults, **value})
            except (TypeError, ValueError) as e:  # say which entry holds the bad setting
                raise type(e)(f"In overrides[{key!r}]: {e}") from e
    layers, matches = [model, *walk_layers(model)], {}
    for layer in layers:  # a TimeDistributed(Dense) is reached by "Dense" too
        keys = override_keys(layer) if isinstance(layer, keras.layers.Layer) else ()
        for n in {getattr(layer, "name", None), type(layer).__name__, *keys}:
            matches.setdefault(n, []).append(layer)
    missing = sorted(set(overrides) - set(matches), key=str)
    if missing:
        close = {k: difflib.get_close_matches(k, [n for n in matches if isinstance(n, str)], 3)
                 for k in missing if isinstance(k, str)}
        hint = "; ".join(f"{k!r} -> {v}" for k, v in close.items() if v)
        raise ValueError(f"Invalid value for argument `overrides`. Keys {missing} match no "
                         f"layer name or layer class name of model {getattr(model, 'name', '')!r}"
                         f" (layers: {sorted(layer.name for layer in layers[1:])[:20]})"
                         + (f". Close matches: {hint}" if hint else "") + ".")
    check_name_or_class(overrides, layers)  # `Dense`: a layer's name, others' class
    _check_effective(model, overrides, matches)
    return dict(overrides)


def _check_effective(model, overrides, matches):
    """Refuse keys naming only models, or (with settings) only layers never clustered."""
    for key in sorted(overrides, key=str):
        found, got = matches[key], f"Received: overrides[{key!r}]={overrides[key]!r}"
        if all(isinstance(lay, keras.Model) for lay in found):
            inner = sorted({lay.name for m in found for lay in walk_layers(m)
                            if not isinstance(lay, keras.Model) and is_clusterable(lay)})
            raise ValueError(
                f"Invalid value for argument `overrides`. Key {key!r} names a model, not a "
                "layer: it would be ignored and the model's layers clustered with the defaults."
                f" Expected keys naming layers or layer classes; its clusterable layers: "
                f"{inner[:20]}{' ...' if len(inner) > 20 else ''}. {got}")
        if overrides[key] and not any(  # None / {} (the plain defaults): harmless
                is_clusterable(lay) for lay in found if not isinstance(lay, keras.Model)):
            raise ValueError(
                f"Invalid value for argument `overrides[{key!r}]`. Expected settings for a "
                f"layer that can be clustered; {key!r} names only "
                f"{', '.join(sorted({type(lay).__name__ for lay in found}))} layer(s), never "
                f"clustered, so they would be ignored (None is allowed; supported: "
                f"{', '.join(SUPPORTED_LAYERS)}). {got}")


def check_has_clusterable(model, caller, also=()):
    """Raise unless ``model`` is built and has a layer that can be clustered (or one of the
    classes ``also``, e.g. layers that are already clustered); ``caller`` names the function."""
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built, so it has no weights to cluster: "
                         "build it first (call it on data or give it an Input).")
    layers = [lay for lay in walk_layers(model) if not isinstance(lay, keras.Model)]
    if not any(isinstance(lay, also) or is_clusterable(lay) for lay in layers):
        from dkm_tf.graph.untracked import no_weights_reason  # noqa: PLC0415

        kinds = sorted({type(lay).__name__ for lay in layers if lay.weights})
        wrapped = any(wrapped_layer(lay) is not None for lay in layers)  # ClusterWeights
        raise ValueError(f"{caller} found no layer to cluster in model {model.name!r}: "
                         + ("it is a clustered model (ClusterWeights layers): strip it first "
                            "(plain, palettes = dkm_tf.strip_clustering(model)) to cluster "
                            "it again; " if wrapped else "")
                         + (f"its layers with weights ({', '.join(kinds)}) are not supported. "
                            f"Supported: {', '.join(SUPPORTED_LAYERS)}."
                            if kinds else no_weights_reason(model)))
