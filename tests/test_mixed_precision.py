"""Mixed precision (``mixed_float16`` / ``mixed_bfloat16``): soft DKM kernels, the wrapper's
policy, export of half-precision models, Fisher weighting and the regularizer.

Every test resets the global policy to float32 (the ``policy`` fixture), pass or fail.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import tf_backend_only, to_numpy  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.export.model_check import check_built_model, half_precision_layers  # noqa: E402
from dkm_tf.graph import sensitivity  # noqa: E402
from dkm_tf.training.regularizer import SpectralKMeansRegularizer  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402


def _dtype(tensor):
    return keras.backend.standardize_dtype(tensor.dtype)


# ------------------------------------------------------------------ soft (DKM) kernels
def _soft_dense(policy, name, kernel, tau):
    """A Dense (no bias) built under ``name``, wrapped with soft assignment (K = 4)."""
    policy(name)
    keras.utils.set_random_seed(0)
    layer = keras.layers.Dense(kernel.shape[1], use_bias=False)
    layer.build((None, kernel.shape[0]))
    layer.kernel.assign(kernel)
    wrapper = ClusterWeights(layer, n_clusters=4, assignment="soft", temperature=tau)
    wrapper.build((None, kernel.shape[0]))
    policy("float32")
    return wrapper


@pytest.mark.parametrize("name,tau", [("mixed_float16", 1e-3), ("mixed_bfloat16", 1e-3),
                                      ("mixed_float16", 1e-6)])
def test_soft_kernel_in_call_is_the_float32_kernel_rounded(policy, name, tau):
    kernel = np.random.default_rng(0).normal(0, 0.05, (32, 16)).astype("float32")
    ref = to_numpy(_soft_dense(policy, "float32", kernel, tau).shared_kernels()["kernel"])
    mixed = _soft_dense(policy, name, kernel, tau)
    used = to_numpy(mixed(np.eye(32, dtype="float32"))).astype("float32")  # rows of the kernel
    assert mixed.compute_dtype == name.split("_")[1] and np.all(np.isfinite(used))
    eps = 2.0 ** (-11 if name == "mixed_float16" else -8)  # half an ulp, relative
    np.testing.assert_allclose(used, ref, rtol=eps, atol=1e-7)


def _conv_model(outlier):
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, name="c")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(3, activation="softmax", dtype="float32", name="head")(h)
    model = keras.Model(inp, out)
    if outlier:  # one kernel row far from the others: a cluster of its own, distance 0
        k = to_numpy(model.get_layer("c").kernel).copy()
        k[0, :, 0, 0] = [0.9, -0.9, 0.9]
        model.get_layer("c").kernel.assign(k)
    return model


@pytest.mark.parametrize("unit,tau,outlier", [("row", 1e-2, True), ("scalar", 1e-6, False)])
def test_soft_training_under_mixed_float16_takes_finite_steps(policy, unit, tau, outlier):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=32)
    policy("mixed_float16")
    keras.utils.set_random_seed(0)
    model = _conv_model(outlier)
    wrapped = dkm_tf.cluster_weights(model, n_clusters=4, assignment="soft", temperature=tau,
                                     unit=unit)
    wrapped.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss="sparse_categorical_crossentropy")
    before = to_numpy(wrapped.layers[1].layer.kernel).copy()
    history = wrapped.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = to_numpy(wrapped.layers[1].layer.kernel)
    # LossScaleOptimizer skips (and does not count) steps with non-finite gradients
    assert int(to_numpy(wrapped.optimizer.iterations)) == 2
    assert np.isfinite(history.history["loss"][0])
    assert np.max(np.abs(after - before)) > 1e-4


# ------------------------------------------------------------------ the wrapper's policy
def test_wrapper_takes_the_wrapped_layers_policy_not_the_global_one(policy):
    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    dense = keras.layers.Dense(5, name="d32")
    dense.build((None, 6))
    ref = to_numpy(ClusterWeights(dense, n_clusters=4)(x))  # float32 throughout
    policy("mixed_float16")  # set after the float32 layer was built: must not apply
    wrapper = ClusterWeights(dense, n_clusters=4, name="again")
    out = wrapper(x)
    assert wrapper.dtype_policy.name == "float32" and _dtype(out) == "float32"
    np.testing.assert_array_equal(to_numpy(out), ref)
    policy("float32")
    mixed = keras.layers.Dense(5, dtype="mixed_float16")  # a mixed layer keeps its policy
    mixed.build((None, 6))
    wrapper = ClusterWeights(mixed, n_clusters=4)
    assert wrapper.dtype_policy.name == "mixed_float16"
    assert _dtype(wrapper(x)) == "float16"
    loaded = ClusterWeights.from_config(wrapper.get_config())  # the policy round-trips
    assert loaded.dtype_policy.name == "mixed_float16"


# ------------------------------------------------------------------ export
@tf_backend_only()
def test_to_tflite_refuses_a_half_precision_model_clearly(policy, tmp_path):
    policy("mixed_float16")
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, activation="softmax", dtype="float32", name="head")(h)
    model = keras.Model(inp, out)
    policy("float32")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"(?s)Invalid value for argument `model`.*float32.*"
                                         r"'hidden' \(mixed_float16\).*clone_model") as err:
        dkm_tf.export.to_tflite(model, str(path), format="float", sample_inputs=x)
    assert "'head'" not in str(err.value) and not os.listdir(tmp_path)
    # the fix the message gives: the same weights in float32 layers export
    m32 = keras.models.clone_model(model, clone_function=lambda layer: layer.__class__
                                   .from_config({**layer.get_config(), "dtype": "float32"}))
    m32.set_weights(model.get_weights())
    report = dkm_tf.export.to_tflite(m32, str(path), format="float", sample_inputs=x)
    assert report.path == str(path) and path.exists()


def test_float32_layers_in_a_graph_built_under_a_mixed_policy_pass_the_check(policy):
    policy("mixed_float16")  # the Input and the Sequential / Functional get it: no op of theirs
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, dtype="float32")])
    func = keras.Model(seq.inputs, seq.outputs)
    policy("float32")
    for model in (seq, func):
        assert model.dtype_policy.name == "mixed_float16"
        assert half_precision_layers(model) == []
        check_built_model(model)  # no error


# ------------------------------------------------------------------ Fisher weighting
def _mlp(inputs=1):
    ins = [keras.Input((4 + i,)) for i in range(inputs)]
    h = ins[0] if inputs == 1 else keras.layers.Concatenate()(ins)
    h = keras.layers.Dense(8, activation="relu")(h)
    out = keras.layers.Dense(3, activation="softmax")(h)
    return keras.Model(ins if inputs > 1 else ins[0], out)


def test_fisher_with_a_bfloat16_softmax_and_a_loss_name(policy):
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    model = _mlp()  # its softmax head outputs bfloat16
    policy("float32")
    imp = sensitivity.fisher_importance(model, x, "sparse_categorical_crossentropy")
    assert len(imp) == 2 and all(np.all(np.isfinite(v)) and np.all(v > 0) for v in imp.values())
    res = dkm_tf.share_weights(model, n_clusters=2, weighting="fisher", data=x,
                               loss="sparse_categorical_crossentropy")
    assert res.palettes[0].note == "fisher-weighted k-means"


def test_fisher_loss_error_shows_the_underlying_exception():
    keras.utils.set_random_seed(0)
    model = _mlp()

    def broken(y_true, y_pred):
        raise ValueError("loss-specific failure 1234")

    with pytest.raises(ValueError, match=r"Invalid value for argument `loss`.*"
                                         r"ValueError: loss-specific failure 1234"):
        sensitivity.fisher_importance(model, np.zeros((2, 4), "float32"), broken)


def test_fisher_data_with_inputs_of_different_lengths_is_refused():
    keras.utils.set_random_seed(0)
    model = _mlp(inputs=2)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(12, 4)).astype("float32"), rng.normal(size=(5, 5)).astype("float32")]
    with pytest.raises(ValueError, match=r"Invalid value for argument `data`.*same number of "
                                         r"samples.*lengths \[12, 5\]"):
        sensitivity.fisher_importance(model, (x, None), "sparse_categorical_crossentropy")


# ------------------------------------------------------------------ regularizer
def test_regularizer_penalty_of_a_float16_variable():
    w = np.random.default_rng(0).normal(0, 0.05, (20, 8)).astype("float16")
    reg16, reg32 = (SpectralKMeansRegularizer(4, lam=1.0, relaxation="hard", seed=0)
                    for _ in range(2))
    var16 = keras.Variable(w, dtype="float16")
    reg16.refresh(var16)
    numpy_penalty = reg32.refresh(keras.Variable(w.astype("float32")))["penalty"]  # float64
    np.testing.assert_array_equal(reg16.assignment, reg32.assignment)
    p16 = reg16(var16)  # TF's weighted bincount has no float16 kernel: summed in float32
    # float32: Keras sums a model's losses in float32 and refused a float16 penalty ("Cannot
    # convert a list containing a tensor of dtype float16"): see test_half_regularizer15.py
    assert _dtype(p16) == "float32"
    np.testing.assert_allclose(float(to_numpy(p16)), numpy_penalty, rtol=2e-3)


@tf_backend_only()
def test_cli_refuses_a_half_precision_model_before_any_work(policy, tmp_path):
    """`dkm-tf compress` trained and wrote clustered.keras, then failed at the TFLite step."""
    import io

    from dkm_tf import cli

    policy("mixed_float16")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x), name="half")
    path = str(tmp_path / "half.keras")
    model.save(path)
    policy("float32")
    out, err = tmp_path / "out", io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", path, "--noplots", "--quiet",
                  "--output_dir", str(out)], stdout=io.StringIO(), stderr=err)
    assert rc == 2, err.getvalue()
    assert "invalid --model" in err.getvalue() and "half precision" in err.getvalue()
    assert "mixed_float16" in err.getvalue() and "--notflite" in err.getvalue()
    assert not out.exists()  # nothing clustered, nothing written
