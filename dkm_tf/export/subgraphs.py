"""Palettize the weights of every subgraph, and report those the converter transformed.

A Keras recurrent layer (SimpleRNN, LSTM, GRU, RNN, Bidirectional) converts to a ``WHILE``
operator whose body is a subgraph of its own: the cell's input and recurrent kernels are
constants of that body, each read by a ``FULLY_CONNECTED`` in the (out, in) layout (toolchain
measurement on TF 2.21: no ``UNIDIRECTIONAL_SEQUENCE_LSTM``, no per-gate split for the default
``implementation=2`` cells). :func:`palettize_subgraphs` matches the palettes subgraph by
subgraph (first the main graph, then each body) and rewrites each subgraph with
:func:`~dkm_tf.export.palettize.palettize_flatbuffer`; the decode chain of a body's weight
lives in that body.

A palette whose values are in no subgraph (the converter split, transposed or folded the
weight: an ``LSTMCell(implementation=1)`` kernel split per gate, a kernel with batch
normalization folded in) is **kept as the float32 constants the converter wrote**: the model
stays exact and is verified like any other, and the palette's record says
``storage="float32 (not found)"`` with the reason (``to_tflite`` adds a note).
"""

from __future__ import annotations

from dkm_tf.export.palettize import _match, palettize_flatbuffer

__all__ = ["NOT_FOUND_REASON", "palettize_subgraphs"]

NOT_FOUND_REASON = ("no constant of the converted model holds its values in a layout the "
                    "exporter knows (the converter split, transposed or folded the weight, "
                    "e.g. per-gate LSTM kernels or batch normalization folded into a "
                    "convolution): kept as the converter's float32 constants")


def _not_found_record(palette, decode):
    n = int(palette.n_values)
    return {"palette": palette.name, "tensor": "", "op": "", "K": palette.n_clusters,
            "kept": True, "not_found": True, "storage": "float32 (not found)",
            "index_bits": 32.0, "index_bytes": 0, "codebook_bytes": 4 * n, "aux_bytes": 0,
            "route": NOT_FOUND_REASON, "decode": decode, "n_weights": n,
            "bits_per_weight": 32.0, "transpose_per_invoke": False}


def palettize_subgraphs(fm, palettes, decode="once", *, keep_float="auto", **options):
    """:func:`~dkm_tf.export.palettize.palettize_flatbuffer` on every subgraph of ``fm``.

    Args:
        fm: :class:`~dkm_tf.export.rewrite.FlatModel` of the converted model (its first
            subgraph); edited in place.
        palettes: the :class:`~dkm_tf.core.palette.Palette` list.
        decode: ``"once"`` or ``"per_invoke"``.
        keep_float: as for ``palettize_flatbuffer`` (a list of layer names applies to the
            palettes of those layers in whichever subgraph they are).
        **options: ``max_table_bytes``, ``matmul_lowering``.

    Returns:
        The per-tensor records, in palette order; records of a body subgraph carry
        ``"subgraph": index``, palettes found nowhere a ``"not_found": True`` record.
    """
    records, left = {}, list(palettes)
    for index in range(len(fm.model.subgraphs)):
        if not left:
            break
        view = fm if index == 0 else fm.subgraph(index)
        found = _match(view, left)
        if not found:
            continue
        here = [p for p in left if id(p) in found]
        keep = keep_float
        if keep_float is not None and not isinstance(keep_float, str):
            keep = [name for name in keep_float
                    if name in {p.layer_name for p in here} | {p.name for p in here}]
        recs = palettize_flatbuffer(view, here, decode, keep_float=keep, found=found,
                                    **options)
        by_name = {p.name: p for p in here}
        for r in recs:
            if index:
                r["subgraph"] = index
            records[id(by_name[r["palette"]])] = r
        left = [p for p in left if id(p) not in found]
    for p in left:
        records[id(p)] = _not_found_record(p, decode)
    return [records[id(p)] for p in palettes]
