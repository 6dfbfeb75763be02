"""Palettes through BatchNormalization folding: exact per-channel codebooks of folded kernels.

When :func:`~dkm_tf.graph.batchnorm.fold_batch_norm` multiplies a clustered kernel by
s = gamma / sqrt(var + eps) on its output-channel axis, every unit of a palette lies inside one
output channel (:mod:`dkm_tf.core.units`), so the folded kernel is again a palette: per
channel, with the codebook of channel c equal to ``codebook * s_c`` and the same indices. A
per-tensor palette of K entries becomes C_out codebooks of K entries (K d C_out floats instead
of K d). ``strip_clustering`` and ``to_tflite`` use this to keep the clustered function exactly.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from dkm_tf.core import units as units_lib
from dkm_tf.graph.batchnorm import maybe_fold
from dkm_tf.graph.layer_paths import attr_path, layer_paths, same_name_index

__all__ = ["fold_for_export", "fold_palettes", "fold_with_palettes", "palette_paths"]


def _fold_palette(p, mult, bn):
    """The palette of ``decode(p) * mult``: per channel, codebook of channel c = codebook s_c.

    Exact: the units of every layout lie inside one output channel, so scaling the codebook of
    that channel scales each of its weights. A per-tensor palette becomes per-channel (C
    codebooks of K entries; the indices are the same).
    """
    lay = units_lib.layout_for(p.layout.kernel_shape, p.layout.kind, p.layout.unit,
                               "per_channel")
    m = units_lib.to_units(np.broadcast_to(mult, lay.kernel_shape), lay)  # (G, M, d)
    s = m[:, 0, 0]
    if not np.all(m == s[:, None, None]):
        raise ValueError(f"Palette {p.name}: its {p.layout.kind!r} channel groups do not match "
                         f"the output channels that BatchNormalization {bn!r} scales.")
    book = np.broadcast_to(p.codebook, (lay.n_groups, *p.codebook.shape[1:]))
    book = (book.astype(np.float64) * s[:, None, None]).astype(np.float32)
    note = (f"BatchNormalization {bn!r} folded in: codebook of channel c = codebook * s_c"
            + (f" (was {p.layout.granularity})" if p.layout.granularity != "per_channel"
               else "") + (f"; {p.note}" if p.note else ""))
    # every other field (requested K, a preserved zero entry, ...) is kept; the codebook is
    # this tensor's own now, no longer shared
    return dataclasses.replace(p, codebook=book, layout=lay, codebook_id=None, note=note,
                               indices=p.indices.reshape(lay.n_groups, lay.n_units))


def palette_paths(model, palettes, owners=None, folded=None):
    """The path (``layer_paths``) of the layer each palette describes, or None where no
    layer of ``model`` holds it. ``owners``: the layer of ``model`` of each palette (exact);
    else a name that several layers share (layers of nested models) is paired by position:
    the i-th palette of ``conv/kernel`` in the list describes the i-th layer ``conv`` holding
    a ``kernel`` in walk order (the order of ``palettes_of``). Raises ``ValueError`` where the
    counts differ (a float ``conv`` beside a clustered one) and a kernel of that name is in
    ``folded`` (the ``FoldResult.paths`` keys): its BatchNormalization scales could not be
    matched to its palette."""
    of_layer = {id(lay): path for path, lay in layer_paths(model)}
    out, groups = [None] * len(palettes), {}
    for i, p in enumerate(palettes):
        owner = owners[i] if owners is not None and i < len(owners) else None
        if owner is not None and id(owner) in of_layer:
            out[i] = of_layer[id(owner)]
        else:
            groups.setdefault((p.layer_name, p.weight_name), []).append(i)
    for (name, weight), idx in groups.items():
        held = [path for path, _ in same_name_index(model, name, weight)]
        if len(held) == 1 or len(held) == len(idx):
            for i, path in zip(idx, held * len(idx) if len(held) == 1 else held):
                out[i] = path
        elif held and any(f"{path}/{weight}" in (folded or ()) for path in held):
            raise ValueError(
                f"Cannot fold BatchNormalization into the layers named {name!r}: "
                f"{len(held)} layers hold {name}/{weight} (at {', '.join(map(repr, held))}) "
                f"but {len(idx)} palette(s) name it, and palettes carry no path, so a "
                "palette could be rescaled with another layer's BatchNormalization. Pass "
                "fold_bn=False (the BatchNormalization layers stay; the TFLite converter "
                "folds them), or give the nested models' layers distinct names.")
    return out


def fold_palettes(palettes, result, paths=None):
    """Palettes of ``result.model`` from the palettes of the model that was folded.

    Palettes of folded kernels are rescaled with :func:`_fold_palette` (exact; per-tensor ones
    become per-channel); the others are returned as they are. ``paths``: the layer path of
    each palette (:func:`palette_paths`; default: paired with ``result.model``'s layers, which
    have the folded model's paths).
    """
    if paths is None:
        paths = palette_paths(result.model, palettes, folded=result.paths)
    bn_of, bn_named = dict(result.folded_paths), dict(result.folded)
    return [_fold_palette(p, result.paths[f"{path}/{p.weight_name}"],
                          bn_named[p.layer_name] if p.name in result.scales  # a unique name
                          else bn_of.get(path, path))
            if f"{path}/{p.weight_name}" in result.paths else p
            for p, path in zip(palettes, paths)]


def fold_with_palettes(model, palettes, owners=None):
    """Fold ``model``'s BatchNormalization layers and rescale the palettes of folded kernels.

    The folded kernels are set to exactly ``palette.decode()`` of their rescaled palettes (they
    agree to float rounding already), so the palettes describe the folded model bit for bit.
    ``owners``: the layer of ``model`` that each palette describes (``strip_clustering``
    knows them); default: same-named layers of nested models are paired with the palettes
    of their name by position (:func:`palette_paths`).

    Returns:
        ``(model, palettes, result)``: ``model`` itself when nothing folds, and the
        :class:`FoldResult`.
    """
    result = maybe_fold(model)
    if not result.folded:
        return model, list(palettes), result
    paths = palette_paths(model, palettes, owners, result.paths)
    new_palettes = fold_palettes(palettes, result, paths)
    layers = dict(layer_paths(result.model))  # the same paths: BN layers are only dropped
    for p, path in zip(new_palettes, paths):
        if f"{path}/{p.weight_name}" in result.paths:
            var = attr_path(layers[path], p.weight_name)  # "layer.kernel" too
            w, dec = keras.ops.convert_to_numpy(var), p.decode()
            err = float(np.max(np.abs(w - dec))) if w.size else 0.0
            if err > 1e-5 * max(1.0, float(np.max(np.abs(w)))):
                raise ValueError(f"Palette {p.name} does not match the folded kernel (max "
                                 f"error {err:.3g}): the palette did not describe the kernel.")
            var.assign(dec.astype(w.dtype))
    return result.model, new_palettes, result


def fold_for_export(model, palettes, float_content=None, notes=None):
    """``to_tflite``'s hook: fold BatchNormalization as the converter would, palettes too.

    Returns ``(model, palettes, float_content)``; ``float_content`` (a conversion of the
    unfolded model) is dropped when anything was folded, and a line is added to ``notes``.
    """
    if not palettes:
        return model, palettes, float_content
    new, new_palettes, result = fold_with_palettes(model, palettes)
    if not result.folded:
        return model, palettes, float_content
    if notes is not None:
        scaled = [p.name for p, q in zip(palettes, new_palettes) if p is not q]
        notes.append(f"folded {len(result.folded)} BatchNormalization layer(s) into the "
                     f"layer before them (as the TFLite converter does); palettes rescaled "
                     f"per channel: {', '.join(scaled) or 'none'}")
    return new, new_palettes, None
