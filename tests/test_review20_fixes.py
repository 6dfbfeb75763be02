"""Fixes from the twentieth session's reviews, each with its failing case."""

import numpy as np
import pytest

from dkm_tf.graph.sensitivity import weighted_kmeans


@pytest.mark.parametrize("shape", [(5, 1), (2, 1), (3,), (3, 2)])
def test_weighted_kmeans_refuses_importances_of_another_shape(shape):
    # 20f2b67's block loops read the first M importances: 5 for 3 values clustered with the
    # first 3 (and a floor from all 5) without a word
    x = np.array([[0.0], [1.0], [2.0]], np.float32)
    with pytest.raises(ValueError, match=r"argument `importance`.*\(3, 1\).*Received: shape"):
        weighted_kmeans(x, np.ones(shape), 2)


def test_weighted_kmeans_of_matching_shapes_is_unchanged():
    x = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    cb, idx = weighted_kmeans(x, np.array([[1.0], [1.0], [1.0], [1.0]]), 2)
    assert np.allclose(np.sort(cb[:, 0]), [1.0, 10.0]) and idx.dtype == np.int32
