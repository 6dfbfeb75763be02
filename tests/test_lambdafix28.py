"""Review fixes of ``graph.untracked`` (a layer a ``Lambda`` calls that the model does not
track), each measured on h28-lambdaexport:

* a frozen untracked layer was not listed as skipped (only trainable variables were kept);
  a model whose only weights were one said "it has no layer with weights.";
* a closure cell never assigned (``if use_proj: proj = Dense(8)``) made ``to_tflite`` raise
  "Cell is empty" (421d599 exported it);
* a Lambda failing on zeros hid its layer: ``n_params`` 104 of the file's 108, skipped [];
* a layer called in two Lambdas was listed twice, the variables of one layer the Lambda's
  function does not reach listed one per variable, and a custom layer's call was called "a
  Lambda's function";
* a ``keras.random.SeedGenerator``'s state counted as 2 parameters;
* ``cluster_weights(..., on_unsupported="error")`` accepted a model with an untracked layer.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import dkm_tf
from dkm_tf.export import to_tflite
from dkm_tf.graph.untracked import param_count, untracked_reads


def _x(n=3):
    return np.random.RandomState(0).randn(n, 8).astype(np.float32)


def _run(path, x):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()  # the Keras input's name (input_layer_N)
    return runner(**{name: x})["output_0"]


def _dense_ref(layer, x):
    w, b = (np.asarray(v, np.float64) for v in layer.get_weights())
    return x.astype(np.float64) @ w + b


def _frozen(only=False):
    keras.utils.set_random_seed(1)
    inp = keras.Input((8,))
    hid = keras.layers.Dense(4, name="frozen_hidden")
    hid.trainable = False
    h = inp if only else keras.layers.Dense(16, name="body")(inp)
    return keras.Model(inp, keras.layers.Lambda(lambda t: hid(t), name="lam")(h))


def test_a_frozen_untracked_layer_is_listed_as_skipped():
    # h28-lambdaexport: skipped [] (a frozen tracked Dense is clustered, so this one is left)
    result = dkm_tf.share_weights(_frozen(), 4)
    assert [n for n, _ in result.skipped] == ["frozen_hidden"]
    with pytest.warns(UserWarning, match=r"frozen_hidden \(Dense\)"):
        _, report = dkm_tf.cluster_weights(_frozen(), 4, return_report=True)
    assert [(n, k) for n, k, _ in report.skipped] == [("frozen_hidden", "Dense")]


def test_a_model_whose_only_weights_are_a_frozen_untracked_layer_names_it():
    with pytest.raises(ValueError, match=r"'frozen_hidden' called inside 'lam', not tracked"):
        dkm_tf.share_weights(_frozen(only=True), 4)


def test_an_empty_closure_cell_does_not_break_the_export(tmp_path):
    def build(use_proj=False):
        keras.utils.set_random_seed(2)
        inp = keras.Input((8,))
        h = keras.layers.Dense(8, name="b")(inp)
        if use_proj:
            proj = keras.layers.Dense(8, name="proj")
        y = keras.layers.Lambda(lambda t: proj(t) if use_proj else t * 2.0, name="lam")(h)
        return keras.Model(inp, y)

    model = build()
    assert untracked_reads(model) == []  # h28-lambdaexport: ValueError "Cell is empty"
    path = tmp_path / "m.tflite"
    report = to_tflite(model, str(path), format="float", sample_inputs=_x())
    assert report.n_params == 72
    ref = 2.0 * _dense_ref(model.get_layer("b"), _x())
    np.testing.assert_allclose(_run(path, _x()), ref, rtol=1e-5, atol=1e-5)


def _fails_on_zeros():
    keras.utils.set_random_seed(3)
    hid = keras.layers.Dense(4, name="fails_on_zeros")

    def f(t):
        tf.debugging.assert_greater(tf.reduce_sum(tf.abs(t)), 0.0)
        return hid(t)

    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Lambda(f, name="lamf")(
        keras.layers.Dense(8, name="b")(inp)))
    return model, hid


def test_a_lambda_failing_on_zeros_still_counts_and_lists_its_layer(tmp_path):
    model, hid = _fails_on_zeros()
    path = tmp_path / "m.tflite"
    report = to_tflite(model, str(path), format="float", sample_inputs=_x())
    assert report.n_params == 72 + 36  # what the file stores; h28-lambdaexport: 72
    ref = _dense_ref(hid, _dense_ref(model.get_layer("b"), _x()))
    np.testing.assert_allclose(_run(path, _x()), ref, rtol=1e-5, atol=1e-5)
    model, _ = _fails_on_zeros()  # a fresh one: no conversion recorded, one trace
    assert param_count(model) == 108
    result = dkm_tf.share_weights(model, 4)
    assert [n for n, _ in result.skipped] == ["fails_on_zeros"]
    assert "'lamf' (its call on zeros failed" in result.skipped[0][1]


def test_a_layer_called_in_two_lambdas_is_listed_once_naming_both():
    inp = keras.Input((8,))
    twice = keras.layers.Dense(8, name="twice")
    a = keras.layers.Lambda(lambda t: twice(t), name="l1")(keras.layers.Dense(8, name="b1")(inp))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: twice(t), name="l2")(a))
    skipped = dkm_tf.share_weights(model, 4).skipped  # h28-lambdaexport: ["twice", "twice"]
    assert [n for n, _ in skipped] == ["twice"] and "'l1', 'l2'" in skipped[0][1]
    found = untracked_reads(model)
    assert [(r, o, k, len(v)) for r, o, k, v, _ in found] == [(("l1", "l2"), "twice", "Dense", 2)]
    assert param_count(model) == 72 + 72


def test_a_layer_out_of_the_functions_reach_is_one_entry_and_a_custom_call_says_so():
    held = {"d": keras.layers.Dense(4, name="held")}  # no layer in the closure: by path

    class Calls(keras.layers.Layer):
        def call(self, t):
            return held["d"](t)

    inp = keras.Input((8,))
    model = keras.Model(inp, Calls(name="calls")(keras.layers.Dense(8, name="b")(inp)))
    found = untracked_reads(model)
    assert len(found) == 1  # h28-lambdaexport: one per variable ("left 2 layer(s)")
    readers, owner, kind, variables, how = found[0]
    assert (readers, kind, len(variables), how) == (("calls",), "variable", 2, "call")
    assert owner.endswith("held")
    skipped = dkm_tf.share_weights(model, 4).skipped
    assert len(skipped) == 1 and "a custom layer's call" in skipped[0][1]
    assert "Lambda's function" not in skipped[0][1]


def test_seed_generator_state_is_no_parameter():
    class Noise(keras.layers.Layer):  # tracked, with a seed generator (model.variables)
        def __init__(self, **kw):
            super().__init__(**kw)
            self.sg = keras.random.SeedGenerator(1)

        def call(self, x):
            return x + 0.0 * keras.random.normal(keras.ops.shape(x), seed=self.sg)

    inp = keras.Input((8,))
    model = keras.Model(inp, Noise(name="noise")(keras.layers.Dense(8, name="b")(inp)))
    assert untracked_reads(model) == [] and param_count(model) == 72
    sg = keras.random.SeedGenerator(2)  # untracked, in a Lambda: no parameter either
    y = keras.layers.Lambda(lambda t: t + 0.0 * keras.random.normal(keras.ops.shape(t),
                                                                    seed=sg))(inp)
    model = keras.Model(inp, keras.layers.Dense(4, name="d")(y))
    assert untracked_reads(model) == [] and param_count(model) == 36


def test_cluster_weights_on_unsupported_error_refuses_an_untracked_layer():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8,))
    hidden = keras.layers.Dense(4, name="hidden")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: hidden(t), name="lam")(
        keras.layers.Dense(16, name="body")(inp)))
    with pytest.raises(ValueError, match=r"'hidden' \(Dense\) called inside 'lam'.*call the "
                                         r"layer in the model's graph"):
        dkm_tf.cluster_weights(model, 4, on_unsupported="error")
    with pytest.warns(UserWarning, match=r"hidden \(Dense\)"):  # "skip": listed
        _, report = dkm_tf.cluster_weights(model, 4, return_report=True)
    assert [n for n, _, _ in report.skipped] == ["hidden"]


def _check(t):  # fails on zeros: the trace names what it reads
    tf.debugging.assert_greater(tf.reduce_sum(tf.abs(t)), 0.0)
    return t


def test_a_sequential_lambda_failing_on_zeros_is_traced():
    # R9 A-F1: the trace read model._inputs_struct (a Sequential has none): param_count 72,
    # skipped [], on_unsupported="error" accepted
    keras.utils.set_random_seed(3)
    hid = keras.layers.Dense(4, name="seq_hidden")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="b"),
                              keras.layers.Lambda(lambda t: hid(_check(t)), name="lamf")])
    assert param_count(model) == 72 + 36
    assert [n for n, _ in dkm_tf.share_weights(model, 4).skipped] == ["seq_hidden"]
    with pytest.raises(ValueError, match=r"'seq_hidden' \(Dense\) called inside 'lamf'"):
        dkm_tf.cluster_weights(model, 4, on_unsupported="error")


class _Table(keras.layers.Layer):  # a raw tf.Variable as an attribute: TF tracking holds it
    def __init__(self, **kw):
        super().__init__(**kw)
        self.t = tf.Variable(np.ones((8,), "float32"), trainable=False)

    def call(self, x):
        return x * self.t


def test_a_tracked_layers_raw_variable_is_not_blamed_on_a_failing_lambda():
    # R9 A-F2: the Table's variable was listed as untracked, called inside 'check'; the
    # model without the Lambda was accepted
    inp = keras.Input((8,))
    h = _Table(name="table")(keras.layers.Dense(8, name="d1")(inp))
    h = keras.layers.Lambda(_check, name="check")(h)
    model = keras.Model(inp, keras.layers.Dense(2, name="d2")(h))
    assert untracked_reads(model) == [] and param_count(model) == 72 + 18
    dkm_tf.cluster_weights(model, 4, on_unsupported="error")  # no ValueError


def test_a_traced_variable_is_credited_to_the_failed_readers_reaching_it():
    # R9 A-F2: every traced variable was credited to every failed reader
    inp = keras.Input((8,))
    hid = keras.layers.Dense(8, name="reached")
    h = keras.layers.Lambda(lambda t: hid(_check(t)), name="reads")(inp)
    model = keras.Model(inp, keras.layers.Lambda(_check, name="only_checks")(h))
    found = untracked_reads(model)
    assert [(r, o, k, how) for r, o, k, _, how in found] == [
        (("reads",), "reached", "Dense", "traced")]
    held = {"d": keras.layers.Dense(8, name="by_path")}  # no failed reader reaches it
    a = keras.layers.Lambda(lambda t: held["d"](_check(t)), name="la")(
        keras.layers.Dense(8, name="b")(inp))
    model = keras.Model(inp, keras.layers.Lambda(_check, name="lb")(a))
    (readers, owner, kind, _, how), = untracked_reads(model)
    assert (readers, kind, how) == (("la", "lb"), "variable", "one of")
    skipped = dkm_tf.share_weights(model, 4).skipped
    assert "called inside one of layers 'la', 'lb'" in skipped[0][1]


def test_a_recorded_conversion_is_refiltered_after_the_layer_is_tracked(tmp_path):
    # R9 A-F3: after to_tflite, Sequential.pop + add(d5) gave param_count 144 (count 108)
    d5 = keras.layers.Dense(4, name="d5")
    s = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="a"),
                          keras.layers.Lambda(lambda t: d5(t), name="l5")])
    report = to_tflite(s, str(tmp_path / "m.tflite"), format="float", sample_inputs=_x())
    assert report.n_params == 108 and param_count(s) == 108
    s.pop()
    s.add(d5)
    assert s.count_params() == 108 and param_count(s) == 108
