"""Exported ``.tflite`` files name their signature inputs after the Keras inputs.

Before 2026-12-07 every file named them ``input_0``, ``input_1``, ... : a model of
``keras.Input((6,), dtype="int32", name="tok")`` and ``keras.Input((5,), name="feat")`` ran as
``runner(input_0=tokens, input_1=features)`` and ``runner(tok=...)`` raised. The rule is in
:mod:`dkm_tf.export.io_names`.
"""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import dkm_tf
from dkm_tf.export import to_tflite
from dkm_tf.export.io_names import file_keys, signature_keys
from dkm_tf.export.verify import run_tflite

pytest.importorskip("tensorflow")

RNG = np.random.default_rng(29)
TOK = RNG.integers(0, 12, size=(3, 6)).astype(np.int32)
FEAT = RNG.normal(size=(3, 5)).astype(np.float32)
# format, to_tflite kwargs, relative tolerance of the file against the float64 reference
FORMATS = [("float", {}, 1e-5), ("fp16", {}, 2e-2),
           ("palettized", {"decode": "once"}, 1e-5),
           ("palettized", {"decode": "per_invoke"}, 1e-5),
           ("int8", {"int8_mode": "dynamic"}, 0.1),
           ("int8", {"int8_mode": "full"}, 0.15)]


def _two_inputs():
    keras.utils.set_random_seed(0)
    tok = keras.Input((6,), dtype="int32", name="tok")
    feat = keras.Input((5,), name="feat")
    emb = keras.layers.Flatten()(keras.layers.Embedding(12, 4, name="emb")(tok))
    h = keras.layers.Concatenate()([emb, keras.layers.Dense(8, name="proj")(feat)])
    return keras.Model([tok, feat], keras.layers.Dense(3, name="head")(h))


def _reference(model, tok, feat):
    """The two-input model in float64 numpy, from its weights."""
    w = {layer.name: [np.asarray(v, np.float64) for v in layer.get_weights()]
         for layer in model.layers}
    emb = w["emb"][0][tok].reshape(len(tok), -1)
    proj = feat.astype(np.float64) @ w["proj"][0] + w["proj"][1]
    return np.concatenate([emb, proj], axis=1) @ w["head"][0] + w["head"][1]


def _runner(path):
    return Interpreter(model_path=str(path)).get_signature_runner()


def _rel(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize(("fmt", "kwargs", "tol"), FORMATS,
                         ids=["-".join([f, *k.values()]) for f, k, _ in FORMATS])
def test_every_format_takes_the_keras_input_names(tmp_path, fmt, kwargs, tol):
    shared = dkm_tf.share_weights(_two_inputs(), 4)
    path = tmp_path / "m.tflite"
    to_tflite(shared.model, path, format=fmt, palettes=shared.palettes,
              sample_inputs={"tok": TOK, "feat": FEAT}, **kwargs)
    assert file_keys(path.read_bytes()) == ["tok", "feat"]
    runner = _runner(path)
    assert sorted(runner.get_input_details()) == ["feat", "tok"]
    want = _reference(shared.model, TOK, FEAT)
    batch3 = runner(tok=TOK, feat=FEAT)["output_0"]  # one invoke of 3 samples
    batch1 = np.concatenate([runner(feat=FEAT[i:i + 1], tok=TOK[i:i + 1])["output_0"]
                             for i in range(3)])
    assert _rel(batch3, want) < tol and _rel(batch1, want) < tol
    with pytest.raises(ValueError, match="input_0"):
        runner(input_0=TOK, input_1=FEAT)
    details = Interpreter(model_path=str(path)).get_input_details()
    assert [d["name"] for d in details] == ["serving_default_tok:0", "serving_default_feat:0"]


def test_a_sequential_is_named_after_its_input_layer(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    name = model.inputs[0]._keras_history.operation.name  # noqa: SLF001
    assert name.startswith("input_layer")  # the tensor is keras_tensor_N, a process counter
    path = tmp_path / "m.tflite"
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    to_tflite(model, path, format="float", sample_inputs=x)
    assert file_keys(path.read_bytes()) == [name]
    w, b = (np.asarray(v, np.float64) for v in model.layers[-1].get_weights())
    got = _runner(path)(**{name: x})["output_0"]
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-6)
    # the name Keras' predict takes in a dict is accepted as sample_inputs, too
    to_tflite(model, tmp_path / "d.tflite", format="float", sample_inputs={name: x})


def test_a_nested_model_takes_the_outer_input_name_sanitised(tmp_path):
    keras.utils.set_random_seed(2)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    inp = keras.Input((4,), name="outer x")
    model = keras.Model(inp, inner(inp))
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    path = tmp_path / "m.tflite"
    to_tflite(model, path, format="float", sample_inputs={"outer x": x})
    assert file_keys(path.read_bytes()) == ["outer_x"]
    w, b = (np.asarray(v, np.float64) for v in inner.layers[-1].get_weights())
    np.testing.assert_allclose(_runner(path)(outer_x=x[:1])["output_0"], x[:1] @ w + b,
                               rtol=1e-5, atol=1e-6)


def test_names_a_signature_key_refuses_are_sanitised_or_fall_back(tmp_path):
    keras.utils.set_random_seed(3)
    names = ["a:b", "1st", "a_b"]
    inputs = [keras.Input((2,), name=n) for n in names]
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(
        keras.layers.Concatenate()(inputs)))
    xs = [RNG.normal(size=(3, 2)).astype(np.float32) for _ in names]
    path = tmp_path / "m.tflite"
    to_tflite(model, path, format="float", sample_inputs=xs)
    keys = ["a_b_2", "input_1", "a_b"]  # "a_b" keeps its own name
    assert file_keys(path.read_bytes()) == keys
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("d").get_weights())
    want = np.concatenate(xs, axis=1) @ w + b
    got = _runner(path)(**dict(zip(keys, xs)))["output_0"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_signature_keys_rule():
    assert signature_keys(["tok", "feat"]) == ["tok", "feat"]
    assert signature_keys(["my input", "é", "class", "", "_p", "__"]) == [
        "my_input", "input_1", "input_2", "input_3", "_p", "input_5"]
    assert signature_keys(["input_1", "9"]) == ["input_1", "input_1_2"]
    assert signature_keys([], 2) == ["input_0", "input_1"]  # a subclassed model: no names


def test_the_tflm_file_takes_the_keras_input_names(tmp_path):
    keras.utils.set_random_seed(4)
    inputs = [keras.Input((2,), name="tok"), keras.Input((3,), name="feat")]
    model = keras.Model(inputs, keras.layers.Dense(2, name="d")(
        keras.layers.Concatenate()(inputs)))
    shared = dkm_tf.share_weights(model, 4)
    xs = [RNG.normal(size=(3, 2)).astype(np.float32), RNG.normal(size=(3, 3)).astype(np.float32)]
    path = tmp_path / "m.tflite"
    report = to_tflite(shared.model, path, format="tflm", palettes=shared.palettes,
                       sample_inputs=xs)  # verified in TFLite Micro, inputs by position
    assert file_keys(path.read_bytes()) == ["tok", "feat"]
    assert report.comparisons and report.max_rel_error < 1e-5
    details = Interpreter(model_path=str(path)).get_input_details()  # TFLM_DECODE: no invoke
    assert [d["name"] for d in details] == ["serving_default_tok:0", "serving_default_feat:0"]


def test_a_model_built_on_a_dict_takes_its_keys(tmp_path):
    # Keras flattens the dict key-sorted (model.inputs = [alpha, zeta]); same shapes, so a
    # swap would run and mix the weights: each key must reach its own input
    keras.utils.set_random_seed(5)
    zeta, alpha = keras.Input((3,), name="zeta"), keras.Input((3,), name="alpha")
    out = keras.layers.Dense(2, name="d")(keras.layers.Concatenate()([zeta, alpha]))
    model = keras.Model({"zeta": zeta, "alpha": alpha}, out)
    x = {"zeta": RNG.normal(size=(3, 3)).astype(np.float32),
         "alpha": RNG.normal(size=(3, 3)).astype(np.float32)}
    path = tmp_path / "m.tflite"
    to_tflite(model, path, format="float", sample_inputs=x)
    assert file_keys(path.read_bytes()) == ["alpha", "zeta"]  # model.inputs order
    details = Interpreter(model_path=str(path)).get_input_details()
    assert [d["name"] for d in details] == ["serving_default_alpha:0", "serving_default_zeta:0"]
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("d").get_weights())
    want = np.concatenate([x["zeta"], x["alpha"]], axis=1) @ w + b
    crossed = np.concatenate([x["alpha"], x["zeta"]], axis=1) @ w + b
    assert np.max(np.abs(want - crossed)) > 0.1  # a swap would show
    runner = _runner(path)
    np.testing.assert_allclose(runner(**x)["output_0"], want, rtol=1e-5, atol=1e-6)
    got1 = np.concatenate([runner(zeta=x["zeta"][i:i + 1], alpha=x["alpha"][i:i + 1])
                           ["output_0"] for i in range(3)])
    np.testing.assert_allclose(got1, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_tflite(path.read_bytes(), [x["alpha"], x["zeta"]])[0],
                               want, rtol=1e-5, atol=1e-6)
