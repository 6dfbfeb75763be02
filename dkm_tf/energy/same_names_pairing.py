"""Pairing the palettes of same-named layers (layers of nested models) with their layers by value.

Two nested blocks may each hold a layer `fc` (two copies of one base shared by
`share_weights`): their palettes both carry `layer_name="fc"` and no path. When the model
holds the weights (a shared or stripped model, or one wrapped by `cluster_weights`), each such
palette is paired with the layer whose weight its `decode()` equals (to float32 round-off);
the records of the i-th layer of that name (in walk order, `fc`, `fc#2`, ...) are then keyed
apart, so each palette is charged on its own layer's records and a float twin stays float.
"""

import dataclasses

import numpy as np

from dkm_tf.graph.copying import is_graph_model
from dkm_tf.graph.layer_names import duplicated_names, wrapped_layer
from dkm_tf.graph.layer_paths import layer_paths


class _Renamed:
    """Palette `p` seen under another `layer_name` (every other attribute is `p`'s)."""

    def __init__(self, p, layer_name):
        self._p, self.layer_name = p, layer_name

    def __getattr__(self, attr):
        return getattr(self._p, attr)


def _layers_named(model, name):
    """`[(inner layer, {weight: decode} or None)]` of the leaf layers named `name` holding a
    kernel, in walk order; a `ClusterWeights` wrapper gives its palettes' decodes."""
    out = []
    for _, lay in layer_paths(model):
        inner = wrapped_layer(lay)
        if inner is not None:
            if inner.name == name:
                out.append((inner, {p.weight_name: p.decode() for p in lay.palettes()}))
        elif lay.name == name and any(len(w.shape) >= 2 for w in lay.weights):
            out.append((lay, None))
    return out


def _value(entry, weight):
    from dkm_tf.graph.clusterable import get_weight

    layer, decoded = entry
    if decoded is not None:
        return decoded.get(weight)
    var = get_weight(layer, weight)
    if var is None or not hasattr(var, "shape"):
        return None
    import keras

    return keras.ops.convert_to_numpy(var)


def equal(w, dec):
    """Whether stored weight `w` equals decode `dec` to float32 round-off."""
    if w is None or dec is None:
        return False
    w, dec = np.asarray(w, np.float64), np.asarray(dec, np.float64)
    if w.shape != dec.shape:
        return False
    tol = 1e-6 * max(float(np.max(np.abs(w), initial=0.0)), 1e-30)
    return bool(np.all(np.abs(w - dec) <= tol))


def record_prefixes(shapes, name):
    """The distinct first segments of the conv / dense records of layer `name`, in order."""
    out = []
    for s in shapes:
        if s.kind in ("conv", "dense") and s.layer == name:
            prefix = s.name.split("/", 1)[0]
            if prefix not in out:
                out.append(prefix)
    return out


def _pairing(entries, pals):
    """`[layer index]` for `pals` (all of one name), or None: each palette's decode equals
    exactly one layer's weight and no two palettes of one weight share a layer (a layer no
    palette matches is float)."""
    hits = []
    for p in pals:
        dec = p.decode()
        found = [i for i, e in enumerate(entries) if equal(_value(e, p.weight_name), dec)]
        if len(found) != 1:
            return None
        hits.append(found[0])
    keys = [(str(p.weight_name), i) for p, i in zip(pals, hits)]
    if len(set(keys)) != len(keys):
        return _Twice(next(k for k in keys if keys.count(k) > 1))
    return hits


class _Twice(tuple):
    """`(weight, layer index)` that two palettes of one name both decode to."""


def _where(model, layer):
    """The path of `layer` (a leaf, or the layer a wrapper holds) in `model`."""
    for path, lay in layer_paths(model):
        if lay is layer or wrapped_layer(lay) is layer:
            return path
    return layer.name


def pair_by_value(model, shapes, palettes):
    """`(shapes, palettes, paired names)`: the palettes of names that several layers of `model`
    share paired with their layers by value (see module doc), the records of the i-th such
    layer (i > 0) and its palettes keyed by its records' name (`fc#2`). Names that cannot be
    paired are left as they are (`same_names.check_same_names` decides)."""
    if model is None or palettes is None or hasattr(palettes, "layer_name") or not hasattr(
            palettes, "__iter__"):  # a wrong type: `collect_sharing` names it
        return shapes, palettes, set()
    dup = duplicated_names(model)
    if not dup or not is_graph_model(model):  # a subclassed model's traced records follow
        return shapes, palettes, set()  # its call order, not its layers' walk order
    palettes = list(palettes)  # an iterator is read once
    names = sorted({getattr(p, "layer_name", None) for p in palettes} & set(dup))
    shapes, paired = list(shapes), set()
    for name in names:
        entries = _layers_named(model, name)
        prefixes = record_prefixes(shapes, name)
        if len(entries) < 2 or len(prefixes) != len(entries):
            continue  # a nested model called twice: more records than layers
        idx = [i for i, p in enumerate(palettes) if p.layer_name == name]
        try:
            hits = _pairing(entries, [palettes[i] for i in idx])
        except (AttributeError, TypeError, ValueError):  # a duck-typed palette, no decode()
            hits = None
        if isinstance(hits, _Twice):
            weight, layer_i = hits
            raise ValueError(
                f"Invalid value for argument `palettes`: two palettes of {name}/{weight} both "
                f"decode to the weight of the layer at '{_where(model, entries[layer_i][0])}', "
                f"of the {len(entries)} layers named '{name}': the same palette passed twice "
                f"would charge another layer of that name with it, whatever that layer holds. "
                f"Pass each layer's own palette once (dkm_tf.palettes_of(model)).")
        if hits is None:
            continue
        paired.add(name)
        # the layer whose records keep its name (the model's own layer's: `record_names`;
        # before 2026-12-07 always the first, a nested namesake walked first kept the renamed
        # outer layer's palette)
        keep = prefixes.index(name) if name in prefixes else 0
        for i, layer_i in zip(idx, hits):
            if layer_i != keep:
                palettes[i] = _Renamed(palettes[i], prefixes[layer_i])
        rename = {p: p for k, p in enumerate(prefixes) if k != keep}
        shapes = [dataclasses.replace(s, layer=rename[s.name.split("/", 1)[0]])
                  if s.layer == name and s.kind in ("conv", "dense")
                  and s.name.split("/", 1)[0] in rename else s for s in shapes]
    return tuple(shapes), palettes, paired
