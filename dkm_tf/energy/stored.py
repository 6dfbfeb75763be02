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
"""

import json
import math
import os

import numpy as np

from dkm_tf.energy.shapes import SharingInfo

PALETTES_SUFFIX = ".palettes.json"


def sharing_from_tflite(shapes, stored):
    """`{record name: SharingInfo}` from `{record name: StoredPalette}`; plus notes.

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
                                n_units=n // p.unit_dim, n_codebooks=p.n_codebooks)
    if out:
        modes = sorted({stored[n].mode for n in out})
        notes.insert(0, f"palettes stored in the file ({'/'.join(modes)} decode): "
                     + ", ".join(f"{n} K={s.n_clusters} d={s.unit_dim}"
                                 + (f" G={s.n_codebooks}" if s.n_codebooks > 1 else "")
                                 for n, s in out.items()))
    return out, notes


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


def infer_sharing(model, shapes, bits_w=16, max_clusters=256):
    """`{layer name: SharingInfo}` for kernels whose stored values are a palette; notes.

    A kernel saved after clustering holds at most K distinct units. For each conv / dense
    kernel, every description (scalar, row or kernel units; one codebook, or one per output
    channel) is tried: K = the most distinct units in one codebook group, storage
    G·K·d·B_w + N·log2 K bits. The smallest is kept when K <= `max_clusters` and the storage
    is under half the float kernel's (a trained float kernel has about N distinct values and
    never qualifies).
    """
    import keras

    from dkm_tf.graph.copying import iter_layers

    sizes = {}
    for s in shapes:
        if s.kind in ("conv", "dense"):
            sizes.setdefault(s.layer, set()).add(s.n_weights)
    out, notes = {}, []
    for layer in iter_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is None or layer.name not in sizes or len(kernel.shape) < 2:
            continue
        w = np.asarray(keras.ops.convert_to_numpy(kernel))
        if w.size not in sizes[layer.name]:
            continue
        best = None
        for unit, d, units in _unit_views(w):
            k = max(np.unique(g, axis=0).shape[0] for g in units)
            bits = units.shape[0] * k * d * bits_w + w.size // d * math.log2(max(k, 1))
            if k <= max_clusters and bits < 0.5 * w.size * bits_w and \
                    (best is None or bits < best[0]):
                best = (bits, unit, d, k, units.shape[0])
        if best is not None:
            _, unit, d, k, g = best
            out[layer.name] = SharingInfo(n_clusters=k, unit_dim=d, n_units=w.size // d,
                                          n_codebooks=g)
            notes.append(f"{layer.name} K={k} {unit}" + (f" G={g}" if g > 1 else ""))
    if out:
        notes = ["no palettes file beside the model: palettes inferred from the stored "
                 "kernels' distinct values: " + ", ".join(notes)]
    return out, notes
