"""Palettes read from a `.keras` file's stored weights (`infer_sharing`, for `estimate(path)`).

A weight saved after clustering holds at most K distinct units. Every weight that
`share_weights` / `cluster_weights` cluster is read (`graph.clusterable.clusterable_weights`:
kernels, RNN cells' input and recurrent kernels inside StackedRNNCells and Bidirectional,
separable depthwise / pointwise kernels, attention projections, embeddings), with its own
layout kind, so each is cut into units the way clustering cut it. A layer that is not
clusterable but has a `kernel` (a quantized or custom layer) is read from that kernel.

The descriptions are keyed like `energy.matching.collect_sharing` keys palettes (the energy
readers' record names): `layer` for a layer's kernel or embeddings, `layer/depthwise` and
`layer/pointwise` for separable kernels, `layer/<path>` for a sublayer's weight
(`lstm/cell.recurrent_kernel`, `mha/query_dense.kernel`), so that a `.keras` file's estimate
equals `estimate(model, palettes=...)` with the palettes that produced it.
"""

import collections
import math

import numpy as np

from dkm_tf.energy.shapes import SharingInfo


def _record_key(layer_name, path, layer=None):
    """The record name of weight `path` of layer `layer_name` (as `collect_sharing`). A
    `TimeDistributed` `layer` (a `ClusterWeights` of one too) is recorded as the layer it
    wraps, under its own name (`td`, `td#2`, ... per step): its `layer.` prefixes go."""
    import keras

    inner = getattr(layer, "layer", None) if callable(getattr(layer, "palettes", None)) \
        else layer
    while isinstance(inner, keras.layers.TimeDistributed) and path.startswith("layer."):
        inner, path = inner.layer, path[len("layer."):]
    for part in ("depthwise", "pointwise"):
        if path.startswith(part):
            return f"{layer_name}/{part}"
    return f"{layer_name}/{path}" if "." in path else layer_name


def _weights(layer):
    """`[(path, variable, kind)]` of `layer`: its clusterable weights, else its `kernel`."""
    from dkm_tf.graph.clusterable import clusterable_weights, is_clusterable

    try:
        if is_clusterable(layer):
            return clusterable_weights(layer)
    except (TypeError, ValueError):  # an unsupported cell / equation, a quantized layer
        pass
    kernel = getattr(layer, "kernel", None)
    if kernel is None or not hasattr(kernel, "shape") or len(kernel.shape) < 2:
        return []
    return [("kernel", kernel, "dense" if len(kernel.shape) == 2 else "conv")]


def _wrapper_palettes(layer):
    """The palettes of a stored `ClusterWeights` wrapper (`graph.layer_names.wrapped_layer`:
    duck-typed, `energy` does not import `training`)."""
    import keras

    from dkm_tf.graph.layer_names import wrapped_layer

    if not isinstance(wrapped_layer(layer), keras.layers.Layer) or not layer.built:
        return []
    return [p for p in layer.palettes() if hasattr(p, "entropy_bits")]


def _unit_views(w, kind):
    """Candidate `(unit, d, units of shape (G, M, d))` of weight `w` of layout `kind`:
    scalar, row and kernel units, one codebook or one per output channel (as clustered)."""
    from dkm_tf.core.units import GRANULARITIES, UNITS, layout_for, to_units

    views, seen = [], set()
    for unit in UNITS:
        for granularity in GRANULARITIES:
            try:
                layout = layout_for(w.shape, kind, unit, granularity)
            except (TypeError, ValueError):
                continue
            key = (layout.unit_dim, layout.n_groups)
            if key not in seen:
                seen.add(key)
                views.append((unit, layout.unit_dim, to_units(w, layout)))
    return views


def _value_entropy(units):
    """Entropy (bits per unit, averaged over the G groups of `units`, shape (G, M, d)) of
    which distinct unit each unit is: the index histogram of a kernel saved after clustering
    (`Palette.entropy_bits`, up to codewords that coincide)."""
    from dkm_tf.core.kmeans import assignment_entropy

    return float(np.mean([assignment_entropy(np.unique(group, axis=0, return_inverse=True)[1]
                                             .ravel()) for group in units]))


def _describe(w, kind, bits_w, max_clusters):
    """`(SharingInfo, note words)` of weight `w` if its values are a palette, `(None, why)`
    if some description repeats units yet stores too little to tell (a 3x3 depthwise kernel
    with 4 values per channel: 82 of 144 bits), else None."""
    best, near = None, None
    for unit, d, units in _unit_views(w, kind):
        k = max(np.unique(g, axis=0).shape[0] for g in units)
        bits = units.shape[0] * k * d * bits_w + w.size // d * math.log2(max(k, 1))
        if k <= max_clusters and bits < 0.5 * w.size * bits_w and \
                (best is None or bits < best[0]):
            best = (bits, unit, d, k, units)
        if k <= max_clusters and k < units.shape[1] and (near is None or bits < near[0]):
            near = (bits, unit, units.shape[0], k, units.shape[1])
    if best is None:
        if near is None:
            return None
        _, unit, g, k, m = near
        return None, (f"at most {k} distinct {unit} units in each of its {g} group(s) of {m}, "
                      f"but a palette would store {near[0] / (w.size * bits_w):.0%} of its "
                      "float bits, too many to tell it from a float weight")
    _, unit, d, k, units = best
    g = units.shape[0]
    info = SharingInfo(n_clusters=k, unit_dim=d, n_units=w.size // d, n_codebooks=g,
                       index_bits=_value_entropy(units))
    return info, f"K={k} {unit}" + (f" G={g}" if g > 1 else "")


def infer_sharing(model, shapes, bits_w=16, max_clusters=256, layers=None):
    """`{record name: SharingInfo}` for weights whose stored values are a palette; notes.

    For each clusterable weight with a conv / dense record of its size (`_record_key`),
    every description (scalar, row or kernel units; one codebook, or one per output channel)
    is tried: K = the most distinct units in one codebook group, storage
    G·K·d·B_w + N·log2 K bits. The smallest is kept when K <= `max_clusters` and the storage
    is under half the float weight's (a trained float weight has about N distinct values and
    never qualifies). `layers`: names of the layers to describe (default: all). Each
    `SharingInfo.index_bits` is the entropy of the weight's distinct-unit histogram.
    A weight with no record (an Embedding's table: a lookup, no MACs) is not described.
    """
    import keras

    from dkm_tf.core.kmeans import sortable
    from dkm_tf.graph.copying import iter_layers

    by_layer, by_name = {}, {}
    counts = collections.Counter(la.name for la in iter_layers(model))  # a wrapper's own name
    for s in shapes:
        if s.kind in ("conv", "dense"):
            by_layer.setdefault(s.layer, set()).add(s.n_weights)
            by_name.setdefault(s.name, set()).add(s.n_weights)
    out, notes, each, unsure, wrapped = {}, [], {}, [], []
    for layer in iter_layers(model):
        if layers is not None and layer.name not in layers:
            continue
        for p in _wrapper_palettes(layer):  # a file saved before strip_clustering
            size = p.n_units * p.unit_dim  # records may carry the wrapper's name: a
            key = _record_key(layer.name, p.weight_name, layer)  # `cluster_fc` beside `fc`
            if counts[layer.name] > 1 or size not in by_name.get(key, ()):  # a nested twin
                key = _record_key(p.layer_name, p.weight_name, layer)
                if size not in by_name.get(key, by_layer.get(key, ())):
                    continue
            if int(getattr(p, "n_transforms", 1) or 1) > 1 or p.scales is not None:
                unsure.append(f"{key}: scaled kernel clustering, pass palettes_of(model)")
                continue
            cb = getattr(p, "codebook", None)
            out[key] = info = SharingInfo(
                n_clusters=int(p.n_clusters), unit_dim=int(p.unit_dim), n_units=int(p.n_units),
                n_codebooks=int(cb.shape[0]) if getattr(cb, "ndim", 0) == 3 else 1,
                index_bits=float(p.entropy_bits()))
            each.setdefault(key, []).append([p.n_units * p.unit_dim, info])
            wrapped.append(f"{key} K={p.n_clusters}")
        steps = isinstance(layer, keras.layers.TimeDistributed)  # records `td`, `td#2`, ...
        if layer.name not in by_layer and not steps:  # (their layer: the wrapped one's name)
            continue
        for path, var, kind in _weights(layer):
            key = _record_key(layer.name, path, layer)
            w = sortable(keras.ops.convert_to_numpy(var))  # float16 as float32 for np.unique
            each.setdefault(key, []).append([w.size, None])
            if w.size not in (by_name.get(key, set()) if key != layer.name or steps
                              else by_layer[layer.name]):
                continue
            found = _describe(w, kind, bits_w, max_clusters)
            if found is not None and found[0] is not None:
                out[key] = each[key][-1][1] = found[0]
                notes.append(f"{key} {found[1]}")
            elif found is not None:
                unsure.append(f"{key}: {found[1]}")
    ambiguous = _differing_same_names(model, out, each, shapes)
    if notes:
        notes = ["no palettes file beside the model: palettes inferred from the stored "
                 "kernels' distinct values: " + ", ".join(notes)]
    if wrapped:
        notes.append("palettes of the ClusterWeights wrappers stored in the file (not "
                     "stripped): " + ", ".join(wrapped))
    if unsure:
        notes.append("charged as float, though their stored values repeat: " + "; ".join(unsure)
                     + ". Save the palettes beside the model (`pipeline.save_palettes`, "
                     "<stem>.palettes.json) or pass `palettes=` to charge them")
    return out, notes + ambiguous


def _differing_same_names(model, out, each, shapes):
    """Fix `out` for names that several layers share (layers of nested models): `out` held
    the last one's description only. Where each layer has its own records (`fc`, `fc#2`, in
    walk order) and no float layer shares a described one's size, each description is keyed
    by its layer's record (`fc#2`, `sc#2/depthwise`). Else records are matched by name and
    weight size, so each layer's own description is kept where its size tells it apart; where
    layers of one size differ (other K or index entropy, or one float), none of that size is
    charged as clustered (one's palette was charged on the other, float ones too) and a note
    says so."""
    from dkm_tf.energy.same_names import same_info
    from dkm_tf.energy.same_names_pairing import record_prefixes
    from dkm_tf.graph.layer_names import duplicated_names, where

    notes = []
    duplicated = duplicated_names(model)
    for key in sorted(out):
        layers = duplicated.get(key.split("/", 1)[0])
        if layers is None:
            continue
        keep, dropped = [], []
        rows = each.get(key, [])
        prefixes = record_prefixes(shapes, key.split("/", 1)[0])
        if len(rows) == len(prefixes) == len(layers) and not any(
                info is None and sum(n == size for n, _ in rows) > 1 for size, info in rows):
            del out[key]  # one row per layer (walk order), one record prefix per layer
            for prefix, (_, info) in zip(prefixes, rows):
                if info is not None:
                    out[prefix + key[len(key.split("/", 1)[0]):]] = info
            continue
        for size in sorted({size for size, _ in rows}):
            infos = [info for n, info in rows if n == size]
            if len(infos) > 1 and (None in infos or not same_info(infos, "entropy")):
                dropped.append(size)
            else:
                keep += [info for info in infos if info is not None]
        if keep:
            out[key] = keep if len(keep) > 1 else keep[0]
        else:
            del out[key]
        if dropped:
            notes.append(f"{len(layers)} layers are named {key.split('/', 1)[0]!r} (at "
                         f"{where(layers)}) and those of {', '.join(map(str, dropped))} "
                         f"weights{' of ' + key if '/' in key else ''} differ (other K or "
                         "index entropy, or float): records are matched by name and size, so "
                         "they are charged "
                         "as float; rename them to charge each")
    return notes
