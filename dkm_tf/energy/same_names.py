"""Compression info naming a layer name that several layers of a Keras model share.

Keras 3 names are unique only within one model: two nested blocks (two copies of one base, a
base and a head) may each hold a layer `fc`. The energy readers name their records `fc`,
`fc#2` (the names of a shared layer's later calls) and `match_sharing` assigns palettes to
them by name, kernel size and order; a palette of one `fc` then lands on the other `fc`, and
its later-call rule charges a float `fc` with the other's palette. Palettes do not carry the
layer's path: `same_name_estimate` pairs them with their layers by value where it can
(`same_names_pairing`); a name left unpaired is refused where kernel size does not tell its
layers apart, unless every layer of that size gets an identical description (then any
pairing gives the same estimate).
"""

import dataclasses
import math

from dkm_tf.graph.layer_names import duplicated_names, where


def _signature(p, index_cost):
    codebook = getattr(p, "codebook", None)
    entropy = index_cost == "entropy" and hasattr(p, "entropy_bits")
    return (int(p.n_clusters), int(p.unit_dim), int(p.n_units),
            tuple(getattr(codebook, "shape", ())), int(getattr(p, "n_transforms", 1) or 1),
            int(getattr(p, "scale_bits", 0) or 0) if getattr(p, "scales", None) is not None
            else 0, round(float(p.entropy_bits()), 9) if entropy else None)


def same_info(infos, index_cost):
    """Whether `SharingInfo`s `infos` charge alike (`index_bits` only counts for entropy)."""
    if index_cost != "entropy":
        infos = [None if i is None else dataclasses.replace(i, index_bits=None) for i in infos]
    return len(set(map(repr, infos))) <= 1


def _size(layer, weight):
    from dkm_tf.graph.clusterable import get_weight

    var = get_weight(layer, weight) if weight else getattr(layer, "kernel", None)
    return None if var is None else math.prod(var.shape)


def same_name_estimate(model, shapes, palettes, pruning):
    """`(shapes, palettes, pruning, paired names)` for `estimate`: palettes of same-named
    layers paired with their layers by value (`same_names_pairing.pair_by_value`; a layer no
    palette decodes to is float), the pruning of a renamed layer's records kept under their
    new key."""
    from collections.abc import Mapping

    from dkm_tf.energy.same_names_pairing import pair_by_value

    new, palettes, paired = pair_by_value(model, shapes, palettes)
    if paired and isinstance(pruning, Mapping):
        pruning = dict(pruning)
        for s, old in zip(new, shapes):
            if s.layer != old.layer and old.layer in pruning:
                pruning.setdefault(s.layer, pruning[old.layer])
    return new, palettes, pruning, paired


def _differs(same, index_cost):
    """What tells palettes `same` apart, in words."""
    parts = []
    for what, get in (("K", lambda p: int(p.n_clusters)), ("d", lambda p: int(p.unit_dim)),
                      ("units", lambda p: int(p.n_units))):
        if len({get(p) for p in same}) > 1:
            parts.append(f"{what} ({', '.join(str(get(p)) for p in same)})")
    if not parts and index_cost == "entropy" and all(hasattr(p, "entropy_bits") for p in same):
        bits = ", ".join(f"{float(p.entropy_bits()):.4f}" for p in same)
        parts.append(f"only the index entropy ({bits} bits)")
    return "; they differ in " + ", ".join(parts) if parts else ""


def check_same_names(model, palettes, weight_sharing, index_cost, paired=()):
    """Raise `ValueError` where `palettes` / `weight_sharing` name a layer name that several
    layers of `model` share and kernel size does not tell them apart: for each size held by
    several layers of that name, one palette per layer and weight, all charged alike (K, d,
    units, codebooks, and the index entropy when `index_cost` is "entropy"), or
    `weight_sharing` entries all alike (a name applies to each layer of that name). Palettes
    of the names in `paired` (paired by value, `same_name_estimate`) are not checked."""
    for name, layers in sorted(duplicated_names(model).items()):
        groups = {}
        for p in () if name in paired else palettes or ():
            if getattr(p, "layer_name", None) == name:
                groups.setdefault(str(getattr(p, "weight_name", "")), []).append(p)
        for weight, pals in sorted(groups.items()):
            sizes = [_size(layer, weight) for _, layer in layers]
            for size in sorted(set(sizes) - {None}):
                same = [p for p in pals if int(p.n_units) * int(p.unit_dim) == size]
                n = sizes.count(size)
                if n > 1 and same and (len(same) != n or len(
                        {_signature(p, index_cost) for p in same}) > 1):
                    got = ", ".join(f"K={p.n_clusters}" for p in same)
                    raise ValueError(
                        f"Invalid value for argument `palettes`: {len(same)} palette(s) of "
                        f"{name}/{weight} ({got}, {size} weights) for {n} layers named "
                        f"{name!r} of that size (at {where(layers)})"
                        f"{_differs(same, index_cost)}. Palettes carry no path and are "
                        "matched to layers by name and size, and pairing them by value "
                        "failed (a palette whose decode() equals no layer's weight or several) "
                        "or cannot be done (a subclassed model, a nested model called twice), "
                        "so a palette could be charged on the "
                        "wrong layer (or a float layer charged as clustered). Expected one "
                        "palette per such layer equal to its weight, or distinct layer names: "
                        "rename the nested models' layers (name=...) and cluster again.")
        infos = weight_sharing.get(name) if hasattr(weight_sharing, "get") else None
        if infos is not None:
            infos = list(infos) if isinstance(infos, (list, tuple)) else [infos]
            sizes = [_size(layer, "") for _, layer in layers]
            for size in sorted(set(sizes) - {None}):
                same = [i for i in infos if i.n_weights == size]
                if sizes.count(size) > 1 and not same_info(same, index_cost):
                    raise ValueError(
                        f"Invalid value for argument `weight_sharing[{name!r}]`: "
                        f"{len(same)} different SharingInfos of {size} weights for "
                        f"{sizes.count(size)} layers named {name!r} of that size (at "
                        f"{where(layers)}); they are matched by name and kernel size, so one "
                        "could be charged on the wrong layer. Expected distinct layer names.")
