"""A small reader/editor/writer for ``.tflite`` flatbuffers (first subgraph).

The LiteRT schema has no codebook weight type, and the converter constant-folds a codebook
gather back into float weights, so palettized models are produced by editing the converted
flatbuffer: this module is the only place that touches the format. It reads a model into the
generated object API (``schema_py_generated``, shipped by ``ai_edge_litert`` and by TensorFlow),
lets callers add constants, tensors and operators, drops what is no longer referenced, and
writes the model back with every buffer aligned to 16 bytes (as the converter does).

The writer is deterministic: the same :class:`FlatModel` always gives the same bytes, and
``FlatModel.from_bytes(b).to_bytes() == b`` for bytes ``b`` it wrote (tested byte for byte).

Example:
    >>> fm = FlatModel.from_bytes(open("m.tflite", "rb").read())  # doctest: +SKIP
    >>> cb = fm.add_const("codebook", np.array([-0.5, 0.0, 0.5], np.float32))  # doctest: +SKIP
    >>> data = fm.to_bytes()  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

__all__ = ["ALIGNMENT", "DTYPES", "FlatModel", "TFLiteFormatError", "schema"]

ALIGNMENT = 16
# name -> (TensorType value, numpy dtype or None for sub-byte types)
DTYPES = {
    "float32": (0, np.float32), "float16": (1, np.float16), "int32": (2, np.int32),
    "uint8": (3, np.uint8), "int64": (4, np.int64), "bool": (6, np.bool_),
    "int16": (7, np.int16), "int8": (9, np.int8), "int4": (17, None), "int2": (19, None),
}
_TYPE_NAMES = {v[0]: k for k, v in DTYPES.items()}


class TFLiteFormatError(ValueError):
    """The bytes are not a readable TFLite flatbuffer."""


def schema():
    """The generated LiteRT schema module (``ai_edge_litert``'s, else TensorFlow's)."""
    try:
        from ai_edge_litert import schema_py_generated as s  # noqa: PLC0415
    except ImportError:  # pragma: no cover - depends on what is installed
        from tensorflow.lite.python import schema_py_generated as s  # noqa: PLC0415
    return s


def _op_names():
    s = schema()
    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}


class _AlignedBuffer:
    """Stands in for ``BufferT`` when packing: writes the data vector 16-byte aligned."""

    def __init__(self, data):
        self.data = data

    def Pack(self, builder):  # noqa: N802 (flatbuffers object-API protocol)
        s = schema()
        off = None
        if self.data is not None and len(self.data):
            raw = np.ascontiguousarray(self.data, np.uint8).tobytes()
            builder.StartVector(1, len(raw), ALIGNMENT)
            builder.head = builder.head - len(raw)
            builder.Bytes[builder.head:builder.head + len(raw)] = raw
            builder.vectorNumElems = len(raw)
            off = builder.EndVector()
        s.BufferStart(builder)
        if off is not None:
            s.BufferAddData(builder, off)
        return s.BufferEnd(builder)


class FlatModel:
    """An editable TFLite model (object API), restricted to one subgraph (the first).

    Attributes:
        model: the ``ModelT`` object.
        graph: its ``SubGraphT`` number ``index`` (0 unless made by :meth:`subgraph`).
    """

    def __init__(self, model_t, subgraph=0):
        self.model = model_t
        if not model_t.subgraphs:
            raise TFLiteFormatError("The model has no subgraph.")
        self.index = int(subgraph)
        self.graph = model_t.subgraphs[self.index]
        self.graph.tensors = list(self.graph.tensors or [])
        self.graph.operators = list(self.graph.operators or [])
        self.model.buffers = list(self.model.buffers or [])
        self.model.operatorCodes = list(self.model.operatorCodes or [])
        self._names = _op_names()

    def subgraph(self, index):
        """A view of subgraph ``index`` (e.g. a WHILE body) of the same model: buffers and
        operator codes are shared, so edits through either view land in one model."""
        return FlatModel(self.model, index)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_bytes(cls, data):
        """Parse ``.tflite`` bytes.

        Raises:
            TFLiteFormatError: the bytes are not a TFLite flatbuffer.
        """
        s = schema()
        data = bytes(data)
        if len(data) < 8 or data[4:8] != b"TFL3":
            raise TFLiteFormatError(
                "Not a TFLite flatbuffer: the file identifier at bytes 4..8 is "
                f"{data[4:8]!r}, expected b'TFL3' ({len(data)} bytes read).")
        try:
            model_t = s.ModelT.InitFromPackedBuf(data, 0)
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
            raise TFLiteFormatError(f"Corrupted TFLite flatbuffer ({len(data)} bytes): "
                                    f"{type(e).__name__}: {e}") from e
        return cls(model_t)

    def to_bytes(self):
        """Serialize deterministically, buffers 16-byte aligned, file identifier ``TFL3``."""
        import flatbuffers  # noqa: PLC0415

        total = sum(len(b.data) for b in self.model.buffers if b.data is not None)
        builder = flatbuffers.Builder(total + (1 << 16))
        saved = self.model.buffers
        self.model.buffers = [_AlignedBuffer(b.data) for b in saved]
        try:
            root = self.model.Pack(builder)
        finally:
            self.model.buffers = saved
        builder.Finish(root, file_identifier=b"TFL3")
        return bytes(builder.Output())

    # ------------------------------------------------------------------ reading
    @property
    def tensors(self):
        return self.graph.tensors

    @property
    def operators(self):
        return self.graph.operators

    def op_name(self, op):
        """Builtin operator name of ``op`` (``"CONV_2D"``), or ``"CUSTOM:<code>"``."""
        oc = self.model.operatorCodes[op.opcodeIndex]
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        if oc.customCode:
            return "CUSTOM:" + (oc.customCode.decode() if isinstance(oc.customCode, bytes)
                                else str(oc.customCode))
        return self._names.get(code, f"UNKNOWN_{code}")

    def type_name(self, t):
        """Dtype name of tensor index ``t`` (``"float32"``, ``"int4"``, ...)."""
        tt = self.tensors[t].type
        return _TYPE_NAMES.get(tt, f"type{tt}")

    def tensor_name(self, t):
        name = self.tensors[t].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def shape(self, t):
        s = self.tensors[t].shape
        return tuple(int(v) for v in (s if s is not None else ()))

    def signature(self, t):
        """Shape of tensor ``t`` with -1 for dimensions that vary at run time (batch)."""
        sig = self.tensors[t].shapeSignature
        if sig is None or len(sig) == 0:
            return self.shape(t)
        return tuple(int(v) for v in sig)

    def raw(self, t):
        """The constant bytes of tensor ``t`` (empty for non-constant tensors)."""
        b = self.model.buffers[self.tensors[t].buffer]
        return b"" if b.data is None else np.asarray(b.data, np.uint8).tobytes()

    def const(self, t):
        """The value of constant tensor ``t`` as a numpy array, or None if not constant.

        Sub-byte tensors (int4, int2) are returned as their packed uint8 bytes.
        """
        raw = self.raw(t)
        if not raw:
            return None
        np_dtype = DTYPES.get(self.type_name(t), (None, None))[1]
        if np_dtype is None:
            return np.frombuffer(raw, np.uint8)
        return np.frombuffer(raw, np_dtype).reshape(self.shape(t))

    def consumers(self):
        """Map tensor index -> list of operator positions that read it."""
        out = {}
        for i, op in enumerate(self.operators):
            for t in op.inputs if op.inputs is not None else ():
                if t >= 0:
                    out.setdefault(int(t), []).append(i)
        return out

    # ------------------------------------------------------------------ editing
    def add_buffer(self, data):
        buf = schema().BufferT()
        buf.data = None if data is None else np.frombuffer(bytes(data), np.uint8).copy()
        self.model.buffers.append(buf)
        return len(self.model.buffers) - 1

    def add_tensor(self, name, shape, dtype, data=None, quantization=None, signature=None):
        """Append a tensor (constant when ``data`` bytes are given); returns its index.

        ``signature``: the shape with -1 where a dimension varies at run time (batch), or None
        for a fixed shape; ``shape`` holds the batch-1 values either way.
        """
        if dtype not in DTYPES:
            raise ValueError(f"Invalid value for argument `dtype`. Expected one of "
                             f"{sorted(DTYPES)}. Received: dtype={dtype!r}")
        t = schema().TensorT()
        t.name = name
        t.shape = np.asarray(shape, np.int32)
        t.type = DTYPES[dtype][0]
        t.buffer = self.add_buffer(data) if data is not None else 0
        t.quantization = quantization
        if signature is not None and any(int(v) < 0 for v in signature):
            t.shapeSignature = np.asarray(signature, np.int32)
        self.tensors.append(t)
        return len(self.tensors) - 1

    def add_const(self, name, array):
        """Append a constant tensor holding ``array`` (dtype from the array)."""
        a = np.ascontiguousarray(array)
        name_of = {np.dtype(v[1]): k for k, v in DTYPES.items() if v[1] is not None}
        if a.dtype not in name_of:
            raise ValueError(f"Unsupported constant dtype {a.dtype} for tensor {name!r}.")
        return self.add_tensor(name, a.shape, name_of[a.dtype], data=a.tobytes())

    def opcode(self, name, version=1):
        """Index of the operator code for builtin ``name`` (added if missing)."""
        s = schema()
        code = getattr(s.BuiltinOperator, name)
        for i, oc in enumerate(self.model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code and not oc.customCode \
                    and oc.version == version:
                return i
        oc = s.OperatorCodeT()
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, 127)
        oc.version = version
        self.model.operatorCodes.append(oc)
        return len(self.model.operatorCodes) - 1

    def make_op(self, name, inputs, outputs, options=None, version=1):
        """A new ``OperatorT`` (not inserted); ``options`` is a ``*OptionsT`` object."""
        s = schema()
        op = s.OperatorT()
        op.opcodeIndex = self.opcode(name, version)
        op.inputs = np.asarray(inputs, np.int32)
        op.outputs = np.asarray(outputs, np.int32)
        if options is not None:
            op.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        return op

    def compact(self):
        """Drop tensors, buffers and operator codes that nothing references; remap indices."""
        g, m = self.graph, self.model
        used = set(int(t) for t in (g.inputs if g.inputs is not None else ()))
        used |= set(int(t) for t in (g.outputs if g.outputs is not None else ()))
        for op in g.operators:
            for lst in (op.inputs, op.outputs, op.intermediates):
                used |= {int(t) for t in (lst if lst is not None else ()) if t >= 0}
        keep = sorted(used)
        tmap = {old: new for new, old in enumerate(keep)}
        tmap[-1] = -1

        def remap(lst):
            return None if lst is None else np.asarray([tmap[int(t)] for t in lst], np.int32)

        g.tensors = [g.tensors[i] for i in keep]
        g.inputs, g.outputs = remap(g.inputs), remap(g.outputs)
        for op in g.operators:
            op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
            op.intermediates = remap(op.intermediates)
        for sd in m.signatureDefs or ():
            if int(sd.subgraphIndex or 0) != self.index:
                continue
            for tm in list(sd.inputs or ()) + list(sd.outputs or ()):
                tm.tensorIndex = tmap[int(tm.tensorIndex)]
        # buffers: 0 stays the empty sentinel; keep those referenced by any subgraph/metadata
        refs = {0}
        for sg in m.subgraphs:
            refs |= {int(t.buffer) for t in sg.tensors or ()}
        refs |= {int(md.buffer) for md in m.metadata or ()}
        bkeep = sorted(refs)
        bmap = {old: new for new, old in enumerate(bkeep)}
        m.buffers = [m.buffers[i] for i in bkeep]
        for sg in m.subgraphs:
            for t in sg.tensors or ():
                t.buffer = bmap[int(t.buffer)]
        for md in m.metadata or ():
            md.buffer = bmap[int(md.buffer)]
        # operator codes
        codes = sorted({int(op.opcodeIndex) for sg in m.subgraphs for op in sg.operators or ()})
        cmap = {old: new for new, old in enumerate(codes)}
        m.operatorCodes = [m.operatorCodes[i] for i in codes]
        for sg in m.subgraphs:
            for op in sg.operators or ():
                op.opcodeIndex = cmap[int(op.opcodeIndex)]
