"""Compression information that comes with a model file, for `estimate(path)`.

* A `.tflite` written by `dkm_tf.export` with `format="palettized"` stores each clustered
  weight as a codebook + indices: the reader (`tflite_palettes`) finds K, d and G per conv or
  dense op, turned here into `SharingInfo` (N = |W| / d units).
* A `.keras` / `.h5` file stores plain float kernels. Its palettes are read from a JSON file
  beside it: `<stem>.palettes.json` (what `dkm_tf.pipeline.save_palettes` and `dkm-tf
  compress` write next to `clustered.keras`), else `palettes.json` in the same folder. The
  format is a JSON list of `Palette.to_dict()`, the one `export/to_tflite.py --palettes`
  reads. Without such a file, the kernels themselves are read: a kernel saved after
  clustering holds only K distinct values (or units), and `infer_sharing` describes it.
  A palettes file is only a claim about the model: `check_palettes` keeps the palettes whose
  `decode()` equals the stored weight and rejects the others, with the reason.
"""

import json
import math
import os

import numpy as np

from dkm_tf.energy.shapes import SharingInfo

PALETTES_SUFFIX = ".palettes.json"


def sharing_from_tflite(shapes, stored):
    """`{record name: SharingInfo}` from `{record name: StoredPalette}`; plus notes.

    `SharingInfo.index_bits` is the entropy of the indices stored in the file
    (`StoredPalette.index_bits`, read by `tflite_indices`), None where they were not read.

    A palette whose unit dimension d does not divide the op's weight count is left out and
    noted (never silently charged as something else).
    """
    sizes = {s.name: s.n_weights for s in shapes}
    out, notes = {}, []
    for name, p in stored.items():
        n = sizes.get(name)
        if n is None or n % p.unit_dim:
            notes.append(f"{name}: palette (K={p.n_clusters}, d={p.unit_dim}) does not fit the "
                         f"op's {n} weights; charged as float")
            continue
        out[name] = SharingInfo(n_clusters=p.n_clusters, unit_dim=p.unit_dim,
                                n_units=n // p.unit_dim, n_codebooks=p.n_codebooks,
                                index_bits=getattr(p, "index_bits", None),
                                scale_bits=getattr(p, "scale_bits", 0))
    if out:
        modes = sorted({stored[n].mode for n in out})
        notes.insert(0, f"palettes stored in the file ({'/'.join(modes)} decode): "
                     + ", ".join(f"{n} K={s.n_clusters} d={s.unit_dim}"
                                 + (f" G={s.n_codebooks}" if s.n_codebooks > 1 else "")
                                 for n, s in out.items()))
        blind = [n for n, s in out.items() if s.index_bits is None]
        if blind:
            notes.append("the stored indices of " + ", ".join(blind) + " were not read (a "
                         "decode chain `energy.tflite_indices` does not evaluate): their "
                         "index entropy is unknown")
    return out, notes


def quantized_note(quantized, n_ops, bits_w, bits_x, what="the file"):
    """The note for a `.tflite` whose conv / dense weights are stored as integers.

    B_w and B_x are the fixed-point widths of the metric's datapath, one pair for the whole
    model (Deep k-Means §3, after Sakr et al.), not the storage type of the file: an int8
    file is charged at the B_w asked for (16 by default), and the note says so.
    """
    types = sorted({w for w, _ in quantized.values()})
    acts = sorted({x for _, x in quantized.values()} - {"float32"})
    x_bits = max((16 if x == "int16" else 8 for x in acts), default=8)  # int16x8: 16
    return (f"{what} stores the weights of {len(quantized)} of {n_ops} conv/dense ops as "
            f"{'/'.join(types)} ({', '.join(quantized)})"
            + (f", with {'/'.join(acts)} activations" if acts else "")
            + f"; every weight is charged at B_w={bits_w} and every activation at "
            f"B_x={bits_x} (one datapath width for the whole model): pass bits_w=8"
            + (f", bits_x={x_bits}" if acts else "") + " to estimate() to charge "
            + (f"int8 weights and {x_bits}-bit activations" if x_bits != 8 else
               "an 8-bit datapath"))


def check_file(path):
    """A clear error for an unreadable file or a `.keras` file that is not a Keras zip
    (`check_model_file`; Keras itself says "File not found" for an existing bad file)."""
    from dkm_tf.core.files import check_model_file  # noqa: PLC0415

    try:
        check_model_file(path)
    except ValueError as e:  # name `estimate`'s argument, not the checker's
        raise ValueError(str(e).replace("argument `path`", "argument `model_or_path`")
                         .replace("Received: path=", "Received: model_or_path=")) from e


def palettes_beside(path):
    """The palettes file beside model file `path`, or None: `<stem>.palettes.json`, else
    `palettes.json` in the same folder."""
    path = os.fspath(path)
    for cand in (os.path.splitext(path)[0] + PALETTES_SUFFIX,
                 os.path.join(os.path.dirname(path), "palettes.json")):
        if os.path.isfile(cand):
            return cand
    return None


def load_palettes_file(path):
    """Palettes from a JSON list of `Palette.to_dict()`.

    Raises:
        ValueError: The file is not such a list (the message names the file).
    """
    from dkm_tf.core.palette import Palette

    try:
        with open(os.fspath(path)) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"expected a JSON list of palettes, found {type(data).__name__}")
        return [Palette.from_dict(d) for d in data]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"Could not read the palettes file {os.fspath(path)!r} (a JSON list "
                         f"of Palette.to_dict()): {type(e).__name__}: {e}") from e


def check_palettes(model, palettes):
    """Splits `palettes` into those that describe `model`'s stored weights and the others.

    A palette describes a weight when the model has its layer (`layer_name`, searched in
    nested models too) with the weight (`weight_name`, an attribute path such as
    "cell.kernel"), of the same shape, and `decode()` equals the stored values (to float
    round-off: |diff| <= 1e-6 * max |w|). Anything else (a palettes file of another model, of
    the same model clustered with another K, or of its float original) is rejected.

    Returns:
        `(accepted, rejected)`: a list of palettes and a list of `(palette name, reason)`.
    """
    import keras

    from dkm_tf.graph.clusterable import get_weight
    from dkm_tf.graph.copying import iter_layers

    layers = {}
    for layer in [model, *iter_layers(model)]:
        layers.setdefault(layer.name, []).append(layer)
    accepted, rejected = [], []
    for p in palettes:
        name = f"{p.layer_name}/{p.weight_name}"
        found = [get_weight(la, p.weight_name) for la in layers.get(p.layer_name, ())]
        found = [w for w in found if w is not None and hasattr(w, "shape")]
        if not found:
            why = (f"the model has no layer {p.layer_name!r}" if p.layer_name not in layers
                   else f"layer {p.layer_name!r} has no weight {p.weight_name!r}")
            rejected.append((name, why))
            continue
        dec = np.asarray(p.decode(), np.float64)
        reasons = []
        for var in found:
            w = np.asarray(keras.ops.convert_to_numpy(var), np.float64)
            if w.shape != dec.shape:
                reasons.append(f"it decodes to shape {dec.shape}, the weight has shape "
                               f"{w.shape}")
                continue
            diff = np.abs(w - dec)
            if np.all(diff <= 1e-6 * max(float(np.max(np.abs(w), initial=0.0)), 1e-30)):
                accepted.append(p)
                break
            reasons.append(
                f"its decode() differs from the stored weight in {int(np.sum(diff > 0)):,} of "
                f"{w.size:,} values (max |diff| {float(diff.max()):.3g}); the weight holds "
                f"{np.unique(w).size:,} distinct values, the palette K={p.n_clusters} "
                f"(d={p.unit_dim})")
        else:
            rejected.append((name, "; ".join(dict.fromkeys(reasons))))
    return accepted, rejected


def _unit_views(w):
    """Candidate `(unit, d, units of shape (G, M, d))` of a kernel (output channels last)."""
    out_c = w.shape[-1]
    per_channel = np.moveaxis(w, -1, 0).reshape(out_c, -1)
    views = [("scalar", 1, w.reshape(1, -1, 1)), ("scalar", 1, per_channel[..., None])]
    if w.ndim == 4 and w.shape[1] > 1:  # conv (kh, kw, cin, cout): rows of kw, kernels kh*kw
        kh, kw = w.shape[:2]
        rows = w.transpose(3, 0, 2, 1).reshape(out_c, -1, kw)
        kernels = w.transpose(3, 2, 0, 1).reshape(out_c, -1, kh * kw)
        for unit, d, u in (("row", kw, rows), ("kernel", kh * kw, kernels)):
            views += [(unit, d, u.reshape(1, -1, d)), (unit, d, u)]
    return views


def beside_keras_file(model, shapes, path):
    """Compression info stored with the `.keras` / `.h5` file `path` (loaded as `model`).

    The palettes of the palettes file beside it (`palettes_beside`) that describe the stored
    weights (`check_palettes`) are used. The rejected ones are not: their layers, or the
    whole model when no palette matches (the file belongs to another model), are described
    from their stored kernels (`infer_sharing`; a float kernel stays float), and a note
    names each rejected palette with the reason. Without a palettes file, `infer_sharing`.

    Returns:
        A dict with "palettes" (accepted palettes) and "source" (the palettes file) when any
        palette is accepted, "weight_sharing" (inferred `SharingInfo`s) and "notes".
    """
    beside = palettes_beside(path)
    if beside is None:
        sharing, notes = infer_sharing(model, shapes)
        return {"weight_sharing": sharing or None, "notes": notes}
    palettes = load_palettes_file(beside)
    accepted, rejected = check_palettes(model, palettes)
    found, notes = {}, []
    if accepted:
        found = {"palettes": accepted, "source": beside}
        notes.append(f"palettes read from {beside} ({len(accepted)} tensors"
                     + (f"; {len(rejected)} rejected)" if rejected else ")"))
    if rejected:
        names = {n.split("/", 1)[0] for n, _ in rejected}
        names -= {p.layer_name for p in accepted}
        sharing, _ = infer_sharing(model, shapes, layers=None if not accepted else names)
        what = (f"the palettes file {beside} does not belong to this model: none of its "
                f"{len(palettes)} palettes matches the stored weights, the file is ignored"
                if not accepted else f"{len(rejected)} of the {len(palettes)} palettes in "
                f"{beside} do not match the stored weights and are not applied")
        inferred = ", ".join(f"{n} K={s.n_clusters} d={s.unit_dim}"
                             for n, s in sharing.items())
        notes.append(f"REJECTED PALETTES: {what}; "
                     + "; ".join(f"{n}: {why}" for n, why in rejected)
                     + ". Those layers are charged as their stored kernels hold: "
                     + (inferred or "float (no palette found in their values)"))
        found["weight_sharing"] = sharing or None
    found["notes"] = notes
    return found


def _value_entropy(units):
    """Entropy (bits per unit, averaged over the G groups of `units`, shape (G, M, d)) of
    which distinct unit each unit is: the index histogram of a kernel saved after clustering
    (`Palette.entropy_bits`, up to codewords that coincide)."""
    from dkm_tf.core.kmeans import assignment_entropy

    return float(np.mean([assignment_entropy(np.unique(group, axis=0, return_inverse=True)[1]
                                             .ravel()) for group in units]))


def infer_sharing(model, shapes, bits_w=16, max_clusters=256, layers=None):
    """`{layer name: SharingInfo}` for kernels whose stored values are a palette; notes.

    A kernel saved after clustering holds at most K distinct units. For each conv / dense
    kernel, every description (scalar, row or kernel units; one codebook, or one per output
    channel) is tried: K = the most distinct units in one codebook group, storage
    G·K·d·B_w + N·log2 K bits. The smallest is kept when K <= `max_clusters` and the storage
    is under half the float kernel's (a trained float kernel has about N distinct values and
    never qualifies). `layers`: names of the layers to describe (default: all). Each
    `SharingInfo.index_bits` is the entropy of the kernel's distinct-unit histogram.
    """
    import keras

    from dkm_tf.core.kmeans import sortable
    from dkm_tf.graph.copying import iter_layers

    sizes = {}
    for s in shapes:
        if s.kind in ("conv", "dense"):
            sizes.setdefault(s.layer, set()).add(s.n_weights)
    out, notes, each = {}, [], {}
    for layer in iter_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or layer.name not in sizes or len(kernel.shape) < 2 or (
                layers is not None and layer.name not in layers):
            continue
        w = sortable(keras.ops.convert_to_numpy(kernel))  # float16 as float32 for np.unique
        each.setdefault(layer.name, []).append([w.size, None])
        if w.size not in sizes[layer.name]:
            continue
        best = None
        for unit, d, units in _unit_views(w):
            k = max(np.unique(g, axis=0).shape[0] for g in units)
            bits = units.shape[0] * k * d * bits_w + w.size // d * math.log2(max(k, 1))
            if k <= max_clusters and bits < 0.5 * w.size * bits_w and \
                    (best is None or bits < best[0]):
                best = (bits, unit, d, k, units)
        if best is not None:
            _, unit, d, k, units = best
            g = units.shape[0]
            out[layer.name] = each[layer.name][-1][1] = SharingInfo(
                n_clusters=k, unit_dim=d, n_units=w.size // d, n_codebooks=g,
                index_bits=_value_entropy(units))
            notes.append(f"{layer.name} K={k} {unit}" + (f" G={g}" if g > 1 else ""))
    ambiguous = _differing_same_names(model, out, each)
    if notes:
        notes = ["no palettes file beside the model: palettes inferred from the stored "
                 "kernels' distinct values: " + ", ".join(notes)]
    return out, notes + ambiguous


def _differing_same_names(model, out, each):
    """Fix `out` for names that several layers share (layers of nested models): `out` held
    the last one's description only. Records are matched by name and kernel size, so each
    layer's own description is kept where its size tells it apart; where layers of one size
    differ (other K, or one float), none of that size is charged as clustered (one's palette
    was charged on the other, float ones too) and a note says so."""
    from dkm_tf.energy.same_names import duplicated_names, same_info, where

    notes = []
    for name, layers in sorted(duplicated_names(model).items()):
        if name not in out:
            continue
        keep, dropped = [], []
        rows = each.get(name, [])
        for size in sorted({size for size, _ in rows}):
            infos = [info for n, info in rows if n == size]
            if len(infos) > 1 and (None in infos or not same_info(infos, "none")):
                dropped.append(size)
            else:
                keep += [info for info in infos if info is not None]
        if keep:
            out[name] = keep if len(keep) > 1 else keep[0]
        else:
            del out[name]
        if dropped:
            notes.append(f"{len(layers)} layers are named {name!r} (at {where(layers)}) and "
                         f"those of {', '.join(map(str, dropped))} weights differ (other K, or "
                         "float): records are matched by name and size, so they are charged "
                         "as float; rename them to charge each")
    return notes
