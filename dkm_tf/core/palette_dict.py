"""A :class:`~dkm_tf.core.palette.Palette` from the JSON-ready dict of its ``to_dict``."""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core import kernel_palette as kernel_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.index_codec import unpack_indices

__all__ = ["palette_from_dict"]


def palette_from_dict(cls, d):
    """``cls(**...)`` of ``Palette.to_dict()``'s dict ``d``; a missing or unknown key:
    ValueError, not a dict: TypeError."""
    if not isinstance(d, dict):
        raise TypeError(f"Invalid type for argument `d`. Expected a dict (Palette.to_dict()"
                        f"). Received: {type(d).__name__}")
    required = {"layer_name", "weight_name", "codebook", "indices", "layout"}
    fields = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = sorted(required - set(d)), sorted(set(d) - fields)
    if missing or unknown:
        raise ValueError(f"Invalid value for argument `d`. Expected the keys of "
                         f"Palette.to_dict() ({sorted(fields)}). Received: missing "
                         f"{missing}, unknown {unknown}")
    d = dict(d)
    d["layout"] = units_lib.UnitLayout.from_config(d["layout"])
    d["codebook"] = np.asarray(d["codebook"], np.float32)
    d["indices"] = unpack_indices(d["indices"])  # a list, or pack_indices' dict
    return cls(**kernel_lib.extras_from_dict(d))
