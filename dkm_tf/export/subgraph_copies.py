"""One stored copy of a weight palettized in several subgraphs, and a check that none stays float.

A recurrent layer run in several ``WHILE`` loops (a ``TimeDistributed(LSTM)``, unrolled to
one loop per time step, or one LSTM layer called on two inputs) has its kernels in every
loop body. Each body is palettized alike (:func:`~dkm_tf.export.subgraphs.palettize_subgraphs`)
and the identical index and codebook buffers the copies produce are stored once
(:func:`share_buffers`: a TFLite buffer may back tensors of any subgraph); the copy's record
says so and counts no bytes (:func:`mark_copy`). Review R13 measured the first body only
palettized: bodies 2..T kept float32 copies of the decoded kernel while the report claimed
the palettized storage; :func:`check_no_float_copies` refuses such a file.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.palettize import _match

__all__ = ["check_no_float_copies", "mark_copy", "share_buffers"]


def share_buffers(fm):
    """Point tensors whose constant buffers hold the same bytes at one buffer.

    Only buffers read by tensors the exporter made (names starting ``dkm``: indices,
    codebooks, decode tables) and by no variable tensor are merged; the converter's own
    constants stay as they are. Returns the set of buffer indices kept after the merge
    (bytes stored once).
    """
    tensors = [t for sg in fm.model.subgraphs for t in sg.tensors or ()]
    owners = {}
    for t in tensors:
        owners.setdefault(int(t.buffer), []).append(t)
    canon = {}
    for b, ts in sorted(owners.items()):
        data = fm.model.buffers[b].data
        if b == 0 or data is None or not len(data) or any(
                getattr(t, "isVariable", False) for t in ts) or not all(
                _name(t).startswith("dkm") for t in ts):
            continue
        key = bytes(data)
        target = canon.setdefault(key, b)
        if target != b:
            for t in ts:
                t.buffer = target
    for g in range(len(fm.model.subgraphs)):
        _merge_chains(fm.subgraph(g))
    return {int(t.buffer) for sg in fm.model.subgraphs for t in sg.tensors or ()}


def _options_key(options):
    if options is None:
        return None
    return repr(sorted((k, repr(v.tolist() if hasattr(v, "tolist") else v))
                       for k, v in vars(options).items()))


def _merge_chains(view):
    """Run each decode chain once: an exporter op (outputs named ``dkm``) with the same
    opcode, options and inputs (the same constant buffer, or an output so merged) as an
    earlier one is dropped, its readers read the earlier op's outputs (the decode chains of
    one weight hoisted in front of several WHILE loops decode it once)."""
    alias, seen, keep = {}, {}, []

    def key(t):
        t = alias.get(t, t)
        tensor = view.tensors[t]
        if view.raw(t):
            return ("c", int(tensor.buffer), tuple(view.shape(t)), view.type_name(t))
        return ("t", t)

    for op in view.operators:
        op.inputs = np.asarray([alias.get(int(t), int(t)) for t in op.inputs], np.int32)
        outs = [int(t) for t in op.outputs]
        if not outs or not all(view.tensor_name(t).startswith("dkm") for t in outs) \
                or op.intermediates is not None and len(op.intermediates):
            keep.append(op)
            continue
        k = (int(op.opcodeIndex), _options_key(op.builtinOptions),
             tuple(key(int(t)) if t >= 0 else None for t in op.inputs),
             tuple((tuple(view.shape(t)), view.type_name(t)) for t in outs))
        if k in seen:
            alias.update(zip(outs, seen[k]))
            continue
        seen[k] = outs
        keep.append(op)
    g = view.graph
    if alias:
        g.operators = keep
        g.outputs = np.asarray([alias.get(int(t), int(t)) for t in g.outputs], np.int32)
    view.compact()


def _name(tensor):
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name or "")


BYTE_KEYS = ("index_bytes", "codebook_bytes", "aux_bytes", "scale_bytes")


def mark_copy(record, first_subgraph, first, stored):
    """Record ``record`` as a further copy of the weight recorded by ``first``.

    A palettized copy with the same storage as the first reads the same (merged) buffers:
    its bytes count once, in ``first``; a copy kept float32 / float16 keeps its bytes.
    ``stored`` (the buffers left after :func:`share_buffers`) is unused beyond a sanity
    check that buffers were kept at all.
    """
    record["copy_of_subgraph"] = first_subgraph
    same = not record.get("kept") and not first.get("kept") and all(
        record.get(k, 0) == first.get(k, 0) for k in (*BYTE_KEYS, "storage"))
    if same and stored:
        for k in BYTE_KEYS:
            if k in record:
                record[k] = 0
        record["bits_per_weight"] = 0.0
        record["route"] += (f"; one more loop body's copy: reads the indices and codebook "
                            f"stored for subgraph {first_subgraph}'s copy (counted there)")
    else:
        record["route"] += f"; one more loop body's copy (first in subgraph {first_subgraph})"


def check_no_float_copies(fm, palettes, records):
    """Refuse a palettized model that still holds a float32 weight equal to a palette.

    A palette palettized somewhere (a record neither kept nor "not found") must have no
    float32 constant of any subgraph, read as an op's weight, with its decoded values.

    Raises:
        ValueError: naming the palettes and subgraphs with such a float32 copy.
    """
    kept = {r["palette"] for r in records if r.get("kept") or r.get("not_found")}
    done = [p for p in palettes if p.name not in kept]
    left = []
    for index in range(len(fm.model.subgraphs)):
        view = fm if index == 0 else fm.subgraph(index)
        # a tensor kept float for a palette of equal values is no copy (review R15)
        own = {f[1] for f in _match(view, [p for p in palettes if p.name in kept]).values()}
        left += [(p.name, index, view.tensor_name(f[1])) for f in _match(view, done).values()
                 for p in [f[0]] if f[1] not in own]
    if left:
        raise ValueError(
            "The palettized model still holds float32 copies of palettized weights (the "
            "report would claim palettized storage for them): "
            + ", ".join(f"{n} in subgraph {i} (tensor {t!r})" for n, i, t in left)
            + ". This is an exporter bug; export with format='float' or report it.")
