"""Dynamic batch and Keras output order in every TFLite format (issue 11).

Every format is run independently of the exporter's own verification: ``resize_tensor_input``
to batch 4 and one invoke, in ``ai_edge_litert`` and ``tf.lite``, against Keras with explicit
tolerances; the batch-4 rows must equal the batch-1 runs. Palettized files keep their stored
index types and their size (within 3 % + 2 KiB of a batch-1 export of the same palettes). A
format that cannot change its batch (TFLite Micro; a graph the interpreter refuses to resize)
says so in its signature and raises on another batch, never computes a wrong answer.
"""

import contextlib
import pathlib

import keras
import numpy as np
import pytest
from test_export_tflite import clustered_copy
from testing import tflite_interpreter

import dkm_tf.export as ex
from dkm_tf.export import convert as convert_lib
from dkm_tf.export import verify
from dkm_tf.export.palettize import palettize_flatbuffer
from dkm_tf.export.rewrite import FlatModel

# max |tflite - keras| / max |keras| allowed here, per export target
TOL = {"float": 1e-5, "fp16": 2e-2, "int8": 1e-1, "int8_full": 2.5e-1, "palettized": 1e-4,
       "palettized_all": 1e-4, "palettized_per_invoke": 1e-4, "tflm": 1e-4}
LITERT_TARGETS = [t for t in ex.EXPORT_TARGETS if t != "tflm"]


def conv_dense_model():
    """Conv (3 input channels: one-hot depthwise im2col), conv (slice im2col), pool, conv with
    16 output rows (weight on the left of BATCH_MATMUL), Flatten, Dense + ReLU, Dense."""
    keras.utils.set_random_seed(7)
    L = keras.layers
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        L.Conv2D(8, 3, padding="same", activation="relu", name="c1"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="c2"),
        L.MaxPooling2D(2, name="pool"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="c3"),
        L.Flatten(name="flat"),
        L.Dense(24, activation="relu", name="d1"),
        L.Dense(10, name="d2"),
    ], name="conv_dense")


def interpreter(kind, path):
    return tflite_interpreter(path, kind)


def run_batch(it, x):
    """Resize input 0 to ``x``'s batch, invoke once, return output 0."""
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(x.shape), strict=True)
    it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = conv_dense_model()
    palettes = clustered_copy(model, 16)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    out = tmp_path_factory.mktemp("batch")
    targets = [t for t in ex.EXPORT_TARGETS if t != "tflm" or ex.tflm_available()]
    # int8_full, untrained, calibrated on 2 of the 4 samples: its held-out check fails (warned)
    with pytest.warns(UserWarning, match="held-out check failed"):
        reports = ex.export_all(model, palettes, str(out), x, targets=targets, stem="cd")
    return model, palettes, x, np.asarray(model(x)), reports


@pytest.mark.parametrize("kind", ["litert", "tflite"])
@pytest.mark.parametrize("label", LITERT_TARGETS)
def test_batch_4_matches_keras_and_batch_1(setup, label, kind):
    _, _, x, ref, reports = setup
    r = reports[label]
    assert r.dynamic_batch
    it = interpreter(kind, r.path)
    d = it.get_input_details()[0]
    assert list(d["shape_signature"]) == [-1, 8, 8, 3] and list(d["shape"]) == [1, 8, 8, 3]
    y4 = run_batch(it, x)
    assert y4.shape == (4, 10)
    y1 = np.concatenate([run_batch(it, x[i:i + 1]) for i in range(4)])
    scale = np.abs(ref).max()
    assert np.abs(y4 - ref).max() <= TOL[label] * scale
    assert np.abs(y1 - ref).max() <= TOL[label] * scale
    # the same kernels at both batches: only float reassociation differs (quantized: equal
    # up to one output step)
    assert np.abs(y4 - y1).max() <= (1e-6 if "int8" not in label else 2e-2) * scale
    by_kind = {c.interpreter: c for c in r.comparisons}
    assert by_kind[kind].batch_size == 4 and by_kind[kind].ok and not by_kind[kind].batch_refused


def test_batch_3_after_4_in_one_interpreter(setup):
    """Resizing down and to an odd size keeps every row right (no stale shapes)."""
    _, _, x, ref, reports = setup
    it = interpreter("litert", reports["palettized_all"].path)
    for n in (4, 3, 1, 4):
        assert np.abs(run_batch(it, x[:n]) - ref[:n]).max() <= 1e-4 * np.abs(ref).max()


def test_palettized_storage_types_unchanged(setup):
    _, palettes, _, _, reports = setup
    once = ex.inspect_tflite(reports["palettized_all"].path)
    assert len(once.palettized) == len(palettes) == 5
    assert {(p["mode"], p["storage"], p["per_element"], p["K"]) for p in once.palettized} == \
        {("once", "int16", 3, 16)}
    per_invoke = ex.inspect_tflite(reports["palettized_per_invoke"].path)
    assert {(p["mode"], p["storage"], p["K"]) for p in per_invoke.palettized} == \
        {("per_invoke", "int4", 16)}
    assert sorted(p["index_bytes"] for p in per_invoke.palettized) == \
        sorted(-(-p.n_values // 2) for p in palettes)
    routes = {t["palette"]: t["route"] for t in reports["palettized_all"].tensors}
    assert routes["c3/kernel"] == "BATCH_MATMUL (im2col), weight on the left"
    assert routes["c2/kernel"] == "BATCH_MATMUL (im2col)"


@pytest.mark.parametrize("label", ["float", "palettized", "palettized_all",
                                   "palettized_per_invoke"])
def test_size_close_to_batch_1_export(setup, label):
    model, palettes, x, _, reports = setup
    static = convert_lib.convert(model, convert_lib.input_specs(model, x, batch=1))
    if label != "float":
        fm = FlatModel.from_bytes(static)
        palettize_flatbuffer(fm, palettes, **{k: v for k, v in ex.EXPORT_TARGETS[label].items()
                                              if k != "format"})
        static = fm.to_bytes()
    dynamic = reports[label].bytes
    assert abs(dynamic - len(static)) <= 0.03 * len(static) + 2048, (dynamic, len(static))


def test_flatten_is_one_reshape_in_one_delegate_partition(setup):
    """Batch -1 Flatten: no SHAPE/STRIDED_SLICE/PACK left, XNNPACK takes the whole float
    graph in one partition."""
    _, _, _, _, reports = setup
    fm = FlatModel.from_bytes(pathlib.Path(reports["float"].path).read_bytes())
    names = [fm.op_name(op) for op in fm.operators]
    assert not {"SHAPE", "PACK", "STRIDED_SLICE"} & set(names)
    (reshape,) = [op for op in fm.operators if fm.op_name(op) == "RESHAPE"]
    assert fm.const(int(reshape.inputs[1])).tolist() == [-1, 512]
    ops = interpreter("litert", reports["float"].path)._get_ops_details()
    assert sum(o["op_name"] == "DELEGATE" for o in ops) == 1


def test_tflm_is_fixed_batch_and_refuses_another(setup):
    pytest.importorskip("tflite_micro")
    from tflite_micro import runtime

    _, _, x, ref, reports = setup
    r = reports["tflm"]
    assert not r.dynamic_batch and any("batch fixed at 1" in n for n in r.notes)
    fm = FlatModel.from_bytes(pathlib.Path(r.path).read_bytes())
    (t,) = [int(t) for t in fm.graph.inputs]
    assert fm.signature(t) == fm.shape(t) == (1, 8, 8, 3)
    it = runtime.Interpreter.from_file(r.path, arena_size=1 << 22)
    with pytest.raises(ValueError, match="Dimension mismatch"):
        it.set_input(x, 0)
    it.set_input(x[:1], 0)
    it.invoke()
    assert np.abs(it.get_output(0) - ref[:1]).max() <= 1e-4 * np.abs(ref).max()


def test_unresizable_graph_gets_fixed_signature_and_raises(tmp_path):
    """Keras 3's LSTM converts to a WHILE loop with a batch-1 RESHAPE even at batch None:
    the interpreter refuses batch 4, so the export says "fixed at 1" and the file raises."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.LSTM(6)(inp)))
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    r = ex.to_tflite(model, tmp_path / "lstm.tflite", "float", sample_inputs=x)
    assert not r.dynamic_batch and all(c.batch_refused for c in r.comparisons)
    assert any("batch fixed at 1" in n for n in r.notes)
    it = interpreter("litert", r.path)
    assert list(it.get_input_details()[0]["shape_signature"]) == [1, 5, 4]
    with pytest.raises(RuntimeError, match="only allows mutating unknown dimensions"):
        it.resize_tensor_input(it.get_input_details()[0]["index"], [3, 5, 4], strict=True)
    it.resize_tensor_input(it.get_input_details()[0]["index"], [3, 5, 4])
    with pytest.raises(RuntimeError):  # the guard RESHAPE [1, 5, 4]
        it.allocate_tensors()
    np.testing.assert_allclose(run_batch(interpreter("tflite", r.path), x[:1]),
                               np.asarray(model(x[:1])), atol=1e-5)


def test_verifier_catches_a_file_that_drops_batch_rows():
    """A file with a dynamic signature that keeps only the first sample (a SLICE of size 1
    on the batch axis, as the batch-1 lowering did) answers batch 4 with one row: refused."""
    keras.utils.set_random_seed(1)
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 8)), L.Conv2D(8, 3, name="c"),
                              L.GlobalAveragePooling2D(), L.Dense(4, name="d")])
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 8)).astype(np.float32)
    fm = FlatModel.from_bytes(convert_lib.convert(model, convert_lib.input_specs(model, x)))
    (inp,) = [int(t) for t in fm.graph.inputs]
    first = fm.add_tensor("first_sample", [1, 6, 6, 8], "float32")
    for op in fm.operators:
        op.inputs = np.asarray([first if int(t) == inp else int(t) for t in op.inputs], np.int32)
    fm.graph.operators.insert(0, fm.make_op("SLICE", [
        inp, fm.add_const("begin", np.zeros(4, np.int32)),
        fm.add_const("size", np.asarray([1, 6, 6, 8], np.int32))], [first]))
    content = fm.to_bytes()
    ref = verify.keras_outputs(model, [x])
    assert verify.compare(ref, content, [x], "litert", 1e-5).ok  # right at batch 1
    with pytest.raises(ex.ExportVerificationError, match=r"shape \(1, 4\).*\(4, 4\)"):
        verify.compare(ref, content, [x], "litert", 1e-5, batch=([x], ref))


def two_output_model():
    keras.utils.set_random_seed(4)
    L = keras.layers
    inp = keras.Input((6, 6, 2))
    h = L.Flatten()(L.Conv2D(4, 3, activation="relu", name="c")(inp))
    first = L.Dense(3, name="z_first")(h)
    second = L.Dense(5, name="a_second")(h)
    third = L.Dense(2, name="m_third")(L.Flatten()(inp))
    return keras.Model(inp, [first, second, third])


@pytest.mark.parametrize("label", ["float", "int8_full", "palettized_all",
                                   "palettized_per_invoke"])
def test_outputs_keep_keras_order(tmp_path, label):
    """The converter lists this model's outputs as [second, first, third]; the export puts
    them in Keras' order, in get_output_details() and in the signature, checked per output."""
    model = two_output_model()
    palettes = clustered_copy(model, 8)
    x = np.random.default_rng(3).uniform(-1, 1, (4, 6, 6, 2)).astype(np.float32)
    with (pytest.warns(UserWarning, match="held-out check failed") if label == "int8_full"
          else contextlib.nullcontext()):  # on the 2 samples it was not calibrated on
        r = ex.to_tflite(model, tmp_path / "m.tflite", palettes=palettes, sample_inputs=x,
                         **ex.EXPORT_TARGETS[label])
    refs = [np.asarray(y) for y in model(x)]
    tol = {"int8_full": 2.5e-1}.get(label, 1e-4)
    for kind in ("litert", "tflite"):
        it = interpreter(kind, r.path)
        details = it.get_output_details()
        assert [tuple(d["shape_signature"]) for d in details] == [(-1, 3), (-1, 5), (-1, 2)]
        run_batch(it, x)
        for d, ref in zip(details, refs):
            got = it.get_tensor(d["index"])
            assert got.shape == ref.shape
            assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
        runner = it.get_signature_runner()
        (name,) = runner.get_input_details()  # named after the Keras input: input_layer_N
        assert name == model.inputs[0]._keras_history.operation.name  # noqa: SLF001
        sig = runner(**{name: x})
        for k, ref in enumerate(refs):
            assert np.abs(sig[f"output_{k}"] - ref).max() <= tol * np.abs(ref).max()


def test_dense_on_a_sequence_and_two_inputs(tmp_path):
    """A Dense on a (16, 32) sequence converts, at batch -1, to RESHAPEs whose shapes are
    computed (SHAPE/GATHER/REDUCE_PROD/PACK, signature [-1, -1]); they become constants
    [-1, 32] / [-1, 16, 48], so the lowering takes the layer (16 rows: weight on the left).
    Full int8 calibrates a two-input model by input name (it used to feed them swapped)."""
    keras.utils.set_random_seed(5)
    L = keras.layers
    seq, side = keras.Input((16, 32)), keras.Input((5,))
    h = L.Flatten()(L.Dense(48, activation="relu", name="seq")(seq))
    model = keras.Model([seq, side], [L.Dense(4, name="o_side")(side),
                                      L.Dense(3, name="o_all")(L.Concatenate()([h, side]))])
    palettes = clustered_copy(model, 16)
    rng = np.random.default_rng(6)
    x = [rng.normal(size=(4, 16, 32)).astype(np.float32),
         rng.normal(size=(4, 5)).astype(np.float32)]
    reports = {label: ex.to_tflite(model, tmp_path / f"{label}.tflite", palettes=palettes,
                                   sample_inputs=x, **ex.EXPORT_TARGETS[label])
               for label in ("float", "palettized_all", "int8_full")}
    fm = FlatModel.from_bytes(pathlib.Path(reports["float"].path).read_bytes())
    names = [fm.op_name(op) for op in fm.operators]
    assert not {"SHAPE", "PACK", "GATHER", "REDUCE_PROD"} & set(names)
    assert sorted(fm.const(int(op.inputs[1])).tolist() for op in fm.operators
                  if fm.op_name(op) == "RESHAPE") == [[-1, 16, 48], [-1, 32], [-1, 768]]
    routes = {t["palette"]: t["route"] for t in reports["palettized_all"].tensors}
    assert routes["seq/kernel"] == "BATCH_MATMUL, weight on the left"
    refs = [np.asarray(y) for y in model(x)]
    for label, r in reports.items():
        assert r.dynamic_batch and all(c.batch_size == 4 and c.ok for c in r.comparisons)
        it = interpreter("litert", r.path)
        for d, a in zip(it.get_input_details(), x):
            it.resize_tensor_input(d["index"], list(a.shape), strict=True)
        it.allocate_tensors()
        for d, a in zip(it.get_input_details(), x):
            it.set_tensor(d["index"], a)
        it.invoke()
        for d, ref in zip(it.get_output_details(), refs):
            got = it.get_tensor(d["index"])
            tol = 0.5 if label == "int8_full" else 1e-4
            assert got.shape == ref.shape and np.abs(got - ref).max() <= tol * np.abs(ref).max()


def _np_grouped_conv(x, kernel, bias, groups, padding):
    """Independent float64 reference of a Keras grouped Conv2D (stride 1, no dilation)."""
    kh, kw, cg, c_out = kernel.shape
    if padding == "same":
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    n, h, w, _ = x.shape
    ho, wo, og = h - kh + 1, w - kw + 1, c_out // groups
    y = np.zeros((n, ho, wo, c_out)) + bias
    for g in range(groups):
        for dy in range(kh):
            for dx in range(kw):
                y[..., g * og:(g + 1) * og] += (x[:, dy:dy + ho, dx:dx + wo, g * cg:(g + 1) * cg]
                                                @ kernel[dy, dx, :, g * og:(g + 1) * og])
    return y


@pytest.mark.parametrize("keep_float", ["auto", None])
@pytest.mark.parametrize("kind", ["litert", "tflite"])
def test_grouped_conv_lowered_once_matches_keras_at_any_batch(tmp_path, keep_float, kind):
    """Grouped CONV_2D (4 input channels: one-hot im2col; 16 and 128: slice im2col) becomes
    one batched BATCH_MATMUL over the groups; it used to be lowered as if ungrouped
    (XNNPACK: "failed to reshape runtime"). ``"auto"`` lowers the large 128 -> 128 layer."""
    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((16, 16, 4))
    y = L.Conv2D(16, 3, groups=2, padding="same", name="g2a")(inp)
    y = L.Conv2D(128, 3, groups=4, padding="same", activation="relu", name="g4")(y)
    model = keras.Model(inp, L.Conv2D(128, 3, groups=2, name="g2")(y))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    palettes = clustered_copy(model, 16)
    x = rng.normal(size=(3, 16, 16, 4)).astype(np.float32)
    path = str(tmp_path / "grouped.tflite")
    report = ex.to_tflite(model, path, "palettized", palettes, x, decode="once",
                          keep_float=keep_float)
    routes = {t["palette"]: t["route"] for t in report.tensors}
    assert routes["g2/kernel"] == "BATCH_MATMUL (im2col), 2 groups batched"
    if keep_float is None:
        assert routes["g2a/kernel"] == "BATCH_MATMUL (im2col), 2 groups batched"
        assert routes["g4/kernel"] == "BATCH_MATMUL (im2col), 4 groups batched"
    w = {v.path: np.asarray(v, np.float64) for v in model.weights}
    ref = x.astype(np.float64)
    for name, groups, padding in [("g2a", 2, "same"), ("g4", 4, "same"), ("g2", 2, "valid")]:
        ref = _np_grouped_conv(ref, w[f"{name}/kernel"], w[f"{name}/bias"], groups, padding)
        ref = np.maximum(ref, 0) if name == "g4" else ref
    np.testing.assert_allclose(np.asarray(model(x)), ref, atol=1e-4 * np.abs(ref).max())
    it = interpreter(kind, path)
    for b in (1, 3):
        out = run_batch(it, x[:b])
        assert out.shape == ref[:b].shape
        assert np.abs(out - ref[:b]).max() <= 1e-4 * np.abs(ref).max()
