"""What the clustering wrapper needs to know about ``tf.distribute`` strategies."""

from __future__ import annotations

__all__ = ["collective_safe_dtype"]


def collective_safe_dtype(dtype):
    """``dtype`` for a new variable, or int32 for a uint8 / int16 one under
    ``tf.distribute.MultiWorkerMirroredStrategy``.

    That strategy broadcasts every new variable's initial value from worker 0 with
    ``CollectiveBcastSend``, which takes bool, float, half, double, int32 and int64 only: a
    uint8 or int16 variable (a wrapper's indices) cannot even be created there
    (``InvalidArgumentError``).
    """
    import keras  # noqa: PLC0415

    if dtype in ("uint8", "int8", "uint16", "int16") and keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        if tf.distribute.has_strategy() and isinstance(
                tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            return "int32"
    return dtype
