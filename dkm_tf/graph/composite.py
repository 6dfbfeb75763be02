"""Why a layer of an unsupported type is left float, for the reports that skip it.

A custom layer that owns clusterable sublayers as attributes (``self.fc = Dense(...)``,
called in its ``call``) is one layer to :func:`dkm_tf.graph.clusterable.walk_layers`, which
follows only models' ``layers``: its Dense / Conv2D sublayers are not clustered, although
their types are supported. ``"layer type not supported"`` alone reads as if they were not;
:func:`unsupported_reason` names them and gives the ``get_clusterable_weights()`` method
that clusters them (for another Keras layer holding them, it names them; a ``TimeDistributed``
of a supported layer is itself supported: :mod:`dkm_tf.graph.clusterable`).
"""

from __future__ import annotations

import keras

from dkm_tf.graph import clusterable as clusterable_lib

__all__ = ["held_clusterable", "unsupported_reason"]


def held_clusterable(layer, prefix="", seen=None):
    """``[(path, variable, kind, type name)]`` of the clusterable weights held by the
    sublayers of ``layer`` (public attributes, lists of them, sublayers of sublayers), paths
    relative to ``layer`` (``"fc.kernel"``, ``"blocks.1.conv.kernel"``); a sublayer held
    twice is listed once. Unbuilt sublayers have no weights and are left out."""
    seen = {id(layer)} if seen is None else seen
    out = []
    for attr, value in vars(layer).items():
        if attr.startswith("_"):
            continue
        subs = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, sub in enumerate(subs):
            if not isinstance(sub, keras.layers.Layer) or isinstance(sub, keras.Model) \
                    or id(sub) in seen:
                continue
            seen.add(id(sub))
            path = f"{prefix}{attr}." + (f"{i}." if sub is not value else "")
            if clusterable_lib.is_clusterable(sub) and sub.built:
                try:
                    weights = clusterable_lib.clusterable_weights(sub)
                except (TypeError, ValueError):  # an unsupported cell / equation
                    continue
                out += [(path + p, var, kind, type(sub).__name__) for p, var, kind in weights]
            elif not clusterable_lib.is_clusterable(sub):
                out += held_clusterable(sub, path, seen)
    return out


def layer_kind(layer):
    """A layer's class name for a report row; a ``TimeDistributed``'s with the class it wraps,
    ``TimeDistributed(LayerNormalization)``, at every depth (``cluster_weights``' rows were
    ``TimeDistributed`` alone before 2026-12-07, whatever it wrapped)."""
    inner = getattr(layer, "layer", None)
    if isinstance(layer, keras.layers.TimeDistributed) and inner is not None:
        return f"{type(layer).__name__}({layer_kind(inner)})"
    return type(layer).__name__


def unsupported_reason(layer, base, refuse=False):
    """``base`` (e.g. ``"layer type not supported"``), followed for a layer that holds
    clusterable sublayers by their names: for a custom layer (a class not from Keras or
    dkm_tf) with the method that would cluster them, for a Keras layer (a ``TimeDistributed``
    of a custom layer) with the fact that it is not supported.

    With ``refuse``, raise that reason as a TypeError instead (for a layer without such
    sublayers, :func:`~dkm_tf.graph.clusterable.clusterable_weights`' own error).
    """
    module = type(layer).__module__
    held = [] if module.startswith("dkm_tf.") else held_clusterable(layer)
    if not held:
        if refuse:
            clusterable_lib.clusterable_weights(layer)  # raises, listing what is supported
        return base
    names = ", ".join(f"{p} ({t})" for p, _, _, t in held)
    inner = getattr(layer, "layer", None)
    if isinstance(layer, keras.layers.TimeDistributed) and inner is not None:
        reason = (f"{base}: the {type(inner).__name__} it wraps is not supported, so the "
                  f"weights {names} inside it are not clustered (a TimeDistributed is "
                  "clustered as the layer it wraps: give that layer get_clusterable_weights()"
                  ", see dkm_tf.graph.clusterable)")
    elif module.startswith("keras."):
        reason = (f"{base}: the weights {names} inside it are not clustered (the "
                  f"{type(layer).__name__} wrapper is not supported)")
    else:
        items = ", ".join(f"({p!r}, self{_python(p, layer)}, {k!r})" for p, _, k, _ in held)
        reason = (f"{base}: a custom layer; the weights {names} of its sublayers are not "
                  "clustered inside it. To cluster them, give it def "
                  f"get_clusterable_weights(self): return [{items}] (see "
                  "dkm_tf.graph.clusterable)")
    if refuse:
        raise TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot be clustered "
                        f"(on_unsupported='error'): {reason}.")
    return reason


def _python(path, layer=None):
    """The Python expression of an attribute path: ``"blocks.1.fc.kernel"`` ->
    ``".blocks[1].fc.kernel"``; a step that ``layer`` holds only privately (a
    GroupQueryAttention's ``query_dense``: ``_query_dense``) gets its real name."""
    out, obj = [], layer
    for part in path.split("."):
        if part.isdigit():
            out.append(f"[{part}]")
            obj = obj[int(part)] if isinstance(obj, (list, tuple)) else None
            continue
        if obj is not None and not hasattr(obj, part) and hasattr(obj, f"_{part}"):
            part = f"_{part}"
        out.append(f".{part}")
        obj = getattr(obj, part, None)
    return "".join(out)
