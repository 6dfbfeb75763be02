"""Palettized ``decode="once"`` on mobile blocks, 1-D (vector) palettes, and recurrent loops.

* A MobileNetV2 block (expand 1x1 -> depthwise 3x3 -> project 1x1, BatchNormalization,
  ReLU6, residual) and an Xception block (separable convs, strided 1x1 shortcut): the export
  verifies (``to_tflite`` runs the file at batch 1 and 4 in both interpreters), the stored
  types are what the report claims (int16 index tensors for palettized weights, the exact
  float32 values for kept ones, no float copy of a palettized one), and ``keep_float="auto"``
  keeps what its reasons say.
* Strided and dilated convolutions lower to BATCH_MATMUL and match Keras.
* The keep-float budget keeps the convs with the most estimated time per byte saved first
  (checked against the cost formula evaluated here).
* Vector palettes (a custom layer's bias): an ADD operand, a FULLY_CONNECTED bias.
* A recurrent layer's decode chains leave the WHILE body; the int8 report, ``inspect_tflite``
  and TFLite Micro see the loop body; the energy reader counts the body once per time step.
"""

import hashlib

import keras
import numpy as np
import pytest

import dkm_tf.export as ex
from dkm_tf.energy.tflite_reader import read_tflite
from dkm_tf.export import policy
from dkm_tf.export.palettize import _match, tflite_layouts
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.graph.share import share_weights

L = keras.layers


def _digests(palette):
    kernel = palette.decode().astype(np.float32)
    return {hashlib.sha1(kernel.transpose(tp).reshape(ts).tobytes()).hexdigest()
            for _, tp, ts in tflite_layouts(palette.layout)}


def _float_constants(path):
    """sha1 of every float32 constant, every subgraph."""
    with open(path, "rb") as f:
        fm = FlatModel.from_bytes(f.read())
    out = set()
    for g in range(len(fm.model.subgraphs)):
        view = fm.subgraph(g)
        out |= {hashlib.sha1(view.raw(t)).hexdigest() for t in range(len(view.tensors))
                if view.type_name(t) == "float32" and view.raw(t)}
    return out


def _check_storage(report, palettes):
    """Kept weights are in the file as float32, palettized ones only as packed indices."""
    consts = _float_constants(report.path)
    info = ex.inspect_tflite(report.path)
    by_name = {t["palette"]: t for t in report.tensors}
    for p in palettes:
        rec = by_name[p.name]
        if rec.get("kept"):
            assert rec["storage"].startswith("float32") and _digests(p) & consts, p.name
        else:
            assert rec["storage"].startswith(("int16", "int4", "int2", "uint8")), rec
            assert not _digests(p) & consts, p.name  # no float copy left behind
    n_pal = sum(not t.get("kept") for t in report.tensors)
    assert len(info.palettized) == n_pal
    idx_bytes = sum(t["bytes"] for t in info.tensors if t["role"].startswith("palette indices"))
    assert idx_bytes == sum(t["index_bytes"] for t in report.tensors if not t.get("kept"))


def _mobilenet_block():
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.ReLU(6.0)(L.BatchNormalization(name="stem_bn")(x))
    for i, expand in enumerate((4, 6)):
        y = L.Conv2D(16 * expand, 1, use_bias=False, name=f"b{i}_expand")(x)
        y = L.ReLU(6.0)(L.BatchNormalization(name=f"b{i}_expand_bn")(y))
        y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"b{i}_dw")(y)
        y = L.ReLU(6.0)(L.BatchNormalization(name=f"b{i}_dw_bn")(y))
        y = L.Conv2D(16, 1, use_bias=False, name=f"b{i}_project")(y)
        x = L.Add()([x, L.BatchNormalization(name=f"b{i}_project_bn")(y)])
    out = L.Dense(5, name="head")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    _randomize_bn(model)
    return model


def _xception_block():
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, use_bias=False, name="stem")(inp)))
    res = L.BatchNormalization()(L.Conv2D(32, 1, strides=2, padding="same", use_bias=False,
                                          name="shortcut")(x))
    y = L.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep1")(x)
    y = L.ReLU()(L.BatchNormalization()(y))
    y = L.SeparableConv2D(32, 3, padding="same", use_bias=False, name="sep2")(y)
    y = L.MaxPooling2D(3, strides=2, padding="same")(L.BatchNormalization()(y))
    out = L.Dense(4, name="head")(L.GlobalAveragePooling2D()(L.Add()([y, res])))
    model = keras.Model(inp, out)
    _randomize_bn(model)
    return model


def _randomize_bn(model):
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, g.shape), rng.normal(0, 0.1, b.shape),
                               rng.normal(0, 0.1, m.shape), rng.uniform(0.5, 1.5, v.shape)])


@pytest.fixture(scope="module")
def mobile():
    model = _mobilenet_block()
    res = share_weights(model, 16)
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype(np.float32)
    return res, x


def test_mobilenet_block_auto_keeps_depthwise_float(mobile, tmp_path):
    res, x = mobile
    r = ex.to_tflite(res.model, tmp_path / "m.tflite", "palettized", res.palettes, x)
    assert r.max_rel_error < 1e-4 and all(c.ok and c.batch_size == 4 for c in r.comparisons)
    by_name = {t["palette"]: t for t in r.tensors}
    for i in (0, 1):  # per-channel K=16 codebooks over 9 weights: bigger than float32
        dw = by_name[f"b{i}_dw/kernel"]
        assert dw["kept"] and ("smaller than float32" in dw["route"]
                               or "depthwise" in dw["route"]), dw
    for name in ("b1_project/kernel", "head/kernel"):
        assert not by_name[name].get("kept"), by_name[name]
    _check_storage(r, res.palettes)
    with open(r.path, "rb") as f:
        fm = FlatModel.from_bytes(f.read())
    for op in fm.operators:  # XNNPACK runs depthwise only on a constant filter
        if fm.op_name(op) == "DEPTHWISE_CONV_2D":
            assert fm.raw(int(op.inputs[1]))
    lowered = sum(t["route"].startswith("BATCH_MATMUL") for t in r.tensors)
    assert r.tensors and ex.inspect_tflite(r.path).ops.get("BATCH_MATMUL", 0) == lowered


def test_mobilenet_block_palettize_everything(mobile, tmp_path):
    res, x = mobile
    r = ex.to_tflite(res.model, tmp_path / "m.tflite", "palettized", res.palettes, x,
                     keep_float=None)
    assert r.max_rel_error < 1e-4 and not any(t.get("kept") for t in r.tensors)
    _check_storage(r, res.palettes)
    dw = next(t for t in r.tensors if t["palette"] == "b0_dw/kernel")
    assert dw["route"] == "builtin DEPTHWISE_CONV_2D (decoded weight)"
    assert any("b0_dw/kernel" in n and "larger than float32" in n for n in r.notes)
    # the stem (stride 2, 3x3) now lowers too
    assert next(t for t in r.tensors if t["palette"] == "stem/kernel")["route"] \
        .startswith("BATCH_MATMUL (im2col)")
    # a palette name keeps just that weight
    r2 = ex.to_tflite(res.model, tmp_path / "k.tflite", "palettized", res.palettes, x,
                      keep_float=["b1_expand/kernel"])
    kept = [t["palette"] for t in r2.tensors if t.get("kept")]
    assert kept == ["b1_expand/kernel"]
    with pytest.raises(ValueError, match="keep_float.*nope"):
        ex.to_tflite(res.model, tmp_path / "e.tflite", "palettized", res.palettes, x,
                     keep_float=["nope"])
    with pytest.raises(ValueError, match=r"keep_float.*budget >= 0.*-0.5"):
        ex.to_tflite(res.model, tmp_path / "e.tflite", "palettized", res.palettes, x,
                     keep_float=-0.5)
    # a zero latency budget keeps every convolution float32 (the dense head is no candidate)
    r3 = ex.to_tflite(res.model, tmp_path / "z.tflite", "palettized", res.palettes, x,
                      keep_float=0)
    kept = {t["palette"] for t in r3.tensors if t.get("kept")}
    assert kept == {p.name for p in res.palettes} - {"head/kernel"}
    assert r3.max_rel_error < 1e-4


def test_separable_block_and_strided_shortcut(tmp_path):
    model = _xception_block()
    res = share_weights(model, 16)
    x = np.random.default_rng(1).standard_normal((4, 16, 16, 1)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "x.tflite", "palettized", res.palettes, x)
    assert r.max_rel_error < 1e-4
    by_name = {t["palette"]: t for t in r.tensors}
    assert by_name["sep1/depthwise_kernel"]["kept"] and by_name["sep2/depthwise_kernel"]["kept"]
    _check_storage(r, res.palettes)
    r = ex.to_tflite(res.model, tmp_path / "a.tflite", "palettized", res.palettes, x,
                     keep_float=None)
    assert r.max_rel_error < 1e-4
    by_name = {t["palette"]: t for t in r.tensors}
    for name in ("shortcut/kernel", "sep2/pointwise_kernel", "stem/kernel"):
        assert by_name[name]["route"].startswith("BATCH_MATMUL"), by_name[name]
    _check_storage(r, res.palettes)


def test_strided_and_dilated_convs_lower_to_batch_matmul(tmp_path):
    keras.utils.set_random_seed(2)
    inp = keras.Input((17, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c3")(inp)
    x = L.Conv2D(16, 3, strides=2, padding="valid", activation="relu6", name="c8")(x)
    y = L.Conv2D(16, 1, strides=2, padding="same", name="p")(x)
    x = L.Conv2D(16, 3, dilation_rate=2, padding="same", name="d")(x)
    x = L.Conv2D(16, 3, strides=(2, 1), padding="same", name="s21")(x)
    out = L.Dense(5, name="head")(L.Concatenate()([L.GlobalAveragePooling2D()(x),
                                                   L.GlobalAveragePooling2D()(y)]))
    res = share_weights(keras.Model(inp, out), 8)
    xs = np.random.default_rng(3).standard_normal((4, 17, 16, 3)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "s.tflite", "palettized", res.palettes, xs,
                     keep_float=None)
    assert r.max_rel_error < 1e-4 and all(c.batch_size == 4 for c in r.comparisons)
    for t in r.tensors:
        if t["palette"] != "head/kernel":
            assert t["route"].startswith("BATCH_MATMUL (im2col)"), t
    assert "CONV_2D" not in ex.inspect_tflite(r.path).ops


def test_budget_keeps_most_time_per_byte_first(mobile):
    res, x = mobile
    from dkm_tf.export import convert as convert_lib

    folded = res.model
    fm = FlatModel.from_bytes(convert_lib.convert(folded, convert_lib.input_specs(folded, x)))
    found = _match(fm, res.palettes)
    assert len(found) == len(res.palettes)
    convs, fixed = {}, 0.0
    for key, (p, _t, uses, _tp, _ts) in found.items():
        if {n for _, n in uses} == {"FULLY_CONNECTED"}:  # counted, never kept for latency
            fixed += policy.fc_overhead_ns(fm, fm.operators[uses[0][0]])
        if {n for _, n in uses} == {"CONV_2D"}:
            op = fm.operators[uses[0][0]]
            w, out = fm.shape(int(op.inputs[1])), fm.shape(int(op.outputs[0]))
            rows, c_out, k = int(np.prod(out[:-1])), out[-1], int(np.prod(w[1:]))
            im2col = rows * k if w[1] * w[2] > 1 or op.builtinOptions.strideH > 1 else 0
            per_im2col = policy.NS_PER_IM2COL + policy.NS_PER_IM2COL_MB * max(
                0.0, 4 * im2col / 2**20 - policy.IM2COL_CACHE_MB)
            left = rows >= 16 and rows * (k + c_out) < k * c_out
            cost = (policy.NS_PER_LAYER + policy.NS_PER_OUTPUT * rows * c_out * (1 + left)
                    + policy.NS_PER_MAC_EXTRA * rows * c_out * k + per_im2col * im2col)
            _, idx, cb = policy.once_bytes(p, 1 << 20)
            convs[key] = cost / (4 * p.n_values - idx - cb)
    assert len(convs) == 5
    assert policy.plan_keep_float(fm, found, "auto", budget=1e9).keys().isdisjoint(convs)
    everything = policy.plan_keep_float(fm, found, "auto", budget=0.0)
    assert set(convs) <= set(everything)
    ranked = sorted(convs, key=convs.get, reverse=True)
    for n in range(1, len(ranked)):  # a budget that forces n convs out keeps the n dearest
        costs = {k: policy.overhead_ns(fm, fm.operators[found[k][2][0][0]], True)
                 for k in ranked}
        rest = fixed + sum(costs[k] for k in ranked[n:])
        budget = (rest + 1.0) / policy.float_time_ns(fm)
        kept = policy.plan_keep_float(fm, found, "auto", budget=budget)
        assert set(convs) & set(kept) == set(ranked[:n]), n
        assert all("latency" in kept[k] for k in ranked[:n])


@keras.saving.register_keras_serializable(package="dkm_tf_tests_mobile")
class VectorBiasDense(L.Layer):
    """y = relu(x W + b) with both W and b clustered (b as a "vector" palette)."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="random_normal",
                                    name="bias")

    def call(self, x):
        return keras.ops.relu(keras.ops.matmul(x, self.kernel) + self.bias)

    def get_clusterable_weights(self):
        return [("kernel", self.kernel, "dense"), ("bias", self.bias, "vector")]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="dkm_tf_tests_mobile")
class ScaleShift(L.Layer):
    """y = x * s + b, both 1-D weights clustered (ADD / MUL operands in TFLite)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="random_normal",
                                     name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="random_normal",
                                     name="shift")

    def call(self, x):
        return x * self.scale + self.shift

    def get_clusterable_weights(self):
        return [("scale", self.scale, "vector"), ("shift", self.shift, "vector")]


@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_vector_palettes_export(decode, tmp_path):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6,)), VectorBiasDense(32, name="vb"),
                              ScaleShift(name="ss"), L.Dense(3, name="head")])
    res = share_weights(model, 4)
    assert {p.layout.kind for p in res.palettes} == {"dense", "vector"}
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "v.tflite", "palettized", res.palettes, x,
                     decode=decode)
    assert r.max_rel_error < 1e-4
    by_name = {t["palette"]: t for t in r.tensors}
    for name in ("ss/scale", "ss/shift"):  # MUL / ADD operands: palettized
        assert not by_name[name].get("kept") and "decoded weight" in by_name[name]["route"]
    bias = by_name["vb/bias"]
    if decode == "once":  # a decoded bias would take FULLY_CONNECTED out of XNNPACK
        assert bias["kept"] and "bias of FULLY_CONNECTED" in bias["route"]
        _check_storage(r, res.palettes)
        r = ex.to_tflite(res.model, tmp_path / "n.tflite", "palettized", res.palettes, x,
                         keep_float=None)
        assert r.max_rel_error < 1e-4 and not any(t.get("kept") for t in r.tensors)
        _check_storage(r, res.palettes)
    else:
        assert not bias.get("kept") and bias["storage"] == "int2"
    if ex.tflm_available():
        r = ex.to_tflite(res.model, tmp_path / "v.tflm", "tflm", res.palettes, x)
        assert {t["palette"] for t in r.tensors if "LUT" in t["storage"]} == \
            {p.name for p in res.palettes}


def _lstm(steps=5, units=8):
    keras.utils.set_random_seed(6)
    inp = keras.Input((steps, 4))
    return keras.Model(inp, L.Dense(3, name="head")(L.LSTM(units, name="lstm")(inp)))


@pytest.fixture(scope="module")
def lstm():
    model = _lstm()
    res = share_weights(model, 16)
    x = np.random.default_rng(7).standard_normal((3, 5, 4)).astype(np.float32)
    return res, x


@pytest.mark.parametrize("decode", ["once", "per_invoke"])
def test_recurrent_decode_leaves_the_loop_body(lstm, decode, tmp_path):
    res, x = lstm
    r = ex.to_tflite(res.model, tmp_path / "r.tflite", "palettized", res.palettes, x,
                     decode=decode)
    assert r.max_rel_error < 1e-4
    cell = [t for t in r.tensors if t["palette"].startswith("lstm/")]
    assert len(cell) == 2 and all(t["subgraph"] > 0 and t["decoded_in_subgraph"] == 0
                                  for t in cell)
    with open(r.path, "rb") as f:
        fm = FlatModel.from_bytes(f.read())
    body = fm.subgraph(cell[0]["subgraph"])
    names = [body.op_name(op) for op in body.operators]
    assert not {"DEQUANTIZE", "CAST", "TILE"} & set(names)
    for op in body.operators:  # the cell's FULLY_CONNECTED reads a loop variable
        if body.op_name(op) == "FULLY_CONNECTED":
            assert int(op.inputs[1]) in {int(t) for t in body.graph.inputs}
    info = ex.inspect_tflite(r.path)
    assert sum(p["mode"] == decode for p in info.palettized) == 3
    _check_storage(r, res.palettes)


def test_recurrent_int8_tflm_inspect_and_energy(lstm, tmp_path):
    res, x = lstm
    steps, units = 5, 8
    r = ex.to_tflite(res.model, tmp_path / "f.tflite", "float", sample_inputs=x)
    info = ex.inspect_tflite(r.path)
    body_weights = [t for t in info.tensors if t["subgraph"] > 0 and t["role"] == "weight"]
    assert sorted(t["shape"] for t in body_weights) == [(4 * units, 4), (4 * units, units)]
    shapes, skipped = read_tflite(r.path)
    assert not any("WHILE" in why for _, why in skipped)
    dense = {s.macs for s in shapes if s.op == "FULLY_CONNECTED"}
    # the cell's two matmuls run once per time step, the head once
    assert dense == {steps * 4 * units * 4, steps * 4 * units * units, units * 3}
    big = share_weights(_lstm(units=32), 16)  # >= 1024 weights: the int8 converter takes it
    r = ex.to_tflite(big.model, tmp_path / "q.tflite", "int8", big.palettes, x,
                     int8_scales="shared")
    rec = {t["palette"]: t for t in r.tensors}["lstm/cell.recurrent_kernel"]
    assert rec["storage"] == "int8" and rec["subgraph"] > 0
    assert rec["int8_distinct_total"] <= 16
    if ex.tflm_available():
        r = ex.to_tflite(res.model, tmp_path / "r.tflm", "tflm", res.palettes, x)
        assert all("LUT" in t["storage"] for t in r.tensors)
        assert {t.get("subgraph", 0) > 0 for t in r.tensors} == {True, False}


def test_split_recurrent_kernel_tflm_keeps_it_float(tmp_path):
    if not ex.tflm_available():
        pytest.skip("tflite-micro not installed")
    keras.utils.set_random_seed(8)
    inp = keras.Input((5, 4))
    model = keras.Model(inp, L.GRU(8, reset_after=False, name="gru")(inp))
    res = share_weights(model, 4)
    x = np.random.default_rng(9).standard_normal((3, 5, 4)).astype(np.float32)
    r = ex.to_tflite(res.model, tmp_path / "g.tflm", "tflm", res.palettes, x)
    by_name = {t["palette"]: t for t in r.tensors}
    assert by_name["gru/cell.recurrent_kernel"]["storage"] == "float32 (not found)"
    assert "LUT" in by_name["gru/cell.kernel"]["storage"]
    assert any(n.startswith("gru/cell.recurrent_kernel: kept float32") for n in r.notes)
