"""Copies keep the model's input names (``share_weights``, ``cluster_weights``, strip).

``keras.models.clone_model`` names each new ``Input`` after the old input's *tensor*; an
unnamed ``keras.Input`` has layer ``input_layer...`` but tensor ``keras_tensor...``, so every
copy renamed it and a dict keyed by the original's input names was refused by the copy.
"""

import keras
import numpy as np
from testing import tf_backend_only

import dkm_tf
from dkm_tf.export import to_tflite


def _two_inputs():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,)), keras.Input((3,), name="meta")  # one unnamed, one named
    h = keras.layers.Concatenate()([keras.layers.Dense(5)(a), keras.layers.Dense(5)(b)])
    return keras.Model([a, b], keras.layers.Dense(2)(h))


def _input_names(model):
    return [t._keras_history.operation.name for t in model.inputs]  # noqa: SLF001


def test_every_copy_keeps_the_input_layer_names():
    model = _two_inputs()
    names = _input_names(model)
    assert names[0].startswith("input_layer") and names[1] == "meta"
    shared = dkm_tf.share_weights(model, 4)
    wrapped = dkm_tf.cluster_weights(model, 4)
    stripped = dkm_tf.strip_clustering(wrapped)
    stripped = stripped[0] if isinstance(stripped, tuple) else stripped
    for copy in (shared.model, wrapped, stripped):
        assert _input_names(copy) == names
        assert [t.name for t in copy.inputs] == names
    x = [np.ones((2, 4), "float32"), np.full((2, 3), 0.5, "float32")]
    np.testing.assert_allclose(stripped.predict(x, verbose=0),
                               wrapped.predict(x, verbose=0), atol=1e-6)


@tf_backend_only()
def test_a_dict_of_the_originals_input_names_exports_the_copy(tmp_path):
    model = _two_inputs()
    shared = dkm_tf.share_weights(model, 4)
    rng = np.random.default_rng(1)
    x = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(3, 3)).astype("float32")]
    by_name = dict(zip(_input_names(model), x))
    path = tmp_path / "m.tflite"
    to_tflite(shared.model, path, palettes=shared.palettes, sample_inputs=by_name)
    assert path.stat().st_size > 0


def test_the_batchnorm_folding_copy_keeps_the_input_names_too():
    # review of 2ecf713: share_weights (fold_bn default) and fold_batch_norm went through their
    # own clone_model call and still renamed input_layer -> keras_tensor
    keras.utils.set_random_seed(3)
    inp = keras.Input((6, 6, 2))
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inp))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    names = _input_names(model)
    for copy in (dkm_tf.share_weights(model, 4).model, dkm_tf.fold_batch_norm(model).model):
        assert _input_names(copy) == names and [t.name for t in copy.inputs] == names
