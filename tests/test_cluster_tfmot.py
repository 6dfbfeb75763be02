"""palettes_of on a model that tfmot clustered and stripped under tf_keras and saved.

Runs only when DKM_TF_TFMOT_PYTHON names an interpreter with tf_keras and
tensorflow-model-optimization (tfmot is never imported in this process).
"""

import os
import pathlib
import subprocess
import textwrap

import keras
import numpy as np
import pytest

from dkm_tf.training.clustering import palettes_of

TFMOT_PYTHON = os.environ.get("DKM_TF_TFMOT_PYTHON", "")

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot
    clu = tfmot.clustering.keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(10, name="d")])
    clustered = clu.cluster_weights(model, number_of_clusters=8,
                                    cluster_centroids_init=clu.CentroidInitialization.LINEAR)
    clu.strip_clustering(clustered).save(sys.argv[1])
""")


@pytest.mark.skipif(not pathlib.Path(TFMOT_PYTHON or "/nonexistent").exists(),
                    reason="set DKM_TF_TFMOT_PYTHON to a tf_keras + tfmot interpreter")
def test_palettes_of_reads_a_tfmot_clustered_keras_file(tmp_path):
    path = tmp_path / "tfmot.keras"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([TFMOT_PYTHON, "-c", SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = keras.models.load_model(path)
    palettes = palettes_of(model)
    assert [p.name for p in palettes] == ["c/kernel", "d/kernel"]
    for p in palettes:
        assert p.n_clusters <= 8
        np.testing.assert_array_equal(p.decode(), model.get_layer(p.layer_name).kernel.numpy())
