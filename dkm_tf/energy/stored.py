"""Compression information that comes with a model file, for `estimate(path)`.

* A `.tflite` written by `dkm_tf.export` with `format="palettized"` stores each clustered
  weight as a codebook + indices: the reader (`tflite_palettes`) finds K, d and G per conv or
  dense op, turned here into `SharingInfo` (N = |W| / d units).
* A `.keras` / `.h5` file stores plain float kernels. Its palettes are read from a JSON file
  beside it: `<stem>.palettes.json` (what `dkm_tf.pipeline.save_palettes` and `dkm-tf
  compress` write next to `clustered.keras`), else `palettes.json` in the same folder. The
  format is a JSON list of `Palette.to_dict()`, the one `export/to_tflite.py --palettes`
  reads. Without such a file, the kernels themselves are read: a kernel saved after
  clustering holds only K distinct values (or units), and `infer_sharing` (`energy.inferred`)
  describes it.
  A palettes file is only a claim about the model: `check_palettes` keeps the palettes whose
  `decode()` equals the stored weight and rejects the others, with the reason; the layers no
  accepted palette describes are read from their kernels, and so is the whole model beside
  an empty file (noted).
"""

import json
import os

import numpy as np

from dkm_tf.energy.inferred import infer_sharing  # noqa: F401 (re-exported: the old home)
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
    file is charged at the B_w asked for (16 by default), and the note says so. `n_ops`: the
    number of conv / dense records, or their names: those not in `quantized` (float weights:
    the converter leaves small tensors float32) are then named, as B_w applies to them too
    (the note advised bits_w=8 without saying it charges a float32 weight at 8 bits).
    """
    floats = [] if isinstance(n_ops, int) else [n for n in n_ops if n not in quantized]
    n_ops = n_ops if isinstance(n_ops, int) else len(n_ops)
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
               "an 8-bit datapath")
            + (f"; the other {len(floats)} ({', '.join(floats[:6])}"
               f"{' ...' if len(floats) > 6 else ''}) store float weights, which B_w charges "
               "alike (bits_w=8 charges them at 8 bits too)" if floats else ""))


def check_file(path):
    """A clear error for an unreadable file or a `.keras` file that is not a Keras zip
    (`check_model_file`; Keras itself says "File not found" for an existing bad file)."""
    from dkm_tf.core.files import check_model_file  # noqa: PLC0415

    check_model_file(path, name="model_or_path")  # `estimate`'s argument, not the checker's


def palettes_beside(path):
    """The palettes file beside model file `path`, or None: `<stem>.palettes.json`, else
    `palettes.json` in the same folder. For a symlink (a chain of them), each link's and the
    real file's `<stem>.palettes.json` first, in that order, then their folders'
    `palettes.json` (a generic one beside the link won over the real file's own)."""
    chain = [os.fspath(path)]
    while os.path.islink(chain[-1]) and len(chain) < 40:  # every link of a chain, then the file
        chain.append(os.path.join(os.path.dirname(chain[-1]), os.readlink(chain[-1])))
    if len(chain) > 1:
        chain.pop()  # the file the last link names: as its real path, normalized
    chain.append(os.path.realpath(chain[0]))  # a folder on the way may be a link too
    cands = [os.path.splitext(p)[0] + PALETTES_SUFFIX for p in chain]
    cands += [os.path.join(os.path.dirname(p), "palettes.json") for p in chain]
    return next((c for c in cands if os.path.isfile(c)), None)


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
    accepted, rejected = [], []
    for p, name, why, _ in palette_verdicts(model, palettes):
        (accepted.append(p) if why is None else rejected.append((name, why)))
    return accepted, rejected


def palette_verdicts(model, palettes):
    """`(palette, name, reason, kind)` per palette, as :func:`check_palettes` judges it:
    `reason` None and `kind` "ok" when it describes the stored weight; else `kind` "missing"
    (no such layer or weight), "float" (its first weight of the palette's shape that differs
    holds more distinct values than the palette's K d: a float weight, e.g. the float
    original's) or "stale" (a clustered weight it does not decode to, or other shapes)."""
    import keras

    from dkm_tf.graph.clusterable import get_weight
    from dkm_tf.graph.copying import iter_layers

    layers = {}
    for layer in [model, *iter_layers(model)]:
        layers.setdefault(layer.name, []).append(layer)
    out = []
    for p in palettes:
        name = f"{p.layer_name}/{p.weight_name}"
        found = [get_weight(la, p.weight_name) for la in layers.get(p.layer_name, ())]
        found = [w for w in found if w is not None and hasattr(w, "shape")]
        if not found:
            why = (f"the model has no layer {p.layer_name!r}" if p.layer_name not in layers
                   else f"layer {p.layer_name!r} has no weight {p.weight_name!r}")
            out.append((p, name, why, "missing"))
            continue
        dec = np.asarray(p.decode())
        reasons, kind = [], None
        for var in found:
            w = np.asarray(keras.ops.convert_to_numpy(var))
            if w.shape != dec.shape:
                reasons.append(f"it decodes to shape {dec.shape}, the weight has shape "
                               f"{w.shape}")
                continue
            differ, worst, ok = _compare(w, dec)
            if ok:
                out.append((p, name, None, "ok"))
                break
            distinct = _distinct(w)
            if kind is None:
                kind = "float" if _holds_float(w, distinct, p) else "stale"
            reasons.append(
                f"its decode() differs from the stored weight in {differ:,} of "
                f"{w.size:,} values (max |diff| {worst:.3g}); the weight holds "
                f"{distinct:,} distinct values, the palette K={p.n_clusters} (d={p.unit_dim})")
        else:
            out.append((p, name, "; ".join(dict.fromkeys(reasons)), kind or "stale"))
    return out


def _distinct(w):
    """Distinct values of ``w``: a float32 weight sorted as it is (a float64 copy and its sort
    took 8.7x the kernel's bytes on a rejected palette), others as float64 (numpy's float16
    sort misorders subnormals)."""
    return np.unique(w if w.dtype == np.float32 else np.asarray(w, np.float64)).size


def _holds_float(w, distinct, p):
    """Whether a weight ``w`` the palette ``p`` does not decode to holds float values (the
    float original of a clustered copy: a what-if) rather than another clustering's (stale):
    more distinct values than ``p``'s K d, unless its nonzero values, counted in each group
    of ``p``, take at most 256 per group (64 for float16 / bfloat16, which hold few values by
    their format), each used 4 times or more on average (a model clustered at K=4 given K=2
    palettes was called float). Pruned weights (zeros left out) stay float."""
    if distinct <= p.n_clusters * p.unit_dim:
        return False
    from dkm_tf.core.units import to_units  # noqa: PLC0415

    # distinct nonzero values counted in each group of p (a per-channel float weight holds
    # few values in all by its format, float16 / bfloat16, but nearly one per value per group)
    g = p.layout.n_groups
    u = to_units(w, p.layout).reshape(g, -1)
    s = np.sort(u if u.dtype.itemsize >= 4 else u.astype(np.float32), axis=1)
    new = np.ones(s.shape, bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    values = int(np.count_nonzero(new & (s != 0)))
    nonzero = int(np.count_nonzero(s))
    # float16 / bfloat16 hold few values by their format (Keras' bfloat16 initializer: 128 in
    # all): up to 64 per group there (K <= 64), 256 for wider formats
    cap = 256 if w.dtype.itemsize >= 4 else 64
    return not (values <= cap * p.unit_dim * g and nonzero >= 4 * values)


def _slabs(a, b, block=1 << 18):
    """Pairs of slabs (about ``block`` values, views) of same-shaped ``a`` and ``b``."""
    if a.ndim == 0 or a.size <= block:
        yield a, b
        return
    rest = a.size // a.shape[0]
    if rest > block:
        for i in range(a.shape[0]):
            yield from _slabs(a[i], b[i], block)
        return
    step = block // rest
    for s in range(0, a.shape[0], step):
        yield a[s:s + step], b[s:s + step]


def _compare(w, dec):
    """``(values that differ, max |diff|, all |diff| <= 1e-6 * max |w|)`` of the stored weight
    ``w`` and a palette's ``dec``, in float64 as one comparison of the whole arrays, one slab
    at a time (no float64 copy of either). NaN propagates as it would there."""
    top = np.max([np.max(np.abs(np.asarray(a, np.float64)), initial=0.0)
                  for a, _ in _slabs(w, dec)] or [0.0])
    tol = 1e-6 * max(float(top), 1e-30)
    differ, worst, ok = 0, [], True
    for a, b in _slabs(w, dec):
        diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        ok = ok and bool(np.all(diff <= tol))
        differ += int(np.sum(diff > 0))
        worst.append(np.max(diff, initial=-np.inf))
    return differ, float(np.max(worst)) if worst else float("nan"), ok


def beside_keras_file(model, shapes, path):
    """Compression info stored with the `.keras` / `.h5` file `path` (loaded as `model`).

    The palettes of the palettes file beside it (`palettes_beside`) that describe the stored
    weights (`check_palettes`) are used. The rejected ones are not: the layers no accepted
    palette describes (also the one whose palette names a layer the model does not have,
    e.g. renamed: the note then lists the model's conv / dense layers), or the whole model
    when no palette matches (the file belongs to another model), are described from their
    stored kernels (`infer_sharing`; a float kernel stays float), and a note names each
    rejected palette with the reason. Without a palettes file, or with an empty one (a
    note says it holds no palettes), `infer_sharing`.

    Returns:
        A dict with "palettes" (accepted palettes) and "source" (the palettes file) when any
        palette is accepted, "weight_sharing" (inferred `SharingInfo`s) and "notes".
    """
    beside = palettes_beside(path)
    if beside is None:
        sharing, notes = infer_sharing(model, shapes)
        return {"weight_sharing": sharing or None, "notes": notes}
    palettes = load_palettes_file(beside)
    if not palettes:  # a claim about no weight: read the kernels, as without the file
        sharing, inferred = infer_sharing(model, shapes)
        return {"weight_sharing": sharing or None,
                "notes": [f"the palettes file {beside} holds no palettes (an empty list), so "
                          "it describes no weight and is ignored: the weights are charged as "
                          "their stored kernels hold: " + _described(sharing)]
                + [n for n in inferred if not n.startswith("no palettes file beside")]}
    verdicts = palette_verdicts(model, palettes)
    accepted = [p for p, _, why, _ in verdicts if why is None]
    rejected = [(name, why) for _, name, why, _ in verdicts if why is not None]
    found, notes = {}, []
    if accepted:
        found = {"palettes": accepted, "source": beside}
        notes.append(f"palettes read from {beside} ({len(accepted)} tensors"
                     + (f"; {len(rejected)} rejected)" if rejected else ")"))
    if rejected:
        import keras

        from dkm_tf.graph.copying import iter_layers

        # the rejected palettes' layers, and for a palette naming a layer the model does not
        # have (renamed) the layers no palette names that hold a weight of its shape, are read
        # from their kernels (a float layer the file leaves out stays float)
        all_layers = list(iter_layers(model))
        layers = {la.name for la in all_layers}
        named = {p.layer_name for p in palettes}
        described = {p.layer_name for p in accepted}
        names = {p.layer_name for p, _, why, _ in verdicts if why is not None} & layers
        for p, _, why, _ in verdicts:
            if why is None:
                continue
            dec = np.asarray(p.decode())
            same = [la for la in all_layers if la.name not in described and any(
                tuple(w.shape) == dec.shape for w in la.weights)]
            # its layer under another name, maybe another palette's: the one holding its values
            equal = {la.name for la in same if any(
                tuple(w.shape) == dec.shape and _compare(keras.ops.convert_to_numpy(w), dec)[2]
                for w in la.weights)}
            if equal:
                names |= equal
            elif p.layer_name not in layers:  # renamed and stale: the layers no palette names
                names |= {la.name for la in same if la.name not in named}
        names -= described
        sharing, _ = infer_sharing(model, shapes, layers=None if not accepted else names)
        what = (f"the palettes file {beside} does not belong to this model: none of its "
                f"{len(palettes)} palettes matches the stored weights, the file is ignored"
                if not accepted else f"{len(rejected)} of the {len(palettes)} palettes in "
                f"{beside} do not match the stored weights and are not applied")
        missing = [p for p, _, _, kind in verdicts
                   if kind == "missing" and p.layer_name not in layers | {model.name}]
        known = list(dict.fromkeys(s.layer for s in shapes if s.kind in ("conv", "dense")))
        notes.append(f"REJECTED PALETTES: {what}; "
                     + "; ".join(f"{n}: {why}" for n, why in rejected)
                     + (f" (the model's conv / dense layers are {known}: a renamed layer?)"
                        if missing else "")
                     + ". The layers without an applied palette are charged as their stored "
                     "kernels hold: " + _described(sharing))
        found["weight_sharing"] = sharing or None
    found["notes"] = notes
    return found


def _described(sharing):
    """``"conv K=4 d=1, ..."`` for `{record name: SharingInfo}`, or that all is float."""
    return ", ".join(f"{n} K={s.n_clusters} d={s.unit_dim}" for n, s in sharing.items()) or \
        "float (no palette found in their values)"
