"""Defaults shared by the functions that compile and fit a copy of the user's model."""

from __future__ import annotations


def compiled_loss(model):
    """The loss ``model`` was compiled with, or None (not compiled, or compiled without one;
    a model loaded with ``compile=False`` has none)."""
    return getattr(model, "loss", None) if getattr(model, "compiled", False) else None


def compiled_metrics(model):
    """The metrics ``model`` was compiled with, as new objects (a metric holds state), or None
    (not compiled, or no metrics). Re-created from its compile config; when Keras cannot
    (an unregistered custom metric), the objects given to ``compile`` are reused."""
    import keras  # noqa: PLC0415

    if not getattr(model, "compiled", False):
        return None
    metrics = (model.get_compile_config() or {}).get("metrics")
    if not metrics:
        return None
    try:
        return keras.saving.deserialize_keras_object(metrics)
    except (TypeError, ValueError):
        config = getattr(getattr(model, "_compile_config", None), "config", None) or {}
        return config.get("metrics") or None


def output_activation(model):
    """Name of the model's final activation: the last layer's ``activation`` (``"softmax"``
    for a ``Softmax`` layer), ``""`` when unknown (a nested model or a custom last layer)."""
    import keras  # noqa: PLC0415

    last = model.layers[-1] if getattr(model, "layers", None) else None
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(last, "activation", None), "__name__", "")


def default_loss(model):
    """The cross-entropy that fits the model's output.

    One output unit (a binary classifier, labels 0/1): binary cross-entropy, from logits
    unless the model ends in a sigmoid. Otherwise sparse categorical cross-entropy, from
    logits unless the model ends in a softmax (the last layer's ``activation`` or a
    ``Softmax`` layer).
    """
    import keras  # noqa: PLC0415

    activation = output_activation(model)
    shape = getattr(model, "output_shape", None)
    if isinstance(shape, tuple) and len(shape) == 2 and shape[1] == 1:
        return keras.losses.BinaryCrossentropy(from_logits=activation != "sigmoid")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=activation != "softmax")


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


def check_fit_args(model, *, batch_size=None, callbacks=None, metrics=None, verbose=None):
    """Check the arguments a training function passes on to Keras' ``compile``/``fit``.

    ``batch_size`` an integer >= 1; ``callbacks`` None or a list of Keras callbacks;
    ``metrics`` None or a list (a bare string would be read letter by letter); ``verbose``
    0, 1, 2 or "auto". Raises ``TypeError``/``ValueError`` in Keras' message pattern.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.core.validate import check_int, invalid, invalid_type  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise invalid_type("model", "a keras.Model", model)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    if callbacks is not None and (not isinstance(callbacks, (list, tuple)) or not all(
            isinstance(c, keras.callbacks.Callback) for c in callbacks)):
        raise invalid_type("callbacks", "None or a list of keras.callbacks.Callback", callbacks)
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        raise invalid_type("metrics", "None or a list of metrics (e.g. ['accuracy'])", metrics)
    if verbose is not None and verbose != "auto" and (
            not isinstance(verbose, int) or verbose not in (0, 1, 2)):
        raise invalid("verbose", "0, 1, 2 or 'auto'", verbose)


def check_data(name, data, model, *, required=True):
    """Check training or test data before any work; return it (an ``(x, y)`` list as a tuple).

    ``data`` is an ``(x, y)`` pair (tuple or list of two) or a batched dataset
    (``tf.data.Dataset``, ``keras.utils.PyDataset``). For arrays, ``x`` and ``y`` must hold
    the same number of samples and a single-input model's input shape must match ``x``'s.
    """
    import numpy as np  # noqa: PLC0415

    from dkm_tf.core.validate import invalid, invalid_type  # noqa: PLC0415

    expected = "an (x, y) pair of arrays or a batched tf.data.Dataset / keras.utils.PyDataset"
    if data is None:
        if required:
            raise invalid(name, expected, data)
        return None
    if isinstance(data, (str, bytes, dict)) or hasattr(data, "shape"):
        raise invalid_type(name, expected, data)
    if not isinstance(data, (tuple, list)):
        return data  # a dataset: Keras reads it
    if len(data) != 2:
        raise ValueError(f"Invalid value for argument `{name}`. Expected {expected}. "
                         f"Received: a sequence of length {len(data)}")
    x, y = data
    if hasattr(x, "shape") and hasattr(y, "__len__") and len(x) != len(y):
        raise ValueError(f"Invalid value for argument `{name}`. Expected x and y with the same "
                         f"number of samples. Received: {len(x)} and {len(y)}")
    inputs = getattr(model, "inputs", None) if getattr(model, "built", False) else None
    if hasattr(x, "shape") and inputs and len(inputs) == 1:
        want = tuple(inputs[0].shape)[1:]
        got = tuple(np.shape(x))[1:]
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(f"Invalid value for argument `{name}`. Expected x of shape "
                             f"(samples, {', '.join(str(w) for w in want)}) (the model's "
                             f"input). Received: x of shape {tuple(np.shape(x))}")
    return tuple(data)
