"""keras.applications architectures through share_weights, palettized export and energy.

Built offline (``weights=None``), tiny inputs, fixed seeds; BatchNormalization layers get
non-trivial moving statistics so that folding is exercised. The grouped-conv test is the
smallest model that showed the bug ConvNeXtTiny did: its palettized file read a shape tensor
before the op writing it.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import dkm_tf  # noqa: E402
from dkm_tf import energy, export  # noqa: E402


def _topological_violations(path):
    """(reader op, producer op) pairs where an op reads a tensor a later op writes."""
    from tensorflow.lite.python import schema_py_generated as schema  # noqa: PLC0415

    with open(path, "rb") as f:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(f.read(), 0))
    bad = []
    for graph in model.subgraphs:
        producer = {int(t): k for k, op in enumerate(graph.operators) for t in op.outputs}
        bad += [(k, producer[int(t)]) for k, op in enumerate(graph.operators)
                for t in op.inputs if producer.get(int(t), -1) > k]
    return bad


def _run(path, x):
    interpreters = pytest.importorskip("ai_edge_litert.interpreter")
    it = interpreters.Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _grouped_model(c=8):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, c))
    x = inp
    for i in range(3):  # ConvNeXt's depthwise convs are Conv2D(groups=C), 7x7
        x = keras.layers.Conv2D(c, 7, padding="same", groups=c, name=f"dw{i}")(x)
        x = keras.layers.Dense(c, name=f"pw{i}")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


def test_grouped_conv_lowering_writes_ops_in_order(tmp_path):
    model = _grouped_model()
    shared = dkm_tf.share_weights(model, n_clusters=16)
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype("float32")
    path = tmp_path / "g.tflite"
    report = export.to_tflite(shared.model, path, palettes=shared.palettes, sample_inputs=x,
                              keep_float=None)
    assert sum("groups batched" in t["route"] for t in report.tensors) == 3
    # every op reads only tensors written before it (was: 2 RESHAPEs of dw0 / dw1 read the
    # shape a GATHER emitted with dw2's lowering wrote, 34-68 ops later)
    assert _topological_violations(path) == []
    for b in (1, 4):
        want = shared.model.predict(x[:b], verbose=0)
        np.testing.assert_allclose(_run(path, x[:b]), want, rtol=0, atol=1e-5)
    # the energy reader sees every stored palette (was: 1 of the 3 grouped convs)
    est = energy.estimate(str(path))
    linear = [rec for rec in est.layers if rec.shape.kind in ("conv", "dense")]
    assert len(linear) == 6
    assert [rec.n_clusters for rec in linear] == [16] * 6


def _bn_statistics(model, seed=0):
    rng = np.random.default_rng(seed)
    n = 0
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.3, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            n += 1
    return n


_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")


@pytest.fixture(scope="module")
def mobilenet_v3():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), minimalistic=True, weights=None, classes=10,
        classifier_activation=None)
    assert _bn_statistics(model) == 34
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    return model, x


def test_mobilenet_v3_share_weights_covers_every_kernel(mobilenet_v3):
    model, x = mobilenet_v3
    shared = dkm_tf.share_weights(model, n_clusters=16)
    assert len(shared.folded) == 34 and shared.skipped == []
    layers = {la.name: la for la in shared.model._flatten_layers(include_self=False)}  # noqa: SLF001
    for p in shared.palettes:
        (var,) = [w for w in layers[p.layer_name].weights
                  if w.path.split("/")[-1] == p.weight_name.split("/")[-1]]
        np.testing.assert_array_equal(var.numpy(), p.decode())
        assert len(np.unique(p.codebook)) <= 16 * p.codebook.shape[0]
    kernels = {la.name for la in model._flatten_layers(include_self=False)  # noqa: SLF001
               if any(w.path.split("/")[-1] in _KERNELS for w in la.weights)}
    assert kernels == {p.layer_name for p in shared.palettes}


def test_mobilenet_v3_lossless_k_equals_float(mobilenet_v3):
    model, x = mobilenet_v3
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    rng = np.random.default_rng(5)
    for layer in copy._flatten_layers(include_self=False):  # noqa: SLF001
        for w in layer.weights:
            if w.path.split("/")[-1] in _KERNELS:  # 4 values per tensor: BN folding makes
                levels = np.array([-1.5, -0.5, 0.5, 1.5]) * float(np.std(w.numpy()))
                w.assign(levels[rng.integers(0, 4, w.shape)].astype("float32"))
    shared = dkm_tf.share_weights(copy, n_clusters=4, granularity="per_channel")
    want = copy.predict(x, verbose=0)  # ... them <= 4 per output channel
    np.testing.assert_allclose(shared.model.predict(x, verbose=0), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())


def test_kernel_scaled_by_a_folded_rescaling_is_palettized(tmp_path):
    # EfficientNetB0's stem: Rescaling(1/255) -> ZeroPadding2D -> Conv2D; the converter
    # folds the scaling into the kernel, which was kept float32 ("not found")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem")(x)
    x = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inp, x)
    shared = dkm_tf.share_weights(model, n_clusters=16)
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    path = tmp_path / "s.tflite"
    report = export.to_tflite(shared.model, path, palettes=shared.palettes, sample_inputs=x,
                              keep_float=None)
    (stem,) = [t for t in report.tensors if t["palette"] == "stem/kernel"]
    assert not stem.get("not_found") and stem["storage"].startswith("int16"), stem
    assert "multiplied the weight by 0.00392157" in stem["route"]
    assert not any("kept float32" in n for n in report.notes)
    assert report.bytes == path.stat().st_size
    for b in (1, 4):
        want = shared.model.predict(x[:b], verbose=0)
        np.testing.assert_allclose(_run(path, x[:b]), want, rtol=0,
                                   atol=1e-5 * np.abs(want).max())
    # the file stores no float32 constant of the kernel's size (216 weights)
    assert all(rec["n_weights"] != 216 or not rec.get("kept") for rec in report.tensors)


def test_two_scaled_copies_of_one_kernel_claim_no_tensor_twice(tmp_path):
    # review fix: convs a and b share one clustered kernel behind Rescaling(0.5) / (0.25);
    # both palettes were matched to b's tensor (two decode chains, a's kernel float32 with no
    # note). An ambiguous scaled match now stays "not found", each palette honestly kept.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    ca = keras.layers.Conv2D(8, 3, use_bias=False, name="a")
    cb = keras.layers.Conv2D(8, 3, use_bias=False, name="b")
    y = keras.layers.Concatenate()([cb(keras.layers.Rescaling(0.25)(inp)),
                                    ca(keras.layers.Rescaling(0.5)(inp))])
    model = keras.Model(inp, keras.layers.Dense(4, name="head")(keras.layers.Flatten()(y)))
    cb.set_weights(ca.get_weights())
    shared = dkm_tf.share_weights(model, n_clusters=16)
    x = np.random.default_rng(0).uniform(0, 2, (4, 8, 8, 3)).astype("float32")
    report = export.to_tflite(shared.model, tmp_path / "s.tflite", palettes=shared.palettes,
                              sample_inputs=x, keep_float=None)
    tensors = [t["tensor"] for t in report.tensors if t["tensor"]]
    assert len(tensors) == len(set(tensors)), report.tensors
    rows = {t["palette"]: t for t in report.tensors}
    assert rows["a/kernel"].get("not_found") and rows["b/kernel"].get("not_found")
    assert sum("kept float32" in n for n in report.notes) == 2
    assert report.bytes == (tmp_path / "s.tflite").stat().st_size
