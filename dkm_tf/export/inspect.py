"""Look inside a ``.tflite``: constant tensors, their storage, and which weights are palettized.

:func:`inspect_tflite` reads the flatbuffer only (no interpreter, no TensorFlow import) and
recognizes the decode chains that :mod:`dkm_tf.export` writes:

* ``once``: ``GATHER(GATHER(codebook, enum), int16 indices)`` (K from the codebook, g indices
  per int16 from the tuple table), or ``GATHER(codebook, CONCAT(GATHER(digits, int16 words),
  extras))`` for densely packed words (:mod:`dkm_tf.export.decode_dense`);
* ``per_invoke``: ``GATHER(codebook, CAST(DEQUANTIZE(int4/int2)))``, ``CAST(uint8)``, or
  int16 base-K tuples split by ``FLOOR_MOD(FLOOR_DIV(CAST(int16)))``;
* TFLite Micro: ``TFLM_DECODE`` custom operators (LUT-compressed tensors).

Example:
    >>> info = inspect_tflite("model.tflite")  # doctest: +SKIP
    >>> print(info.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from dkm_tf.core.files import is_savedmodel_dir
from dkm_tf.core.interpreters import unassigned_variable_reads
from dkm_tf.core.kmeans import count_unique
from dkm_tf.core.tflm_lut import read_lut_header
from dkm_tf.export import pack
from dkm_tf.export.rewrite import FlatModel, TFLiteFormatError

__all__ = ["TFLiteInspection", "file_notes", "inspect_tflite"]


@dataclasses.dataclass(frozen=True)
class TFLiteInspection:
    """What a ``.tflite`` stores.

    Attributes:
        path: file path (None when inspected from bytes).
        bytes: file size.
        tensors: one dict per constant tensor of every subgraph (a WHILE body holds a
            recurrent layer's weights): index, subgraph, name, dtype, shape, bytes,
            distinct (number of distinct stored values: of the int16 words, not of the
            indices, where a role says several indices are packed per word), role, buffer
            (the file's buffer index: tensors of one buffer share its bytes).
        palettized: one dict per recognized palettized weight: output tensor, subgraph, mode
            (``once`` / ``per_invoke`` / ``tflm``), K, storage dtype, indices per element,
            index bytes, codebook bytes.
        ops: operator name -> count, over all subgraphs.
        bytes_by_dtype: dtype -> constant bytes (a buffer read by several tensors once).
        notes: problems read from the file itself (see :func:`file_notes`), in ``summary()``.
    """

    path: str | None
    bytes: int
    tensors: tuple
    palettized: tuple
    ops: dict
    bytes_by_dtype: dict
    notes: tuple = ()

    def summary(self):
        """The inspection as text: bytes by dtype, op counts, one row per constant tensor."""
        lines = [f"{self.path or '<bytes>'}: {self.bytes:,} bytes; constants by dtype: "
                 + ", ".join(f"{k} {v:,} B" for k, v in sorted(self.bytes_by_dtype.items()))]
        lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.ops.items())))
        lines.append(f"{'constant tensor':<44}{'dtype':>8}{'shape':>18}{'bytes':>11}"
                     f"{'distinct':>10}  role")
        for t in self.tensors:
            lines.append(f"{t['name'][:43]:<44}{t['dtype']:>8}{str(list(t['shape']))[:17]:>18}"
                         f"{t['bytes']:>11,}{t['distinct']:>10}  {t['role']}")
        if self.palettized:
            lines.append(f"palettized weights: {len(self.palettized)}")
            for p in self.palettized:
                lines.append(f"  {p['weight'][:50]:<50} {p['mode']:<10} K={p['K']:<4} "
                             f"{p['storage']:<6} x{p['per_element']:<3} idx {p['index_bytes']:,}"
                             f" B, codebook {p['codebook_bytes']:,} B")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self):
        """Every field as a plain dict (``dataclasses.asdict``)."""
        return dataclasses.asdict(self)


def _distinct(fm, t):
    dtype = fm.type_name(t)
    arr = fm.const(t)
    if dtype in ("int4", "int2"):
        bits = 4 if dtype == "int4" else 2
        n = int(np.prod(fm.shape(t)))
        arr = pack.unpack_bits(arr, bits, n)
    return count_unique(arr)  # float16 counted as float32 (numpy's float16 sort)


def _producers(fm):
    out = {}
    for op in fm.operators:
        for t in op.outputs:
            out[int(t)] = op
    return out


_INDEX_OPS = ("CAST", "DEQUANTIZE", "ADD", "RESHAPE", "STRIDED_SLICE", "FLOOR_MOD",
              "FLOOR_DIV")


def _const_source(fm, prod, t):
    """Follow ``t`` back through index-conversion ops to a constant; (tensor, ops)."""
    chain = []
    while not fm.raw(t):
        op = prod.get(t)
        if op is None or fm.op_name(op) not in _INDEX_OPS:
            return None, chain
        chain.append(op)
        t = int(op.inputs[0])
    return t, chain


def _dense_words(fm, prod, pos):
    """``(stored words, number of indices)`` when ``pos`` holds indices decoded from densely
    packed int16 words (:mod:`dkm_tf.export.decode_dense`), else None."""
    t = pos
    while t in prod and fm.op_name(prod[t]) in ("RESHAPE", "STRIDED_SLICE"):
        t = int(prod[t].inputs[0])
    cat = prod.get(t)
    if cat is None or fm.op_name(cat) != "CONCATENATION" or fm.type_name(t) != "int16":
        return None
    reg = int(cat.inputs[0])
    while reg in prod and fm.op_name(prod[reg]) == "RESHAPE":
        reg = int(prod[reg].inputs[0])
    op = prod.get(reg)
    if op is None or fm.op_name(op) != "GATHER":
        return None
    words = int(op.inputs[1])
    if not fm.raw(words) or fm.type_name(words) != "int16":
        return None
    return words, int(np.prod(fm.shape(t))), _extra_table(fm, prod, int(cat.inputs[1]))


def _extra_table(fm, prod, t):
    """Name of the constant table that maps products to extra indices, or None."""
    while t in prod and fm.op_name(prod[t]) == "RESHAPE":
        t = int(prod[t].inputs[0])
    op = prod.get(t)
    if op is None or fm.op_name(op) != "GATHER" or not fm.raw(int(op.inputs[0])):
        return None
    return fm.tensor_name(int(op.inputs[0]))


def _palettized(fm):
    prod = _producers(fm)
    found = []
    for op in fm.operators:
        name = fm.op_name(op)
        if name.startswith("CUSTOM:TFLM_DECODE"):
            for t_in, t_aux, t_out in zip(op.inputs[::2], op.inputs[1::2], op.outputs):
                head = read_lut_header(fm.raw(int(t_aux)) or b"")
                found.append({"weight": fm.tensor_name(int(t_out)), "mode": "tflm",
                              "K": -1 if head is None else head.entries,
                              "storage": fm.type_name(int(t_in)), "per_element": 1,
                              "index_bytes": len(fm.raw(int(t_in))),
                              "codebook_bytes": 0 if head is None else head.table_bytes})
            continue
        if name != "GATHER":
            continue
        params, pos = int(op.inputs[0]), int(op.inputs[1])
        src = prod.get(params)
        dense = _dense_words(fm, prod, pos) if fm.raw(params) else None
        if dense is not None:  # once, dense: GATHER(codebook, CONCAT(digits, extras))
            words, n_idx, table = dense
            found.append({"weight": fm.tensor_name(int(op.outputs[0])), "mode": "once",
                          "K": int(fm.shape(params)[-1]), "storage": "int16",
                          "per_element": round(n_idx / int(np.prod(fm.shape(words))), 4),
                          "index_bytes": len(fm.raw(words)),
                          "codebook_bytes": len(fm.raw(params)),
                          "indices": fm.tensor_name(words), "codebook": fm.tensor_name(params),
                          "decode_table": table})
        elif src is not None and fm.op_name(src) == "GATHER" and fm.raw(pos) \
                and fm.type_name(pos) == "int16":
            book = int(src.inputs[0])
            if not fm.raw(book) or fm.type_name(book) != "float32":
                continue
            bshape = fm.shape(book)
            g = fm.shape(params)[-1]
            found.append({"weight": fm.tensor_name(int(op.outputs[0])), "mode": "once",
                          "K": int(bshape[-1]), "storage": "int16", "per_element": int(g),
                          "index_bytes": len(fm.raw(pos)), "codebook_bytes": len(fm.raw(book)),
                          "indices": fm.tensor_name(pos), "codebook": fm.tensor_name(book)})
        elif fm.raw(params) and fm.type_name(params) == "float32" and not fm.raw(pos):
            stored, chain = _const_source(fm, prod, pos)
            names = [fm.op_name(o) for o in chain]
            if stored is None or "CAST" not in names:
                continue
            a_dim, per = 1, 1
            for o, name in zip(chain, names):
                if name == "ADD":  # per-channel offsets a*K
                    a_dim = int(np.prod(fm.shape(int(o.inputs[1]))))
                if name == "FLOOR_DIV":  # base-K tuples split at run time
                    per = int(np.prod(fm.shape(int(o.inputs[1]))))
            found.append({"weight": fm.tensor_name(int(op.outputs[0])), "mode": "per_invoke",
                          "K": int(fm.shape(params)[0]) // a_dim, "storage":
                          fm.type_name(stored), "per_element": per,
                          "index_bytes": len(fm.raw(stored)),
                          "codebook_bytes": len(fm.raw(params)),
                          "indices": fm.tensor_name(stored), "codebook": fm.tensor_name(params)})
    return found


def file_notes(ops):
    """Problems of a file read from its operator counts ``ops``: resource variables no op
    assigns (:func:`dkm_tf.core.interpreters.unassigned_variable_reads`)."""
    reads = unassigned_variable_reads(ops)
    if not reads:
        return ()
    return (f"the file reads {reads} resource variable(s) (READ_VARIABLE) that no op of it "
            "assigns (no ASSIGN_VARIABLE): their values (the weights) are not stored, and "
            "interpreters run it on uninitialized memory (all-NaN outputs measured). A "
            "tf.saved_model.save of a Keras 3 model converted by from_saved_model gives such "
            "a file; convert the model with dkm_tf.export.to_tflite (verified), or "
            "model.export(path) then from_saved_model(path).",)


def inspect_tflite(path):
    """Describe the constant tensors and palettized weights of a ``.tflite``.

    Args:
        path: file path, or the model bytes.

    Returns:
        A :class:`TFLiteInspection`.

    Raises:
        FileNotFoundError: no such file.
        TFLiteFormatError: the file is not a valid TFLite flatbuffer (``ValueError``).
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        data, where = bytes(path), None
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError("Invalid type for argument `path`. Expected a .tflite file path or "
                            f"the model bytes. Received: path={path!r}")
        where = os.fspath(path)
        if os.path.isdir(where):
            saved = is_savedmodel_dir(where)
            raise ValueError(f"Invalid value for argument `path`. Expected a .tflite file, not "
                             f"a folder. Received: path={where!r}" + (
                                 ", a TensorFlow SavedModel folder: convert its Keras model "
                                 "with dkm_tf.export.to_tflite first" if saved else ""))
        if not os.path.isfile(where):
            raise FileNotFoundError(f"No such .tflite file: {where!r}")
        with open(where, "rb") as f:
            data = f.read()
    try:
        model = FlatModel.from_bytes(data)
    except ValueError as e:  # TFLiteFormatError: name the file it came from
        if where is None:
            raise
        raise type(e)(f"Invalid value for argument `path`: {where!r}: {e}") from e
    try:
        pal, tensors, by_dtype, ops = [], [], collections.Counter(), collections.Counter()
        seen = set()
        for g in range(len(model.model.subgraphs)):  # WHILE bodies hold recurrent weights
            fm = model if g == 0 else model.subgraph(g)
            found = [{**p, "subgraph": g} for p in _palettized(fm)]
            pal += found
            roles = {}
            for p in found:
                if "indices" in p:  # packed g per int16: `distinct` counts words
                    per = p.get("per_element", 1)
                    packed = f", {per:g} per int16 word" if p["storage"] == "int16" and \
                        per != 1 else ""
                    roles[p["indices"]] = f"palette indices ({p['mode']}, K={p['K']}){packed}"
                    roles[p["codebook"]] = f"palette codebook (K={p['K']})"
                if p.get("decode_table"):
                    roles[p["decode_table"]] = "decode table (densely packed indices)"
            for t in range(len(fm.tensors)):
                raw = fm.raw(t)
                if not raw:
                    continue
                name = fm.tensor_name(t)
                shape = fm.shape(t)
                if fm.type_name(t) not in ("float32", "float16", "int32", "uint8", "int64",
                                            "int16", "int8", "int4", "int2", "bool"):
                    distinct = -1
                else:
                    distinct = _distinct(fm, t)
                expected = int(np.prod(shape)) if shape else 1
                role = roles.get(name) or ("weight" if expected >= 64 and len(shape) >= 2
                                           else "small constant")
                buffer = int(fm.tensors[t].buffer)
                tensors.append({"index": t, "subgraph": g, "name": name,
                                "dtype": fm.type_name(t), "shape": tuple(shape),
                                "bytes": len(raw), "distinct": distinct, "role": role,
                                "buffer": buffer})
                by_dtype[fm.type_name(t)] += 0 if buffer in seen else len(raw)
                seen.add(buffer)  # a buffer several tensors read is stored once
            ops.update(fm.op_name(op) for op in fm.operators)
    except (IndexError, ValueError, TypeError, KeyError) as e:
        raise TFLiteFormatError(f"Corrupted TFLite flatbuffer {where or '<bytes>'}: "
                                f"{type(e).__name__}: {e}") from e
    return TFLiteInspection(where, len(data), tuple(tensors), tuple(pal), dict(ops),
                            dict(by_dtype), file_notes(ops))
