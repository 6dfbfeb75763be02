"""Input sizes the Keras model leaves open, sample dtypes, and samples the model cannot run.

A fully convolutional net on ``Input((None, None, c))`` runs at any size in Keras, but the
exported file is built and verified at the samples' size (the decode-once lowering bakes it
into its reshapes: a 12x12 export once answered a 30x30 image with a 1x1 map, silently). The
file must say so and refuse another size, in every format, while its batch stays dynamic.
"""

import pathlib

import keras
import numpy as np
import pytest
from testing import tflite_interpreter

import dkm_tf
import dkm_tf.export as ex
from dkm_tf.export import canonical
from dkm_tf.export import convert as convert_lib
from dkm_tf.export.interpreters import make_interpreter
from dkm_tf.export.rewrite import FlatModel

FORMATS = [("palettized", {}), ("palettized", {"decode": "per_invoke"}), ("float", {}),
           ("fp16", {}), ("int8", {})]
TOL = {"palettized": 1e-4, "float": 1e-5, "fp16": 2e-2, "int8": 1e-1}


def fully_conv(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 2), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    out = keras.layers.Conv2D(3, 1, name="c2")(h)
    return keras.Model(inp, out, name="fully_conv")


def _images(size, n, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 2)).astype(np.float32)


def _run(path, x, kind):
    runner = tflite_interpreter(path, kind).get_signature_runner()
    (name,) = runner.get_input_details()  # the Keras input's name ("image", "input_layer")
    return np.asarray(runner(**{name: x})["output_0"])


@pytest.mark.parametrize("fmt, kwargs", FORMATS)
def test_open_input_size_is_fixed_noted_and_guarded(tmp_path, fmt, kwargs):
    shared, pals, _ = dkm_tf.share_weights(fully_conv(), 4)
    x = _images(9, 6)
    rep = ex.to_tflite(shared, tmp_path / "m.tflite", format=fmt, palettes=pals,
                       sample_inputs=x, **kwargs)
    assert any("input size fixed at 9x9x2" in n and "(None, None, None, 2)" in n
               for n in rep.notes), rep.notes
    assert rep.dynamic_batch
    want = keras.ops.convert_to_numpy(shared(x))
    for kind in ("litert", "tflite"):
        got = _run(rep.path, x, kind)  # batch 6 in one invoke, at the samples' size
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= TOL[fmt] * np.abs(want).max()
        for size in (7, 12, 18):  # 18 = 2 x 9: a reshape guard alone would let this through
            with pytest.raises((RuntimeError, ValueError)):
                _run(rep.path, _images(size, 2), kind)
    sig = tflite_interpreter(rep.path).get_input_details()[0]["shape_signature"]
    assert list(sig) == [-1, 9, 9, 2]


def test_fix_size_is_exact_and_small():
    shared, pals, _ = dkm_tf.share_weights(fully_conv(), 4)
    x = _images(9, 3)
    plain = convert_lib.convert(shared, convert_lib.input_specs(shared, x))
    guarded, names = canonical.fix_size(plain)
    assert len(names) == 1
    fm = FlatModel.from_bytes(guarded)
    ops = [fm.op_name(op) for op in fm.operators]
    assert ops[:2] == ["ADD", "ADD"] and ops[2:] == [
        FlatModel.from_bytes(plain).op_name(op) for op in FlatModel.from_bytes(plain).operators]
    zeros = sorted(fm.const(int(op.inputs[1])).shape for op in fm.operators[:2])
    assert zeros == [(1, 1, 9, 1), (1, 9, 1, 2)]
    assert all(not fm.const(int(op.inputs[1])).any() for op in fm.operators[:2])
    assert len(guarded) - len(plain) < 1024
    for kind in ("litert", "tflite"):
        a = make_interpreter(kind, plain).get_signature_runner()(image=x)["output_0"]
        b = make_interpreter(kind, guarded).get_signature_runner()(image=x)["output_0"]
        np.testing.assert_array_equal(a, b)  # x + 0 == x: bit for bit


def test_fixed_size_models_get_no_guard(tmp_path):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((9, 9, 2)), keras.layers.Conv2D(3, 3, name="c")])
    shared, pals, _ = dkm_tf.share_weights(m, 4)
    rep = ex.to_tflite(shared, tmp_path / "m.tflite", palettes=pals, sample_inputs=_images(9, 4))
    assert not any("input size fixed" in n for n in rep.notes)
    fm = FlatModel.from_bytes(pathlib.Path(rep.path).read_bytes())
    assert not any(fm.tensor_name(i).endswith(("/fixed_size_0", "/fixed_size_1"))
                   for i in range(len(fm.tensors)))


def test_uint8_samples_keep_the_models_float_input(tmp_path):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Rescaling(1 / 255),
                          keras.layers.Conv2D(2, 3, name="c"), keras.layers.Flatten(),
                          keras.layers.Dense(3, name="d")])
    shared, pals, _ = dkm_tf.share_weights(m, 4)
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 1)).astype(np.uint8)
    rep = ex.to_tflite(shared, tmp_path / "m.tflite", palettes=pals, sample_inputs=x)
    detail = tflite_interpreter(rep.path).get_input_details()[0]
    assert detail["dtype"] == np.float32  # the Keras input's dtype, not the samples'
    got = _run(rep.path, x.astype(np.float32), "litert")
    want = keras.ops.convert_to_numpy(shared(x.astype(np.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_samples_a_subclassed_model_cannot_run_are_named(tmp_path):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.c = keras.layers.Conv2D(2, 3)
            self.flat = keras.layers.Flatten()
            self.d = keras.layers.Dense(3)

        def call(self, x):
            return self.d(self.flat(self.c(x)))

    keras.utils.set_random_seed(0)
    net = Net()
    net(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"`sample_inputs`.*model can run.*\(2, 6, 6, 1\)"):
        ex.to_tflite(net, tmp_path / "m.tflite", format="float",
                     sample_inputs=np.zeros((2, 6, 6, 1), np.float32))
    assert not (tmp_path / "m.tflite").exists()
    rep = ex.to_tflite(net, tmp_path / "m.tflite", format="float",
                       sample_inputs=np.zeros((2, 8, 8, 1), np.float32))
    assert any("subclassed model declares no input size" in n for n in rep.notes)
