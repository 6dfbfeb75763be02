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
    """Raise ``ValueError`` for an ``overrides`` key that would apply to layers it does not
    mean, with no word:

    - one layer's name and the class of others (a Conv2D named ``"Dense"`` beside Dense
      layers; ``{"Dense": None}`` left every one float). The names and classes of the layers
      a ``TimeDistributed`` wraps count as its own (``TimeDistributed(Dense(name="Conv2D"))``
      beside a Conv2D). A Dense named ``"Dense"`` beside other Dense layers is one meaning
      either way: accepted;
    - the name of two distinct layers, one of them wrapped in a ``TimeDistributed`` (a Dense
      ``"fc"`` beside ``TimeDistributed(Dense(name="fc"))``);
    - the forward and backward classes of a ``Bidirectional`` of two classes (LSTM, GRU),
      both keyed with different settings: the backward class's entry won for the whole layer.
    """
    from dkm_tf.graph.layer_config import override_key_kinds  # noqa: PLC0415 (keras)

    kinds = [(la, *override_key_kinds(la)) if hasattr(la, "weights") else
             (la, [type(la).__name__], [getattr(la, "name", None)]) for la in layers]
    for key in overrides:
        named = [(la, cls) for la, cls, names in kinds if key in names]
        typed = [la.name for la, cls, names in kinds if key in cls and key not in names]
        if named and typed and any(key not in cls for _, cls in named):
            la = next(la for la, cls in named if key not in cls)
            how = "" if la.name == key else ", through the layer it wraps"
            raise ValueError(
                f"Invalid value for argument `overrides`: key {key!r} names layer {la.name!r} "
                f"(a {type(la).__name__}{how}) and is the class of layers {typed[:5]}; it "
                "would apply to all of them. Rename the layer, or key the others by their "
                "names.")
        owners = {id(o): (la, o) for la, _ in named for o in _named(la, key)}
        if len(owners) > 1 and any(la.name != key for la, _ in owners.values()):
            raise ValueError(
                f"Invalid value for argument `overrides`: key {key!r} names layers "
                f"{sorted(la.name for la, _ in owners.values())[:5]}, distinct layers (one "
                "inside a TimeDistributed) that share the name; it would apply to all of "
                "them. Key the TimeDistributed by its own name, or rename a layer.")
    for la, cls, _ in kinds:
        _check_mixed_bidirectional(overrides, la, cls)


def _named(layer, key):
    """``layer`` and the layers it wraps (``.layer`` of a TimeDistributed) named ``key``."""
    out = []
    while layer is not None:
        out += [layer] if getattr(layer, "name", None) == key else []
        layer = getattr(layer, "layer", None) if hasattr(layer, "layer") else None
    return out


def _check_mixed_bidirectional(overrides, layer, classes):
    """Refuse different entries for the forward and backward classes of a Bidirectional."""
    import keras  # noqa: PLC0415 (this module is imported without keras)

    if not isinstance(layer, keras.layers.Bidirectional) or classes[0] == classes[1]:
        return
    fwd, bwd = classes[:2]
    if fwd in overrides and bwd in overrides and overrides[fwd] != overrides[bwd]:
        raise ValueError(
            f"Invalid value for argument `overrides`: layer {layer.name!r} (a Bidirectional, "
            f"forward {fwd}, backward {bwd}) is reached by keys {fwd!r} "
            f"({overrides[fwd]!r}) and {bwd!r} ({overrides[bwd]!r}), which differ; one of them "
            f"would apply to the whole layer. Give them equal settings, or leave one out and "
            f"key it by its name {layer.name!r}.")
