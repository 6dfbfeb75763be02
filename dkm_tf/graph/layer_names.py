"""Layer names that several layers of one Keras model share (layers of nested models).

Keras 3 names are unique only within one model: two nested blocks (two copies of one base, a
base and a head) may each hold a layer ``fc``. The code that keys layers by name (palettes,
BatchNormalization folding, energy records) uses :func:`duplicated_names` to refuse or
report what it cannot tell apart, naming each layer by its path (``"a/fc"``, ``"b/fc"``).
"""

__all__ = ["check_fold_names", "duplicated_names", "where"]


def duplicated_names(model):
    """`{name: [(path, layer), ...]}` for names that several distinct leaf layers holding a
    kernel (a weight of 2+ axes) share; `path` joins the nested models' names (`"a/fc"`; a
    loaded model's `layer.path` is bare). A ``ClusterWeights`` counts as the layer it wraps,
    whose name its palettes carry."""
    by_name, seen = {}, set()

    def walk(layer, prefix):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if getattr(sub, "layers", None):
                walk(sub, f"{prefix}{sub.name}/")
                continue
            inner = getattr(sub, "layer", None)  # a ClusterWeights: palettes name its layer
            if callable(getattr(sub, "palettes", None)) and inner is not None:
                sub = inner
            if any(len(w.shape) >= 2 for w in sub.weights):  # a kernel, not a BN's vectors
                by_name.setdefault(sub.name, []).append((f"{prefix}{sub.name}", sub))

    walk(model, "")
    return {n: ls for n, ls in by_name.items() if len(ls) > 1}


def where(layers):
    """The paths of `duplicated_names` entries, quoted, comma-separated."""
    return ", ".join(repr(path) for path, _ in layers)


def check_fold_names(model, palettes, owners=None):
    """Raise ``ValueError`` if a BatchNormalization of ``model`` folds into a layer whose name
    other layers holding a kernel share, and the palettes of that name cannot be paired with
    those layers: ``owners`` (the layer of each palette) is not given and their counts differ
    (palettes carry no path; equal counts pair by position, as ``palettes_of`` lists them).
    One palette would be rescaled with another layer's BatchNormalization."""
    dup = duplicated_names(model)
    if not dup:
        return
    from dkm_tf.graph import batchnorm, bn_kernel  # noqa: PLC0415 (imports keras)
    from dkm_tf.graph.batchnorm_palettes import palette_paths  # noqa: PLC0415
    from dkm_tf.graph.layer_paths import layer_paths  # noqa: PLC0415

    plan = batchnorm._plan(model)  # noqa: SLF001 (what the fold will do)
    folded = {f"{path}/{bn_kernel.entry(lay)[1]}" for path, lay in layer_paths(model)
              if id(lay) in plan.fold}
    picked = [i for i, p in enumerate(palettes) if p.layer_name in dup]
    palette_paths(model, [palettes[i] for i in picked],
                  None if owners is None else [owners[i] if i < len(owners) else None
                                               for i in picked], folded)
