"""``cluster_weights`` of a clustered model says which wrappers keep other settings than asked.

Before: ``cluster_weights(clustered_at_4, 8)`` returned the K=4 wrappers with no warning (only
``report.skipped`` said "already clustered (kept as it is)"): a user asking for K=8 trained
and exported K=4 without a word.
"""

import warnings

import keras
import numpy as np
import pytest

import dkm_tf


def _clustered(k=4, **kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="a"),
                              keras.layers.Dense(3, name="b")])
    return dkm_tf.cluster_weights(model, k, **kwargs)


def test_same_settings_keep_the_wrappers_quietly():
    clustered = _clustered()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (JAX: a numpy DeprecationWarning)
        again, report = dkm_tf.cluster_weights(clustered, 4, return_report=True)
    assert [r for _, _, r in report.skipped] == ["already clustered (kept as it is)"] * 2
    assert [la.n_clusters for la in again.layers] == [4, 4]


def test_other_settings_are_named_in_a_warning_and_the_report():
    clustered = _clustered(granularity="per_channel")
    with pytest.warns(UserWarning, match=r"with weights unclustered: already clustered with "
                      r"other settings than asked.*cluster_a \(n_clusters=4, not 2, unit="
                      r"'scalar', not 'row', granularity='per_channel', not 'per_tensor'\), "
                      r"cluster_b \(n_clusters=4"):
        again, report = dkm_tf.cluster_weights(clustered, 2, unit="row", return_report=True)
    reasons = dict((n, r) for n, _, r in report.skipped)
    assert reasons["cluster_b"] == (
        "already clustered (kept as it is: n_clusters=4, not 2, unit='scalar', not 'row', "
        "granularity='per_channel', not 'per_tensor'; strip_clustering(model) first to "
        "re-cluster it)")
    x = np.linspace(-1, 1, 12, dtype="float32").reshape(2, 6)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(clustered(x)))


def test_a_depthwise_conv_clustered_per_channel_by_default_is_not_called_different():
    # review of af32b95: the wrapper holds the depthwise per-channel default; the settings
    # asked were resolved on the wrapper (per_tensor), so the same call warned
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.DepthwiseConv2D(3, name="dw"),
                              keras.layers.Flatten(), keras.layers.Dense(2, name="fc")])
    clustered = dkm_tf.cluster_weights(model, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (JAX: a numpy DeprecationWarning)
        _, report = dkm_tf.cluster_weights(clustered, 8, return_report=True)
    assert [r for _, _, r in report.skipped] == ["already clustered (kept as it is)"] * 2
