"""Defaults shared by the functions that compile and fit a copy of the user's model."""

from __future__ import annotations


def default_loss(model):
    """Sparse categorical cross-entropy, from logits unless the model ends in a softmax.

    A final softmax is recognised as the last layer's ``activation`` or a ``Softmax`` layer.
    """
    import keras  # noqa: PLC0415

    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    softmax = activation == "softmax" or isinstance(last, keras.layers.Softmax)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax)
