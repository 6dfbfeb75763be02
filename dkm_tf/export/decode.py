"""Builtin-op decode chains that rebuild a palettized weight inside a ``.tflite`` graph.

Two chains, matching the two decode modes of :func:`dkm_tf.export.to_tflite`:

``once`` (computed at load time). GATHER, RESHAPE, TILE, CONCATENATION and STRIDED_SLICE
compute their output in ``Prepare`` when every input is constant or already computed, so this
chain runs once in ``allocate_tensors()``::

    enum  = CONCAT(RESHAPE(TILE(RESHAPE(iota_K)))) for each digit   # int32 [K^g, g]
    table = GATHER(codebook, enum)                                  # f32 [K^g, g]
    rows  = GATHER(table, packed_int16)                             # f32 [n/g, g]
    W     = RESHAPE(rows, GATHER(shape))                            # f32, target layout

The enumeration is int32 and every float reshape/slice takes its shape from a GATHER, so the
XNNPACK delegate (which partitions the graph before ``Prepare``) claims none of these ops.

``per_invoke`` (computed on every invoke, smallest file)::

    W = GATHER(codebook, CAST(DEQUANTIZE(int4_or_int2_indices)))    # or CAST(uint8)
    W = GATHER(codebook, FLOOR_MOD(FLOOR_DIV(CAST(int16), radix), K))  # when denser

Example (K = 3, one tensor of 4 weights [0.5, -1, 0.5, 0] in target order):
codebook ``[-1, 0, 0.5]``, indices ``[2, 0, 2, 1]``; ``once`` stores g = 9 indices per int16,
so the single int16 ``2 + 3*0 + 9*2 + 27*1 = 47``; ``per_invoke`` as INT2 fields would be
``q = i - 2 = [0, -2, 0, -1]``, one byte ``0b11001000`` (low bits first), but base-3 tuples
(9 per int16, 1.78 bits) are denser, so it stores the same int16 47 and splits it with
``FLOOR_MOD(FLOOR_DIV(p, [1, 3, 9, ...]), 3)`` on every invoke.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export import pack
from dkm_tf.export.rewrite import schema

__all__ = ["Emitter"]


class Emitter:
    """Appends decode tensors/ops to a :class:`~dkm_tf.export.rewrite.FlatModel`.

    New operators are collected in ``self.ops`` (the caller inserts them ahead of their
    consumers). Enumeration tables are shared between palettes with the same (K, g).
    """

    def __init__(self, fm, prefix="dkm"):
        self.fm = fm
        self.prefix = prefix
        self.ops = []
        self.early = []  # ops reading only constants, shared through the cache: go first
        self._enum = {}
        self.cache = {}
        self.aux_bytes = 0  # bytes of helper constants (im2col filters)
        self.shapes = {}  # shapes of tensors emitted here, when callers need them
        self._count = 0
        self.log = []  # (what, BufferT) of every constant a chain reads: see tag()

    def stored(self, what, t):
        """Log that the chain being emitted reads constant ``t`` as ``what``; returns ``t``."""
        self.log.append((what, self.fm.model.buffers[int(self.fm.tensors[t].buffer)]))
        return t

    def mark(self, t):
        """Where the record of weight ``t`` starts in :attr:`log` (``t`` logged as
        ``"weight"``: a kept float32 weight stays stored in its own buffer)."""
        self.stored("weight", t)
        return len(self.log) - 1

    def tag(self, mark, record):
        """``record`` with the constants logged since ``mark`` in its ``"_stored"`` key
        (:func:`~dkm_tf.export.record_bytes.count_once` reads it to count each stored buffer
        in one record, then deletes it); returns ``record``."""
        record["_stored"] = self.log[mark:]
        return record

    # ------------------------------------------------------------------ primitives
    def name(self, what):
        self._count += 1
        return f"{self.prefix}/{what}_{self._count}"

    def const(self, what, array, share=False):
        """A constant tensor; small constants (or any, with ``share``: codebooks shared by
        several weights) with equal dtype, shape and bytes are stored once."""
        a = np.ascontiguousarray(array)
        key = None
        if a.nbytes <= 1024 or share:
            key = ("const", a.dtype.str, a.shape, a.tobytes())
            if key in self.cache:
                return self.stored(what, self.cache[key])
        t = self.fm.add_const(self.name(what), a)
        if key is not None:
            self.cache[key] = t
        return self.stored(what, t)

    def tensor(self, what, shape, dtype="float32", signature=None):
        """A new activation tensor; ``signature`` marks run-time (batch) dimensions by -1."""
        return self.fm.add_tensor(self.name(what), shape, dtype, signature=signature)

    def op(self, name, inputs, outputs, options=None, version=1):
        self.ops.append(self.fm.make_op(name, inputs, outputs, options, version))
        return outputs[0] if len(outputs) == 1 else outputs

    def dynamic_int(self, values):
        """An int32 tensor holding ``values`` that XNNPACK cannot see as static.

        It is GATHER(const, iota): computed in Prepare, so downstream RESHAPE / STRIDED_SLICE
        still fold, but the XNNPACK delegate (which only accepts static shape operands)
        leaves the float op that reads it to the builtin kernel. The GATHER goes to
        ``self.early`` (the caller puts those ops ahead of all others): the tensor is cached
        and read by every later chain or lowered layer that needs the same values, and a
        lowered layer's ops land where its original op was, so a GATHER emitted among a later
        layer's ops was read before it was written (ConvNeXt's grouped convs: ops out of
        order for any reader but LiteRT's load-time folding; the energy reader missed them).
        """
        v = np.asarray(values, np.int32).ravel()
        key = ("dynamic", v.tobytes())
        if key in self.cache:
            return self.cache[key]
        src = self.const("shape_src", v)
        pos = self.const("shape_pos", np.arange(v.size, dtype=np.int32))
        out = self.tensor("shape", [v.size], "int32")
        self.early.append(self.fm.make_op("GATHER", [src, pos], [out],
                                          schema().GatherOptionsT(), 1))
        self.cache[key] = out
        return out

    def gather(self, params, positions, out_shape, axis=0, batch_dims=0, dtype="float32"):
        s = schema()
        opt = s.GatherOptionsT()
        opt.axis, opt.batchDims = axis, batch_dims
        out = self.tensor("gather", out_shape, dtype)
        return self.op("GATHER", [params, positions], [out], opt)

    def reshape(self, x, shape, dtype="float32", static=False, signature=None):
        """RESHAPE; the shape operand is static only when ``static`` (XNNPACK may take it).

        ``signature`` (static only): the new shape with -1 for the one dimension that varies
        with the batch; the operand then holds it (RESHAPE infers the -1 on every resize) and
        ``shape`` gives the batch-1 values.
        """
        shape = [int(v) for v in shape]
        new = shape if signature is None else [int(v) for v in signature]
        src = self.const("newshape", np.asarray(new, np.int32)) if static \
            else self.dynamic_int(shape)
        opt = schema().ReshapeOptionsT()
        opt.newShape = new
        out = self.tensor("reshape", shape, dtype, signature)
        return self.op("RESHAPE", [x, src], [out], opt)

    def strided_prefix(self, x, in_shape, keep):
        """x[..., :keep] along the last axis (folds at load; XNNPACK does not claim it)."""
        r = len(in_shape)
        begin = self.dynamic_int([0] * r)
        end = self.dynamic_int(list(in_shape[:-1]) + [keep])
        strides = self.dynamic_int([1] * r)
        out = self.tensor("slice", list(in_shape[:-1]) + [keep])
        return self.op("STRIDED_SLICE", [x, begin, end, strides], [out],
                       schema().StridedSliceOptionsT())

    def tile(self, x, multiples, out_shape, dtype="int32"):
        out = self.tensor("tile", out_shape, dtype)
        return self.op("TILE", [x, self.const("multiples", np.asarray(multiples, np.int32))],
                       [out])

    # ------------------------------------------------------------------ tables
    def enum(self, k, g, rows=None):
        """int32 [rows, g] digits table (row p: the base-k digits of p mod k**g, least
        first), built in the graph from an iota of length k; ``rows`` defaults to k**g."""
        rows = k ** g if rows is None else rows
        key = (k, g, rows)
        if key in self._enum:
            return self._enum[key]
        s = schema()
        iota = self.reshape(self.const(f"iota{k}", np.arange(k, dtype=np.int32)), [k, 1],
                            "int32", static=True)
        cols = []
        for j in range(g):  # digit j of p: each value repeated k**j times, cycling
            rep = self.tile(iota, [1, k ** j], [k, k ** j])
            col = self.reshape(rep, [k ** (j + 1)], "int32", static=True)
            if rows > k ** (j + 1):
                col = self.tile(col, [rows // k ** (j + 1)], [rows])
            cols.append(self.reshape(col, [rows, 1], "int32", static=True))
        if g == 1:
            out = cols[0]
        else:
            opt = s.ConcatenationOptionsT()
            opt.axis = 1
            out = self.tensor("enum", [rows, g], "int32")
            self.op("CONCATENATION", cols, [out], opt)
        self._enum[key] = out
        return out

    # ------------------------------------------------------------------ chains
    def once(self, codebook, idx, target_shape, g):
        """Decode-once chain. Returns the float tensor of ``target_shape``.

        Args:
            codebook: float32 (A, K, d). A = 1 (per tensor) or A = leading target axis
                (per channel); d = unit dimension.
            idx: int (A, M) indices, in the order the target is laid out (see below).
            target_shape: final shape. Its elements, in C order, must be
                ``[a, j, m]`` (A x d x M) for per-channel, ``[j, m]`` (d x M) per tensor,
                where j runs over the unit's d values.
            g: indices per int16 (``K**g <= 32768``).
        """
        cb = np.asarray(codebook, np.float32)
        a_dim, k, d = cb.shape
        idx = np.asarray(idx)
        m = idx.shape[1]
        packed = pack.pack_tuples(idx, k, g)              # (A, P) int16
        p = packed.shape[1]
        enum = self.enum(k, g)
        if a_dim == 1:
            book = self.const("codebook", cb[0].T, share=True)          # (d, K)
            table = self.gather(book, enum, [d, k ** g, g], axis=1)
            pos = self.const("indices", packed[0])
            rows = self.gather(table, pos, [d, p, g], axis=1)
            flat_shape = [d, p * g]
        else:
            book = self.const("codebook", np.ascontiguousarray(cb.transpose(0, 2, 1)), share=True)
            table = self.gather(book, enum, [a_dim, d, k ** g, g], axis=2)
            pos = self.const("indices", packed)
            rows = self.gather(table, pos, [a_dim, d, p, g], axis=2, batch_dims=1)
            flat_shape = [a_dim, d, p * g]
        if p * g == m:
            return self.reshape(rows, target_shape)
        x = self.strided_prefix(self.reshape(rows, flat_shape), flat_shape, m)
        return self.reshape(x, target_shape)

    def per_invoke(self, codebook, idx, storage):
        """Decode-every-invoke chain: sub-byte / uint8 indices -> positions -> GATHER.

        Args:
            codebook: float32 (A, K, d).
            idx: int (A, M) indices; per-channel positions are offset by ``a*K`` at run time.
            storage: ``"int2"``, ``"int4"``, ``"uint8"``, ``"int16"``, or ``"tuples:<g>"``:
                g base-K indices per int16, split at run time by FLOOR_DIV / FLOOR_MOD.

        Returns:
            The float tensor [A, M, d] (per channel) or [M, d] (per tensor), without the
            trailing d axis when d = 1.
        """
        s = schema()
        cb = np.asarray(codebook, np.float32)
        a_dim, k, d = cb.shape
        idx = np.asarray(idx).reshape(a_dim, -1)
        shape = list(idx.shape) if a_dim > 1 else [idx.shape[1]]
        if storage in ("int2", "int4"):
            bits = 2 if storage == "int2" else 4
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [1.0], [-(1 << (bits - 1))]
            stored = self.fm.add_tensor(self.name("indices"), shape, storage,
                                        data=pack.pack_bits(idx, bits).tobytes(),
                                        quantization=q)
            fl = self.tensor("dequantize", shape)
            self.op("DEQUANTIZE", [self.stored("indices", stored)], [fl])
            src_type = 0
        elif storage.startswith("tuples:"):
            fl = None
            pos = self._split_tuples(idx, k, int(storage[7:]), shape)
        else:
            fl = self.const("indices", idx.reshape(shape).astype(storage))
            src_type = 3 if storage == "uint8" else 7
        if fl is not None:
            pos = self.tensor("positions", shape, "int32")
            opt = s.CastOptionsT()
            opt.inDataType, opt.outDataType = src_type, 2
            self.op("CAST", [fl], [pos], opt)
        if a_dim > 1:  # per channel: position a*K + i into the concatenated codebooks
            off = self.const("offsets", np.arange(a_dim, dtype=np.int32)[:, None] * k)
            shifted = self.tensor("positions", shape, "int32")
            self.op("ADD", [pos, off], [shifted], s.AddOptionsT())
            pos = shifted
        book = self.const("codebook", cb.reshape(a_dim * k, d) if d > 1 else cb.ravel(),
                          share=True)
        return self.gather(book, pos, shape + ([d] if d > 1 else []))

    def _split_tuples(self, idx, k, g, shape):
        """int16 base-k tuples -> int32 positions, on every invoke (integer builtin ops).

        ``digits = FLOOR_MOD(FLOOR_DIV(CAST(p)[..., None], [1, k, k^2, ...]), k)``.
        """
        s = schema()
        packed = pack.pack_tuples(idx, k, g)                       # (A, P)
        a_dim, p = packed.shape
        pshape = ([a_dim, p] if a_dim > 1 else [p]) + [1]
        stored = self.const("indices", packed.reshape(pshape))
        p32 = self.tensor("tuples", pshape, "int32")
        opt = s.CastOptionsT()
        opt.inDataType, opt.outDataType = 7, 2
        self.op("CAST", [stored], [p32], opt)
        dshape = pshape[:-1] + [g]
        radix = self.const("radix", (k ** np.arange(g)).astype(np.int32))
        x = self.op("FLOOR_DIV", [p32, radix], [self.tensor("digits", dshape, "int32")])
        x = self.op("FLOOR_MOD", [x, self.const("base", np.int32(k))],
                    [self.tensor("digits", dshape, "int32")])
        flat = pshape[:-2] + [p * g]
        x = self.reshape(x, flat, "int32", static=True)
        m = idx.shape[1]
        if p * g != m:
            out = self.tensor("positions", flat[:-1] + [m], "int32")
            self.op("STRIDED_SLICE", [x, self.const("begin", np.zeros(len(flat), np.int32)),
                                      self.const("end", np.asarray(flat[:-1] + [m], np.int32)),
                                      self.const("strides", np.ones(len(flat), np.int32))],
                    [out], s.StridedSliceOptionsT())
            x = out
        return x

    def half(self, t):
        """Float32 constant ``t`` stored as float16 + DEQUANTIZE (XNNPACK unpacks it once at
        load and runs the op that reads it as float, as for ``format="fp16"``)."""
        key = ("half", int(t))
        if key not in self.cache:
            src = self.const("half", self.fm.const(t).astype(np.float16))
            out = self.tensor("dequantize", list(self.fm.shape(t)))
            self.cache[key] = self.op("DEQUANTIZE", [src], [out], version=3)
        return self.cache[key]

    def transpose(self, x, in_shape, perm, signature=None):
        """TRANSPOSE; ``signature``: the input's shape with -1 for run-time dimensions."""
        out = self.tensor("transpose", [in_shape[p] for p in perm],
                          signature=None if signature is None else [signature[p] for p in perm])
        return self.op("TRANSPOSE", [x, self.const("perm", np.asarray(perm, np.int32))],
                       [out])
