"""Checks of a list of palettes shared by :func:`~dkm_tf.core.palette.size_report` and the
export's ``palettes`` argument: a list of :class:`~dkm_tf.core.palette.Palette`, no weight
listed twice (it was counted twice in a size report and palettized by whichever came first in
an export)."""

from __future__ import annotations

import collections

__all__ = ["check_one_per_weight", "palette_list"]


def palette_list(palettes, palette_cls, argument="palettes"):
    """``list(palettes)``, each a ``palette_cls``, no palette object listed twice; a Palette
    alone, a str, a dict (its keys were read) or not iterable, or an item of another type:
    TypeError naming ``argument``. Two
    palettes of one name are kept, even when they decode to the same values: layers of one name
    in two nested models (what ``share_weights`` gives them; tied or zero-initialised kernels
    are equal). Not detected: one weight given as two palette objects (a copy read again from a
    file, or the weight clustered at two K) is counted twice."""
    if isinstance(palettes, (palette_cls, str, bytes, dict)) or not hasattr(palettes,
                                                                             "__iter__"):
        # a dict or a str was iterated: "Received: a list holding ['str']" (probe29)
        hint = "; pass list(palettes.values())" if isinstance(palettes, dict) else ""
        raise TypeError(f"Invalid type for argument `{argument}`. Expected a list of Palette. "
                        f"Received: {type(palettes).__name__}{hint}")
    palettes = list(palettes)
    bad = [type(p).__name__ for p in palettes if not isinstance(p, palette_cls)]
    if bad:
        raise TypeError(f"Invalid type for argument `{argument}`. Expected a list of Palette. "
                        f"Received: a list holding {sorted(set(bad))}")
    check_one_per_weight(palettes, argument, repeats_only=True)
    return palettes


def check_one_per_weight(palettes, argument="palettes", repeats_only=False):
    """ValueError naming ``argument`` and each weight (``layer/weight``) that several of
    ``palettes`` name, with their K; ``repeats_only``: only where one palette object is listed
    twice, not two palettes of one name (two weights of one name in nested models, whatever
    their values)."""
    by_name = collections.defaultdict(list)
    for p in palettes:
        by_name[p.name].append(p)
    twice = sorted(n for n, ps in by_name.items() if len(ps) > 1 and (not repeats_only or any(
        p is q for i, p in enumerate(ps) for q in ps[i + 1:])))
    if twice:  # export: one was palettized, the other reported "float32 (not found)"; the file
        # and its K depended on the order (K=4 then K=8 of one weight: 8,560 vs 11,440 bytes);
        # size_report counted the weight twice
        raise ValueError(f"Invalid value for argument `{argument}`. Expected one palette per "
                         f"weight. Received: {len(twice)} weight(s) with several palettes: "
                         + ", ".join(f"{n!r} ({len(by_name[n])}x, K="
                                     f"{[p.n_clusters for p in by_name[n]]})"
                                     for n in twice[:6]))
