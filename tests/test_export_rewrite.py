"""The flatbuffer writer: byte-for-byte determinism, alignment, editing (no TensorFlow)."""

import numpy as np
import pytest

from dkm_tf.export.rewrite import ALIGNMENT, FlatModel, TFLiteFormatError, schema


def _tiny(extra_const=False):
    """y = x + [1, 2, 3, 4], built from scratch with the writer."""
    s = schema()
    m = s.ModelT()
    m.version = 3
    sg = s.SubGraphT()
    sg.tensors, sg.operators = [], []
    m.subgraphs, m.buffers, m.operatorCodes = [sg], [s.BufferT()], []
    fm = FlatModel(m)
    x = fm.add_tensor("x", [1, 4], "float32")
    c = fm.add_const("c", np.array([1, 2, 3, 4], np.float32))
    if extra_const:
        fm.add_const("unused", np.arange(100, dtype=np.int16))
    y = fm.add_tensor("y", [1, 4], "float32")
    fm.graph.operators.append(fm.make_op("ADD", [x, c], [y], s.AddOptionsT()))
    fm.graph.inputs = np.array([x], np.int32)
    fm.graph.outputs = np.array([y], np.int32)
    return fm


def _buffer_spans(data):
    """(start, length) of every buffer's data vector in the serialized file."""
    s = schema()
    model = s.Model.GetRootAs(data, 0)
    spans = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        o = b._tab.Offset(4)  # field `data`
        if o:
            spans.append((b._tab.Vector(o), b.DataLength()))
    return spans


def _run(data, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_write_is_deterministic_and_idempotent():
    data = _tiny().to_bytes()
    assert data == _tiny().to_bytes()
    assert data[4:8] == b"TFL3"
    assert FlatModel.from_bytes(data).to_bytes() == data


def test_buffers_are_16_byte_aligned_and_exact():
    fm = _tiny(extra_const=True)
    data = fm.to_bytes()
    spans = _buffer_spans(data)
    assert len(spans) == 2
    got = {data[a:a + n] for a, n in spans}
    assert got == {np.array([1, 2, 3, 4], np.float32).tobytes(),
                   np.arange(100, dtype=np.int16).tobytes()}
    assert all(a % ALIGNMENT == 0 for a, _ in spans)


def test_written_model_runs():
    y = _run(_tiny().to_bytes(), np.full((1, 4), 0.5, np.float32))
    np.testing.assert_array_equal(y, [[1.5, 2.5, 3.5, 4.5]])


def test_compact_drops_unreferenced_tensors_and_buffers():
    fm = _tiny(extra_const=True)
    assert len(fm.tensors) == 4 and len(fm.model.buffers) == 3
    fm.compact()
    assert [fm.tensor_name(t) for t in range(len(fm.tensors))] == ["x", "c", "y"]
    assert len(fm.model.buffers) == 2
    data = fm.to_bytes()
    np.testing.assert_array_equal(_run(data, np.zeros((1, 4), np.float32)), [[1, 2, 3, 4]])


def test_reading_helpers():
    fm = FlatModel.from_bytes(_tiny().to_bytes())
    assert fm.op_name(fm.operators[0]) == "ADD"
    assert fm.type_name(1) == "float32" and fm.shape(1) == (4,)
    np.testing.assert_array_equal(fm.const(1), [1, 2, 3, 4])
    assert fm.const(0) is None
    assert fm.consumers() == {0: [0], 1: [0]}


def test_sub_byte_constant_is_stored_verbatim():
    fm = _tiny()
    t = fm.add_tensor("q", [3], "int4", data=bytes([0x78, 0x00]))
    data = fm.to_bytes()
    fm2 = FlatModel.from_bytes(data)
    assert fm2.type_name(t) == "int4"
    assert fm2.raw(t) == bytes([0x78, 0x00])


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"garbage!" * 8,
                                  b"\x10\x00\x00\x00TFL3" + b"\xff" * 40])
def test_corrupted_bytes_raise(data):
    with pytest.raises(TFLiteFormatError, match="TFLite flatbuffer"):
        FlatModel.from_bytes(data)


def test_add_tensor_rejects_unknown_dtype():
    with pytest.raises(ValueError, match=r"Invalid value for argument `dtype`.*"
                                         r"Received: dtype='complex64'"):
        _tiny().add_tensor("z", [1], "complex64")
