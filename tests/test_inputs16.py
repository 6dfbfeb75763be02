"""Inputs and layers the copies and the exporter mishandled (probes of session 16).

Measured before the fixes (old behaviour in comments):

* Adapted ``IntegerLookup`` / ``StringLookup`` / ``TextVectorization`` (vocabulary kept as
  Keras assets): the copies of ``share_weights``, ``cluster_weights``, ``strip_clustering`` and
  ``fold_batch_norm`` read ``['', '[UNK]']`` and raised "Table not initialized" when called.
* Keras 3.15's TF ``ops.add`` adds a ``(1, C, 1, 1)`` bias along the last axis when that axis
  is C: a BatchNormalization(axis=1) folded into a channels_first conv whose output width
  equals its channel count changed the outputs by 3.54 (DepthwiseConv2D, output (8, 10, 8)).
* A channels_first Conv2DTranspose failed to convert at a dynamic batch (DataFormatVecPermute).
* A string model input failed deep in the export ("Unsupported object type float").
* ``int8_mode="full"`` on an LSTM / GRU / SimpleRNN / Bidirectional model killed Python with a
  segmentation fault in TensorFlow's calibrator (the tests below never reach it).
* A bool input (attention mask) was stored as a float32 file input, its seeded values all True,
  and full int8 calibration fed it int32 ("Got value of type INT32 but expected type BOOL").
"""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import tf_backend_only  # noqa: E402

import dkm_tf  # noqa: E402
from dkm_tf.export import convert as cv  # noqa: E402
from dkm_tf.export import model_check  # noqa: E402

L = keras.layers
CF = "channels_first"
ATOL = 1e-5  # float32 round-off of these tiny models is ~1e-6
pytestmark = tf_backend_only()


# --- 1. lookup layers keep their vocabulary in every copy -------------------------------------

def _lookup_model(kind, bn=False):
    """``(model, x, lookup layer name)``: a lookup layer feeding a small dense head."""
    keras.utils.set_random_seed(0)
    if kind == "integer":
        look = L.IntegerLookup(name="look")
        look.adapt(np.array([3, 5, 7, 9, 3, 11, 13]))
        inp, x = keras.Input((4,), dtype="int64"), np.array([[3, 5, 8, 9], [11, 13, 3, 1]])
    elif kind == "string":
        look = L.StringLookup(name="look")
        look.adapt(np.array(["a", "b", "c", "d", "a"]))
        inp, x = keras.Input((4,), dtype="string"), np.array([["a", "b", "z", "d"],
                                                              ["c", "c", "a", "q"]])
    else:
        look = L.TextVectorization(name="look", output_mode=kind, **(
            {"output_sequence_length": 5} if kind == "int" else {}))
        look.adapt(np.array(["the cat sat", "the dog ran far", "a cat"]))
        inp, x = keras.Input((), dtype="string"), np.array(["the cat ran", "zz dog"])
    h = look(inp)
    if kind != "tf_idf":
        h = L.Flatten()(L.Embedding(look.vocabulary_size(), 4)(h))
    h = L.Dense(6, name="fc1")(h)
    if bn:
        h = L.BatchNormalization(name="bn")(h)
    model = keras.Model(inp, L.Dense(3, name="fc2")(h))
    if bn:
        bn_layer = model.get_layer("bn")
        rng = np.random.default_rng(1)
        bn_layer.set_weights([rng.uniform(0.5, 2, 6), rng.normal(size=6),
                              rng.normal(size=6), rng.uniform(0.5, 2, 6)])
    return model, x, look.name


def _same_function(copy, original, x):
    """``copy``'s outputs on ``x`` equal ``original``'s with ``copy``'s weights (lookups have
    no weights: the lists line up)."""
    keep = original.get_weights()
    original.set_weights(copy.get_weights())
    try:
        want = np.asarray(original(x))
    finally:
        original.set_weights(keep)
    np.testing.assert_allclose(np.asarray(copy(x)), want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind", ["integer", "string", "int", "tf_idf"])
def test_lookup_vocabulary_survives_every_copy(kind):
    model, x, name = _lookup_model(kind)
    vocab = model.get_layer(name).get_vocabulary()
    shared = dkm_tf.share_weights(model, 4).model
    wrapped = dkm_tf.cluster_weights(model, 4)
    plain, _ = dkm_tf.strip_clustering(wrapped)
    for copy in (shared, plain):
        assert copy.get_layer(name).get_vocabulary() == vocab  # old: ['', '[UNK]']
        _same_function(copy, model, x)  # old: "Table not initialized"
    np.testing.assert_allclose(np.asarray(wrapped(x)), np.asarray(plain(x)), rtol=0, atol=ATOL)
    bn_model, x, name = _lookup_model(kind, bn=True)
    folded, pairs, _ = dkm_tf.fold_batch_norm(bn_model)
    assert pairs == [("fc1", "bn")]
    assert folded.get_layer(name).get_vocabulary() == vocab
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(bn_model(x)), rtol=0, atol=ATOL)


@pytest.mark.parametrize("make", [L.StringLookup, L.IntegerLookup, L.TextVectorization,
                                  lambda: L.StringLookup(output_mode="tf_idf")])
def test_unadapted_lookup_copies_as_it_is(make):
    from dkm_tf.graph.copying import copy_layer

    layer = make()
    assert copy_layer(layer).get_vocabulary() == layer.get_vocabulary()  # no empty import


# --- 2. channels_first BatchNormalization folding and Keras' bias fast path -------------------

@keras.saving.register_keras_serializable("dkm_tf_test_inputs16")
class _DenseWithAssets(L.Dense):
    """A custom layer with asset and own-variables hooks (not a Keras lookup)."""

    def save_assets(self, dir_path):
        pass

    def load_assets(self, dir_path):
        pass

    def save_own_variables(self, store):
        super().save_own_variables(store)


def test_custom_layer_with_asset_hooks_keeps_the_values_a_copy_is_given():
    # review fix: the lookup asset copy reloaded the original weights over the shared ones
    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    model = keras.Model(x, _DenseWithAssets(3, name="cd")(x))
    shared = dkm_tf.share_weights(model, n_clusters=2)
    kernel = shared.model.get_layer("cd").get_weights()[0]
    palette = shared.palettes[0]
    assert len(np.unique(kernel)) <= 2
    np.testing.assert_array_equal(kernel, palette.decode().reshape(kernel.shape))


@keras.saving.register_keras_serializable("dkm_tf_test_inputs16")
class _ScaleInAssets(keras.layers.Layer):
    """A custom layer keeping a float outside its weights, in its assets (as model.save does)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.s = 1.0

    def call(self, x):
        return x * self.s

    def save_assets(self, dir_path):
        with open(os.path.join(dir_path, "s.txt"), "w") as f:
            f.write(repr(self.s))

    def load_assets(self, dir_path):
        with open(os.path.join(dir_path, "s.txt")) as f:
            self.s = float(f.read())


def test_custom_layer_state_kept_in_assets_survives_the_copy():
    # second review: the asset copy limited to Keras' lookups lost a custom layer's asset
    # state (s = 3.0 came back 1.0 in share_weights' copy; model.save keeps it)
    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    scale = _ScaleInAssets(name="sc")
    model = keras.Model(x, keras.layers.Dense(2, name="o")(scale(keras.layers.Dense(3)(x))))
    scale.s = 3.0
    shared = dkm_tf.share_weights(model, n_clusters=64)  # lossless: more clusters than values
    assert shared.model.get_layer("sc").s == 3.0
    data = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(shared.model(data), model(data), rtol=1e-6, atol=1e-6)


def _cf_bn_model(width):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 10, width))
    h = L.DepthwiseConv2D(3, padding="same", data_format=CF, name="dw")(inp)
    bn = L.BatchNormalization(axis=1, name="bn")
    model = keras.Model(inp, L.Flatten()(bn(h)))
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 2, 8), rng.normal(size=8), rng.normal(size=8),
                    rng.uniform(0.5, 2, 8)])
    return model, rng.standard_normal((2, 8, 10, width)).astype(np.float32)


def test_channels_first_bn_is_kept_where_keras_adds_the_bias_on_the_last_axis(cf_runs):
    model, x = _cf_bn_model(8)  # output (8, 10, 8): last dim == channels
    ref = np.asarray(model(x))
    folded, pairs, skipped = dkm_tf.fold_batch_norm(model)
    assert pairs == [] and [n for n, _ in skipped] == ["bn"]  # old: folded
    assert "bias fast path" in skipped[0][1] and "'dw'" in skipped[0][1]
    np.testing.assert_allclose(np.asarray(folded(x)), ref, rtol=0, atol=ATOL)  # old: 3.54
    r = dkm_tf.share_weights(model, 256)  # lossless (fewer distinct weights than 256)
    assert r.folded == [] and "bn" in [n for n, _ in r.skipped]
    np.testing.assert_allclose(np.asarray(r.model(x)), ref, rtol=0, atol=ATOL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (whether the unclustered BN is warned about)
        wrapped = dkm_tf.cluster_weights(model, 4)
    plain, _ = dkm_tf.strip_clustering(wrapped)
    assert "bn" in [layer.name for layer in plain.layers]  # old: folded at strip
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(wrapped(x)), rtol=0, atol=ATOL)
    model9, x9 = _cf_bn_model(9)  # control: last dim 9 != 8 channels still folds
    folded9, pairs9, _ = dkm_tf.fold_batch_norm(model9)
    assert pairs9 == [("dw", "bn")]
    np.testing.assert_allclose(np.asarray(folded9(x9)), np.asarray(model9(x9)), rtol=0,
                               atol=ATOL)


# --- 3. channels_first Conv2DTranspose converts (at batch 1) ----------------------------------

def test_channels_first_conv2d_transpose_exports(cf_runs, tmp_path):
    from testing import run_tflite_per_sample

    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 6, 7))
    h = L.Conv2DTranspose(4, 3, strides=2, padding="same", data_format=CF)(inp)
    model = keras.Model(inp, L.Flatten()(h))
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 7)).astype(np.float32)
    path = tmp_path / "ct.tflite"
    report = dkm_tf.export.to_tflite(model, path, "float", sample_inputs=x)  # old: ValueError
    assert any("batch fixed at 1" in n for n in report.notes)
    np.testing.assert_allclose(run_tflite_per_sample(path, x), np.asarray(model(x)), rtol=0,
                               atol=ATOL)


# --- 4. string inputs are refused before any work ---------------------------------------------

@pytest.mark.parametrize("kind, layer", [("string", "StringLookup 'look'"),
                                         ("int", "TextVectorization 'look'")])
def test_string_inputs_are_refused_naming_the_preprocessing(kind, layer, tmp_path, monkeypatch):
    model, x, _ = _lookup_model(kind)

    def no_work(*a, **k):
        raise AssertionError("the export started converting")

    monkeypatch.setattr(cv, "convert", no_work)
    for call in (lambda: dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", "float"),
                 lambda: dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", "float", None,
                                                 x),
                 lambda: dkm_tf.export.export_all(model, None, tmp_path, targets=["float"])):
        with pytest.raises(ValueError, match="string input") as e:  # old: "Unsupported ..."
            call()
        assert layer in str(e.value) and "input pipeline" in str(e.value)
    assert not os.listdir(tmp_path)


# --- 5. full int8 of a recurrent model: refused, never calibrated -----------------------------

def _rnn_model(make):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 4))
    return keras.Model(inp, L.Dense(3)(make()(inp)))


RNNS = {"lstm": lambda: L.LSTM(5, name="rnn"), "gru": lambda: L.GRU(5, name="rnn"),
        "simple": lambda: L.SimpleRNN(5, name="rnn"),
        "bidirectional": lambda: L.Bidirectional(L.LSTM(5), name="rnn")}
X_RNN = np.random.default_rng(0).standard_normal((4, 6, 4)).astype(np.float32)


@pytest.fixture
def no_calibration(monkeypatch):
    """The calibrator segfaulted on these models: fail instead, if it is ever reached."""
    import tensorflow as tf

    def refuse(*a, **k):
        raise AssertionError("a full-int8 conversion of a recurrent model started")

    real = cv.convert

    def convert(model, specs, quantization="none", representative_data=None):
        if quantization == "full":
            refuse()
        return real(model, specs, quantization, representative_data)

    monkeypatch.setattr(cv, "convert", convert)
    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_concrete_functions", refuse)
    return real


@pytest.mark.parametrize("kind", sorted(RNNS))
def test_full_int8_of_a_recurrent_model_is_refused(kind, tmp_path, no_calibration):
    model = _rnn_model(RNNS[kind])
    with pytest.raises(ValueError, match="int8_mode") as e:
        dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", "int8", int8_mode="full",
                                sample_inputs=X_RNN)
    assert "'rnn'" in str(e.value) and "int8_mode='dynamic'" in str(e.value)
    with pytest.raises(ValueError, match="int8_mode"):  # convert() itself refuses too
        no_calibration(model, cv.input_specs(model), "full", X_RNN)
    assert not os.listdir(tmp_path)


def test_unrolled_rnn_is_not_a_loop():
    assert model_check.recurrent_loops(_rnn_model(lambda: L.LSTM(5, unroll=True))) == []
    bi = _rnn_model(lambda: L.Bidirectional(L.GRU(5), name="bi"))
    assert model_check.recurrent_loops(bi) == ["bi"]


def test_export_all_skips_full_int8_of_a_recurrent_model(tmp_path, monkeypatch):
    import importlib

    ea = importlib.import_module("dkm_tf.export.export_all")  # the module, not the function
    real = ea.to_tflite

    def to_tflite(*a, **k):
        assert k.get("int8_mode") != "full", "full int8 of an LSTM model was attempted"
        return real(*a, **k)

    monkeypatch.setattr(ea, "to_tflite", to_tflite)
    model = _rnn_model(RNNS["lstm"])
    with pytest.warns(UserWarning, match=r"skipped target 'int8_full'.*\['rnn'\]"):
        reports = ea.export_all(model, None, tmp_path, X_RNN, targets=["float", "int8_full"])
    assert sorted(reports) == ["float"]
    assert sorted(os.listdir(tmp_path)) == ["model.float.tflite"]


# --- 6. bool inputs stay bool; their seeded values hold False too -----------------------------

def _mask_model():
    keras.utils.set_random_seed(0)
    x_in = keras.Input((5, 8), name="x")
    m_in = keras.Input((5, 5), dtype="bool", name="mask")
    h = L.MultiHeadAttention(2, 4, name="mha")(x_in, x_in, attention_mask=m_in)
    return keras.Model([x_in, m_in], L.Dense(3)(L.Flatten()(h)))


def test_bool_input_is_a_bool_file_input_verified_with_false_entries(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model = _mask_model()
    specs = cv.input_specs(model)
    assert [d for _, d in specs] == ["float32", "bool"]  # old: float32 for the mask
    (x, mask), note = cv.synthetic_samples(model, specs)
    assert mask.dtype == bool and 0.5 < mask.mean() < 0.95  # old: all True (nonzero floats)
    assert "bool inputs True with probability 0.75" in note
    report = dkm_tf.export.to_tflite(model, tmp_path / "m.tflite", "float")
    assert note in report.notes
    it = Interpreter(model_path=str(tmp_path / "m.tflite"))
    details = it.get_input_details()
    assert [d["dtype"] for d in details] == [np.float32, np.bool_]
    it.resize_tensor_input(details[0]["index"], x.shape)
    it.resize_tensor_input(details[1]["index"], mask.shape)
    it.allocate_tensors()
    it.set_tensor(details[0]["index"], x)
    it.set_tensor(details[1]["index"], mask)
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"])
    want = np.asarray(model([x, mask]))
    assert np.max(np.abs(want - np.asarray(model([x, np.ones_like(mask)])))) > 1e-3  # masked
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_full_int8_calibrates_a_bool_input_with_bools():
    from ai_edge_litert.interpreter import Interpreter

    model = _mask_model()
    specs = cv.input_specs(model)
    x, mask = cv.synthesize_inputs(specs, n=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter's own deprecation notes
        content = cv.convert(model, specs, "full", [x, mask])  # old: INT32 fed to a BOOL
    it = Interpreter(model_content=content)
    assert [d["dtype"] for d in it.get_input_details()] == [np.float32, np.bool_]
    assert "int8" in {d["dtype"].__name__ for d in it.get_tensor_details()}
