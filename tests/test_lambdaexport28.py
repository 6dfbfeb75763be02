"""A layer a ``Lambda`` calls that the model does not track (``graph.untracked``).

``d = keras.layers.Dense(4); y = keras.layers.Lambda(lambda t: d(t))(h)``: ``d`` is no layer of
the graph and no attribute of one, so its kernel is not among ``model.weights``. Measured on
421d599 with Dense(16) -> Lambda(Dense(4)), 8 inputs:

* ``to_tflite`` failed on float, fp16 and palettized (after ``share_weights``) with the
  converter's "SignatureDef signature_key is None and model has 0 Signatures" (its temporary
  SavedModel refused the untracked captured variable; its fallback wrote no signature);
* ``share_weights`` (copy or in place) and ``cluster_weights`` left ``d`` float and listed
  nothing (``skipped == []``; ``fit`` does not train it either);
* ``compress`` counted 16 "other params" (the file keeps 84 float: 16 + 68): whole-model CR
  5.14x at K = 4 instead of 2.21x.

Now the file keeps the captured variables (float exact, fp16 within its tolerance, at batch 1
and 3, checked against numpy), both clustering entry points list ``d`` as skipped naming the
Lambda, and the report counts its weights.
"""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import dkm_tf
from dkm_tf import energy
from dkm_tf.export import to_tflite
from dkm_tf.graph.untracked import untracked_reads


def _model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8,))
    h = keras.layers.Dense(16, name="body")(inp)
    hidden = keras.layers.Dense(4, name="hidden")
    y = keras.layers.Lambda(lambda t: hidden(t), name="lam")(h)
    return keras.Model(inp, y), hidden


def _x(n):
    return np.random.RandomState(0).randn(n, 8).astype(np.float32)


def _reference(body, hidden, x):
    """numpy: (x @ W1 + b1) @ W2 + b2, in float64."""
    w1, b1 = (np.asarray(v, np.float64) for v in body.get_weights())
    w2, b2 = (np.asarray(v, np.float64) for v in hidden.get_weights())
    return (x.astype(np.float64) @ w1 + b1) @ w2 + b2


def _run(path, x):
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (name,) = runner.get_input_details()  # the Keras input's name (input_layer_N)
    return runner(**{name: x})["output_0"]


def _const_dtypes(path):
    """{shape: dtype} of the file's 2-D constant tensors, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    names = {0: np.dtype(np.float32), 1: np.dtype(np.float16), 2: np.dtype(np.int32),
             7: np.dtype(np.int16), 9: np.dtype(np.int8)}
    fb = schema.Model.GetRootAs(path.read_bytes(), 0)
    sub = fb.Subgraphs(0)
    out = {}
    for i in range(sub.TensorsLength()):
        t = sub.Tensors(i)
        buf = fb.Buffers(t.Buffer())
        if t.ShapeLength() == 2 and (buf.DataLength() or buf.Size()):
            out[tuple(int(d) for d in t.ShapeAsNumpy())] = names.get(t.Type(), t.Type())
    return out


def test_untracked_reads_names_the_lambda_and_the_layer():
    model, hidden = _model()
    assert [w.path for w in model.weights] == ["body/kernel", "body/bias"]
    found = untracked_reads(model)
    assert [(r, o, k, h) for r, o, k, _, h in found] == [(("lam",), "hidden", "Dense", "Lambda")]
    assert {id(v) for v in found[0][3]} == {id(hidden.kernel), id(hidden.bias)}


def test_a_lambda_of_ops_or_of_a_tracked_layer_is_not_untracked():
    inp = keras.Input((8,))
    d = keras.layers.Dense(8, name="d")
    y = keras.layers.Lambda(lambda t: d(t) * 2.0, name="lam")(d(inp))  # d is in the graph
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t + 1.0)(y))
    assert untracked_reads(model) == []


@pytest.mark.parametrize("fmt,tol,dtype", [("float", 1e-5, np.float32),
                                           ("fp16", 2e-2, np.float16)])
def test_float_and_fp16_files_compute_the_lambda_layer(tmp_path, fmt, tol, dtype):
    model, hidden = _model()
    path = tmp_path / f"m_{fmt}.tflite"
    report = to_tflite(model, str(path), format=fmt, sample_inputs=_x(3))
    assert report.n_params == 8 * 16 + 16 + 16 * 4 + 4  # the file's 212, not the model's 144
    for n in (1, 3):
        x = _x(n)
        ref = _reference(model.get_layer("body"), hidden, x)
        out = _run(path, x)
        assert out.shape == (n, 4)
        assert np.max(np.abs(out - ref)) <= tol * np.max(np.abs(ref))
    assert _const_dtypes(path) == {(16, 8): np.dtype(dtype), (4, 16): np.dtype(dtype)}


def test_share_weights_lists_the_untracked_layer_and_the_palettized_file_matches(tmp_path):
    model, hidden = _model()
    w_hidden = hidden.kernel.numpy().copy()
    result = dkm_tf.share_weights(model, 4)
    assert [p.name for p in result.palettes] == ["body/kernel"]
    assert [n for n, _ in result.skipped] == ["hidden"]
    reason = result.skipped[0][1]
    assert "'lam'" in reason and "not tracked by the model" in reason and "left float" in reason
    np.testing.assert_array_equal(hidden.kernel.numpy(), w_hidden)  # not clustered, as said
    body = result.model.get_layer("body")
    assert len(np.unique(body.kernel.numpy())) <= 4
    path = tmp_path / "m_pal.tflite"
    to_tflite(result.model, str(path), format="palettized", palettes=result.palettes,
              sample_inputs=_x(3))
    for n in (1, 3):
        x = _x(n)
        ref = _reference(body, hidden, x)
        assert np.max(np.abs(_run(path, x) - ref)) <= 1e-4 * np.max(np.abs(ref))
    kernels = _const_dtypes(path)
    assert kernels[(4, 16)] == np.float32  # the untracked layer's kernel: float, as listed
    assert (16, 8) not in kernels  # body's: codebook + indices, no float [16, 8] constant
    # the energy of the clustered Keras model charges what the file holds: body at K = 4,
    # the Lambda's Dense float (32 x 4 x 16 bits at 16-bit weights: 1,024)
    keras_e = energy.estimate(result.model, palettes=result.palettes)
    file_e = energy.estimate(str(path))
    assert [(x.shape.layer, x.n_clusters, x.stored_weight_bits) for x in keras_e.layers] == [
        ("body", 4, 320.0), ("hidden", None, 1024.0)]
    assert [(x.n_clusters, x.stored_weight_bits) for x in file_e.layers] == [
        (4, 320.0), (None, 1024.0)]
    assert keras_e.paper_total == pytest.approx(file_e.paper_total, rel=1e-6)
    assert keras_e.hierarchy_total == pytest.approx(file_e.hierarchy_total, rel=1e-6)


def test_share_weights_in_place_lists_it_too():
    model, _ = _model()
    result = dkm_tf.share_weights(model, 4, inplace=True)
    assert [n for n, _ in result.skipped] == ["hidden"]


def test_cluster_weights_reports_and_warns_the_untracked_layer():
    model, _ = _model()
    with pytest.warns(UserWarning, match=r"not tracked by the model.*hidden \(Dense\)"):
        _, report = dkm_tf.cluster_weights(model, 4, return_report=True)
    assert [(n, k) for n, k, _ in report.skipped] == [("hidden", "Dense")]
    assert [n for n, _, _ in report.clustered] == ["body"]


def test_compress_counts_the_untracked_weights_as_other_params():
    model, _ = _model()
    result = dkm_tf.compress(model, method="wr", n_clusters=4, verbose=0)
    assert result.size.other_params == 16 + 16 * 4 + 4  # body's bias, hidden's kernel + bias


@pytest.mark.parametrize("entry", ["share_weights", "cluster_weights"])
def test_a_model_whose_only_weights_are_untracked_is_refused_naming_them(entry):
    inp = keras.Input((8,))
    hidden = keras.layers.Dense(4, name="hidden")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: hidden(t), name="lam")(inp))
    # 421d599: "it has no layer with weights." (the weights are there, out of reach)
    with pytest.raises(ValueError, match=r"'hidden' called inside 'lam', not tracked by the "
                                         r"model .*call the layer in the model's graph"):
        getattr(dkm_tf, entry)(model, 4)
