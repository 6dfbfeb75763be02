"""Palettize the weights of every subgraph, and report those the converter transformed.

A Keras recurrent layer (SimpleRNN, LSTM, GRU, RNN, Bidirectional) converts to a ``WHILE``
operator whose body is a subgraph of its own: the cell's input and recurrent kernels are
constants of that body, each read by a ``FULLY_CONNECTED`` in the (out, in) layout (toolchain
measurement on TF 2.21: no ``UNIDIRECTIONAL_SEQUENCE_LSTM``, no per-gate split for the default
``implementation=2`` cells). :func:`palettize_subgraphs` matches the palettes subgraph by
subgraph (first the main graph, then each body) and rewrites each subgraph with
:func:`~dkm_tf.export.palettize.palettize_flatbuffer`; the decode chain of a body's weight
lives in that body until :func:`hoist_decodes` moves it in front of the WHILE op, and
:func:`hoist_input_projections` then takes the input kernel's product out of the loop.

A palette whose values are in no subgraph (the converter split, transposed or folded the
weight: an ``LSTMCell(implementation=1)`` kernel split per gate, a kernel with batch
normalization folded in) is **kept as the float32 constants the converter wrote**: the model
stays exact and is verified like any other, and the palette's record says
``storage="float32 (not found)"`` with the reason (``to_tflite`` adds a note). A weight the
converter multiplied by one constant (a ``Rescaling`` before the layer folded into its
kernel) is palettized with its codebook scaled alike (:func:`_scaled_matches`).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from dkm_tf.export.palettize import WEIGHT_INPUT, _match, palettize_flatbuffer, tflite_layouts
from dkm_tf.export.record_bytes import count_once
from dkm_tf.export.rewrite import schema
from dkm_tf.export.subgraph_copies import check_no_float_copies

__all__ = ["NOT_FOUND_REASON", "PROJECTION_ROUTE", "hoist_decodes", "hoist_input_projections",
           "palettize_subgraphs"]

PROJECTION_ROUTE = ("; input product of every time step computed in one {op} in front of "
                    "the loop")

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


SCALED_NOTE = ("the converter multiplied the weight by {s:.6g} (a constant scaling before "
               "the layer, e.g. Rescaling, folded into it): codebook scaled alike")


def _scaled_matches(view, palettes, found=None):
    """Palettes whose weight the converter scaled by one constant: ``{id(p): found entry}``.

    The converter folds a scalar multiply before a conv or Dense (``Rescaling(1 / 255)`` in
    front of ``keras.applications.EfficientNetB0``'s stem, through its zero padding) into the
    layer's kernel, so no constant holds ``palette.decode()``: the kernel was kept float32
    ("not found"). A constant read as the weight of an op the palette's layout allows, with
    ``decode() * s`` values (``s`` from the codebook entry of largest magnitude, checked on
    every weight to 1e-6 relative), is matched to a copy of the palette whose codebook is
    scaled by ``s`` (same indices, still <= K values); the file is verified as always. Only
    an unambiguous match counts: a tensor ``found`` (the exact matches) holds already, or one
    that fits two palettes, or a palette that fits two tensors (two layers with the same
    clustered kernel behind different scalings) stays "not found".
    """
    consumers = view.consumers()
    taken = {entry[1] for entry in (found or {}).values()}
    candidates, fits = {}, {}
    for p in palettes:
        if p.layout.kind == "vector" or p.scales is not None:
            continue
        book = np.asarray(p.codebook, np.float64)
        top = float(np.abs(book).max()) if book.size else 0.0
        if top == 0.0:
            continue
        kernel = p.decode().astype(np.float64)
        for ops, tperm, tshape in tflite_layouts(p.layout):
            arr = kernel.transpose(tperm).reshape(tshape)
            ref = arr.flat[int(np.argmax(np.abs(arr)))]
            for t in sorted(consumers):
                if t in taken or tuple(view.shape(t)) != tuple(tshape) \
                        or view.type_name(t) != "float32" or not view.raw(t):
                    continue
                uses = [(i, view.op_name(view.operators[i])) for i in consumers[t]]
                if not any(name in ops and WEIGHT_INPUT.get(name) is not None
                           and int(view.operators[i].inputs[WEIGHT_INPUT[name]]) == t
                           for i, name in uses):
                    continue
                const = np.asarray(view.const(t), np.float64).reshape(tshape)
                scale = float(const.flat[int(np.argmax(np.abs(arr)))] / ref)
                if scale == 0.0 or scale == 1.0 or not np.allclose(
                        arr * scale, const, rtol=1e-6, atol=1e-6 * abs(scale) * top):
                    continue
                q = dataclasses.replace(
                    p, codebook=(book * scale).astype(np.float32), codebook_id=None,
                    note=SCALED_NOTE.format(s=scale) + (f"; {p.note}" if p.note else ""))
                candidates.setdefault(id(p), {})[t] = (q, t, uses, tperm, tshape)
                fits.setdefault(t, set()).add(id(p))
    return {key: next(iter(hits.values())) for key, hits in candidates.items()
            if len(hits) == 1 and len(fits[next(iter(hits))]) == 1}


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
        The per-tensor records, in palette order, then one per further copy of a weight
        (a layer in several loop bodies: ``"copy_of_subgraph"``, its bytes stored once,
        :mod:`~dkm_tf.export.subgraph_copies`; each stored buffer counted in one record,
        :mod:`~dkm_tf.export.record_bytes`); records of a body subgraph carry
        ``"subgraph": index``, palettes found nowhere a ``"not_found": True`` record.
    """
    records, copies, first = {}, [], {}
    for index in range(len(fm.model.subgraphs)):  # every body: a layer's kernels are in
        view = fm if index == 0 else fm.subgraph(index)  # each loop it runs in (review R13)
        found = _match(view, sorted(palettes, key=lambda p: id(p) in records))  # R15
        scaled = _scaled_matches(view, [p for p in palettes if id(p) not in found], found)
        if not found and not scaled:
            continue
        here = [p for p in palettes if id(p) in found]
        for p in palettes:  # a scaled weight: its scaled copy is palettized, recorded as p
            if id(p) in scaled:
                q = scaled[id(p)][0]
                found[id(q)] = scaled[id(p)]
                here.append(q)
        keep = keep_float
        if isinstance(keep_float, (list, tuple, set, frozenset)):
            keep = [name for name in keep_float
                    if name in {p.layer_name for p in here} | {p.name for p in here}]
        readers = {p.name: [view.operators[i] for i, _ in found[id(p)][2]] for p in here}
        recs = palettize_flatbuffer(view, here, decode, keep_float=keep, found=found,
                                    **options)
        parent = hoist_decodes(fm, index) if index else None
        lowering = decode == "once" and options.get("matmul_lowering", True)
        moved = hoist_input_projections(fm, index, lowering) if parent is not None else {}
        by_name = {p.name: p for p in palettes if id(p) in found or id(p) in scaled}
        for r in recs:
            if id(by_name[r["palette"]]) in scaled:
                r["route"] += "; " + scaled[id(by_name[r["palette"]])][0].note.split("; ")[0]
            if index:
                r["subgraph"] = index
                if parent is not None and not r.get("kept"):
                    r["decoded_in_subgraph"] = parent  # out of the loop body
                    ops = {moved.get(id(op)) for op in readers[r["palette"]]}
                    if len(ops) == 1 and None not in ops:  # every reader left the loop
                        r["route"] += PROJECTION_ROUTE.format(op=ops.pop())
            key = id(by_name[r["palette"]])
            if key in records:  # one more loop body with this weight
                copies.append((r, first[key], records[key]))
            else:
                records[key], first[key] = r, index
    check_no_float_copies(fm, palettes, list(records.values()) + [c[0] for c in copies])
    for p in palettes:
        records.setdefault(id(p), _not_found_record(p, decode))
    return count_once(fm, [records[id(p)] for p in palettes], copies, palettes)


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


def _loop_invariant(bv, t):
    """Position of body input ``t`` when the body passes it through unchanged, else None."""
    ins, outs = [int(v) for v in bv.graph.inputs], [int(v) for v in bv.graph.outputs]
    return next((i for i, v in enumerate(ins) if v == t and outs[i] == t), None)


def _projectable(bv, g, f):
    """``(i_seq, i_w, projection shape)`` when FULLY_CONNECTED ``f`` reads, as its only
    input, a time step ``GATHER(sequence, step)`` ``g`` of a loop-invariant sequence, with a
    loop-invariant weight and no bias or activation; else None."""
    o, x = f.builtinOptions, int(g.outputs[0])
    ins = [int(v) for v in f.inputs]
    if int(ins[0]) != x or len(ins) < 2 or (len(ins) > 2 and ins[2] >= 0) \
            or o is None or o.fusedActivationFunction != 0 or o.weightsFormat != 0:
        return None
    go = g.builtinOptions
    seq, w = int(g.inputs[0]), ins[1]
    i_seq, i_w = _loop_invariant(bv, seq), _loop_invariant(bv, w)
    if i_seq is None or i_w is None or (go is not None and (go.axis or go.batchDims)) \
            or len(bv.shape(int(g.inputs[1]))) != 0 or bv.type_name(seq) != "float32" \
            or bv.type_name(w) != "float32":
        return None
    seq_shape, w_shape, out = bv.shape(seq), bv.shape(w), bv.shape(int(f.outputs[0]))
    known = all(v > 0 for t in (seq, w, x, int(f.outputs[0])) for v in bv.signature(t))
    if not known or len(w_shape) != 2 or len(seq_shape) < 2 \
            or w_shape[1] != seq_shape[-1] or bv.shape(x) != seq_shape[1:]:
        return None
    rows = int(np.prod(seq_shape[1:-1], dtype=np.int64))
    if out not in {(rows, w_shape[0]), (*seq_shape[1:-1], w_shape[0])}:
        return None
    return i_seq, i_w, (seq_shape[0], *out)


def _bias_after(bv, t):
    """``(bias constant, a1, a2)`` when ``t`` reaches the graph only through ``a1 = ADD(t, r)``
    followed by ``a2 = ADD(a1, bias)`` (a cell's sum of products, then its bias), else None:
    the bias then joins the input products before the loop, one ADD fewer per step."""
    cons, outs = bv.consumers(), {int(v) for v in bv.graph.outputs}

    def only_add(v):
        use = cons.get(v, [])
        op = bv.operators[use[0]] if len(use) == 1 else None
        ok = op is not None and bv.op_name(op) == "ADD" and v not in outs \
            and (op.builtinOptions is None or op.builtinOptions.fusedActivationFunction == 0)
        return op if ok else None

    a1 = only_add(t)
    a2 = None if a1 is None else only_add(int(a1.outputs[0]))
    if a2 is None or bv.shape(int(a1.outputs[0])) != bv.shape(int(a2.outputs[0])):
        return None
    o = bv.shape(t)[-1]
    for c in (int(v) for v in a2.inputs):
        if c != int(a1.outputs[0]) and bv.raw(c) and bv.type_name(c) == "float32" \
                and [d for d in bv.shape(c) if d != 1] in ([o], []) and len(bv.shape(c)) <= 2:
            return c, a1, a2
    return None


def hoist_input_projections(fm, body, lowering=True):
    """Compute the input kernel's products of every time step in front of the WHILE loop.

    A recurrent cell multiplies its time step ``GATHER(x, t)`` by its input kernel on every
    step. With the kernel decoded (a loop variable, not a constant) XNNPACK leaves that
    FULLY_CONNECTED to the builtin kernel, one call per step. Its product does not depend on
    the recurrence, so it is computed for all steps at once before the loop (``BATCH_MATMUL``
    with ``lowering``, which XNNPACK runs on the decoded weight, else one FULLY_CONNECTED)
    and passed in as one more loop variable; the body reads ``GATHER(products, t)``. A
    constant bias the cell adds to the sum of its products joins the products there too
    (:func:`_bias_after`; float rounding of ``(xW + b) + hU`` instead of ``(xW + hU) + b``).

    Args:
        fm: the :class:`~dkm_tf.export.rewrite.FlatModel`, edited in place.
        body: index of a WHILE body subgraph whose decode chains were hoisted.
        lowering: BATCH_MATMUL (True) or FULLY_CONNECTED (False) before the loop.

    Returns:
        ``{id(FULLY_CONNECTED op): op name used before the loop}`` for each op taken out.
    """
    whiles = [(g, op) for g in range(len(fm.model.subgraphs))
              for op in fm.subgraph(g).operators if fm.op_name(op) == "WHILE"
              and int(op.builtinOptions.bodySubgraphIndex) == body]
    if len(whiles) != 1:
        return {}
    g, wop = whiles[0]
    pv, bv = fm.subgraph(g), fm.subgraph(body)
    cv = fm.subgraph(int(wop.builtinOptions.condSubgraphIndex))
    s, name, moved, before, emptied = schema(), f"dkm_proj{body}", {}, [], []
    for gather in [op for op in bv.operators if bv.op_name(op) == "GATHER"]:
        for f in [op for op in bv.operators if bv.op_name(op) == "FULLY_CONNECTED"]:
            found = _projectable(bv, gather, f)
            if found is None:
                continue
            i_seq, i_w, shape = found
            seq, w = int(wop.inputs[i_seq]), int(wop.inputs[i_w])
            rows, c, o = int(np.prod(shape[:-1])), pv.shape(seq)[-1], shape[-1]
            x2 = pv.add_tensor(f"{name}/x", [rows, c], "float32")
            prod = pv.add_tensor(f"{name}/product", [rows, o], "float32")
            out = pv.add_tensor(f"{name}/products", list(shape), "float32")
            ro1, ro2 = s.ReshapeOptionsT(), s.ReshapeOptionsT()
            ro1.newShape, ro2.newShape = [rows, c], list(shape)
            before.append(pv.make_op("RESHAPE", [seq, pv.add_const(
                f"{name}/x_shape", np.asarray([rows, c], np.int32))], [x2], ro1))
            if lowering:
                opt = s.BatchMatMulOptionsT()
                opt.adjX, opt.adjY = False, True  # the weight is [out, in]
                before.append(pv.make_op("BATCH_MATMUL", [x2, w], [prod], opt))
            else:
                before.append(pv.make_op("FULLY_CONNECTED", [x2, w, -1], [prod],
                                         s.FullyConnectedOptionsT()))
            bias = _bias_after(bv, int(f.outputs[0]))
            if bias is not None:  # products + bias before the loop; a2 leaves the body
                bc, a1, a2 = bias
                biased = pv.add_tensor(f"{name}/product_bias", [rows, o], "float32")
                pv.tensors.append(copy.deepcopy(bv.tensors[bc]))  # same constant buffer
                before.append(pv.make_op("ADD", [prod, len(pv.tensors) - 1], [biased],
                                         s.AddOptionsT()))
                prod = biased
                a1.outputs = np.asarray([int(a2.outputs[0])], np.int32)
                bv.graph.operators = [op for op in bv.operators if op is not a2]
            before.append(pv.make_op("RESHAPE", [prod, pv.add_const(
                f"{name}/products_shape", np.asarray(shape, np.int32))], [out], ro2))
            tb = bv.add_tensor(f"{name}/products", list(shape), "float32")
            wop.inputs = _concat(wop.inputs, [out])
            wop.outputs = _concat(wop.outputs, [pv.add_tensor(f"{name}/unused", list(shape),
                                                              "float32")])
            bv.graph.inputs = _concat(bv.graph.inputs, [tb])
            bv.graph.outputs = _concat(bv.graph.outputs, [tb])
            cv.graph.inputs = _concat(cv.graph.inputs, [cv.add_tensor(
                f"{name}/products", list(shape), "float32")])
            step = copy.deepcopy(gather)  # same options and version, on the products
            step.inputs = np.asarray([tb, int(gather.inputs[1])], np.int32)
            step.outputs = np.asarray([int(f.outputs[0])], np.int32)
            bv.graph.operators = [step if op is f else op for op in bv.operators]
            moved[id(f)] = "BATCH_MATMUL" if lowering else "FULLY_CONNECTED"
            emptied.append(gather)
    if not moved:
        return {}
    read = {int(t) for op in bv.operators for t in op.inputs if t >= 0}
    read |= {int(t) for t in bv.graph.outputs}
    bv.graph.operators = [op for op in bv.operators  # time steps no one reads any more
                          if not any(op is e for e in emptied) or int(op.outputs[0]) in read]
    at = next(i for i, op in enumerate(pv.operators) if op is wop)
    pv.graph.operators = pv.operators[:at] + before + pv.operators[at:]
    for view in (bv, cv, pv):
        view.compact()
    return moved
