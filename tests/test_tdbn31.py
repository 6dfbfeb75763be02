"""Session 31: a `TimeDistributed(BatchNormalization)` after a `TimeDistributed` conv / Dense is
folded into it, as a plain batch norm after a plain conv / Dense is.

Until 2026-12-07 `fold_batch_norm` (and `share_weights`, `strip_clustering`, the palettized
export) neither folded nor reported one: it stayed a float layer of its own, and the
palettized file of a small video model (TimeDistributed Conv2D(8) + BN, Flatten, Dense(5) + BN,
3 steps, K=4) held 6 MULs and 6 ADDs of the two batch norms: 22,192 bytes and 102 ops, now
18,320 bytes and 82 ops (its float file 15,712 bytes / 43 ops -> 11,808 / 23). The
wrappers only shift the axes: a batch norm of axis `a` inside d wrappers normalizes axis a + d,
so a plain batch norm after a TimeDistributed conv, or a TimeDistributed one after a plain
Dense on (batch, T, F), folds the same way; any other axis stays, with the reason. Every
output is checked against numpy (float64 conv / dense / batch norm) at batch 1 and 3, in
memory and after a `.keras` save / load.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import tf_backend_only  # noqa: E402

import dkm_tf  # noqa: E402

L = keras.layers
T, H, W, C = 3, 6, 7, 2
ATOL = 1e-5  # float32 outputs of magnitude ~10 against a float64 reference


def _randomize(bn, seed):
    """Every statistic of `bn` from U(0.5, 1.5): not an identity."""
    rng = np.random.default_rng(seed)
    for w in bn.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))


def _np(v):
    return np.asarray(keras.ops.convert_to_numpy(v), np.float64)


def _bn(x, bn, axis):
    """`bn`'s inference output over `axis` of `x`, in float64."""
    shape = [1] * x.ndim
    shape[axis] = -1
    gamma = 1.0 if bn.gamma is None else _np(bn.gamma).reshape(shape)
    beta = 0.0 if bn.beta is None else _np(bn.beta).reshape(shape)
    mean, var = _np(bn.moving_mean).reshape(shape), _np(bn.moving_variance).reshape(shape)
    return gamma * (x - mean) / np.sqrt(var + bn.epsilon) + beta


def _conv(x, conv, first=False):
    """A valid 3x3 conv of frames `x` (n, t, h, w, c), or (n, t, c, h, w) `first`."""
    k = _np(conv.kernel)
    if first:
        x = np.moveaxis(x, 2, -1)
    n, t, h, w, _ = x.shape
    out = np.zeros((n, t, h - 2, w - 2, k.shape[-1]))
    for i in range(h - 2):
        for j in range(w - 2):
            out[:, :, i, j] = np.einsum("ntabc,abco->nto", x[:, :, i:i + 3, j:j + 3], k)
    out = out + (_np(conv.bias) if conv.use_bias else 0.0)
    return np.moveaxis(out, -1, 2) if first else out


def _video(center=True, scale=True, use_bias=True, seed=0):
    """Frames -> TD(Conv2D 3x3) -> TD(BN) -> TD(Flatten) -> TD(Dense 5) -> TD(BN)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((T, H, W, C))
    x = L.TimeDistributed(L.Conv2D(8, 3, use_bias=use_bias, name="conv"), name="td_conv")(inp)
    x = L.TimeDistributed(L.BatchNormalization(center=center, scale=scale, name="bn"),
                          name="td_bn")(x)
    x = L.TimeDistributed(L.Flatten(), name="td_flat")(x)
    x = L.TimeDistributed(L.Dense(5, name="fc"), name="td_fc")(x)
    x = L.TimeDistributed(L.BatchNormalization(name="bn2"), name="td_bn2")(x)
    model = keras.Model(inp, x, name="video")
    _randomize(model.get_layer("td_bn").layer, 1)
    _randomize(model.get_layer("td_bn2").layer, 2)
    return model


def _video_ref(model, x):
    """The unfolded video model in numpy."""
    conv, fc = model.get_layer("td_conv").layer, model.get_layer("td_fc").layer
    y = _bn(_conv(x.astype(np.float64), conv), model.get_layer("td_bn").layer, -1)
    y = y.reshape(*y.shape[:2], -1) @ _np(fc.kernel) + _np(fc.bias)
    return _bn(y, model.get_layer("td_bn2").layer, -1)


def _frames(n, shape=(T, H, W, C), seed=3):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")


def _batch_norms(model):
    return [la.name for la in model.layers
            if isinstance(getattr(la, "layer", la), L.BatchNormalization)]


def _check(model, ref, x, tmp_path, name="m"):
    """`model` equals `ref` at batch 1 and 3, in memory and after a .keras save / load."""
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for m in (model, loaded):
        for b in (1, 3):
            np.testing.assert_allclose(np.asarray(m(x[:b])), ref[:b], rtol=0, atol=ATOL)


@pytest.mark.parametrize(("center", "scale", "use_bias"),
                         [(True, True, True), (False, True, True), (True, False, False),
                          (False, False, False)])
def test_fold_batch_norm_folds_time_distributed_pairs(center, scale, use_bias, tmp_path):
    model, x = _video(center, scale, use_bias), _frames(3)
    ref = _video_ref(model, x)
    np.testing.assert_allclose(np.asarray(model(x)), ref, rtol=0, atol=ATOL)
    result = dkm_tf.fold_batch_norm(model)
    assert result.folded == [("td_conv", "td_bn"), ("td_fc", "td_bn2")]  # was []
    assert result.skipped == []
    assert _batch_norms(result.model) == []  # were both kept
    conv = result.model.get_layer("td_conv").layer
    assert conv.use_bias  # a bias made for the folded one
    assert set(result.scales) == {"td_conv/layer.kernel", "td_fc/layer.kernel"}
    bn = model.get_layer("td_bn").layer
    s = (1.0 if bn.gamma is None else _np(bn.gamma)) / np.sqrt(_np(bn.moving_variance)
                                                               + bn.epsilon)
    np.testing.assert_allclose(_np(conv.kernel), _np(model.get_layer("td_conv").layer.kernel)
                               * s, rtol=1e-6, atol=1e-7)
    _check(result.model, ref, x, tmp_path)
    assert model.get_layer("td_bn") is not None and len(_batch_norms(model)) == 2  # untouched


def _first_model(axis, width=W):
    """TD(Conv2D channels_first) -> TD(BN(axis)) on frames (T, C, H, width)."""
    keras.utils.set_random_seed(4)
    inp = keras.Input((T, C, H, width))
    x = L.TimeDistributed(L.Conv2D(4, 3, data_format="channels_first", name="conv"),
                          name="td_conv")(inp)
    x = L.TimeDistributed(L.BatchNormalization(axis=axis, name="bn"), name="td_bn")(x)
    model = keras.Model(inp, x)
    _randomize(model.get_layer("td_bn").layer, 5)
    return model


def test_channels_first_folds_on_the_channel_axis_only(tmp_path):
    x = _frames(3, (T, C, H, W))
    model = _first_model(1)
    ref = _bn(_conv(x.astype(np.float64), model.get_layer("td_conv").layer, first=True),
              model.get_layer("td_bn").layer, 2)
    np.testing.assert_allclose(np.asarray(model(x)), ref, rtol=0, atol=ATOL)
    result = dkm_tf.fold_batch_norm(model)
    assert result.folded == [("td_conv", "td_bn")]
    _check(result.model, ref, x, tmp_path)
    model = _first_model(-1)  # the width axis (5) of each frame: no channel
    result = dkm_tf.fold_batch_norm(model)
    assert result.folded == []
    assert result.skipped == [("td_bn", "it normalizes axis 4 (axis -1 of the layer it wraps), "
                               "not the channel axis 2 of 'td_conv'")]
    assert _batch_norms(result.model) == ["td_bn"]
    model = _first_model(1, width=6)  # 4 channels, 4 columns: Keras' bias fast path
    result = dkm_tf.fold_batch_norm(model)
    assert result.folded == []
    assert result.skipped[0][1].startswith("'td_conv' is channels_first with 4 channels and an "
                                           "output last dim of 4: Keras' bias fast path")


def _sequence(kind):
    """A plain layer applied per step with a TimeDistributed batch norm, or the reverse."""
    keras.utils.set_random_seed(6)
    if kind == "dense_then_td_bn":  # Dense on (batch, T, F): per step
        inp = keras.Input((T, 4))
        x = L.Dense(3, name="fc")(inp)
        x = L.TimeDistributed(L.BatchNormalization(name="bn"), name="td_bn")(x)
    elif kind == "td_conv_then_bn":  # a plain BN on the conv's channels
        inp = keras.Input((T, H, W, C))
        x = L.TimeDistributed(L.Conv2D(4, 3, name="conv"), name="td_conv")(inp)
        x = L.BatchNormalization(name="td_bn")(x)
    else:  # a plain Conv2D on (batch, H, W, C), its rows as TimeDistributed's steps
        inp = keras.Input((H, W, C))
        x = L.Conv2D(4, (1, 3), name="conv")(inp)
        x = L.TimeDistributed(L.BatchNormalization(name="bn"), name="td_bn")(x)
    model = keras.Model(inp, x)
    bn = model.get_layer("td_bn")
    _randomize(getattr(bn, "layer", bn), 7)
    return model


@pytest.mark.parametrize("kind", ["dense_then_td_bn", "td_conv_then_bn", "conv_then_td_bn"])
def test_a_plain_layer_applied_per_step_folds_too(kind, tmp_path):
    model = _sequence(kind)
    bn = model.get_layer("td_bn")
    bn = getattr(bn, "layer", bn)
    if kind == "dense_then_td_bn":
        x = _frames(3, (T, 4))
        fc = model.get_layer("fc")
        ref, into = _bn(x.astype(np.float64) @ _np(fc.kernel) + _np(fc.bias), bn, -1), "fc"
    elif kind == "td_conv_then_bn":
        x = _frames(3)
        ref = _bn(_conv(x.astype(np.float64), model.get_layer("td_conv").layer), bn, -1)
        into = "td_conv"
    else:
        x = _frames(3, (H, W, C))
        conv = model.get_layer("conv")
        k, y = _np(conv.kernel)[0], np.zeros((3, H, W - 2, 4))
        for j in range(W - 2):
            y[:, :, j] = np.einsum("nhbc,bco->nho", x[:, :, j:j + 3], k)
        ref, into = _bn(y + _np(conv.bias), bn, -1), "conv"
    np.testing.assert_allclose(np.asarray(model(x)), ref, rtol=0, atol=ATOL)
    result = dkm_tf.fold_batch_norm(model)
    assert result.folded == [(into, "td_bn")]
    assert _batch_norms(result.model) == []
    _check(result.model, ref, x, tmp_path)


class _StepTD(L.TimeDistributed):
    """A TimeDistributed whose call is its own (it adds 1 to each step)."""

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=training, mask=mask) + 1.0


def _refused(kind):
    keras.utils.set_random_seed(8)
    inp = keras.Input((T, H, W, C))
    act = "relu" if kind == "relu" else None
    conv = L.Conv2D(4, 3, activation=act, name="conv")
    td = _StepTD if kind == "own_call" else L.TimeDistributed
    x = td(conv, name="td_conv")(inp)
    axis = 1 if kind == "axis" else (0 if kind == "batch_axis" else -1)
    bn = L.TimeDistributed(L.BatchNormalization(axis=axis, name="bn"), name="td_bn")
    y = bn(x)
    outs = [y]
    if kind == "read_twice":
        outs.append(L.TimeDistributed(L.Flatten(), name="side")(x))
    if kind == "shared_conv":  # the same conv also called alone on one frame
        outs.append(conv(L.Lambda(lambda t: t[:, 0], name="frame0")(inp)))
    if kind == "after_flatten":
        f = L.TimeDistributed(L.Flatten(), name="td_flat")(x)
        outs = [L.TimeDistributed(L.BatchNormalization(name="bn2"), name="td_bn")(f)]
        bn = outs[0]._keras_history.operation
    model = keras.Model(inp, outs)
    if kind != "batch_axis":
        _randomize(bn.layer, 9)
    return model


_WHY = {
    "relu": "'conv' applies activation 'relu' before the BatchNormalization",
    "axis": "it normalizes axis 2 (axis 1 of the layer it wraps), not the channel axis 4 of "
            "'td_conv'",
    "read_twice": "the output of 'td_conv' also feeds other layers or is a model output",
    "shared_conv": "'conv' is called 2 times (shared layer)",
    "own_call": "'td_conv' (_StepTD) overrides call(); folding could change what it computes",
    "after_flatten": "it follows TimeDistributed(Flatten) 'td_flat', not a conv or dense "
                     "layer it folds into (FOLDABLE_LAYERS)",
}


@pytest.mark.parametrize("kind", sorted(_WHY))
def test_what_cannot_fold_stays_with_its_reason(kind):
    model = _refused(kind)
    x = _frames(3)
    before = [np.asarray(o) for o in keras.tree.flatten(model(x))]
    result = dkm_tf.fold_batch_norm(model)
    assert result.folded == []
    assert result.skipped == [("td_bn", _WHY[kind])]  # was not listed at all
    after = [np.asarray(o) for o in keras.tree.flatten(result.model(x))]
    for a, b in zip(after, before):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_reports_say_why_a_time_distributed_batch_norm_stays():
    """Was "TimeDistributed(BatchNormalization) is not a supported kernel layer" (share_weights)
    and "layer type not supported" (cluster_weights)."""
    model = _refused("after_flatten")
    why = ("BatchNormalization stays float (not folded into the layer before it: "
           + _WHY["after_flatten"] + ")")
    assert dkm_tf.share_weights(model, 4).skipped == [("td_bn", why)]
    with pytest.warns(UserWarning, match="BatchNormalization that strip_clustering cannot fold"):
        _, report = dkm_tf.cluster_weights(model, 4, return_report=True)
    assert report.skipped == (("td_bn", "TimeDistributed(BatchNormalization)", why),)


def test_training_true_in_the_graph_is_refused():
    inp = keras.Input((T, H, W, C))
    x = L.TimeDistributed(L.Conv2D(4, 3), name="td_conv")(inp)
    y = L.TimeDistributed(L.BatchNormalization(), name="td_bn")(x, training=True)
    with pytest.raises(ValueError, match="'td_bn' is called with training=True"):
        dkm_tf.fold_batch_norm(keras.Model(inp, y))


def _folded_bias(layer, bn):
    """(b - mean) s + beta, s = gamma / sqrt(var + eps): the bias with `bn` folded in."""
    s = _np(bn.gamma) / np.sqrt(_np(bn.moving_variance) + bn.epsilon)
    return (_np(layer.bias) - _np(bn.moving_mean)) * s + _np(bn.beta)


def test_share_weights_clusters_the_folded_kernels(tmp_path):
    model, x = _video(), _frames(3)
    shared = dkm_tf.share_weights(model, 4)
    assert shared.folded == [("td_conv", "td_bn"), ("td_fc", "td_bn2")]  # was []
    assert _batch_norms(shared.model) == []
    conv, fc = (shared.model.get_layer(n).layer for n in ("td_conv", "td_fc"))
    for p in shared.palettes:  # the palettes describe the folded kernels
        layer = shared.model.get_layer(p.layer_name).layer
        np.testing.assert_array_equal(p.decode(), _np(layer.kernel).astype(np.float32))
    for name, layer in (("td_", conv), ("td_", fc)):
        old = model.get_layer(f"{name}{layer.name}").layer
        bn = model.get_layer("td_bn" if layer is conv else "td_bn2").layer
        np.testing.assert_allclose(_np(layer.bias), _folded_bias(old, bn), rtol=1e-6,
                                   atol=1e-6)
    # numpy: the decoded kernels with the folded biases, no batch norm left
    y = _conv(x.astype(np.float64), conv)
    ref = y.reshape(*y.shape[:2], -1) @ _np(fc.kernel) + _np(fc.bias)
    _check(shared.model, ref, x, tmp_path)


def test_strip_clustering_folds_and_rescales_the_palettes(tmp_path):
    model, x = _video(), _frames(3)
    with pytest.warns(UserWarning, match=r"strip_clustering folds into the layer before them "
                      r"\(not a skip: report.folded\): td_bn \(BatchNormalization\) into "
                      "td_conv, td_bn2 "):
        wrapped, report = dkm_tf.cluster_weights(model, 4, return_report=True)
    assert tuple(report.folded) == (("td_conv", "td_bn"), ("td_fc", "td_bn2"))
    assert all(name not in ("td_bn", "td_bn2") for name, *_ in report.skipped)
    want = np.asarray(wrapped(x), np.float64)
    path = tmp_path / "wrapped.keras"
    wrapped.save(path)
    for m in (wrapped, keras.models.load_model(path)):
        plain, palettes = dkm_tf.strip_clustering(m)
        assert _batch_norms(plain) == []  # was ["td_bn", "td_bn2"]
        assert [p.layout.granularity for p in palettes] == ["per_channel"] * 2
        for p in palettes:
            layer = plain.get_layer(p.layer_name).layer
            np.testing.assert_array_equal(p.decode(), _np(layer.kernel).astype(np.float32))
        _check(plain, want, x, tmp_path, "plain")


def _file_ops(path):
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    fm = FlatModel.from_bytes(pathlib.Path(path).read_bytes())
    return [fm.op_name(op) for op in fm.operators]


def _interpret(path, x):
    interpreters = pytest.importorskip("ai_edge_litert.interpreter")
    it = interpreters.Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@tf_backend_only()
@pytest.mark.parametrize("fold_bn", [None, False])
def test_palettized_file_holds_no_batch_norm(fold_bn, tmp_path):
    """`share_weights` folds (fold_bn=None); with fold_bn=False `to_tflite` folds the model and
    its palettes (`fold_for_export`: the palette of `td_conv/layer.kernel` is found by its
    path) as the converter would."""
    from dkm_tf import export  # noqa: PLC0415

    model, x = _video(), _frames(3)
    shared = dkm_tf.share_weights(model, 4, fold_bn=fold_bn)
    path = tmp_path / "video.tflite"
    r = export.to_tflite(shared.model, path, "palettized", shared.palettes, x, keep_float=None)
    for b in (1, 3):
        np.testing.assert_allclose(_interpret(path, x[:b]), np.asarray(shared.model(x[:b])),
                                   rtol=0, atol=ATOL)
    ops = _file_ops(path)
    assert "MUL" not in ops, ops  # were 6: each batch norm's MUL at each of the 3 steps
    assert sorted(t["palette"] for t in r.tensors) == ["td_conv/layer.kernel",
                                                       "td_fc/layer.kernel"]
    for t in r.tensors:  # palettized, not kept float (fold_for_export found their paths)
        assert not t.get("kept") and t["storage"].startswith("int16"), t
    assert os.path.getsize(path) < 20_000  # 22,192 bytes with the batch norms


@tf_backend_only()
def test_float_file_and_energy_of_the_folded_model(tmp_path):
    from _energy_file25 import both, same_totals  # noqa: PLC0415

    model = _video()
    k0, f0 = both(model, tmp_path)
    same_totals(k0, f0)  # the unfolded model: its MUL / ADD in both
    assert _file_ops(tmp_path / "m.tflite").count("MUL") == 6
    folded = dkm_tf.fold_batch_norm(model).model
    k, f = both(folded, tmp_path)
    same_totals(k, f)  # Keras / file 1.0000
    ops = _file_ops(tmp_path / "m.tflite")
    assert "MUL" not in ops and len(ops) == 23, ops  # 43 ops before
    assert k.hierarchy_total < k0.hierarchy_total


@pytest.fixture(scope="module")
def jax_run():
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from _jax_env24e import jax_env  # noqa: PLC0415

    pytest.importorskip("jax")
    here = pathlib.Path(__file__).resolve().parent
    env = jax_env(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        filter(None, [str(here.parent), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(here / "_tdbn31_jax_run.py")], cwd=here.parent,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("backend") == "jax"
    return out


def test_jax_folds_as_tensorflow(jax_run):
    """The same folds on JAX (`tests/_tdbn31_jax_run.py`), outputs against numpy."""
    strip = jax_run.pop("strip")
    assert strip["left"] == [] and strip["granularity"] == ["per_channel"] * 2
    assert strip["gap"] < ATOL
    folded = {"channels_first": [["td_conv", "td_bn"]], "dense_then_td_bn": [["fc", "td_bn"]]}
    assert len(jax_run) == 6
    for name, got in jax_run.items():
        want = folded.get(name, [["td_conv", "td_bn"], ["td_fc", "td_bn2"]])
        assert got["folded"] == want and got["left"] == [], (name, got)
        assert got["unfolded_gap"] < ATOL and got["gap"] < ATOL, (name, got)


class _Block(keras.Model):
    """A subclassed block: TD(Conv2D) -> TD(BN), which cannot be rebuilt."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.TimeDistributed(L.Conv2D(4, 3), name="tdc")
        self.bn = L.TimeDistributed(L.BatchNormalization(), name="tdb")

    def call(self, x):
        return self.bn(self.conv(x))


def test_inside_a_subclassed_model_it_is_named():
    inp = keras.Input((T, H, W, C))
    model = keras.Model(inp, L.Activation("linear")(_Block(name="sub")(inp)))
    result = dkm_tf.fold_batch_norm(model)  # was skipped == [] (not named)
    assert result.skipped == [("tdb", "inside subclassed model 'sub', which cannot be rebuilt")]
