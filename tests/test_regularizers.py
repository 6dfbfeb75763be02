"""Tests of the Deep k-Means regularizer, attach/detach and the RefreshKMeans callback."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from testing import gradients, to_numpy

from dkm_tf.training import attach
from dkm_tf.training import callbacks as callbacks_lib
from dkm_tf.training import regularizer as reg_lib
from dkm_tf.training.callbacks import RefreshKMeans
from dkm_tf.training.regularizer import SpectralKMeansRegularizer
from tests.testing import assert_all_close, small_cnn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(kernel):
    """Row units of a (kh, kw, in, out) kernel, listed independently of the library."""
    return np.moveaxis(np.asarray(kernel), 1, -1).reshape(-1, kernel.shape[1])


def _var(value, dtype="float32"):
    return keras.Variable(np.asarray(value, dtype), dtype=dtype)


def _penalty(reg, var):
    return float(reg(var))


# ------------------------------------------------------------------ numerics
@pytest.mark.parametrize("k", [1, 2])
def test_spectral_penalty_is_sum_of_smallest_eigenvalues(k):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 2, 4))
    reg = SpectralKMeansRegularizer(k, lam=0.3, relaxation="spectral")
    var = _var(w)
    info = reg.refresh(var)
    units = _rows(w)  # (N, d); the paper's W is units.T, so W^T W = units units^T (N x N)
    eig = np.linalg.eigvalsh(units @ units.T)  # ascending
    expected = 0.15 * eig[: units.shape[0] - k].sum()
    assert reg.resolved_unit == "row"
    assert_all_close(_penalty(reg, var), expected, rtol=1e-4, atol=1e-6)
    assert_all_close(info["penalty"], expected, rtol=1e-6)
    assert info["rank"] == 3 and not info["degenerate"]


def test_spectral_degenerate_warns_once_and_is_zero():
    w = np.random.default_rng(1).normal(size=(3, 3, 4, 4))
    reg = SpectralKMeansRegularizer(4, lam=1.0, relaxation="spectral")
    var = _var(w)
    with pytest.warns(UserWarning, match=r"(?s)degenerate.*K=4 >= rank 3"):
        reg.refresh(var)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)  # Keras 3.15's __array__ on JAX
        reg.refresh(var)  # no second warning
    assert _penalty(reg, var) < 1e-6 * np.sum(w ** 2)


def test_hard_penalty_is_kmeans_sse():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 3, 8, 16))
    var = _var(w)
    reg = SpectralKMeansRegularizer(6, lam=0.5, relaxation="hard", seed=3)
    info = reg.refresh(var)
    units = _rows(w)
    assign = reg.assignment
    means = np.stack([units[assign == j].mean(0) for j in range(6)])
    sse = np.sum((units - means[assign]) ** 2)
    assert_all_close(_penalty(reg, var), 0.25 * sse, rtol=1e-5)
    assert_all_close(info["penalty"], 0.25 * sse, rtol=1e-6)
    # the partition is a k-means local optimum: every unit is nearest to its own centroid
    d2 = ((units[:, None, :] - means[None]) ** 2).sum(-1)
    assert np.all(d2[np.arange(len(units)), assign] <= d2.min(1) + 1e-9)


def test_hard_refresh_never_raises_the_penalty():
    rng = np.random.default_rng(4)
    var = _var(rng.normal(size=(3, 3, 16, 16)))
    reg = SpectralKMeansRegularizer(12, lam=1.0, seed=0)
    first = reg.refresh(var)["penalty"]
    var.assign(to_numpy(var) + 0.01 * rng.normal(size=var.shape))
    before = _penalty(reg, var)  # old F, new W
    after = reg.refresh(var)["penalty"]
    assert after <= before * (1 + 1e-6) and first > 0


@pytest.mark.parametrize("relaxation,sparsity", [("hard", 0.0), ("hard", 0.3),
                                                 ("spectral", 0.0), ("spectral", 0.25)])
def test_gradient_matches_formula_and_finite_differences(relaxation, sparsity, request):
    # a float64 penalty (the finite differences need its precision) is returned under a
    # float64 floatx, the dtype Keras sums losses in (float32 by default: test_probe29)
    old = keras.config.floatx()
    request.addfinalizer(lambda: keras.config.set_floatx(old))
    keras.config.set_floatx("float64")
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 3, 3, 4))
    var = _var(w, "float64")
    reg = SpectralKMeansRegularizer(2, lam=0.7, relaxation=relaxation, sparsity=sparsity)
    reg.refresh(var)
    (grad,) = gradients(lambda: reg(var), [var])
    st = reg._state
    units = np.moveaxis(w, 1, -1).reshape(st["n"], st["d"])
    if relaxation == "hard":
        assign = reg.assignment
        target = np.zeros_like(units)  # zero cluster (index K) keeps a zero centre
        for j in range(2):
            if np.any(assign == j):
                target[assign == j] = units[assign == j].mean(0)
        expected_units = 0.7 * (units - target)  # λ (w − c(w))
    else:
        f = reg.projection.astype(np.float64)
        expected_units = 0.7 * (units - f @ (f.T @ units))  # λ W (I − F Fᵀ)
    expected = np.moveaxis(expected_units.reshape(3, 3, 4, 3), -1, 1)
    assert_all_close(grad, expected, rtol=1e-6, atol=1e-8)
    # central differences are exact for this quadratic (F fixed), up to rounding and the
    # float32 orthonormality of F
    for flat in rng.choice(w.size, 6, replace=False):
        idx = np.unravel_index(flat, w.shape)
        h = np.zeros_like(w)
        h[idx] = 1e-3
        var.assign(w + h)
        up = _penalty(reg, var)
        var.assign(w - h)
        down = _penalty(reg, var)
        assert_all_close((up - down) / 2e-3, grad[idx], rtol=1e-6, atol=1e-7)
    var.assign(w)


@pytest.mark.parametrize("relaxation", ["hard", "spectral"])
def test_few_distinct_units_give_zero(relaxation):
    rng = np.random.default_rng(6)
    protos = rng.normal(size=(2, 3))
    units = protos[rng.integers(0, 2, size=3 * 5 * 6)]  # rows of a (3, 3, 5, 6) kernel
    w = np.moveaxis(units.reshape(3, 5, 6, 3), -1, 1)
    var = _var(w)
    reg = SpectralKMeansRegularizer(2, lam=1.0, relaxation=relaxation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spectral: K=2 >= rank 2 is degenerate (that's fine)
        reg.refresh(var)
    assert _penalty(reg, var) < 1e-6 * np.sum(w ** 2)


def test_sparsity_zero_cluster():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(40, 10))  # Dense kernel: scalar units
    var = _var(w)
    reg = SpectralKMeansRegularizer(4, lam=2.0, sparsity=0.25)
    reg.refresh(var)
    values = w.reshape(-1)
    assign = reg.assignment
    zero = assign == 4
    assert zero.sum() == 100
    assert np.abs(values[zero]).max() <= np.abs(values[~zero]).min()
    rest = values[~zero]
    means = np.array([rest[assign[~zero] == j].mean() for j in range(3)])
    expected = np.sum(values[zero] ** 2) + np.sum((rest - means[assign[~zero]]) ** 2)
    assert_all_close(_penalty(reg, var), expected, rtol=1e-5)


def test_units_auto_and_explicit():
    assert reg_lib.unit_geometry((5, 5, 3, 8), "auto") == ("row", 5, 5, 24)
    assert reg_lib.unit_geometry((1, 1, 3, 8), "auto") == ("scalar", 1, 1, 24)
    assert reg_lib.unit_geometry((3, 3, 4, 2), "kernel") == ("kernel", 1, 9, 8)
    assert reg_lib.unit_geometry((3, 4, 2), "row") == ("row", 1, 3, 8)  # Conv1D
    assert reg_lib.unit_geometry((64, 10), "auto") == ("scalar", 1, 1, 640)
    w = np.arange(3 * 3 * 4 * 2).reshape(3, 3, 4, 2)
    assert_all_close(reg_lib._to_units_np(w, 3, 3, 8), _rows(w))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,match", [
    ({"n_clusters": 4, "lam": -1.0}, r"argument `lam`.*Received: lam=-1.0"),
    ({"n_clusters": 0}, r"argument `n_clusters`. Expected an integer >= 1. Received: "
                        r"n_clusters=0"),
    ({"n_clusters": 4, "relaxation": "soft"}, r"`relaxation`.*Received: relaxation='soft'"),
    ({"n_clusters": 4, "unit": "filter"}, r"`unit`.*Received: unit='filter'"),
    ({"n_clusters": 4, "sparsity": 1.0}, r"`sparsity`.*Received: sparsity=1.0"),
    ({"n_clusters": 1, "sparsity": 0.5}, r"n_clusters.*>= 2 when sparsity > 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpectralKMeansRegularizer(**kwargs)
    with pytest.raises(TypeError, match=r"`n_clusters`.*Received: n_clusters=2.5 of type float"):
        SpectralKMeansRegularizer(n_clusters=2.5)


def test_bad_layers_and_units():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"Layer 'out' \(Dense\).*`unit`.*no spatial axes"):
        attach.attach_regularizer(model, 4, layers=["out"], unit="row")
    with pytest.raises(TypeError, match=r"Layer 'bn' \(BatchNormalization\) has no kernel"):
        attach.attach_regularizer(model, 4, layers=["bn"])
    with pytest.raises(ValueError, match=r"`layers`.*Received: layers='nope'"):
        attach.attach_regularizer(model, 4, layers=["nope"])
    with pytest.raises(ValueError, match=r"no SpectralKMeansRegularizer"):
        model.compile("sgd", "mse")
        model.fit(np.zeros((2, 8, 8, 1)), np.zeros((2, 10)), verbose=0,
                  callbacks=[RefreshKMeans()])
    with pytest.raises(ValueError, match=r"`every_n_epochs`.*Received: every_n_epochs=0"):
        RefreshKMeans(every_n_epochs=0)
    with pytest.raises(ValueError, match=r"every_n_steps set \(None for both never refreshes\)"):
        RefreshKMeans(every_n_epochs=None, every_n_steps=None)
    assert RefreshKMeans(every_n_epochs=None, every_n_steps=3).every_n_steps == 3
    with pytest.raises(ValueError, match=r"`log_penalty`.*Received: log_penalty='step'"):
        RefreshKMeans(log_penalty="step")
    reg = SpectralKMeansRegularizer(2)
    reg.refresh(_var(np.ones((3, 3, 1, 2))))
    with pytest.raises(ValueError, match="one instance per weight"):
        reg(_var(np.ones((3, 3, 2, 2))))


# ------------------------------------------------------------------ Keras integration
def test_attach_selects_kernels_keeps_existing_and_detaches():
    model = small_cnn()
    l2 = keras.regularizers.L2(0.5)
    model.get_layer("c1").kernel.regularizer = l2
    attached = attach.attach_regularizer(model, {"c1": 3, "dw": 2, "out": 4}, lam=0.1)
    assert sorted(attached) == ["small_cnn/c1/kernel", "small_cnn/dw/kernel"]  # no Dense
    assert model.get_layer("dw").depthwise_regularizer is attached["small_cnn/dw/kernel"]
    c1 = model.get_layer("c1").kernel
    assert c1.regularizer.base is l2
    assert_all_close(float(c1.regularizer(c1)),
                     attach.refresh_regularizers(model)["small_cnn/c1/kernel"]["penalty"]
                     + float(l2(c1)), rtol=1e-5)
    assert len(attach.attach_regularizer(model, 4, include_dense=True)) == 3
    assert c1.regularizer.base is l2  # re-attaching replaces, never stacks
    assert attach.detach_regularizer(model) == 3
    assert c1.regularizer is l2 and model.get_layer("out").kernel.regularizer is None
    assert model.get_layer("dw").depthwise_regularizer is None


class _BatchLogs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs or {}))


def test_fit_logs_penalty_refreshes_and_round_trips(tmp_path, capsys):
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64)
    model = small_cnn()
    attach.attach_regularizer(model, 3, lam=0.05, include_dense=True, sparsity={"c1": 0.2})
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cb, rec = RefreshKMeans(every_n_epochs=1, every_n_steps=3, log_penalty="batch"), _BatchLogs()
    hist = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x, y), verbose=0,
                     callbacks=[cb, rec])
    assert all(logs[callbacks_lib.PENALTY_KEY] > 0 for logs in rec.logs) and len(rec.logs) == 8
    assert cb.refresh_count == 1 + 2 + 2  # train begin, every 3 of 8 steps, every epoch
    pen = hist.history[callbacks_lib.PENALTY_KEY]
    assert len(pen) == 2 and all(p > 0 for p in pen)
    assert len(hist.history["val_" + callbacks_lib.PENALTY_KEY]) == 2

    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    regs = {"/".join(v.path.split("/")[-2:]): r for v, r in attach.kmeans_regularizers(loaded)}
    assert sorted(regs) == ["c1/kernel", "dw/kernel", "out/kernel"]
    for name in regs:
        layer = model.get_layer(name.split("/")[0])
        original = getattr(layer, "depthwise_regularizer", None) or layer.kernel_regularizer
        assert regs[name].get_config() == original.get_config()
    assert regs["c1/kernel"].sparsity == 0.2
    assert_all_close(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    capsys.readouterr()
    hist = loaded.fit(x, y, batch_size=32, epochs=1, verbose=1, callbacks=[RefreshKMeans()])
    assert hist.history[callbacks_lib.PENALTY_KEY][0] > 0
    assert "kmeans_penalty:" in capsys.readouterr().out  # shown in the progress bar


def test_regularizer_config_round_trip_and_lazy_state():
    reg = SpectralKMeansRegularizer(5, lam=3e-4, relaxation="spectral", unit="kernel",
                                    sparsity=0.1, seed=7, base=keras.regularizers.L2(1e-3))
    config = keras.regularizers.serialize(reg)
    again = keras.regularizers.deserialize(config)
    assert isinstance(again, SpectralKMeansRegularizer) and not again.built
    assert again.get_config() == reg.get_config()
    # used directly as kernel_regularizer, without attach: F is computed on first use
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(4, 3, kernel_regularizer=SpectralKMeansRegularizer(2, lam=1.0))
    layer.build((None, 6, 6, 2))
    reg = layer.kernel.regularizer
    value = float(layer.losses[0])
    assert reg.built and value > 0
    assert_all_close(value, reg.refresh(layer.kernel)["penalty"], rtol=1e-5)


def test_attach_covers_conv_types_and_nested_models():
    keras.utils.set_random_seed(0)
    L = keras.layers
    inner = keras.Sequential([keras.Input((8, 8, 4)), L.SeparableConv2D(6, 3, name="sep"),
                              L.Conv2DTranspose(3, 3, name="convt")], name="inner")
    inputs = keras.Input((8, 8, 2))
    h = inner(L.Conv2D(4, 1, name="pw")(inputs))
    outputs = L.Conv1D(5, 3, name="c1d")(L.Reshape((8 * 8, 3))(h))
    model = keras.Model(inputs, outputs)
    attached = attach.attach_regularizer(model, 3, lam=2.0)
    units = sorted((path.split("/")[-2:], reg.resolved_unit) for path, reg in attached.items())
    assert units == [(["c1d", "kernel"], "row"), (["convt", "kernel"], "row"),
                     (["pw", "kernel"], "scalar"), (["sep", "depthwise_kernel"], "row"),
                     (["sep", "pointwise_kernel"], "scalar")], units
    assert model.get_layer("inner").get_layer("sep").pointwise_regularizer is not None
    infos = attach.refresh_regularizers(model)
    for var, reg in attach.kmeans_regularizers(model):
        assert_all_close(float(reg(var)), infos[var.path]["penalty"], rtol=1e-4)


# ------------------------------------------------------------------ state in checkpoints
def _state_of(model):
    """Per regularized weight: F, the warm-start centroids, the preserved zeros, the step."""
    out = {}
    for var, reg in attach.kmeans_regularizers(model):
        st = reg._state  # noqa: SLF001
        out["/".join(var.path.split("/")[-2:])] = {
            "F": [np.array(to_numpy(st[k])) for k in ("f", "ft", "segment", "scale") if k in st],
            "ready": float(to_numpy(st["ready"])), "step": reg.refresh_step,
            "codebook": reg._codebook, "zeros": reg._zeros,  # noqa: SLF001
            "assignment": reg.assignment, "projection": reg.projection}
    return out


def _assert_same_state(got, want):
    assert sorted(got) == sorted(want)
    for path, w in want.items():
        g = got[path]
        assert g["ready"] == w["ready"] and g["step"] == w["step"], path
        for a, b in zip(g["F"], w["F"], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=path)
        for key in ("codebook", "zeros", "assignment", "projection"):
            if w[key] is None:
                assert g[key] is None, (path, key)
            else:
                np.testing.assert_array_equal(g[key], w[key], err_msg=f"{path} {key}")


def _pruned_cnn():
    model = small_cnn()
    kernel = model.get_layer("c1").kernel
    value = to_numpy(kernel)
    value[:, :, :, 1] = 0.0  # a pruned filter: its rows are the preserved zero cluster
    kernel.assign(value)
    return model


@pytest.mark.parametrize("relaxation", ["hard", "spectral"])
def test_state_survives_weights_h5_and_keras_files(tmp_path, relaxation):
    """F, the warm-start centroids, the preserved zeros and the refresh step are saved by
    save_weights / save and restored by load_weights (into an attached model whose own F was
    computed from other weights) and load_model (state built from the file)."""
    model = _pruned_cnn()
    kw = {"relaxation": relaxation, "include_dense": relaxation == "hard",
          "preserve_sparsity": True}  # (spectral on Dense: degenerate, warns)
    k = 3 if relaxation == "hard" else 2  # spectral: K < rank 3 of the row units
    attach.attach_regularizer(model, k, lam=0.05, **kw)
    regs = attach.kmeans_regularizers(model)
    for step, (var, reg) in enumerate(regs):
        var.assign(to_numpy(var) * 1.5 + 0.01)  # F of the saved model != F of these weights
        reg.refresh(var)
        reg.refresh_step = 10 + step
    want = _state_of(model)
    model.save_weights(tmp_path / "m.weights.h5")
    model.save(tmp_path / "m.keras")

    other = _pruned_cnn()
    attach.attach_regularizer(other, k, lam=0.05, **kw)
    assert _state_of(other).keys() == want.keys()
    other.load_weights(tmp_path / "m.weights.h5")
    _assert_same_state(_state_of(other), want)
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    _assert_same_state(_state_of(loaded), want)
    penalty = {var.path.split("/")[-2]: float(reg(var)) for var, reg in regs}
    for var, reg in attach.kmeans_regularizers(loaded):  # the restored F gives the penalty
        assert_all_close(float(reg(var)), penalty[var.path.split("/")[-2]], rtol=1e-6)


def test_files_without_the_state_load_as_before(tmp_path):
    """A checkpoint written before the state was saved (its regularizer entries removed here)
    and a regularizer config alone: loading leaves the regularizer as it was (F from attach,
    or built at its first refresh), and the weights load."""
    h5py = pytest.importorskip("h5py")
    model = small_cnn()
    attach.attach_regularizer(model, 3, lam=0.05)
    model.save_weights(tmp_path / "m.weights.h5")
    with h5py.File(tmp_path / "m.weights.h5", "a") as f:
        stale = []
        f.visit(lambda name: stale.append(name) if name.endswith("_regularizer") else None)
        assert stale  # the new entries exist, then go
        for name in stale:
            del f[name]
    other = small_cnn(seed=1)
    attach.attach_regularizer(other, 3, lam=0.05)
    before = _state_of(other)
    other.load_weights(tmp_path / "m.weights.h5")
    _assert_same_state(_state_of(other), before)
    for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    reg = SpectralKMeansRegularizer(3)
    reg.load_own_variables({})  # an empty entry: nothing to restore
    assert not reg.built and reg.refresh_step == -1


def test_state_of_another_relaxation_is_refused_clearly(tmp_path):
    reg = SpectralKMeansRegularizer(2, relaxation="spectral")
    reg.refresh(np.random.default_rng(0).normal(size=(3, 3, 2, 4)))
    store = {}
    reg.save_own_variables(store)
    assert {"shape", "f", "ready", "refresh_step", "version"} <= set(store)
    hard = SpectralKMeansRegularizer(2)
    with pytest.raises(ValueError, match=r"without \['segment', 'scale'\]"):
        hard.load_own_variables(store)
    wrong = SpectralKMeansRegularizer(2, relaxation="spectral")
    wrong.build((3, 3, 2, 5))
    with pytest.raises(ValueError, match=r"saved for a weight of shape \(3, 3, 2, 4\)"):
        wrong.load_own_variables(store)


def test_regularizer_still_copies_and_pickles():
    import copy
    import pickle

    reg = SpectralKMeansRegularizer(4, lam=0.5, seed=3)
    for again in (copy.deepcopy(reg), pickle.loads(pickle.dumps(reg))):
        assert again.get_config() == reg.get_config() and not again.built


def test_detach_reaches_frozen_layers():
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(4, 3, name="c1"),
                              L.Conv2D(4, 3, name="c2"), L.Flatten(), L.Dense(2, name="d")],
                             name="net")
    model.get_layer("c1").trainable = False  # transfer learning: a frozen base
    attach.attach_regularizer(model, 2, lam=1.0)
    assert {v.path for v, _ in attach.kmeans_regularizers(model)} == {
        "net/c1/kernel", "net/c2/kernel"}
    assert attach.detach_regularizer(model) == 2
    assert [v.path for v in model.weights if v.regularizer is not None] == []
    model.get_layer("c1").trainable = True
    assert model.losses == []  # no stale penalty comes back with the layer


def test_strip_leaves_no_kmeans_regularizer_and_loads_without_dkm_tf(tmp_path):
    import dkm_tf

    model = small_cnn()
    attach.attach_regularizer(model, 4, lam=1.0, include_dense=True)
    assert attach.kmeans_regularizers(model)
    with pytest.warns(UserWarning, match=r"bn \(BatchNormalization\)"):
        wrapped = dkm_tf.cluster_weights(model, 4)
    plain, _ = dkm_tf.strip_clustering(wrapped)
    assert [v.path for v in plain.weights if v.regularizer is not None] == []
    assert plain.losses == [] and "SpectralKMeans" not in str(plain.get_config())
    path = tmp_path / "plain.keras"
    plain.save(path)
    code = ("import keras, sys; m = keras.models.load_model(sys.argv[1]); "
            "assert 'dkm_tf' not in sys.modules; print('LOADED', len(m.weights))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, env=env, timeout=240, cwd=str(tmp_path))
    assert f"LOADED {len(plain.weights)}" in out.stdout, out.stderr[-3000:]


def test_kernel_units_on_the_whole_model_give_dense_scalars_as_share_weights_does():
    """compress(method='dkm', unit='kernel') (dkm-tf compress --unit kernel --method dkm)
    failed on any model with a Dense layer; share_weights clusters Dense as scalars."""
    import dkm_tf

    model = small_cnn()
    regs = attach.attach_regularizer(model, 4, unit="kernel", include_dense=True)
    units = {path.split("/")[-2]: r.unit for path, r in regs.items()}
    assert units == {"c1": "kernel", "dw": "kernel", "out": "scalar"}
    share = {p.layer_name: p.layout.unit_dim for p in dkm_tf.share_weights(
        small_cnn(), 4, unit="kernel").palettes}
    assert share["out"] == 1  # one value per unit
