"""Distinct unit products of shared codewords (methods.md §1.8.2): measured from the indices,
or expected under uniform random assignment."""

import math

import numpy as np

from dkm_tf.energy.shapes import check_positive_int

__all__ = ["expected_unique_fraction", "unique_product_fraction"]


def unique_product_fraction(indices):
    """Fraction, in (0, 1], of distinct unit products when shared codewords are multiplied once.

    For each unit position (e.g. an (input channel, kernel row) pair of a row-shared conv)
    the `n_filters` filters touch the same inputs; a codeword used by several of them needs
    one dot product. The fraction is Σ_positions U_p / (positions · n_filters), with U_p the
    number of distinct indices at position p (methods.md §1.8.2).

    Args:
        indices: Integer array of shape `(positions, n_filters)`.

    Example:
        >>> unique_product_fraction(np.array([[0, 0, 1, 1], [2, 2, 2, 2]]))
        0.375
    """
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0:
        raise ValueError(
            "Invalid value for argument `indices`. Expected a non-empty 2-D array of shape "
            f"(positions, n_filters) of indices >= 0. Received: indices.shape={idx.shape}, "
            f"dtype {idx.dtype}"
        )
    srt = np.sort(idx, axis=1)
    distinct = 1 + np.count_nonzero(np.diff(srt, axis=1), axis=1)
    return float(distinct.sum() / idx.size)


def expected_unique_fraction(n_clusters, n_filters, n_codebooks=1):
    """Expected fraction of distinct unit products under uniform random assignment.

    With G codebooks of K codewords partitioning M filters (M/G filters each), a unit
    position sees E[U] = G · K · (1 − (1 − 1/K)^(M/G)) distinct codewords; the fraction is
    E[U] / M (methods.md §1.8.2).

    Args:
        n_clusters, n_filters, n_codebooks: K, M and G (default 1), integers >= 1.

    Example:
        >>> expected_unique_fraction(2, 2)
        0.75
    """
    check_positive_int("n_clusters", n_clusters)
    check_positive_int("n_filters", n_filters)
    check_positive_int("n_codebooks", n_codebooks)
    k, g = float(n_clusters), int(n_codebooks)
    m = max(float(n_filters) / g, 1.0)
    if k <= 1:
        return 1.0 / m
    return min(1.0, k * -math.expm1(m * math.log1p(-1.0 / k)) / m)
