"""Review R2 of the Keras-named ``.tflite`` inputs (:mod:`dkm_tf.export.io_names`).

Before these fixes: an input named ``self`` could not be exported (the signature runner's
``__call__(self, **kwargs)``); a sanitised name could take another input's exact Keras name
(``["a:b", "a_b"]`` -> ``a_b``, ``a_b_2``: feeding by Keras names swapped the inputs); the
verification fed the file in the signature's stored order; a subclassed model's dict keyed
``input_0``, ``input_1`` was refused.
"""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from dkm_tf.export import to_tflite
from dkm_tf.export.io_names import file_keys, signature_keys
from dkm_tf.export.rewrite import FlatModel
from dkm_tf.export.verify import run_tflite

pytest.importorskip("tensorflow")

RNG = np.random.default_rng(291)


def _concat_dense(names, width=4, seed=0):
    """Inputs of the same shape named ``names``, concatenated into one Dense."""
    keras.utils.set_random_seed(seed)
    inputs = [keras.Input((width,), name=n) for n in names]
    return keras.Model(inputs, keras.layers.Dense(2, name="d")(
        keras.layers.Concatenate()(inputs)))


def _numpy(model, xs):
    """The concatenating model in float64 numpy: ``xs`` in ``model.inputs`` order."""
    w, b = (np.asarray(v, np.float64) for v in model.get_layer("d").get_weights())
    return np.concatenate([np.asarray(x, np.float64) for x in xs], axis=1) @ w + b


def _xs(n, width=4):
    return [RNG.normal(size=(3, width)).astype(np.float32) for _ in range(n)]


def test_an_input_named_self_falls_back_to_input_i(tmp_path):
    model = _concat_dense(["self", "tok"], seed=1)
    xs = _xs(2)
    path = tmp_path / "m.tflite"
    report = to_tflite(model, path, format="float", sample_inputs=xs)  # raised TypeError
    assert report.max_rel_error < 1e-5
    assert file_keys(path.read_bytes()) == ["input_0", "tok"]
    got = Interpreter(model_path=str(path)).get_signature_runner()(
        input_0=xs[0], tok=xs[1])["output_0"]
    np.testing.assert_allclose(got, _numpy(model, xs), rtol=1e-5, atol=1e-6)
    assert signature_keys(["self", "Self"]) == ["input_0", "Self"]


@pytest.mark.parametrize("names", [["é", "input_0"], ["a:b", "a_b"], ["a-b", "a_b", "a_b_2"]])
def test_an_input_keeps_its_usable_keras_name(tmp_path, names):
    # same shapes: a swap would run, silently wrong
    model = _concat_dense(names, seed=2)
    xs = _xs(len(names))
    path = tmp_path / "m.tflite"
    to_tflite(model, path, format="float", sample_inputs=dict(zip(names, xs)))
    keys = file_keys(path.read_bytes())
    assert keys[1:] == names[1:]  # the usable names are the inputs' own
    assert keys[0] not in names and keys[0].startswith(("input_0", "a_b"))
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    want = _numpy(model, xs)
    keras_out = np.asarray(model.predict(dict(zip(names, xs)), verbose=0), np.float64)
    np.testing.assert_allclose(keras_out, want, rtol=1e-5, atol=1e-6)
    feed = {names[i]: xs[i] for i in range(1, len(names))} | {keys[0]: xs[0]}
    np.testing.assert_allclose(runner(**feed)["output_0"], want, rtol=1e-5, atol=1e-6)


def test_signature_keys_two_passes():
    assert signature_keys(["a:b", "1st", "a_b"]) == ["a_b_2", "input_1", "a_b"]
    assert signature_keys(["é", "input_0"]) == ["input_0_2", "input_0"]
    assert signature_keys(["x y", "x_y", "x_y_2", "x.y"]) == ["x_y_3", "x_y", "x_y_2", "x_y_4"]
    assert signature_keys(["tok", "tok"]) == ["tok", "tok_2"]


def test_the_feed_does_not_depend_on_the_stored_signature_order(tmp_path):
    names = ["zeta", "alpha", "mid"]
    model = _concat_dense(names, seed=3)
    xs = _xs(3)
    path = tmp_path / "m.tflite"
    to_tflite(model, path, format="float", sample_inputs=xs)
    content = path.read_bytes()
    fm = FlatModel.from_bytes(content)
    sd = fm.model.signatureDefs[0]
    sd.inputs = [sd.inputs[j] for j in (2, 0, 1)]  # same names and tensors, stored permuted
    permuted = fm.to_bytes()
    want = _numpy(model, xs)
    for c in (content, permuted):  # the permuted file gave rel 2.9 before
        for batch in (1, None):
            np.testing.assert_allclose(run_tflite(c, xs, batch=batch)[0], want,
                                       rtol=1e-5, atol=1e-6)
    assert file_keys(permuted) == names  # the subgraph's order, not the stored one


def test_sample_inputs_by_signature_keys_and_tensor_names(tmp_path):
    model = _concat_dense(["a:b", "a_b"], seed=4)
    xs = _xs(2)
    want = _numpy(model, xs)
    tensors = [t.name for t in model.inputs]  # keras_tensor_N
    for keys in (["a_b_2", "a_b"], tensors):
        path = tmp_path / "m.tflite"
        report = to_tflite(model, path, format="float", sample_inputs=dict(zip(keys, xs)))
        assert report.max_rel_error < 1e-5  # verified against Keras on the mapped inputs
        got = run_tflite(path.read_bytes(), xs, batch=None)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # swapping the values by key swaps the verified inputs: the mapping is per input
    path = tmp_path / "s.tflite"
    to_tflite(model, path, format="float", sample_inputs={"a_b": xs[0], "a_b_2": xs[1]})
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    np.testing.assert_allclose(runner(a_b=xs[0], a_b_2=xs[1])["output_0"],
                               _numpy(model, xs[::-1]), rtol=1e-5, atol=1e-6)


class _Two(keras.Model):
    def __init__(self):
        super().__init__(name="two")
        self.d = keras.layers.Dense(2)

    def call(self, inputs):
        a, b = inputs
        return self.d(keras.ops.concatenate([a, 2 * b], -1))


def test_a_subclassed_model_takes_a_dict_of_its_signature_keys(tmp_path):
    keras.utils.set_random_seed(5)
    model = _Two()
    xs = _xs(2)
    model(xs)
    w, b = (np.asarray(v, np.float64) for v in model.d.get_weights())
    want = np.concatenate([xs[0], 2 * xs[1]], axis=1).astype(np.float64) @ w + b
    path = tmp_path / "m.tflite"
    report = to_tflite(model, path, format="float",
                       sample_inputs={"input_1": xs[1], "input_0": xs[0]})
    assert report.max_rel_error < 1e-5
    got = Interpreter(model_path=str(path)).get_signature_runner()(
        input_0=xs[0], input_1=xs[1])["output_0"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"sample_inputs.*input_0, input_1, \.\.\."):
        to_tflite(model, path, format="float", sample_inputs={"a": xs[0], "b": xs[1]})


def test_a_one_input_subclassed_model_takes_input_0(tmp_path):
    keras.utils.set_random_seed(6)

    class One(keras.Model):
        def __init__(self):
            super().__init__(name="one")
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    model = One()
    x = _xs(1)[0]
    model(x)
    w, b = (np.asarray(v, np.float64) for v in model.d.get_weights())
    path = tmp_path / "m.tflite"
    to_tflite(model, path, format="float", sample_inputs={"input_0": x})
    got = Interpreter(model_path=str(path)).get_signature_runner()(input_0=x)["output_0"]
    np.testing.assert_allclose(got, x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-6)
