"""`sample_inputs` (and `representative_data`) as a dict keyed by the model's input names
(audit 19f).

Before 2026-12-06 `to_tflite` and `export_all` refused any dict with a TypeError ("Expected
an array or a list of arrays ... Received: sample_inputs={...} of type dict"), even keyed by
exactly the input names of a Functional model built on that dict. A dict keyed by those names
is now put in `model.inputs` order (a dict-built model's keys, sorted by Keras); any other
dict is refused with a ValueError naming the expected names and the
received keys. The two inputs differ in scale 100x, so a swapped order is seen in the outputs
(and in full int8's calibration).
"""

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402

L = keras.layers
pytestmark = tf_backend_only()


def _model(kind):
    keras.utils.set_random_seed(0)
    zeta, alpha = keras.Input((8,), name="zeta"), keras.Input((8,), name="alpha")
    # model.inputs: [zeta, alpha] (list), [alpha, zeta] (dict: Keras sorts the keys)
    ins = [zeta, alpha] if kind == "list" else {"zeta": zeta, "alpha": alpha}
    h = L.Concatenate()([L.Dense(6, activation="relu")(zeta), L.Dense(6)(alpha)])
    return keras.Model(ins, L.Dense(4)(h))


def _samples(n, seed):
    rng = np.random.default_rng(seed)
    return {"alpha": (rng.normal(size=(n, 8)) * 100).astype("float32"),
            "zeta": rng.normal(size=(n, 8)).astype("float32")}


def _keras(model, kind, x):
    return np.asarray(model([x["zeta"], x["alpha"]] if kind == "list" else x))


def _run_file(path, model, kind, x):
    """The file's outputs at batch len(x); its inputs in model.inputs order."""
    import tensorflow as tf

    order = ["zeta", "alpha"] if kind == "list" else ["alpha", "zeta"]
    it = tf.lite.Interpreter(path)
    ins = it.get_input_details()
    n = len(x["alpha"])
    for d in ins:
        it.resize_tensor_input(d["index"], [n, 8])
    it.allocate_tensors()
    for d, k in zip(ins, order):
        it.set_tensor(d["index"], x[k])
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("fmt,kwargs,rtol", [("float", {}, 1e-5),
                                             ("int8", {"int8_mode": "full"}, 0.1)])
def test_dict_sample_inputs_export_and_match_keras_at_batch_1_and_3(kind, fmt, kwargs, rtol,
                                                                      tmp_path):
    model = _model(kind)
    x = _samples(8, 0)
    shuffled = {"zeta": x["zeta"], "alpha": x["alpha"]}  # not model.inputs order either way
    if fmt == "int8":
        kwargs = {**kwargs, "representative_data": dict(reversed(_samples(32, 1).items()))}
    path = str(tmp_path / "m.tflite")
    report = dkm_tf.export.to_tflite(model, path, format=fmt, sample_inputs=shuffled, **kwargs)
    assert report.path == path
    for n in (1, 3):
        xs = {k: v[:n] for k, v in x.items()}
        ref = _keras(model, kind, xs)
        got = _run_file(path, model, kind, xs)
        assert got.shape == ref.shape == (n, 4)
        assert np.abs(got - ref).max() <= rtol * np.abs(ref).max(), (n, got, ref)


def test_export_all_takes_a_dict(tmp_path):
    model = _model("dict")
    x = _samples(4, 0)
    reports = dkm_tf.export.export_all(model, None, str(tmp_path), x, targets=["float"],
                                       latency=True, threads=[1], runs=2)
    got = _run_file(reports["float"].path, model, "dict", x)
    ref = _keras(model, "dict", x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert reports["float"].latency["1t"]


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("keys", [("alpha",), ("alpha", "zeta", "extra"), ("ALPHA", "zeta"),
                                  ("zeta_", "alpha")])
def test_other_dicts_are_refused_naming_the_input_names(kind, keys, tmp_path):
    model = _model(kind)
    x = _samples(2, 0)["alpha"]
    names = "['zeta', 'alpha']" if kind == "list" else "['alpha', 'zeta']"
    with pytest.raises(ValueError, match=r"argument `sample_inputs`.*input names "
                       + names.replace("[", r"\[").replace("]", r"\]")
                       + r"\. Received: sample_inputs=a dict with keys \[" + repr(keys[0])):
        dkm_tf.export.to_tflite(model, str(tmp_path / "m.tflite"), format="float",
                                sample_inputs={k: x for k in keys})
    assert not (tmp_path / "m.tflite").exists()


def test_representative_data_with_other_keys_is_refused(tmp_path):
    model = _model("dict")
    x = _samples(2, 0)
    with pytest.raises(ValueError, match=r"argument `representative_data`.*Received: "
                       r"representative_data=a dict with keys \['alpha', 'z'\]"):
        dkm_tf.export.to_tflite(model, str(tmp_path / "m.tflite"), format="int8",
                                int8_mode="full", sample_inputs=x,
                                representative_data={"alpha": x["alpha"], "z": x["zeta"]})
    with pytest.raises(ValueError, match="export_all|sample_inputs"):
        dkm_tf.export.export_all(model, None, str(tmp_path), {"alpha": x["alpha"]},
                                 targets=["float"])
