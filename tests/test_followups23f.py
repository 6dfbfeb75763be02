"""Export follow-ups: float64 layers refused before conversion (naming them, with the float32
rebuild), fp16 of weights beyond float16's 65,504 refused naming the weight, and
``dkm-tf compress --model`` of an "mse" regressor file: its int8 file checked as a
regressor's (no arg-max check)."""

import io
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from dkm_tf.export import to_tflite  # noqa: E402

L = keras.layers
X8 = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")


def float64_layers(model):
    from dkm_tf.export.model_check import float64_layers as found  # new in this change

    return found(model)


def _mlp(dtype="float32", name="m"):
    keras.utils.set_random_seed(0)
    i = keras.Input((8,))
    h = L.Dense(4, activation="relu", name="h")(i)
    return keras.Model(i, L.Dense(3, dtype=dtype, name="fc")(h), name=name)


def test_float64_layer_refused_before_conversion_and_the_recipe_exports(tmp_path):
    m = _mlp("float64")
    # before: the converter failed after tracing ("operations that have no TFLite builtin
    # kernel": 'tf.MatMul' op is neither a custom op nor a flex op), in every format
    for fmt in ("float", "fp16", "int8"):
        with pytest.raises(ValueError, match=r"(?s)argument `model`.*float32.*1 layer\(s\) "
                                             r"computing in float64 \(fc\): 'fc' \(float64 Dense\)"
                                             r".*set_weights casts float64.*clone_model"):
            to_tflite(m, tmp_path / f"m.{fmt}.tflite", format=fmt, sample_inputs=X8)
        assert not (tmp_path / f"m.{fmt}.tflite").exists()
    assert float64_layers(m) == [("fc", "Dense")]
    # the fix the message gives: the same weights in float32 layers export
    m32 = keras.models.clone_model(m, clone_function=lambda layer: layer.__class__.from_config(
        {**layer.get_config(), "dtype": "float32"}))
    m32.set_weights(m.get_weights())
    rep = to_tflite(m32, tmp_path / "m32.tflite", format="float", sample_inputs=X8)
    np.testing.assert_allclose(m32.predict(X8, verbose=0), m.predict(X8, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert all(c.ok for c in rep.comparisons)


@pytest.mark.parametrize("make", [
    lambda: L.Activation("relu", dtype="float64"), lambda: L.MaxPooling2D(dtype="float64"),
    lambda: L.BatchNormalization(dtype="float64")])
def test_float64_ops_without_weights_refused_too(tmp_path, make):
    i = keras.Input((4, 4, 1))
    m = keras.Model(i, L.Dense(2)(L.Flatten()(make()(i))))
    x = np.zeros((2, 4, 4, 1), "float32")
    with pytest.raises(ValueError, match=rf"computing in float64 \({m.layers[1].name}\): '"):
        to_tflite(m, tmp_path / "m.tflite", format="float", sample_inputs=x)  # was the
        # converter's "'tf.Relu' op is neither a custom op nor a flex op" (MaxPool, Mul)
    assert [c for _, c in float64_layers(m)] == [type(m.layers[1]).__name__]


def test_float64_input_and_pass_through_layers_still_export(tmp_path):
    # these convert today (float32 ops; a float64 Flatten / Dropout is a reshape / identity)
    i = keras.Input((4, 4, 1), dtype="float64")
    h = L.Dropout(0.5, dtype="float64")(i)
    h = L.Flatten(dtype="float64")(L.Reshape((4, 4, 1), dtype="float64")(h))
    h = L.Activation("linear", dtype="float64")(L.Dense(4, name="d")(h))
    m = keras.Model(i, L.Dense(3)(h))
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 1)).astype("float32")
    for fmt in ("float", "int8"):
        rep = to_tflite(m, tmp_path / f"m.{fmt}.tflite", format=fmt, sample_inputs=x)
        assert all(c.ok for c in rep.comparisons)


def _conv_bn(where, value):
    keras.utils.set_random_seed(0)
    i = keras.Input((4, 4, 2))
    h = L.BatchNormalization(name="bn")(L.Conv2D(3, 2, name="c")(i))
    m = keras.Model(i, L.Dense(3, name="fc")(L.Flatten()(h)), name="big")
    layer, k, idx = {"fc/kernel": ("fc", 0, (0, 0)), "fc/bias": ("fc", 1, (0,)),
                     "bn/moving_variance": ("bn", 3, (0,))}[where]
    w = m.get_layer(layer).get_weights()
    w[k][idx] = value
    m.get_layer(layer).set_weights(w)
    return m


XC = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")


@pytest.mark.parametrize("where", ["fc/kernel", "fc/bias"])
def test_fp16_refuses_weights_beyond_float16_naming_them(tmp_path, where):
    m = _conv_bn(where, 1e5)
    # before: converted (the converter clamps to 65,504), then refused by verification for
    # "relative 0.345" naming no weight
    with pytest.raises(ValueError, match=rf"(?s)argument `format`.*65,504.*'big', whose "
                                         rf"weight\(s\) '{where}' \(max \|value\| 1e\+05\) "
                                         r"exceed it \(converted tensor.*format='float'.*"
                                         r"format='palettized'.*kept_dtype='float32'"):
        to_tflite(m, tmp_path / "m.tflite", format="fp16", sample_inputs=XC)
    assert not (tmp_path / "m.tflite").exists()
    rep = to_tflite(m, tmp_path / "f.tflite", format="float", sample_inputs=XC)  # as it says
    assert all(c.ok for c in rep.comparisons)


def test_fp16_keeps_a_large_weight_the_converter_folds_away(tmp_path):
    # a moving variance of 1e6 folds into a conv scale of ~1e-3: the file holds no value
    # beyond 65,504, and it exported before: not refused now
    m = _conv_bn("bn/moving_variance", 1e6)
    rep = to_tflite(m, tmp_path / "m.tflite", format="fp16", sample_inputs=XC)
    assert all(c.ok for c in rep.comparisons)


def test_fp16_of_a_causal_attention_mask_still_exports(tmp_path):
    # its scalar mask sentinel (-2.4e38) is clamped to -65,504: still a mask (relative 5e-4)
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 8))
    h = L.MultiHeadAttention(2, 4)(i, i, use_causal_mask=True)
    m = keras.Model(i, L.Dense(3)(L.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(8, 6, 8)).astype("float32")
    rep = to_tflite(m, tmp_path / "m.tflite", format="fp16", sample_inputs=x)
    assert all(c.ok for c in rep.comparisons)


@keras.saving.register_keras_serializable("test_followups23f")
class MaskedSoftmax(L.Layer):
    """A causal mask kept as a (T, T) weight of -1e9, added to the scores."""

    def build(self, shape):
        t = shape[-1]
        self.mask = self.add_weight(shape=(t, t), initializer="zeros", trainable=False,
                                    name="mask")
        self.mask.assign(np.triu(np.full((t, t), -1e9, "float32"), 1))

    def call(self, x):
        return keras.ops.softmax(x + self.mask, axis=-1)


def test_fp16_of_a_mask_weight_beyond_float16_still_exports(tmp_path):
    """A mask weight of -1e9 clamped to -65,504 is still a mask: the file is right (relative
    2.8e-4) and was written before; the first version of the fp16 check refused it up front
    for its weight beyond 65,504 (review R5): the weights are named only when verification
    refuses the file."""
    ops = keras.ops
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 8))
    s = L.Lambda(lambda a: ops.matmul(a, ops.transpose(a, (0, 2, 1))))(L.Dense(8)(i))
    m = keras.Model(i, L.Dense(3)(L.Flatten()(ops.matmul(MaskedSoftmax()(s), i))))
    x = np.random.default_rng(0).normal(size=(8, 6, 8)).astype("float32")
    rep = to_tflite(m, tmp_path / "m.tflite", format="fp16", sample_inputs=x)
    assert all(c.ok and c.rel_error < 1e-3 for c in rep.comparisons)


def test_cli_int8_of_a_regressor_file_has_no_arg_max_check(tmp_path):
    from dkm_tf import cli

    keras.utils.set_random_seed(0)
    i = keras.Input((8,))
    out = L.Dense(3, name="o")
    m = keras.Model(i, out(L.Dense(512, activation="relu", name="h")(i)))
    w = out.get_weights()  # 3 near-equal outputs: int8 moves their order, not their values
    w[0] = (0.05 + np.random.default_rng(1).normal(0, 1e-4, w[0].shape)).astype("float32")
    out.set_weights(w)
    m.compile("adam", "mse")
    m.save(tmp_path / "reg.keras")
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    np.savez(tmp_path / "reg.npz", x_train=x[:48], x_test=x[48:])
    so, se = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "reg.keras"), "--dataset",
                  str(tmp_path / "reg.npz"), "--output_dir", str(tmp_path / "o"),
                  "--n_clusters", "16", "--noplots", "--quiet"], stdout=so, stderr=se)
    assert rc == 0, se.getvalue()
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    # before: "not written: ... relative 0.0015 (tolerance 0.5), top-1 agreement 0.562 (at
    # least 0.7)" (the compressed model was loaded with compile=False: no loss to read)
    int8 = report["tflite"]["int8"]
    assert isinstance(int8, dict), int8
    assert any("no top-1 check" in n and "'mse'" in n for n in int8["notes"])
    assert all(c["rel_error"] < 0.01 and c["min_top1"] is None for c in int8["comparisons"])
    assert (tmp_path / "o" / "clustered.int8.tflite").exists()
    back = keras.models.load_model(tmp_path / "o" / "clustered.keras", compile=False)
    np.testing.assert_allclose(back.predict(x, verbose=0), m.predict(x, verbose=0), atol=0.05)


def test_cli_refuses_a_float64_model_before_any_work(tmp_path):
    """`dkm-tf compress --model` of a float64 model clustered and wrote clustered.keras, then
    stopped at the TFLite step with rc 1 (the export's refusal): now a usage error first."""
    from dkm_tf import cli

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", dtype="float64",
                                                name="head")(x), name="f64")
    path = str(tmp_path / "f64.keras")
    model.save(path)
    out, err = tmp_path / "out", io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", path, "--noplots", "--quiet",
                  "--output_dir", str(out)], stdout=io.StringIO(), stderr=err)
    assert rc == 2, err.getvalue()
    assert "invalid --model" in err.getvalue() and "compute in float64" in err.getvalue()
    assert "'head'" in err.getvalue() and "--notflite" in err.getvalue()
    assert not out.exists()  # nothing clustered, nothing written


@pytest.mark.parametrize("make", [lambda: L.LayerNormalization(dtype="float64"),
                                  lambda: L.GroupNormalization(2, dtype="float64"),
                                  lambda: L.RandomFlip(dtype="float64")],
                         ids=["layer_norm", "group_norm", "random_flip"])
def test_float64_layers_that_convert_still_export(tmp_path, make):
    """They exported (relative <= 3.2e-7) before the float64 check, which first refused them
    (review R5)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 4))
    m = keras.Model(i, L.Dense(3)(L.Flatten()(make()(i))))
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 4)).astype("float32")
    rep = to_tflite(m, tmp_path / "m.tflite", format="float", sample_inputs=x)
    assert all(c.ok and c.rel_error < 1e-5 for c in rep.comparisons)
