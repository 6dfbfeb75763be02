"""What the review of the names work found: the name check refused a weightless layer or a
nested model whose name starts with ``_`` / ``-`` / ``>`` (they convert: measured), and the
``overrides`` check refused ``{"Dense": ...}`` where the layer named "Dense" is itself a Dense
(one meaning either way)."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.export.scope_names import check_scope_names  # noqa: E402


def test_weightless_layers_and_nested_models_may_start_with_an_underscore(tmp_path):
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Dense(4, name="d")(inner_in), name="_inner")
    inp = keras.Input((6,))
    out = keras.layers.ReLU(name="_act")(inner(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(out), name="m")
    check_scope_names(model)  # no error
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    report = dkm_tf.export.to_tflite(model, str(tmp_path / "m.tflite"), format="float",
                                     sample_inputs=x)
    assert report.path and (tmp_path / "m.tflite").stat().st_size > 0
    for bad in (keras.Model(inp, keras.layers.Dense(3, name="_fc")(inp), name="m2"),
                keras.Model(inp, keras.layers.Dense(3, name="fc2")(inp), name="_m3")):
        with pytest.raises(ValueError, match="cannot trace"):
            check_scope_names(bad)


def test_overrides_key_naming_a_layer_of_that_class_is_one_meaning():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, name="Dense")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(h))
    result = dkm_tf.share_weights(model, 16, overrides={"Dense": {"n_clusters": 4}})
    ks = {p.layer_name: p.requested_clusters for p in result.palettes}
    assert ks == {"Dense": 4, "fc": 4}
