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


def check_learning_rate(learning_rate):
    """Return ``learning_rate`` if it is a number > 0 or a Keras ``LearningRateSchedule``.

    A schedule (e.g. ``keras.optimizers.schedules.CosineDecay``) is passed to Adam as it is,
    so long fine-tuning runs can decay the rate.
    """
    import keras  # noqa: PLC0415

    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
            or not learning_rate > 0):
        from dkm_tf.core.validate import invalid  # noqa: PLC0415

        raise invalid("learning_rate", "a number > 0 or a "
                      "keras.optimizers.schedules.LearningRateSchedule", learning_rate)
    return learning_rate
