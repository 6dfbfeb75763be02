"""Samples in the structure a model takes: slices, shapes, and the one-input list.

A Functional model built on ``[input]`` (fer's legacy ``.h5`` mini-Xception) takes a list of
one tensor; called with the bare array, Keras 3 warns "The structure of `inputs` doesn't match
the expected structure" on every call (an error where warnings are errors, which the exporter
blamed on ``sample_inputs`` and ``weighting="fisher"`` on ``data``).
"""

from __future__ import annotations

__all__ = ["as_model_inputs", "input_shapes", "shapes", "take"]


def as_model_inputs(model, x):
    """``x`` as ``model`` takes it: ``[x]`` (or ``(x,)``) for a model built on a one-element
    list / tuple of inputs when ``x`` is one array; the array of a one-element list ``x`` for
    a model built on one bare input; else ``x`` unchanged."""
    struct = getattr(model, "_inputs_struct", None)
    if struct is None:  # a built Sequential keeps its graph in _functional
        struct = getattr(getattr(model, "_functional", None), "_inputs_struct", None)
    if (isinstance(struct, (list, tuple)) and len(struct) == 1
            and not isinstance(x, (list, tuple, dict))):
        return type(struct)([x])
    if (struct is not None and not isinstance(struct, (list, tuple, dict))
            and isinstance(x, (list, tuple)) and len(x) == 1 and hasattr(x[0], "shape")):
        return x[0]
    return x


def take(x, lo, hi):
    """Samples ``lo:hi`` of every array of the structure ``x`` (an optional input's None
    stays None)."""
    import keras  # noqa: PLC0415

    return keras.tree.map_structure(lambda a: None if a is None else a[lo:hi], x)


def shapes(x):
    """The shape of every array of the structure ``x`` (for messages)."""
    import keras  # noqa: PLC0415

    return keras.tree.map_structure(lambda a: tuple(a.shape), x)


def input_shapes(model):
    """``model.input_shape``, or "unknown" (for messages)."""
    try:
        return model.input_shape
    except (AttributeError, ValueError):
        return "unknown"
