"""Checks of a list of palettes shared by :func:`~dkm_tf.core.palette.size_report` and the
export's ``palettes`` argument: a list of :class:`~dkm_tf.core.palette.Palette`, at most one
per weight (a weight listed twice was counted twice in a size report and palettized by
whichever came first in an export)."""

from __future__ import annotations

import collections

__all__ = ["check_one_per_weight", "palette_list"]


def palette_list(palettes, palette_cls, argument="palettes"):
    """``list(palettes)``, each a ``palette_cls``, at most one per weight; a Palette alone or
    not iterable, or an item of another type: TypeError naming ``argument``."""
    if isinstance(palettes, palette_cls) or not hasattr(palettes, "__iter__"):
        raise TypeError(f"Invalid type for argument `{argument}`. Expected a list of Palette. "
                        f"Received: {type(palettes).__name__}")
    palettes = list(palettes)
    bad = [type(p).__name__ for p in palettes if not isinstance(p, palette_cls)]
    if bad:
        raise TypeError(f"Invalid type for argument `{argument}`. Expected a list of Palette. "
                        f"Received: a list holding {sorted(set(bad))}")
    check_one_per_weight(palettes, argument)
    return palettes


def check_one_per_weight(palettes, argument="palettes"):
    """ValueError naming ``argument`` and each weight (``layer/weight``) that several of
    ``palettes`` name, with their K."""
    counts = collections.Counter(p.name for p in palettes)
    twice = sorted(n for n, c in counts.items() if c > 1)
    if twice:  # export: one was palettized, the other reported "float32 (not found)"; the file
        # and its K depended on the order (K=4 then K=8 of one weight: 8,560 vs 11,440 bytes)
        raise ValueError(f"Invalid value for argument `{argument}`. Expected one palette per "
                         f"weight. Received: {len(twice)} weight(s) with several palettes: "
                         + ", ".join(f"{n!r} ({counts[n]}x, K="
                                     f"{[p.n_clusters for p in palettes if p.name == n]})"
                                     for n in twice[:6]))
