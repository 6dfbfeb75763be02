"""Which files an older TensorFlow's ``tf.lite.Interpreter`` may verify (no LiteRT installed).

The rule (:func:`dkm_tf.core.interpreters.tflite_refusal`) is checked against the matrix
measured with tensorflow-cpu 2.19.1 and 2.20.0 and no ``ai_edge_litert``: 38 files (every
export format, K = 2 / 4 / 16 / 256, per-tensor, per-channel and row palettes, decode once
and per invoke, a depthwise model), written by TensorFlow 2.19, 2.20 and 2.21, each run in a
subprocess at batch 1 and at batch 4 after batch 1 (as ``verify.compare`` does), plus one
file with int64 and bool tensors; KNOWN_LIMITATIONS.md "Versions". CI runs TensorFlow 2.21
only: the old versions are faked (``tf.__version__``), the files read are real.
"""

import numpy as np
import pytest
import tensorflow as tf

import dkm_tf.export as ex
from dkm_tf.core import interpreters as core
from dkm_tf.export import interpreters, verify
from dkm_tf.graph.share import share_weights
from dkm_tf.models import digits_cnn

F32I32 = ("float32", "int32")
# (file, tensor types, dynamic-range int8 op, measured "2.19 b1, 2.19 b4, 2.20 b1, 2.20 b4"):
# ok = loads and matches Keras within the export's tolerance; int2 = "Unsupported data type
# 19 in tensor" at load (a loud RuntimeError); crash = the process died (SIGSEGV) or its heap
# was corrupted (SIGABRT at the next allocation), the worst over the three writers.
MEASURED = [
    ("float", F32I32, False, "ok ok ok ok"),
    ("fp16", ("float16", *F32I32), False, "ok ok ok ok"),
    ("int8 dynamic", ("int8", *F32I32), True, "ok crash ok ok"),
    ("int8 dynamic, shared scales, K=16", ("int8", *F32I32), True, "ok crash ok ok"),
    ("int8 dynamic, depthwise model", ("int8", *F32I32), True, "ok ok ok ok"),
    ("int8 full", ("int8", *F32I32), False, "ok ok ok ok"),
    ("int8 full, shared scales, K=16", ("int8", *F32I32), False, "ok ok ok ok"),
    ("palettized per_invoke K=2 (int16: too few weights)", ("int16", *F32I32), False,
     "ok ok ok ok"),
    ("palettized per_invoke K=4", ("int2", *F32I32), False, "int2 int2 int2 int2"),
    ("palettized per_invoke K=4 per-channel", ("int2", *F32I32), False, "int2 int2 int2 int2"),
    ("palettized per_invoke K=4 row", ("int2", *F32I32), False, "int2 int2 int2 int2"),
    ("palettized per_invoke K=4 depthwise", ("int2", *F32I32), False, "int2 int2 int2 int2"),
    ("palettized per_invoke K=16", ("int4", *F32I32), False, "ok ok ok ok"),
    ("palettized per_invoke K=16 per-channel", ("int4", *F32I32), False, "ok ok ok ok"),
    ("palettized per_invoke K=256", ("uint8", *F32I32), False, "ok ok ok ok"),
    ("palettized once K=2..256, tuples, dense, no matmul", ("int16", *F32I32), False,
     "ok ok ok ok"),
    ("palettized once K=16, kept float16", ("float16", "int16", *F32I32), False,
     "ok ok ok ok"),
    ("float with int64 and bool outputs", ("bool", "float32", "int64"), False, "ok ok ok ok"),
]
CASES = [(name, types, dynamic, version, batch, outcome)
         for name, types, dynamic, measured in MEASURED
         for (version, batch), outcome in zip(
             [("2.19.1", 1), ("2.19.1", 4), ("2.20.0", 1), ("2.20.0", 4)], measured.split())]


@pytest.mark.parametrize("name,types,dynamic,version,batch,outcome", CASES)
def test_rule_refuses_every_measured_failure_and_nothing_else(name, types, dynamic, version,
                                                              batch, outcome):
    why = core.tflite_refusal(version, types, batch, dynamic)
    if outcome != "ok":
        assert why is not None and f"TensorFlow {version}" in why
        assert ("INT2" in why) == (outcome == "int2")
        return
    # the one refusal beyond a measured failure: a dynamic-range int8 file at batch > 1 on
    # 2.19, whatever its model (the depthwise one survived 4 runs; the others crashed)
    conservative = dynamic and batch > 1 and version.startswith("2.19")
    assert (why is not None) == conservative, why


@pytest.mark.parametrize("types,dynamic", [(t, d) for _, t, d, _ in MEASURED])
@pytest.mark.parametrize("version", ["2.21.0", "2.21.0rc0", "2.22.0.dev20261201", "3.0.0",
                                     "unknown"])
def test_rule_refuses_nothing_from_2_21_on(version, types, dynamic):
    assert core.tflite_refusal(version, types, 64, dynamic) is None


@pytest.mark.parametrize("version", ["2.18.0", "2.16.2", "1.15.5"])
def test_rule_refuses_every_file_on_unmeasured_tensorflow(version):
    why = core.tflite_refusal(version, F32I32, 1)
    assert f"TensorFlow {version} is untested" in why


@pytest.mark.parametrize("types", [("float32", "string"), ("float32", "bfloat16"),
                                   ("float32", "type20")])
def test_rule_refuses_tensor_types_not_measured(types):
    why = core.tflite_refusal("2.20.0", types, 1)
    assert "not measured on tensors of type" in why and types[1] in why
    assert core.tflite_refusal("2.21.0", types, 1) is None


@pytest.mark.parametrize("batch", [0, -1, 1.0, True, "4", None])
def test_rule_refuses_a_bad_batch(batch):
    with pytest.raises(ValueError, match=r"`batch`.*integer >= 1.*Received: batch="):
        core.tflite_refusal("2.20.0", F32I32, batch)


@pytest.mark.parametrize("types", ["float32", [1, 2], None])
def test_rule_refuses_bad_types(types):
    with pytest.raises(TypeError, match=r"`types`.*type names.*Received: types="):
        core.tflite_refusal("2.20.0", types, 1)


def _model_and_palettes(k):
    model = digits_cnn()
    if not k:
        return model, None
    _, palettes, _ = share_weights(model, k, inplace=True)
    return model, palettes


X = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
FILES = {  # (format, K, to_tflite keywords) -> (types, dynamic-range) read from the file
    "float": (("float", None, {}), frozenset(F32I32), False),
    "int8 dynamic": (("int8", None, {"int8_mode": "dynamic"}), frozenset(
        ("int8", *F32I32)), True),
    "int8 full": (("int8", None, {"int8_mode": "full"}), frozenset(("int8", *F32I32)), False),
    "per_invoke K=4": (("palettized", 4, {"decode": "per_invoke"}),
                       frozenset(("int2", *F32I32)), False),
    "per_invoke K=16": (("palettized", 16, {"decode": "per_invoke"}),
                        frozenset(("int4", *F32I32)), False),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The real files, written and verified (LiteRT and tf.lite) by this TensorFlow."""
    out = tmp_path_factory.mktemp("policy")
    got = {}
    for label, ((fmt, k, kw), _, _) in FILES.items():
        model, palettes = _model_and_palettes(k)
        ex.to_tflite(model, out / "m.tflite", fmt, palettes, X, **kw)
        got[label] = (model, palettes, (out / "m.tflite").read_bytes())
    return got


@pytest.mark.parametrize("label", list(FILES))
def test_types_are_read_from_the_file(files, label):
    _, types, dynamic = FILES[label]
    assert interpreters.file_tensor_types(files[label][2]) == (types, dynamic)


@pytest.mark.parametrize("label,version,refused", [
    ("float", "2.19.1", False), ("int8 full", "2.19.1", False),
    ("per_invoke K=16", "2.19.1", False), ("int8 dynamic", "2.20.0", False),
    ("int8 dynamic", "2.19.1", True), ("per_invoke K=4", "2.20.0", True),
    ("per_invoke K=4", "2.19.1", True),
])
def test_file_refusal_names_what_to_install(files, label, version, refused):
    why = interpreters.tflite_file_refusal(files[label][2], 4, version)
    assert (why is not None) == refused
    if refused:
        assert f"TensorFlow {version}" in why and "pip install 'dkm-tf[litert]'" in why
    at_one = interpreters.tflite_file_refusal(files[label][2], 1, version)
    assert (at_one is not None) == (label == "per_invoke K=4")  # batch 1: INT2 only


def test_current_tensorflow_does_not_read_the_file():
    assert interpreters.tflite_file_refusal(b"not a flatbuffer", 4, "2.21.0") is None
    with pytest.raises(ValueError, match="Not a TFLite flatbuffer"):
        interpreters.tflite_file_refusal(b"not a flatbuffer", 4, "2.20.0")


@pytest.fixture
def old_tf_without_litert(monkeypatch):
    monkeypatch.setattr(verify, "litert_available", lambda: False)

    def use(version):
        monkeypatch.setattr(tf, "__version__", version)
    return use


@pytest.mark.parametrize("label,version", [("float", "2.20.0"), ("per_invoke K=16", "2.19.1"),
                                           ("int8 full", "2.19.1"), ("int8 dynamic", "2.20.0")])
def test_old_tensorflow_without_litert_verifies_in_tf_lite(tmp_path, files, label, version,
                                                           old_tf_without_litert):
    """Old code: RuntimeError for every file. New: tf.lite verifies the files it runs."""
    (fmt, _, kw), _, _ = FILES[label]
    model, palettes, _ = files[label]
    old_tf_without_litert(version)
    rep = ex.to_tflite(model, tmp_path / "m.tflite", fmt, palettes, X, **kw)
    assert [(c.interpreter, c.ok, c.batch_size) for c in rep.comparisons] == [("tflite", True, 4)]
    assert any(f"verified with tf.lite.Interpreter only; TensorFlow {version}'s refuses" in n
               for n in rep.notes)
    assert (tmp_path / "m.tflite").stat().st_size == rep.bytes


@pytest.mark.parametrize("label,version,what", [
    ("per_invoke K=4", "2.20.0", "cannot load INT2 tensors"),
    ("per_invoke K=4", "2.19.1", "cannot load INT2 tensors"),
    ("int8 dynamic", "2.19.1", "dynamic-range int8 file at batch 4"),
])
def test_old_tensorflow_without_litert_refuses_what_tf_lite_cannot_run(
        tmp_path, files, label, version, what, old_tf_without_litert):
    (fmt, _, kw), _, _ = FILES[label]
    model, palettes, _ = files[label]
    old_tf_without_litert(version)
    with pytest.raises(verify.TFLiteUnverifiableError, match=rf"TensorFlow {version} .*{what}"
                       r".*pip install 'dkm-tf\[litert\]'") as info:
        ex.to_tflite(model, tmp_path / "m.tflite", fmt, palettes, X, **kw)
    assert isinstance(info.value, RuntimeError)  # the environment lacks a runtime ...
    assert isinstance(info.value, verify.ExportVerificationError)  # ... compress skips it
    assert not list(tmp_path.iterdir())


def test_old_tensorflow_explicit_tf_lite_is_checked_per_file(tmp_path, files,
                                                             old_tf_without_litert):
    """Old code: interpreters=["tflite"] was a ValueError under TF < 2.21, for any file."""
    model, _, _ = files["float"]
    old_tf_without_litert("2.19.1")
    rep = ex.to_tflite(model, tmp_path / "m.tflite", "float", None, X, interpreters=["tflite"])
    assert [c.interpreter for c in rep.comparisons] == ["tflite"] and rep.comparisons[0].ok
    model, palettes, _ = files["per_invoke K=4"]
    with pytest.raises(verify.TFLiteUnverifiableError, match="INT2"):
        ex.to_tflite(model, tmp_path / "p.tflite", "palettized", palettes, X,
                     decode="per_invoke", interpreters=["litert", "tflite"])
    assert not (tmp_path / "p.tflite").exists()


def test_current_tensorflow_path_is_unchanged(tmp_path, files, monkeypatch):
    monkeypatch.setattr(tf, "__version__", "2.21.0")
    model, palettes, _ = files["per_invoke K=4"]
    assert verify.choose_interpreters(None) == (verify.default_interpreters(), [])
    rep = ex.to_tflite(model, tmp_path / "m.tflite", "palettized", palettes, X,
                       decode="per_invoke", interpreters=["tflite"])
    assert [c.interpreter for c in rep.comparisons] == ["tflite"] and rep.comparisons[0].ok
    monkeypatch.setattr(verify, "litert_available", lambda: False)
    assert verify.choose_interpreters(None) == (("tflite",), [
        "ai_edge_litert not installed (pip install dkm-tf[litert]): verified with "
        "tf.lite.Interpreter only"])
