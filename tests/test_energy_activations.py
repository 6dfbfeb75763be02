"""Activations and LayerNormalization are charged alike from a Keras model and its `.tflite`.

The Keras reader used to skip every activation but ReLU / LeakyReLU / PReLU and every
`LayerNormalization`, while the `.tflite` reader charged the priced element-wise ops the
converter lowers them to (swish: LOGISTIC + MUL, LayerNormalization: MEAN / RSQRT + 3 MUL +
2 ADD): EfficientNetB0 (96x96) was 1.61e9 (hierarchy model) from the Keras model and 2.30e9
from its file, 7.1e8 of the gap the 33 swish MULs. `energy.activations` now charges the same
ops; each case below is converted with TensorFlow Lite and its records compared.
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from testing import tf_backend_only  # noqa: E402

from dkm_tf import energy  # noqa: E402

L = keras.layers
pytestmark = tf_backend_only("the comparison converts each model with TensorFlow Lite")


def _tflite(model, path):
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return str(path)


def _eltwise(report):
    return sorted((x.shape.kind, x.shape.eltwise_op, x.shape.output_size, x.shape.n_inputs)
                  for x in report.layers if x.shape.kind in ("eltwise", "pool"))


def _both(model, tmp_path):
    return energy.estimate(model), energy.estimate(_tflite(model, tmp_path / "m.tflite"))


def _activated(act, form):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 4))
    if form == "layer":
        out = L.Activation(act)(L.Conv2D(4, 3)(inp))
    elif form == "conv":
        out = L.Conv2D(4, 3, activation=act, name="c")(inp)
    else:
        out = L.Dense(5, activation=act)(L.Flatten()(inp))
    return keras.Model(inp, out)


@pytest.mark.parametrize("act,form", [
    ("swish", "layer"), ("swish", "conv"), ("swish", "dense"), ("silu", "conv"),
    ("hard_sigmoid", "layer"), ("selu", "layer"), ("selu", "dense"), ("softplus", "conv"),
    ("softsign", "layer"), ("mish", "layer"), ("glu", "layer"), ("glu", "conv"),
    ("sigmoid", "conv"), ("tanh", "layer"), ("gelu", "dense"), ("hard_swish", "layer"),
    ("elu", "conv"), ("softmax", "dense"),
])
def test_activation_charged_as_its_tflite_ops(act, form, tmp_path):
    k, t = _both(_activated(act, form), tmp_path)
    assert _eltwise(k) == _eltwise(t)
    assert k.paper_total == pytest.approx(t.paper_total, rel=1e-9)
    assert k.hierarchy_total == pytest.approx(t.hierarchy_total, rel=1e-9)


def test_swish_is_one_mul_per_output_and_sigmoid_is_reported():
    """Independent of the converter: swish of a conv with 4x4x4 outputs is one mul of two
    tensors per output; a sigmoid is not priced and says so."""
    k = energy.estimate(_activated("swish", "conv"))
    assert _eltwise(k) == [("eltwise", "mul", 64, 2)]
    # Keras 3 names swish "silu"
    assert [x.name for x in k.layers if x.shape.kind == "eltwise"] == ["c/silu"]
    k = energy.estimate(_activated("sigmoid", "layer"))
    assert _eltwise(k) == []
    assert any("'sigmoid'" in why and "not priced" in why for _, why in k.skipped)


def test_unknown_activation_is_reported_not_charged():
    def cube(x):
        return x * x * x

    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(3, activation=cube)(inp))
    report = energy.estimate(model)
    assert _eltwise(report) == []
    assert any("'cube'" in why and "not modelled" in why for _, why in report.skipped)


def _normed(shape, beta_zero=False, rms=False, **kwargs):
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape)
    norm = (L.RMSNormalization if rms else L.LayerNormalization)(**kwargs)
    model = keras.Model(inp, norm(L.Dense(8)(inp)))
    rng = np.random.default_rng(0)
    for w in norm.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    if beta_zero:
        norm.beta.assign(np.zeros(norm.beta.shape, "float32"))
    return model


@pytest.mark.parametrize("kwargs", [
    {}, {"center": False}, {"scale": False}, {"center": False, "scale": False},
    pytest.param({"rms_scaling": True}, marks=pytest.mark.filterwarnings(
        "ignore:You passed `rms_scaling=True`")),
    {"axis": [1, 2]}, {"beta_zero": True}, {"rms": True},
])
@pytest.mark.parametrize("shape", [(5, 8), (4, 4, 8)])
def test_layer_norm_charged_as_its_tflite_ops(kwargs, shape, tmp_path):
    k, t = _both(_normed(shape, **kwargs), tmp_path)
    assert _eltwise(k) == _eltwise(t)
    assert k.hierarchy_total == pytest.approx(t.hierarchy_total, rel=1e-9)


def test_layer_norm_records_by_hand():
    """(4, 4, 8) normalized over the 8 channels: 16 groups, 128 outputs. The epsilon add per
    group; x·inv, (−mean)·inv, inv·γ, their sum and + β per output."""
    k = energy.estimate(_normed((4, 4, 8)))
    e = "eltwise"
    assert _eltwise(k) == sorted([(e, "add", 16, 2), (e, "mul", 128, 2), (e, "mul", 128, 2),
                                  (e, "mul", 128, 2), (e, "add", 128, 2), (e, "add", 128, 2)])
    k = energy.estimate(_normed((4, 4, 8), beta_zero=True))
    assert _eltwise(k).count((e, "add", 128, 2)) == 1  # a zero beta is folded away
    assert not any("LayerNormalization" in why for _, why in k.skipped)


def _bn_after(kind):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 6) if kind == "dense_nd" else (6,) if kind == "dense" else (6, 6, 3))
    extra = None
    if kind == "conv":
        x = L.Conv2D(4, 3, use_bias=False, name="p")(inp)
    elif kind == "depthwise":
        x = L.DepthwiseConv2D(3, name="p")(inp)
    elif kind == "transpose":
        x = L.Conv2DTranspose(4, 3, name="p")(inp)
    elif kind in ("dense", "dense_nd"):
        x = L.Dense(4, name="p")(inp)
    elif kind == "conv_relu":
        x = L.Conv2D(4, 3, activation="relu", name="p")(inp)
    else:  # "shared": the conv's output also feeds a pooling
        x = L.Conv2D(4, 3, name="p")(inp)
        extra = L.GlobalAveragePooling2D()(x)
    norm = L.BatchNormalization(name="bn")
    out = L.Flatten()(norm(x))
    if extra is not None:
        out = L.Concatenate()([out, extra])
    rng = np.random.default_rng(0)
    for w in norm.weights:
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
    return keras.Model(inp, out)


@pytest.mark.parametrize("kind", ["conv", "depthwise", "transpose", "dense"])
def test_batch_norm_folded_as_tflite_folds_it(kind, tmp_path):
    k, t = _both(_bn_after(kind), tmp_path)
    assert _eltwise(k) == _eltwise(t) == []
    assert ("bn", "folded into p (as a .tflite folds it)") in k.skipped
    assert k.hierarchy_total == pytest.approx(t.hierarchy_total, rel=1e-9)


@pytest.mark.parametrize("kind", ["conv_relu", "shared", "dense_nd"])
def test_batch_norm_not_folded_is_the_files_mul_and_add(kind, tmp_path):
    """After an activation, beside another reader of the conv's output, or after a Dense on
    an N-D tensor the converter keeps the batch norm (a MUL and an ADD); the Keras reader
    charges the same two records (it was one "affine" record: `keras_lowered`)."""
    k, t = _both(_bn_after(kind), tmp_path)
    mine = sorted(x.shape.eltwise_op for x in k.layers if x.shape.layer == "bn")
    assert mine == ["add", "mul"]
    n = next(x for x in k.layers if x.shape.layer == "bn").shape.output_size
    assert sorted(x[:3] for x in _eltwise(t) if x[2] == n)[-2:] == [
        ("eltwise", "add", n), ("eltwise", "mul", n)]
    assert k.hierarchy_total == pytest.approx(t.hierarchy_total, rel=1e-9)
