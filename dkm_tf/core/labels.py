"""Labels as class ids, shared by the training checks (:mod:`dkm_tf.training.data_checks`)
and the Fisher importance (:mod:`dkm_tf.graph.sensitivity`): Python lists as arrays, class
ids that are whole numbers inside a model's classes, and whether a loss reads class ids.
Numpy only at import (Keras is imported inside the functions that read its structures).
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_arrays", "binary_from_logits", "check_label_range", "class_ids",
           "is_binary_loss", "is_sparse_loss", "one_loss"]


def class_ids(y, name="data"):
    """``y`` as a 1-D array of class ids: shape (samples,) or (samples, 1). One-hot
    (samples, C) labels raise ``ValueError`` naming ``name`` (flattened they would be compared
    with the wrong samples: a silently wrong accuracy); pass ``y.argmax(-1)``. Float labels
    must be whole numbers (0.0, 1.0, ...; 0.5 would match no class: a silently low accuracy),
    booleans are 0 / 1, and anything else (strings, objects) raises ``TypeError``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels y of shape "
                         "(samples,) or (samples, 1): class ids (for one-hot labels pass "
                         f"y.argmax(-1)). Received: y of shape {y.shape}")
    if y.dtype.kind in "iu":
        return y
    if y.dtype.kind == "b":
        return y.astype(np.int32)
    if y.dtype.kind != "f":
        raise TypeError(f"Invalid type for argument `{name}`. Expected labels y holding "
                        "integer class ids (or whole-number floats, or booleans). Received: "
                        f"y of dtype {y.dtype}" + (f" (e.g. {y[0].item()!r}: map class names to "
                                                   "ids first)" if y.size else ""))
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(y) & (y == np.round(y)) & (np.abs(y.astype(np.float64)) < 2**31))
    if bad.any():
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels y holding "
                         "class ids (whole numbers such as 0.0, 1.0, 2.0 in a float array). "
                         f"Received: {int(bad.sum())} of {y.size} labels that are not, e.g. "
                         f"{y[bad][0].item()!r}")
    return y.astype(np.int64)


def as_arrays(part):
    """``part`` of ``(x, y)`` as an array when it is a (nested) Python list of numbers, which
    Keras would read as one input (or label set) per element; arrays, dicts and lists of
    arrays (one per input or output) are returned as they are."""
    if not isinstance(part, (list, tuple)):
        return part
    import keras  # noqa: PLC0415

    if any(np.ndim(leaf) for leaf in keras.tree.flatten(part)):
        return part
    try:
        return np.asarray(part)
    except ValueError:  # ragged: left to Keras
        return part


def check_label_range(name, labels, shape):
    """Raise when integer class ids ``labels`` fall outside the C scores of an output of
    ``shape`` ``(samples, C)`` (0 / 1 for one unit: a binary classifier): they would count as
    wrong, or give a NaN loss. False when the shape is unknown (nothing checked), else True."""
    classes = shape[1] if isinstance(shape, tuple) and len(shape) == 2 else None
    if not isinstance(classes, int):
        return False
    if not labels.size:
        return True
    if classes == 1 and (labels.min() < 0 or labels.max() > 1):
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels 0 and 1 (the "
                         "model has one output unit: a binary classifier). Received: labels "
                         f"from {labels.min()} to {labels.max()}")
    if classes > 1 and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"Invalid value for argument `{name}`. Expected class labels in "
                         f"[0, {classes - 1}] (the model has {classes} outputs). Received: "
                         f"labels from {labels.min()} to {labels.max()}")
    return True


def one_loss(loss):
    """The loss of a one-item list or dict of losses (a single-output model's), else ``loss``."""
    if isinstance(loss, (list, tuple, dict)) and len(loss) == 1:
        return next(iter(loss.values())) if isinstance(loss, dict) else loss[0]
    return loss


def is_sparse_loss(loss):
    """Whether ``loss`` is a sparse categorical cross-entropy (it reads class ids): a
    ``keras.losses.SparseCategoricalCrossentropy``, its function or its name (also as the one
    item of a list or dict)."""
    import keras  # noqa: PLC0415

    loss = one_loss(loss)
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or (
        (loss if isinstance(loss, str) else getattr(loss, "__name__", None))
        in ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy"))


def is_binary_loss(loss):
    """Whether ``loss`` is a binary cross-entropy (it reads labels 0 / 1): a
    ``keras.losses.BinaryCrossentropy`` or ``BinaryFocalCrossentropy``, its function or its
    name (also as the one item of a list or dict)."""
    loss = one_loss(loss)
    return (loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
            ) in ("binary_crossentropy", "BinaryCrossentropy", "binary_focal_crossentropy",
                  "BinaryFocalCrossentropy")


def binary_from_logits(loss):
    """The ``from_logits`` a binary cross-entropy ``loss`` (:func:`is_binary_loss`) reads its
    predictions with: its config's for a loss object, False for its function or name (as Keras
    compiles them); None for any other loss (or None)."""
    if loss is None or not is_binary_loss(loss):
        return None
    loss = one_loss(loss)
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    return bool(config.get("from_logits", False)) if isinstance(config, dict) else False
