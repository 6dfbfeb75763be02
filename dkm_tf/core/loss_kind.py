"""Whether a compiled model is a classifier, read from its loss: a regressor (``"mse"``,
``"mae"``, Huber, ...) or a multi-label model (a binary cross-entropy over several sigmoid
units) has no top-1 class, and neither an arg-max nor a softmax over its output means
anything. No TensorFlow / Keras import: the model and loss are only read."""

from __future__ import annotations

__all__ = ["non_class_loss"]

# compiled losses of models whose output is not one class per sample (normalised names)
_REGRESSION = {"mse", "mae", "mape", "msle", "meansquarederror", "meanabsoluteerror",
               "meanabsolutepercentageerror", "meansquaredlogarithmicerror", "huber",
               "logcosh", "poisson", "cosinesimilarity"}
_MULTI_LABEL = {"binarycrossentropy", "binaryfocalcrossentropy"}  # over several output units


def _loss_name(loss):
    return loss if isinstance(loss, str) else (
        getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__)


def non_class_loss(model, loss=None):
    """``(loss name, "a regressor" | "multi-label (C sigmoid units)")`` when ``model`` is
    compiled with a regression loss (``"mse"``, ``"mae"``, Huber, ...) or a binary
    cross-entropy over several output units; None otherwise (a cross-entropy, a custom loss,
    a loss per output, or a model that is not compiled): its output is then not one class
    per sample, and neither an arg-max nor a softmax over it means anything. ``loss`` (a
    name or loss) stands for the compiled one, e.g. of a file loaded with compile=False."""
    if loss is None:
        loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    if loss is None or isinstance(loss, (dict, list, tuple)):
        return None
    key = str(_loss_name(loss)).lower().replace("_", "")  # "keras>mse", "losses.Huber"
    key = key.rsplit(">", 1)[-1].rsplit(".", 1)[-1]
    key = key[:-4] if key.endswith("loss") and key != "loss" else key
    shape = getattr(model, "output_shape", None)
    units = shape[-1] if isinstance(shape, tuple) and shape else None
    if key in _REGRESSION:
        return _loss_name(loss), "a regressor"
    if key in _MULTI_LABEL and isinstance(units, int) and units > 1:
        return _loss_name(loss), f"multi-label ({units} sigmoid units)"
    return None
