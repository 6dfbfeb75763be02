"""The path of each layer of a Keras model through its nested models (``"a/conv"``).

Keras 3 names are unique only within one model, so two nested blocks may each hold a layer
``conv``; the path (the nested models' names and the layer's, joined by ``/``) tells them
apart where a ``Variable.path`` does not (a block built from its own ``keras.Input`` names
its kernel ``conv/kernel``). Imports nothing, so any graph module may use it.
"""

__all__ = ["attr_path", "layer_paths", "same_name_index"]


def layer_paths(model):
    """``[(path, layer)]`` of every layer below ``model`` that is not itself a model (has no
    ``layers``), in :func:`dkm_tf.graph.clusterable.walk_layers` order (depth first, shared
    layers once); ``path`` joins the names of the nested models above it and its own."""
    seen, out = set(), []

    def walk(layer, prefix):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if getattr(sub, "layers", None) is not None:
                walk(sub, f"{prefix}{sub.name}/")
            else:
                out.append((f"{prefix}{sub.name}", sub))

    walk(model, "")
    return out


def same_name_index(model, name, weight):
    """``[(path, layer)]`` of the layers of ``model`` named ``name`` that hold a weight
    ``weight`` (an attribute, or a dotted path: :func:`attr_path`), in walk order: the i-th
    palette of ``name/weight`` in a list in layer order (``palettes_of``) describes the i-th
    of them."""
    return [(path, lay) for path, lay in layer_paths(model)
            if lay.name == name and attr_path(lay, weight) is not None]


def attr_path(obj, path):
    """The attribute at dotted ``path`` of ``obj`` (a ``TimeDistributed``'s ``"layer.kernel"``,
    the weight path its palettes name), or None where a step is missing."""
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
