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

import copy

import numpy as np

from dkm_tf.export.palettize import _match, palettize_flatbuffer

__all__ = ["NOT_FOUND_REASON", "hoist_decodes", "palettize_subgraphs"]

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
        keep_float: as for ``palettize_flatbuffer`` (a list of names applies to the
            palettes of those layers in whichever subgraph they are; a latency budget to
            each subgraph's estimate).
        **options: ``max_table_bytes``, ``matmul_lowering``, ``kept_dtype``,
            ``index_packing``.

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
        if isinstance(keep_float, (list, tuple, set, frozenset)):
            keep = [name for name in keep_float
                    if name in {p.layer_name for p in here} | {p.name for p in here}]
        recs = palettize_flatbuffer(view, here, decode, keep_float=keep, found=found,
                                    **options)
        parent = hoist_decodes(fm, index) if index else None
        by_name = {p.name: p for p in here}
        for r in recs:
            if index:
                r["subgraph"] = index
                if parent is not None and not r.get("kept"):
                    r["decoded_in_subgraph"] = parent  # out of the loop body
            records[id(by_name[r["palette"]])] = r
        left = [p for p in left if id(p) not in found]
    for p in left:
        records[id(p)] = _not_found_record(p, decode)
    return [records[id(p)] for p in palettes]


def _concat(values, extra):
    return np.asarray([int(v) for v in (values if values is not None else ())]
                      + [int(v) for v in extra], np.int32)


def hoist_decodes(fm, body):
    """Move the decode chains of WHILE body subgraph ``body`` in front of its WHILE op.

    A decode chain in a loop body runs on every loop step (``per_invoke``: DEQUANTIZE, CAST,
    GATHER of every weight, each time step). Its ops read constants only, so they move to the
    subgraph that holds the WHILE op, right before it; each decoded weight becomes one more
    loop variable (a WHILE input and output, a body input passed through to the same body
    output, an unused cond input). The loop body then reads it like any loop state.

    Args:
        fm: the :class:`~dkm_tf.export.rewrite.FlatModel`, edited in place.
        body: index of a subgraph already palettized.

    Returns:
        The index of the subgraph the chains moved to, or None when nothing moved (no
        decode ops, or ``body`` is not the body of exactly one WHILE op).
    """
    whiles = [(g, op) for g in range(len(fm.model.subgraphs))
              for op in fm.subgraph(g).operators if fm.op_name(op) == "WHILE"
              and int(op.builtinOptions.bodySubgraphIndex) == body]
    if len(whiles) != 1 or int(whiles[0][1].builtinOptions.condSubgraphIndex) == body:
        return None
    g, wop = whiles[0]
    pv, bv = fm.subgraph(g), fm.subgraph(body)
    cv = fm.subgraph(int(wop.builtinOptions.condSubgraphIndex))
    made, moved = set(), []
    for op in bv.operators:  # decode ops: constant inputs only, named by the Emitter
        ins = [int(t) for t in op.inputs if t >= 0]
        outs = [int(t) for t in op.outputs]
        if all(bv.raw(t) or t in made for t in ins) \
                and all(bv.tensor_name(t).split("/")[0] == f"dkm_sg{body}" for t in outs):
            moved.append(op)
            made.update(outs)
    if not moved:
        return None
    rest = [op for op in bv.operators if not any(op is m for m in moved)]
    read = {int(t) for op in rest for t in op.inputs if t >= 0}
    frontier = sorted(made & (read | {int(t) for t in bv.graph.outputs}))
    tmap = {}

    def in_parent(t):
        if t not in tmap:
            pv.tensors.append(copy.deepcopy(bv.tensors[t]))
            tmap[t] = len(pv.tensors) - 1
        return tmap[t]

    hoisted = []
    for op in moved:
        new = copy.deepcopy(op)
        new.inputs = np.asarray([in_parent(int(t)) if t >= 0 else -1 for t in op.inputs],
                                np.int32)
        new.outputs = np.asarray([in_parent(int(t)) for t in op.outputs], np.int32)
        hoisted.append(new)
    outs, conds = [], []
    for t in frontier:
        for view, bucket in ((pv, outs), (cv, conds)):
            tensor = copy.deepcopy(bv.tensors[t])
            tensor.buffer = 0
            view.tensors.append(tensor)
            bucket.append(len(view.tensors) - 1)
    wop.inputs = _concat(wop.inputs, [tmap[t] for t in frontier])
    wop.outputs = _concat(wop.outputs, outs)
    bv.graph.inputs = _concat(bv.graph.inputs, frontier)
    bv.graph.outputs = _concat(bv.graph.outputs, frontier)
    cv.graph.inputs = _concat(cv.graph.inputs, conds)
    bv.graph.operators = rest
    at = next(i for i, op in enumerate(pv.operators) if op is wop)
    pv.graph.operators = pv.operators[:at] + hoisted + pv.operators[at:]
    for view in (bv, cv, pv):
        view.compact()
    return g
