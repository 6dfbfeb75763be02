"""Review of the nineteenth session's export messages, on the ``cluster_weights`` path.

``cluster_weights`` palettes carry no depthwise note and ``strip_clustering`` folds a
BatchNormalization into a per-tensor palette (its note says "(was per_tensor)"): the tflm
refusal said "cluster it with granularity='per_tensor'" (the default the user had) and the
``int8_scales="shared"`` note did not name the folded palette (26 int8 values for K = 16).
"""

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import export as ex
from tests.test_real_model_exports19a import _conv_bn_model


def test_tflm_refusal_of_a_cluster_weights_depthwise_palette_names_overrides(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(24, 1, name="c"),
                              keras.layers.DepthwiseConv2D(3, name="dw")])
    plain, palettes = dkm_tf.strip_clustering(dkm_tf.cluster_weights(model, 16))
    dw = next(p for p in palettes if p.name == "dw/kernel")
    assert dw.layout.granularity == "per_channel" and "depthwise" not in (dw.note or "")
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 3)).astype(np.float32)
    with pytest.raises(ValueError) as err:
        ex.to_tflite(plain, str(tmp_path / "a.tflite"), "tflm", palettes, x)
    msg = str(err.value)
    assert "It is a depthwise kernel" in msg
    assert "overrides={'dw': {'granularity': 'per_tensor'}}" in msg
    assert 'cluster it with granularity="per_tensor"' not in msg
    assert "dkm-tf compress --overrides '{\"dw\": {\"granularity\": \"per_tensor\"}}'" in msg


def test_int8_shared_note_names_a_palette_strip_clustering_folded(tmp_path):
    model = _conv_bn_model()
    x = np.random.default_rng(2).normal(size=(8, 8, 8, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="strip_clustering folds"):
        clustered = dkm_tf.cluster_weights(model, 16)
    plain, palettes = dkm_tf.strip_clustering(clustered)
    conv = next(p for p in palettes if p.name == "conv/kernel")
    assert conv.layout.granularity == "per_channel" and "(was per_tensor)" in conv.note
    r = ex.to_tflite(plain, str(tmp_path / "s.tflite"), "int8", palettes, x,
                     int8_scales="shared")
    row = next(t for t in r.tensors if t["palette"] == "conv/kernel")
    assert row["int8_distinct_per_channel"] <= 16 < row["int8_distinct_total"]
    note = next(n for n in r.notes if "cannot keep <= K" in n)
    assert "conv/kernel" in note and "fold before clustering" in note
