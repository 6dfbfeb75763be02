"""Argument checks with Keras' message pattern, shared by every module.

"Invalid value for argument `x`. Expected ... Received: x=..." (style.md, practice 10).
"""

from __future__ import annotations


def invalid(name, expected, value):
    """The ``ValueError`` for argument ``name``: what was expected and what was received."""
    return ValueError(f"Invalid value for argument `{name}`. Expected {expected}. "
                      f"Received: {name}={value!r}")


def check_choice(name, value, allowed):
    """Return ``value`` if it is in ``allowed``, else raise listing the allowed values."""
    if value not in allowed:
        raise invalid(name, f"one of {list(allowed)}", value)
    return value


def check_n_clusters(n_clusters, name="n_clusters"):
    """Return K as an int: ``TypeError`` unless an integer (bools refused), ``ValueError`` if < 1.

    The one K check of k-means, the wrapper and the regularizer.
    """
    import numbers  # noqa: PLC0415

    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral):
        raise TypeError(f"Invalid type for argument `{name}`. Expected an integer >= 1. "
                        f"Received: {name}={n_clusters!r} of type {type(n_clusters).__name__}")
    if not 1 <= n_clusters <= 2**31 - 1:
        raise invalid(name, "an integer >= 1", n_clusters)
    return int(n_clusters)
