"""Palettes recovered from a plain kernel's distinct values (:func:`dkm_tf.palettes_of`)."""

from __future__ import annotations

import numpy as np

from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.kmeans import sortable

__all__ = ["palette_from_values"]


def palette_from_values(layer, attr, values, kind, max_clusters):
    """The smallest lossless scalar Palette of ``values`` (per tensor or per channel), if any."""
    best, best_size, stored = None, None, min(palette_lib.FLOAT_BITS, 8 * values.dtype.itemsize)
    for granularity in units_lib.GRANULARITIES:
        layout = units_lib.layout_for(values.shape, kind, "scalar", granularity)
        u = units_lib.to_units(values, layout)[..., 0]
        found = [np.unique(row, return_inverse=True) for row in sortable(u)]  # float16
        k = max(f[0].size for f in found)
        if k > max_clusters or k >= layout.n_units:
            continue
        books = [np.concatenate([c, np.repeat(c[-1:], k - c.size)]) for c, _ in found]
        idx = np.stack([i.reshape(-1) for _, i in found])
        pal = palette_lib.Palette(layer.name, attr, np.stack(books)[..., None], idx, layout,
                                  note="recovered by palettes_of")
        size = pal.compressed_bits(bits=stored)
        if size < pal.n_values * stored and (best is None or size < best_size):
            best, best_size = pal, size
    return best
