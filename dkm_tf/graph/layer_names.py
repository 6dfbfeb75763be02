"""Layer names that several layers of one Keras model share (layers of nested models).

Keras 3 names are unique only within one model: two nested blocks (two copies of one base, a
base and a head) may each hold a layer ``fc``. The code that keys layers by name (palettes,
energy records, the command line's overrides) uses :func:`duplicated_names` to refuse or
report what it cannot tell apart, naming each layer by its path (``"a/fc"``, ``"b/fc"``).
"""

from dkm_tf.graph.layer_paths import layer_paths

__all__ = ["check_name_or_class", "duplicated_names", "where", "wrapped_layer"]


def wrapped_layer(layer):
    """The layer a clustering wrapper (``ClusterWeights``: a ``palettes()`` method around a
    wrapped ``layer``; duck-typed, ``graph`` does not import ``training``) wraps, whose name
    its palettes carry; None for any other layer."""
    inner = getattr(layer, "layer", None)
    return inner if callable(getattr(layer, "palettes", None)) and inner is not None else None


def duplicated_names(model):
    """`{name: [(path, layer), ...]}` for names that several distinct leaf layers holding a
    kernel (a weight of 2+ axes) share; `path` joins the nested models' names (`"a/fc"`; a
    loaded model's `layer.path` is bare). A ``ClusterWeights`` counts as the layer it wraps,
    whose name its palettes carry."""
    by_name = {}
    for path, sub in layer_paths(model):
        inner = wrapped_layer(sub)
        if inner is not None:  # palettes name the wrapped layer
            path, sub = path[:len(path) - len(sub.name)] + inner.name, inner
        if any(len(w.shape) >= 2 for w in sub.weights):  # a kernel, not a BN's vectors
            by_name.setdefault(sub.name, []).append((path, sub))
    return {n: ls for n, ls in by_name.items() if len(ls) > 1}


def where(layers):
    """The paths of `duplicated_names` entries, quoted, comma-separated."""
    return ", ".join(repr(path) for path, _ in layers)


def check_name_or_class(overrides, layers):
    """Raise ``ValueError`` for an ``overrides`` key that is one layer's name and the class
    name of others (a Conv2D named ``"Dense"`` beside Dense layers): it applied to all of them,
    by name and by class (``{"Dense": None}`` left every layer float, with no word). A Dense
    named ``"Dense"`` beside other Dense layers is one meaning either way: accepted."""
    for key in overrides:
        named = [layer for layer in layers if getattr(layer, "name", None) == key]
        typed = [layer.name for layer in layers
                 if type(layer).__name__ == key and getattr(layer, "name", None) != key]
        if named and typed and any(type(layer).__name__ != key for layer in named):
            raise ValueError(
                f"Invalid value for argument `overrides`: key {key!r} names layer {key!r} (a "
                f"{type(named[0]).__name__}) and is the class of layers {typed[:5]}; it would "
                "apply to all of them. Rename the layer, or key the others by their names.")

