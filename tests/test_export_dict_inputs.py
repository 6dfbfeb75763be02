"""A Functional model built on a dict of named inputs exports.

Keras 3 calls such a model with that dict only, and the exporters called it with a list: every
format failed ("Expected inputs the model can run ... structure of `inputs` doesn't match").
Sample inputs are a list in `model.inputs` order (sorted by name) or a dict keyed by the input
names; any other dict is refused with a message that gives the names.
"""

import os

import numpy as np
import pytest
from testing import tf_backend_only

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402

L = keras.layers
pytestmark = tf_backend_only()


def _two_named_inputs():
    keras.utils.set_random_seed(0)
    zeta, alpha = keras.Input((8, 8, 1), name="zeta"), keras.Input((8, 8, 1), name="alpha")
    h = L.Concatenate()([L.Flatten()(L.Conv2D(4, 3, name="cz")(zeta)),
                         L.Dense(8, name="da")(L.Flatten()(alpha))])
    return keras.Model({"zeta": zeta, "alpha": alpha}, L.Dense(10, name="hd")(h))


def _run_file(path, inputs):
    import tensorflow as tf

    it = tf.lite.Interpreter(path)
    it.allocate_tensors()
    ins, out = it.get_input_details(), it.get_output_details()[0]
    rows = []
    for i in range(len(inputs[0])):
        for d, x in zip(ins, inputs):
            it.set_tensor(d["index"], x[i:i + 1])
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0])
    return np.array(rows)


@pytest.mark.parametrize("fmt,kwargs", [("float", {}), ("palettized", {"decode": "once"}),
                                        ("palettized", {"decode": "per_invoke"})])
def test_dict_input_model_exports_and_matches_keras(fmt, kwargs, tmp_path):
    result = dkm_tf.share_weights(_two_named_inputs(), 4)
    assert [t.name for t in result.model.inputs] == ["alpha", "zeta"]
    rng = np.random.default_rng(0)
    alpha, zeta = (rng.normal(size=(3, 8, 8, 1)).astype("float32") for _ in range(2))
    ref = np.asarray(result.model({"alpha": alpha, "zeta": zeta}))
    path = str(tmp_path / "m.tflite")
    report = dkm_tf.export.to_tflite(result.model, path, format=fmt, sample_inputs=[alpha, zeta],
                                     palettes=result.palettes if fmt != "float" else None,
                                     **kwargs)
    got = _run_file(path, [alpha, zeta])
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    swapped = _run_file(path, [zeta, alpha])  # the file's input order is model.inputs'
    assert np.abs(swapped - ref).max() > 1e-2 * np.abs(ref).max()
    assert report.bytes == os.path.getsize(path)


def test_wrong_keyed_dict_sample_inputs_are_refused_with_the_input_names(tmp_path):
    model = _two_named_inputs()
    x = np.zeros((2, 8, 8, 1), "float32")
    with pytest.raises(ValueError, match=r"input names \['alpha', 'zeta'\]"):
        dkm_tf.export.to_tflite(model, str(tmp_path / "m.tflite"), format="float",
                                sample_inputs={"alpha": x, "zeta_": x})
    assert not (tmp_path / "m.tflite").exists()
