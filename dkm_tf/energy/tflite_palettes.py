"""Palettized weights inside a `.tflite`: the codebook + indices a conv or dense op reads.

`dkm_tf.export` stores a clustered weight as a float codebook and packed integer indices and
rebuilds it with builtin ops (`dkm_tf.export.decode`):

* `decode="once"`: `GATHER(GATHER(codebook, enum), int16 indices)`; the codebook constant is
  (d, K) per tensor or (G, d, K) per channel; or, with densely packed words,
  `GATHER(codebook, CONCAT(GATHER(digits, int16 words), extra indices))`, codebook (K,) or
  (d, K);
* `decode="per_invoke"`: `GATHER(codebook, positions)`, positions computed from a constant
  through CAST / DEQUANTIZE / FLOOR_DIV / FLOOR_MOD / RESHAPE / STRIDED_SLICE, plus an ADD of
  the offsets g·K for G per-channel codebooks; the codebook constant is (G·K, d) or (G·K,).

followed by RESHAPE / TRANSPOSE / STRIDED_SLICE into the layout the op reads. A TFLite Micro
file (`format="tflm"`) decodes each clustered weight with the custom `TFLM_DECODE` op from
packed b-bit indices and a lookup table (`dkm_tf.core.tflm_lut`): K is the table length,
d = 1, and G is 1 or the weight's size along the table's axis.
:func:`stored_palette` follows a weight operand back through those ops and returns K, d and
G, from which the energy models charge a codebook of G·K·d values plus N = |W| / d
indices instead of |W| weights.
`dkm_tf.export.inspect_tflite` recognises the same chains for its storage listing; the energy
stage may not import `dkm_tf.export` (the package's layering: energy sits beside export and
imports only core and graph), so this module reads the flatbuffer through the same generated
schema accessors as `tflite_reader`, and the tests check that both agree on every weight.

Ops whose inputs are all constants (or outputs of such ops) compute weights, not activations:
:func:`constant_ops` lists them so that the reader reports them as weight decoding instead of
charging them as layers. :func:`im2col_helper` recognises the one-hot DEPTHWISE_CONV_2D that
`dkm_tf.export.lower` emits to build the im2col of a conv lowered to BATCH_MATMUL (a copy of
the input's pixels, no arithmetic), which the reader reports instead of charging.
"""

import dataclasses
import math
import re

from dkm_tf.core.tflm_lut import read_lut_header

_LAYOUT = ("RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE")
_INDEX = ("CAST", "DEQUANTIZE", "ADD", "RESHAPE", "STRIDED_SLICE", "FLOOR_MOD", "FLOOR_DIV")
_FLOAT32, _INT16 = 0, 7  # TensorType values of the schema
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 7: 2, 9: 1}  # float32 ... int8 (TensorType: bytes)
_TFLM_DECODE = "CUSTOM:TFLM_DECODE"


@dataclasses.dataclass(frozen=True)
class StoredPalette:
    """A weight stored as G codebooks of K codewords of dimension d (and one index per unit).

    Attributes:
        n_clusters: K.
        unit_dim: d.
        n_codebooks: G (1 per tensor, one per output channel when per channel).
        mode: "once", "per_invoke" or "tflm" (the decode chain found).
        index_tensor: name of the stored index constant.
        codebook_tensor: name of the codebook constant.
        index_bits: entropy of the stored indices, bits per index (`tflite_indices`), or
            None where the chain is not one that reader evaluates.
        scale_bits: bits of a scaled kernel unit's stored scale (Son et al., §2.5: the
            decoded codeword times its scale, a MUL), 0 without scales; K then counts the
            codebook's transformed copies (K T rows).
    """

    n_clusters: int
    unit_dim: int
    n_codebooks: int
    mode: str
    index_tensor: str = ""
    codebook_tensor: str = ""
    index_bits: float | None = None
    scale_bits: int = 0


class GraphView:
    """Tensors and operators of one subgraph, with the producer of every tensor (`shapes`:
    `{tensor: shape}` overriding the stored shapes, read by running the file)."""

    def __init__(self, model, graph, op_names, shapes=None):
        self.model, self.graph, self.shapes = model, graph, shapes or {}
        self.ops = [graph.Operators(k) for k in range(graph.OperatorsLength())]
        self.names = []
        for op in self.ops:
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            if name == "CUSTOM":  # e.g. "CUSTOM:TFLM_DECODE"
                name += ":" + (code.CustomCode() or b"").decode("utf-8", "replace")
            self.names.append(name)
        self.producer = {int(t): k for k, op in enumerate(self.ops)
                         for t in (op.OutputsAsNumpy() if op.OutputsLength() else ())}

    def const(self, t):
        buf = self.model.Buffers(self.graph.Tensors(int(t)).Buffer())
        return buf is not None and buf.DataLength() > 0

    def raw(self, t):
        """The bytes of constant tensor `t` (empty when it has none)."""
        buf = self.model.Buffers(self.graph.Tensors(int(t)).Buffer())
        return buf.DataAsNumpy().tobytes() if buf is not None and buf.DataLength() else b""

    def shape(self, t):
        """Stored shape of tensor `t`, or its run-time shape where `shapes` gives one."""
        if int(t) in self.shapes:
            return self.shapes[int(t)]
        tensor = self.graph.Tensors(int(t))
        return tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()

    def dtype(self, t):
        return self.graph.Tensors(int(t)).Type()

    def name(self, t):
        return (self.graph.Tensors(int(t)).Name() or b"").decode("utf-8", "replace")

    def inputs(self, k):
        return [int(t) for t in self.ops[k].InputsAsNumpy() if t >= 0]

    def source(self, t, through):
        """Follow `t` back through producers named in `through`: (tensor, op names)."""
        chain = []
        while not self.const(t) and t in self.producer \
                and self.names[self.producer[t]] in through:
            k = self.producer[t]
            chain.append(self.names[k])
            t = self.inputs(k)[0]
        return t, chain


def constant_ops(view):
    """Indices of the ops of `view` whose inputs all derive from constants (weight decoding)."""
    derived, out = set(), []
    for k in range(len(view.ops)):
        ins = view.inputs(k)
        if ins and all(t in derived or view.const(t) for t in ins):
            out.append(k)
            derived.update(int(t) for t in view.ops[k].OutputsAsNumpy())
    return out


def _dense_words(view, pos):
    """The stored int16 words behind indices joined by a CONCATENATION (dense packing)."""
    t, _ = view.source(pos, ("RESHAPE", "STRIDED_SLICE"))
    k = view.producer.get(t)
    if k is None or view.names[k] != "CONCATENATION" or view.dtype(t) != _INT16:
        return None
    reg, _ = view.source(view.inputs(k)[0], ("RESHAPE",))
    k2 = view.producer.get(reg)
    if k2 is None or view.names[k2] != "GATHER":
        return None
    words = view.inputs(k2)[1]
    return words if view.const(words) and view.dtype(words) == _INT16 else None


def stored_palette(view, t, outer=None):
    """The `StoredPalette` that tensor `t` (a weight operand) is decoded from, or None; its
    `index_bits` is the entropy of the stored indices (`tflite_indices.index_entropy`).

    Args:
        view: The `GraphView` of the subgraph holding `t`.
        t: Tensor index of the weight operand.
        outer: `{tensor index: StoredPalette}` for subgraph inputs that carry a decoded weight
            from the calling graph (a WHILE body reading a weight decoded before the loop).
    """
    src, _ = view.source(int(t), _LAYOUT)
    if outer and src in outer:
        return outer[src]
    found = _stored_palette(view, src)
    if found is None:
        return None
    from dkm_tf.energy.tflite_indices import index_entropy

    return dataclasses.replace(found, index_bits=index_entropy(view, t, found))


_SCALE_TYPES = (0, 1, 9)  # FLOAT32, FLOAT16, INT8: how the exporter stores kernel scales


def _stored_palette(view, t):
    """`stored_palette` without the index entropy; `t`: the operand past its layout ops."""
    k = view.producer.get(t)
    if k is not None and view.names[k] == "MUL":  # scaled kernel units: codewords x scales
        a, b = view.inputs(k)[:2]
        for w, s in ((a, b), (b, a)):
            found = _stored_palette(view, view.source(w, _LAYOUT)[0])
            scales, _ = view.source(s, ("DEQUANTIZE", "RESHAPE"))
            if found is not None and view.const(scales) and view.dtype(scales) in _SCALE_TYPES:
                return dataclasses.replace(found, scale_bits=8 * _ITEMSIZE[view.dtype(scales)])
        return None
    if k is not None and view.names[k] == _TFLM_DECODE:
        return _tflm_lut(view, k, t)
    if k is None or view.names[k] != "GATHER":
        return None
    params, pos = view.inputs(k)[:2]
    inner = view.producer.get(params)
    if inner is not None and view.names[inner] == "GATHER" and view.const(pos) \
            and view.dtype(pos) == _INT16:  # once: GATHER(GATHER(codebook, enum), indices)
        book = view.inputs(inner)[0]
        shape = view.shape(book)
        if not view.const(book) or view.dtype(book) != _FLOAT32 or len(shape) not in (2, 3):
            return None
        return StoredPalette(n_clusters=shape[-1], unit_dim=shape[-2],
                             n_codebooks=shape[0] if len(shape) == 3 else 1, mode="once",
                             index_tensor=view.name(pos), codebook_tensor=view.name(book))
    if not view.const(params) or view.dtype(params) != _FLOAT32 or view.const(pos):
        return None
    words = _dense_words(view, pos)
    if words is not None:  # once, densely packed: GATHER(codebook, CONCAT(digits, extras))
        shape = view.shape(params)
        return StoredPalette(n_clusters=shape[-1], unit_dim=shape[0] if len(shape) == 2 else 1,
                             n_codebooks=1, mode="once", index_tensor=view.name(words),
                             codebook_tensor=view.name(params))
    stored, chain = view.source(pos, _INDEX)  # per_invoke: positions from stored indices
    if not view.const(stored) or "CAST" not in chain:
        return None
    groups, q = 1, pos
    while q in view.producer and view.names[view.producer[q]] in _INDEX:
        k2 = view.producer[q]
        if view.names[k2] == "ADD":  # per-channel offsets g*K, shape (G, 1)
            groups = math.prod(view.shape(view.inputs(k2)[1])) or 1
        q = view.inputs(k2)[0]
    shape = view.shape(params)
    if not shape or shape[0] % groups:
        return None
    return StoredPalette(n_clusters=shape[0] // groups,
                         unit_dim=shape[1] if len(shape) == 2 else 1, n_codebooks=groups,
                         mode="per_invoke", index_tensor=view.name(stored),
                         codebook_tensor=view.name(params))


def _tflm_lut(view, k, t):
    """The `StoredPalette` of output `t` of TFLite Micro's `TFLM_DECODE` op `k` (its output j
    is decoded from inputs 2j, the packed indices, and 2j + 1, the ancillary data), or None
    when that is not a lookup table."""
    ins = [int(i) for i in view.ops[k].InputsAsNumpy()]
    outs = [int(o) for o in view.ops[k].OutputsAsNumpy()]
    j = outs.index(int(t))
    if 2 * j + 1 >= len(ins) or min(ins[2 * j:2 * j + 2]) < 0:
        return None
    packed, ancillary = ins[2 * j:2 * j + 2]
    head = read_lut_header(view.raw(ancillary))
    shape = view.shape(t)
    if head is None or not view.const(packed) or (head.axis is not None
                                                  and head.axis >= len(shape)):
        return None
    groups = 1 if head.axis is None else shape[head.axis]
    size = _ITEMSIZE.get(view.dtype(t))
    if size is not None and head.table_bytes != groups * head.entries * size:
        return None  # not the layout above: charged as float, not guessed
    return StoredPalette(n_clusters=head.entries, unit_dim=1, n_codebooks=groups, mode="tflm",
                         index_tensor=view.name(packed), codebook_tensor=view.name(ancillary))


def im2col_helper(view, op_index):
    """Whether DEPTHWISE_CONV_2D op `op_index` of `view` is `dkm_tf.export`'s im2col helper.

    That op (`lower._im2col_depthwise`) copies each input value to `kh · kw` output channels,
    one per kernel offset: its filter is a float constant named `<prefix>/im2col_filter_<n>`
    whose every output channel holds a single 1 and zeros, and its bias is zero. Both the name
    and the values are checked: a depthwise conv of the model is never taken for it.
    """
    import numpy as np

    ins = [int(t) for t in view.ops[op_index].InputsAsNumpy()]
    if len(ins) < 2 or ins[1] < 0:
        return False
    f, shape = ins[1], view.shape(ins[1])
    if not re.fullmatch(r"im2col_filter(_\d+)?", view.name(f).rsplit("/", 1)[-1]) \
            or view.dtype(f) != _FLOAT32 or len(shape) != 4 \
            or len(view.raw(f)) != 4 * math.prod(shape):
        return False
    taps = np.frombuffer(view.raw(f), np.float32).reshape(-1, shape[-1])
    if not (np.all((taps == 0) | (taps == 1)) and np.all(taps.sum(axis=0) == 1)):
        return False
    if len(ins) > 2 and ins[2] >= 0:  # the bias, if any: a constant of float zeros
        b = ins[2]
        if not view.const(b) or view.dtype(b) != _FLOAT32 or \
                np.any(np.frombuffer(view.raw(b), np.float32)):
            return False
    return True
