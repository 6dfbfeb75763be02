"""Each buffer a palettized file stores counted once in its per-tensor records.

A record's byte fields (``index_bytes``, ``codebook_bytes``, ``scale_bytes``; a kept weight's
float bytes are its ``codebook_bytes``) are computed weight by weight, but one stored buffer
can back several weights: two layers of equal weights (their index buffers hold the same
bytes and :func:`~dkm_tf.export.subgraph_copies.share_buffers` stores them once; in one
subgraph the emitter returns the cached constant), a float32 kernel kept in several loop
bodies (the converter stores it once), a codebook equal in two subgraphs. Each reader's
record counted the buffer (``TimeDistributed(LSTM(6))`` over 3 steps at K = 256: 4,320 B of
kept kernels in the records, 1,632 B stored). :func:`count_once` resolves the constants each
record's decode chain read (the emitter's log, :meth:`~dkm_tf.export.decode.Emitter.tag`) to
the buffers the file stores, leaves each buffer's bytes in the first record that counted
them and takes them off the others, which say ``"shared_with"`` whose record counts them.

A palette found in no subgraph whose decoded values equal a palettized one's (two equal
``Dense`` layers reading one input: the converter merged the two ops into one) read as
``"float32 (not found)"`` with 4 bytes per weight that the file does not hold; it is
recorded as stored in the other palette's buffers (0 bytes, ``"shared_with"``), unless the
file holds a float32 weight constant of the palette's size that no record names (review R5: a
``Rescaling`` before two of three equal convolutions left their scaled kernels float32, 864 B
each, and both were recorded as merged, 0 bytes): that is the palette's float copy, which
stays ``"float32 (not found)"``. :func:`merge_not_found` applies the same rule to
``format='tflm'``'s records.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.subgraph_copies import mark_copy, share_buffers

__all__ = ["count_once", "merge_not_found"]

ROLES = {"indices": "index_bytes", "codebook": "codebook_bytes", "scales": "scale_bytes"}

MERGED_ROUTE = ("the converter merged this weight with {q}'s (equal values, one op): "
                "stored once, counted in {q}'s record")


def _reads(record):
    """(byte field, BufferT) of what ``record``'s weight is stored in; pops ``"_stored"``."""
    log = record.pop("_stored", [])
    if record.get("kept"):  # the float32 weight, or the float16 copy made of it
        want = "half" if str(record.get("storage", "")).startswith("float16") else "weight"
        return [("codebook_bytes", b) for what, b in log if what == want][:1]
    return [(ROLES[what], b) for what, b in log if what in ROLES]


def _resolver(fm):
    """BufferT -> index of the buffer the file stores its bytes in (None: not stored).

    A buffer still in the model is stored; one dropped by ``share_buffers`` was merged into
    the exporter's buffer of equal bytes."""
    m = fm.model
    live = {id(b): i for i, b in enumerate(m.buffers)}
    ours = {}
    for sg in m.subgraphs:
        for t in sg.tensors or ():
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name or "")
            data = m.buffers[int(t.buffer)].data
            if int(t.buffer) and data is not None and len(data) and name.startswith("dkm"):
                ours.setdefault(bytes(data), int(t.buffer))

    def resolve(buf):
        if id(buf) in live:
            return live[id(buf)]
        data = buf.data
        return None if data is None or not len(data) else ours.get(bytes(data))

    return resolve


def _label(record):
    where = record.get("subgraph")
    return record["palette"] + (f" (subgraph {where})" if where else "")


def _unclaimed_sizes(fm, records):
    """Element counts of the float32 weight constants (read by an op, at least 2-D) that no
    record names and the exporter did not make (``dkm`` names): weights the file keeps as the
    converter wrote them, in every subgraph."""
    named = {r.get("tensor") for r in records} - {"", None}
    sizes = set()
    for g in range(len(fm.model.subgraphs)):
        view = fm.subgraph(g)
        for op in view.operators:
            for t in op.inputs if op.inputs is not None else ():
                if t < 0 or view.type_name(t) != "float32" or len(view.shape(t)) < 2:
                    continue
                data = view.model.buffers[int(view.tensors[t].buffer)].data
                name = view.tensor_name(t)
                if data is not None and len(data) and not name.startswith("dkm") \
                        and name not in named:
                    sizes.add(len(data) // 4)
    return sizes


def merge_not_found(fm, records, palettes):
    """Record a palette found nowhere whose decoded values a found palette holds as stored in
    that palette's buffers (the converter merged the two ops), unless ``fm`` holds an
    unclaimed float32 weight constant of its size (its float copy: kept as not found).

    Args:
        fm: the :class:`~dkm_tf.export.rewrite.FlatModel` the records describe.
        records: the per-tensor records (edited in place).
        palettes: the :class:`~dkm_tf.core.palette.Palette` list of the export.
    """
    by_name = {p.name: p for p in palettes}
    found = [r for r in records if not r.get("not_found") and "copy_of_subgraph" not in r
             and r["palette"] in by_name]
    floats = None
    for r in records:
        p = by_name.get(r["palette"]) if r.get("not_found") else None
        if p is None:
            continue
        floats = _unclaimed_sizes(fm, records) if floats is None else floats
        if int(p.n_values) in floats:
            continue
        values = np.asarray(p.decode())
        for q in found:
            other = np.asarray(by_name[q["palette"]].decode())
            if other.shape == values.shape and np.array_equal(other, values):
                r.pop("not_found")
                r.update(storage=q["storage"], kept=q.get("kept", False),
                         index_bits=q["index_bits"], index_bytes=0, codebook_bytes=0,
                         aux_bytes=0, bits_per_weight=0.0, shared_with=_label(q),
                         route=MERGED_ROUTE.format(q=q["palette"]), tensor=q["tensor"],
                         **({"op": q["op"]} if "op" in q else {}))
                break


def _to_first_reader(records, reads, owner, fm):
    """A codebook the emitter's cache gave a palettized record at 0 bytes (a Dense and a
    ``Conv1D(kernel_size=1)`` of equal weights: the later-emitted one counted it) is counted in
    the record of the palette first in order that reads it, the owner of its other buffers
    (review R5: ``a/kernel`` 0 B of codebook, ``b/kernel`` 64 B and ``shared_with=a/kernel``).
    Edits ``owner`` and those records' ``codebook_bytes``; returns the records' indices."""
    moved = set()
    for i, (r, rd) in enumerate(zip(records, reads)):
        for f, b in sorted(rd):
            j = owner.get(b, i)
            if f == "codebook_bytes" and j > i and not r.get("kept") and not r.get(f) \
                    and (f, b) in reads[j]:
                r[f] += len(fm.model.buffers[b].data)
                owner[b] = i
                moved.add(i)
    return moved


def count_once(fm, records, copies, palettes):
    """Store equal buffers once and count each in one record.

    Runs :func:`~dkm_tf.export.subgraph_copies.share_buffers` on ``fm``, marks each further
    loop body's copy (:func:`~dkm_tf.export.subgraph_copies.mark_copy`), then takes the bytes
    of a buffer an earlier record counts off every other record reading it.

    Args:
        fm: the palettized :class:`~dkm_tf.export.rewrite.FlatModel` (edited in place).
        records: one record per palette, in palette order, each with the ``"_stored"`` log
            of its decode chain (removed here) where the emitter made it.
        copies: ``(record, first subgraph, first record)`` of each further loop body's copy.
        palettes: the :class:`~dkm_tf.core.palette.Palette` list of the export.

    Returns:
        ``records`` then the copies' records: the sum of their byte fields counts every
        stored index, codebook, scale and kept-weight buffer once.
    """
    stored = share_buffers(fm)
    for r, where, r0 in copies:
        mark_copy(r, where, r0, stored)
    records = list(records) + [c[0] for c in copies]
    resolve = _resolver(fm)
    reads = [{(f, resolve(b)) for f, b in _reads(r)} for r in records]
    reads = [{(f, b) for f, b in rd if b is not None} for rd in reads]
    owner = {}
    for i, (r, rd) in enumerate(zip(records, reads)):
        for f, b in sorted(rd):
            if r.get(f, 0) > 0:
                owner.setdefault(b, i)
    moved = _to_first_reader(records, reads, owner, fm)
    for i, (r, rd) in enumerate(zip(records, reads)):
        others, by = {}, set()
        for f, b in rd:
            if owner.get(b, i) != i:
                others[f] = others.get(f, 0) + len(fm.model.buffers[b].data)
                by.add(owner[b])
        taken = {f: min(int(r.get(f, 0)), n) for f, n in others.items()}
        if not any(taken.values()):
            continue
        for f, n in taken.items():
            r[f] -= n
        names = ", ".join(_label(records[j]) for j in sorted(by))
        r["shared_with"] = names
        r["route"] += f"; stored once: reads buffers counted in {names}'s record"
        stored = r["index_bytes"] + r["codebook_bytes"] + r.get("scale_bytes", 0)
        r["bits_per_weight"] = 8 * stored / max(1, int(r["n_weights"]))
    for i in moved:
        r = records[i]
        stored = r["index_bytes"] + r["codebook_bytes"] + r.get("scale_bytes", 0)
        r["bits_per_weight"] = 8 * stored / max(1, int(r["n_weights"]))
    merge_not_found(fm, records, palettes)
    return records
