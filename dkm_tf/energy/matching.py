"""Matching compression info (palettes, `SharingInfo`s, pruning) to `LayerShape` records.

`collect_sharing` turns `palettes` and `weight_sharing` into `{name: [SharingInfo, ...]}`;
`match_sharing` / `match_pruning` assign them to conv / dense records by layer name and
kernel size. A name that is no such record raises a `ValueError`, unless the reader listed
that layer in `skipped` (a layer type it does not model, e.g. an Embedding's table lookup or
a Conv3D): then the estimate goes on and `note_unused` appends to the layer's skipped entry
that its palette is not charged (or its pruning not applied). In a `.tflite`, a palette whose
layer may be one of several records is refused, naming the layer: one of a nested model's
records named by their path (`enc_1/c_1`, `tflite_nested`), or a record `y_1` (layer `y`'s
renamed scope) beside an op-named record of its size.
"""

import math
import numbers
import re
from collections.abc import Mapping

from dkm_tf.energy.shapes import SharingInfo
from dkm_tf.energy.tflite_nested import hidden_by_path


def collect_sharing(weight_sharing, palettes, index_cost):
    """Merges `weight_sharing` and duck-typed `palettes` into `{name: [SharingInfo, ...]}`."""
    out = _Sharing()
    if palettes is not None and (hasattr(palettes, "layer_name")
                                 or not hasattr(palettes, "__iter__")):
        raise TypeError("Invalid type for argument `palettes`. Expected a list of palettes. "
                        f"Received: {type(palettes).__name__}")
    if weight_sharing is not None:
        if not isinstance(weight_sharing, Mapping):
            raise TypeError(
                "Invalid value for argument `weight_sharing`. Expected a mapping "
                f"{{layer_name: SharingInfo}}. Received: weight_sharing={weight_sharing!r}"
            )
        for name, info in weight_sharing.items():
            infos = list(info) if isinstance(info, (list, tuple)) else [info]
            for i in infos:
                if not isinstance(i, SharingInfo):
                    raise TypeError(
                        f"Invalid value for argument `weight_sharing[{name!r}]`. Expected a "
                        f"SharingInfo. Received: {i!r}"
                    )
            out.setdefault(name, []).extend(infos)
    for p in palettes or ():
        missing = [a for a in ("layer_name", "n_clusters", "unit_dim", "n_units")
                   if not hasattr(p, a)]
        if missing:
            raise ValueError(
                "Invalid value in argument `palettes`. Expected objects with `layer_name`, "
                f"`n_clusters`, `unit_dim`, `n_units`. Received: {p!r} (missing {missing})"
            )
        k, n = int(p.n_clusters), int(p.n_units)
        n_t = int(getattr(p, "n_transforms", 1) or 1)  # Son et al.'s kernel units, §2.5
        side = int(getattr(p, "scale_bits", 0) or 0) if getattr(p, "scales", None) is not None \
            else 0
        bits = None
        if index_cost == "entropy" and (n_t > 1 or side) and hasattr(p, "index_bits"):
            bits = (float(p.index_bits("entropy")) - n * side) / n  # H(k + K t) per unit
        elif index_cost == "entropy" and hasattr(p, "entropy_bits"):
            bits = float(p.entropy_bits())
            if bits > math.log2(max(k, 1)) + 1e-9:
                bits /= n
        codebook = getattr(p, "codebook", None)
        n_books = int(codebook.shape[0]) if getattr(codebook, "ndim", 0) == 3 else 1
        key = p.layer_name
        weight_name = str(getattr(p, "weight_name", ""))
        while weight_name.startswith("layer."):  # a TimeDistributed's: records name the
            weight_name = weight_name[len("layer."):]  # wrapper (`td`, `td/depthwise`)
        for part in ("depthwise", "pointwise"):
            if weight_name.startswith(part):
                key = f"{p.layer_name}/{part}"
        if "." in weight_name:  # a sublayer's kernel (RNN cell, attention projection)
            key = f"{p.layer_name}/{weight_name}"
        out.setdefault(key, []).append(
            SharingInfo(n_clusters=k, unit_dim=int(p.unit_dim), n_units=n, index_bits=bits,
                        n_codebooks=n_books, n_transforms=n_t, scale_bits=side))
        out.of_palettes.add(key)
    return out


class _Sharing(dict):
    """`{name: [SharingInfo, ...]}`; `of_palettes`: the names from palettes, Keras layer names
    (a `weight_sharing` key may be a `.tflite` record's own name, `y_1`, `mha_1#3`)."""

    def __init__(self):
        super().__init__()
        self.of_palettes = set()


def match_sharing(shapes, sharing, skipped=()):
    """Assigns each SharingInfo to one record of its layer, by name and kernel size, and to
    the records of that layer's later calls (`name#2`, ... of the same size) left unassigned.

    A name that is no conv / dense record but a layer the reader listed in `skipped` (a layer
    type not modelled: Embedding, Conv3D, ...) raises nothing: it is returned in `unused`, so
    that its skipped entry says its compression info is not charged. Any other unknown name
    raises.

    Returns:
        `(matched, unused)`: `{record name: SharingInfo}` and `{skipped name: [phrase]}`.
    """
    matched, unused = {}, {}
    if sharing:
        check_unique_records(shapes)
    by_layer = {}
    for s in shapes:
        if s.kind in ("conv", "dense"):
            by_layer.setdefault(s.layer, []).append(s)
            if s.name != s.layer:
                by_layer.setdefault(s.name, []).append(s)
    # a `.tflite` (TFLite op names: upper case with an underscore, CONV_2D, FULLY_CONNECTED;
    # never a Keras class such as GRU) renames every scope, `x` -> `x_1`
    in_file = any(s.op.isupper() and "_" in s.op for s in shapes if s.kind in ("conv", "dense"))
    # a key that is a record's own name, not a palette's layer (the palettes stored in a file,
    # `weight_sharing`), is that record: stored `dense_1` (layer `dense`) went to `dense_1_2`
    records = {s.name for s in shapes if s.kind in ("conv", "dense")}
    of_palettes = getattr(sharing, "of_palettes", ())  # a plain dict: weight_sharing only
    for name, infos in sharing.items():
        if in_file:
            _refuse_hidden(name, by_layer, name in of_palettes)
        # a file renames every scope (`x` -> `x_1`): record `x_1` is layer `x`'s, and palette
        # `x_1`'s record is `x_1_<n>` (MobileNetV3Small's `..._squeeze_excite_conv` and
        # `..._squeeze_excite_conv_1` were refused; with `x` left float, `x_1`'s palette was
        # charged on layer `x`'s record)
        renamed = (in_file or any(m not in by_layer and re.fullmatch(re.escape(m) + r"_\d+", name)
                                  for m in sharing)) and \
            any(re.fullmatch(re.escape(name) + r"_\d+", k) for k in by_layer) and \
            not (name in records and name not in of_palettes)
        candidates = None if renamed else by_layer.get(name)
        if candidates and not in_file and "/" in name:  # `sc/depthwise`: also `sc#2/depthwise`,
            layer, part = name.split("/", 1)  # a later call's or a same-named nested layer's
            candidates = candidates + [
                s for s in shapes if s.kind in ("conv", "dense") and s not in candidates
                and re.fullmatch(re.escape(layer) + r"#\d+/" + re.escape(part), s.name)]
        if candidates and in_file and name in of_palettes:
            if any(s.n_weights in {i.n_weights for i in infos} for s in candidates):
                _refuse_renamed(name, infos, shapes, sharing)
            else:  # record `y_1` is layer `y`'s (another size): `y_1`'s is op-named, by size
                candidates = None
        if not candidates and "/" in name and not (
                in_file and _renamed(name.rsplit("/", 1)[0], by_layer)):
            candidates = by_layer.get(name.rsplit("/", 1)[0])
        if not candidates and (in_file or _skipped_name(name, skipped) is None):
            # Keras 3 export renames scopes `layer` -> `layer_1` (TFLite tensor names); a
            # Keras model's names are exact: a skipped Embedding `emb`'s palette was charged
            # on a float Dense `emb_1` of its size (before 2026-12-06)
            near = [k for k in by_layer if re.fullmatch(re.escape(name) + r"_\d+", k)]
            candidates = by_layer[near[0]] if len(near) == 1 else None
        if not candidates and name.endswith(("/depthwise", "/pointwise")):
            candidates = _separable_part(name, by_layer, in_file)
        if not candidates:
            candidates = _unnamed_by_size(infos, shapes, sharing)
        if not candidates:
            where = _skipped_name(name, skipped)
            if where is not None:
                what = ", ".join(f"K={i.n_clusters}, d={i.unit_dim}" for i in infos)
                unused.setdefault(where, []).append(
                    f"its palette{'s' if len(infos) > 1 else ''} ({what}) "
                    f"{'are' if len(infos) > 1 else 'is'} not charged")
                continue
            known = sorted({s.layer for s in shapes if s.kind in ("conv", "dense")})
            sizes = {i.n_weights for i in infos}
            unnamed = [s.name for s in shapes if s.kind in ("conv", "dense") and s.n_weights
                       in sizes and _UNNAMED.fullmatch(s.layer) and s.layer not in sharing]
            raise ValueError(
                f"Compression info names layer {name!r}, which is not a conv or dense layer "
                f"of the model. Known layers: {known}" + (
                    f". The file names no layer for records {unnamed} of its size, which other "
                    "palettes' sizes fit too (ambiguous: estimate the Keras model, or the file "
                    "alone, which reads its codebooks)" if unnamed else ""))
        for info in infos:
            fits = [s for s in candidates if s.n_weights == info.n_weights
                    and s.name not in matched]
            if not fits:
                sizes = {s.name: s.n_weights for s in candidates}
                taken = [s.name for s in candidates if s.n_weights == info.n_weights]
                if taken:  # the kernel of this size is described already: a palette twice
                    raise ValueError(
                        f"Compression info for layer {name!r} describes kernel {taken[0]!r} "
                        f"({info.n_weights} weights) more than once: {len(infos)} palettes "
                        f"/ SharingInfos name it for {len(taken)} kernel(s) of that size. "
                        "Pass one per kernel (a palette listed twice, or `palettes` and "
                        "`weight_sharing` both naming it?).")
                raise ValueError(
                    f"Compression info for layer {name!r} describes {info.n_weights} weights "
                    f"(n_units={info.n_units} x unit_dim={info.unit_dim}), which matches no "
                    f"unassigned kernel of that layer. Kernel sizes: {sizes}"
                )
            matched[fits[0].name] = info
    named = {s.name: s for s in shapes}
    for s in shapes:  # a later call of a shared layer (`name#2`): the same stored weights
        first = named.get(re.sub(r"#\d+", "", s.name))
        if s.name not in matched and s.layer != re.sub(r"#\d+", "", s.name) and (
                first is None or first.name not in matched):
            # a layer a Lambda calls (record `lam`, layer `d`) also called elsewhere or twice:
            # its first matched record's (before 2026-12-07 not charged, hierarchy 1.4516)
            first = next((r for r in shapes if r.name in matched and r.layer == s.layer), None)
        if s.name not in matched and first is not None and first.name in matched and \
                (first.layer, first.kind, first.n_weights) == (s.layer, s.kind, s.n_weights):
            matched[s.name] = matched[first.name]
    return matched, unused


def check_unique_records(shapes):
    """Raises if two conv / dense records share a name: the readers name a layer's later
    calls `<layer>#<n>`, so a layer named `fc#2` beside a layer `fc` called twice gave two
    records `fc#2`, and compression info keyed by record name charged one's palette on both
    (`fc` float, `fc#2` K=4: the second call of `fc` was charged K=4, before 2026-12-06)."""
    seen, twice = set(), []
    for s in shapes:
        if s.kind in ("conv", "dense"):
            if s.name in seen and s.name not in twice:
                twice.append(s.name)
            seen.add(s.name)
    if twice:
        raise ValueError(
            f"Cannot match compression info: records {twice} name two layers' kernels (a "
            "layer's later calls are named `<layer>#<n>`, and a layer is named so too). "
            "Rename the layers whose names contain '#'.")


def _refuse_hidden(name, by_layer, of_palette):
    """Raises if palette key `name` (`layer`, `layer/depthwise`, ...) could be the layer of a
    `.tflite` record named by its nested-model path (`enc_1/c_1`: its scope names more than one
    place of the file, `tflite_nested`). A `weight_sharing` key that is a record's own name is
    no ambiguity; a palette's is a Keras layer name, and record `d_1` is layer `d`'s (a
    palette of a nested `d_1` called twice went to an outer `d`'s record `d_1`)."""
    if not of_palette and (name in by_layer or name.rsplit("/", 1)[0] in by_layer):
        return
    layer = name.split("/", 1)[0]
    hidden = hidden_by_path(layer, by_layer)
    if hidden:
        raise ValueError(
            f"Compression info names layer {layer!r}, which the .tflite cannot tell apart: "
            f"records {hidden} of nested models may be its calls or other layers' (a scope "
            "named in several places: a nested model called twice, a layer called twice "
            "inside it, or layers of one name in two models). Pass it by record name in "
            "`weight_sharing`, or estimate the Keras model.")


def _refuse_renamed(name, infos, shapes, sharing):
    """Raises if palette key `name` (`y_1`) found its `.tflite` record by exact name while a
    record named after its op (no layer name in the file) that no key names has its size:
    the file renames every scope (`y` -> `y_1`), so record `y_1` may be layer `y`'s and
    `y_1`'s the op-named one (its zero bias dropped; or a nested model's `y` beside an outer
    `y_1`). Was charged on `y`'s record silently (KNOWN_LIMITATIONS before 2026-12-06)."""
    if not re.fullmatch(r".+_\d+", name):
        return
    sizes = {i.n_weights for i in infos}
    unnamed = [s.name for s in shapes if s.kind in ("conv", "dense") and s.name not in sharing
               and _UNNAMED.fullmatch(s.layer) and s.n_weights in sizes]
    if unnamed:
        raise ValueError(
            f"Compression info names layer {name!r}: the .tflite's record {name!r} may be "
            f"layer {name.rsplit('_', 1)[0]!r} (the file renames scopes `x` -> `x_1`) and "
            f"records {unnamed} carry no layer name but have its size; the match is "
            "ambiguous. Estimate the Keras model, or avoid layer names `<another layer>_<n>`.")


# a `.tflite` record named after its op (no tensor carried the layer's name: a palettized
# last Dense whose zero bias the converter dropped), `tflite_names`
_UNNAMED = re.compile(r"(fully_connected|batch_matmul|conv_2d|depthwise_conv_2d|"
                      r"transpose_conv)_\d+")


def _unnamed_by_size(infos, shapes, sharing):
    """The op-named `.tflite` record a palette of a layer the file does not name belongs to:
    the only one whose weight count equals the palette's, and which no palette names (a
    record two palettes or two such records could fit is no match: the caller raises).
    Measured before 2026-12-05: `estimate(file, palettes=share_weights(...).palettes)` raised
    for the built-in digits CNN's palettized file (its untrained fc2 has zero biases)."""
    sizes = {i.n_weights for i in infos}
    fits = [s for s in shapes if s.kind in ("conv", "dense") and _UNNAMED.fullmatch(s.layer)
            and s.layer not in sharing and s.n_weights in sizes]
    rivals = [other for other in sharing.values()
              if other is not infos and any(i.n_weights in sizes for i in other)]
    return fits if len(fits) == 1 and not rivals else None


def _renamed(layer, by_layer):
    """Whether a `.tflite`'s records hold `layer`'s renamed scope (`layer_<n>`): a file renames
    every scope, so its record named `layer` exactly is another layer's (`x` -> `x_1`)."""
    return any(re.fullmatch(re.escape(layer) + r"_\d+", k) for k in by_layer)


def _separable_part(name, by_layer, in_file=True):
    """The records of `layer/depthwise` (`layer/pointwise`) in a `.tflite`, which names a
    separable conv's two ops after the layer's (renamed) scope, `layer_1` and `layer_1#2`:
    its depthwise records (groups > 1), or its others; None unless exactly one scope fits.
    (A palette of a separable conv passed to `estimate(file, palettes=...)` named no record:
    fer's palettized file was refused, "names layer 'separable_conv2d_1/depthwise'".) In a
    file, a renamed scope wins over the exact name: with separable convs `a` and `a_1`, record
    `a_1` is `a`'s (`a_1`'s palettes were charged on it, `a_1_2` left float, before
    2026-12-06)."""
    layer, part = name.rsplit("/", 1)
    near = [k for k in by_layer if re.fullmatch(re.escape(layer) + r"(_\d+)?", k)]
    if in_file and len(near) > 1:
        near = [k for k in near if k != layer]
    if len(near) != 1:
        return None
    found = [s for s in by_layer[near[0]] if (s.groups > 1) == (part == "depthwise")]
    return found or None


def _skipped_name(name, skipped):
    """The name of the `skipped` entry for layer (or `layer/weight` key) `name`, or None."""
    names = {str(n) for n, _ in skipped}
    for cand in (name, name.split("/", 1)[0]):
        if cand in names:
            return cand
    return None


def note_unused(skipped, *unused):
    """`skipped` with each entry named in the `unused` dicts followed by their phrases."""
    phrases = {}
    for d in unused:
        for name, items in d.items():
            phrases.setdefault(name, []).extend(items)
    out = []
    for name, why in skipped:
        if name in phrases:
            why = "; ".join([why, *phrases.pop(name)])
        out.append((name, why))
    return tuple(out)


def match_pruning(shapes, pruning, skipped=()):
    """`({record name: kept fraction}, unused)`; a layer listed in `skipped` goes to `unused`
    (`{skipped name: [phrase]}`, see `match_sharing`), any other unknown name raises."""
    if pruning is None:
        return {}, {}
    if not isinstance(pruning, Mapping):
        raise TypeError(
            "Invalid value for argument `pruning`. Expected a mapping {layer_name: "
            f"kept_fraction}}. Received: pruning={pruning!r}"
        )
    out, unused = {}, {}
    if pruning:
        check_unique_records(shapes)
    for name, frac in pruning.items():
        if not (isinstance(frac, numbers.Real) and not isinstance(frac, bool)  # np.float32
                and 0 < frac <= 1):
            raise ValueError(
                f"Invalid value for argument `pruning[{name!r}]`. Expected a kept fraction in "
                f"(0, 1]. Received: {frac!r}"
            )
        hits = [s.name for s in shapes if s.kind in ("conv", "dense")
                and (s.layer == name or s.name == name)]
        where = None if hits else _skipped_name(name, skipped)
        if where is not None:
            unused.setdefault(where, []).append(f"its pruning (kept {frac}) is not applied")
            continue
        if not hits:  # a `.tflite`'s keys are its record names: layer `x`'s is `x_1`
            known = sorted({s.name for s in shapes if s.kind in ("conv", "dense")})
            raise ValueError(f"Pruning info names layer {name!r}, which is not a conv or "
                             f"dense layer of the model. Known records: {known[:20]}.")
        out.update(dict.fromkeys(hits, float(frac)))
    return out, unused
