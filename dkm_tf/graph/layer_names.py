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


def check_fold_names(model, palettes):
    """Raise ``ValueError`` if a BatchNormalization of ``model`` folds into a layer whose name
    other layers holding a kernel share, and that name has palettes: the fold's scales and
    the palettes are keyed by ``layer/weight``, so one layer's palette would be rescaled with
    the other's BatchNormalization (``strip_clustering`` raised a broadcast error or "does not
    match the folded kernel" after the whole training)."""
    dup = duplicated_names(model)
    if not dup:
        return
    from dkm_tf.graph import bn_fate  # noqa: PLC0415 (imports keras)

    folds, _ = bn_fate.batch_norm_fate(model)
    named = {p.layer_name for p in palettes}
    clash = sorted(set(folds.values()) & set(dup) & named)
    if clash:
        name = clash[0]
        raise ValueError(
            f"Cannot fold BatchNormalization into layer {name!r}: {len(dup[name])} layers are "
            f"named {name!r} (at {where(dup[name])}), and folded kernels and their palettes are "
            "matched by name, so one palette would be rescaled with another layer's "
            f"BatchNormalization (same-named layers: {clash}). Pass fold_bn=False (the "
            "BatchNormalization layers stay; the TFLite converter folds them), or give the "
            "nested models' layers distinct names before clustering.")
