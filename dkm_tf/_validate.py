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
