"""Small reference models used by the CLI, tests, notebooks and benchmarks."""

from __future__ import annotations

__all__ = ["digits_cnn", "lenet5_caffe"]


def _checked(input_shape, num_classes):
    """``(input_shape, num_classes)`` as Python ints: ``num_classes=y.max() + 1`` (a numpy
    int) was refused by Keras as "expected a positive integer. Received: units=3", and
    ``True`` built a one-logit model."""
    from dkm_tf.core import validate  # noqa: PLC0415

    return (validate.check_input_shape(input_shape, allow_none=False),
            validate.check_int("num_classes", num_classes, minimum=1))


def digits_cnn(input_shape=(8, 8, 1), num_classes=10, seed=0):
    """The built-in demo CNN for sklearn digits (about 40k parameters; trains in seconds).

    Conv2D(16, 3, same) - Conv2D(32, 3, same) - MaxPool - Flatten - Dense(64) -
    Dense(num_classes), ReLU activations, logits output.

    Args:
        input_shape: one sample's shape, without the batch axis (default ``(8, 8, 1)``): a
            list / tuple / 1-D array of positive integers.
        num_classes: the number of output logits (default 10): a positive integer (a NumPy
            integer such as ``y.max() + 1`` is taken; a bool is refused).
        seed: an integer passed to ``keras.utils.set_random_seed`` (it seeds Python, NumPy
            and the backend globally) before the weights are drawn (default 0).
    """
    import keras  # noqa: PLC0415

    input_shape, num_classes = _checked(input_shape, num_classes)
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(2, name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(64, activation="relu", name="fc1"),
        L.Dense(num_classes, name="fc2"),
    ], name="digits_cnn")


def lenet5_caffe(input_shape=(28, 28, 1), num_classes=10, seed=0):
    """LeNet-5, Caffe variant (431,080 parameters), as in Deep k-Means' MNIST experiments.

    conv 5x5x20 - maxpool 2 - conv 5x5x50 - maxpool 2 - fc 500 (ReLU) - fc 10 (logits).

    Args:
        input_shape: one sample's shape, without the batch axis (default ``(28, 28, 1)``), as
            in :func:`digits_cnn`.
        num_classes: the number of output logits (default 10; 431,080 parameters at 10), as
            in :func:`digits_cnn`.
        seed: as in :func:`digits_cnn`: ``keras.utils.set_random_seed(seed)`` (global).
    """
    import keras  # noqa: PLC0415

    input_shape, num_classes = _checked(input_shape, num_classes)
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        L.Conv2D(20, 5, name="conv1"),
        L.MaxPooling2D(2, name="pool1"),
        L.Conv2D(50, 5, name="conv2"),
        L.MaxPooling2D(2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(500, activation="relu", name="fc1"),
        L.Dense(num_classes, name="fc2"),
    ], name="lenet5_caffe")
