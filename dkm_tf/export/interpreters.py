"""The LiteRT interpreters: moved to :mod:`dkm_tf.core.interpreters` (shared with ``energy``).

This module re-exports them, so ``dkm_tf.export.interpreters`` keeps working.
"""

from dkm_tf.core.interpreters import (
    INTERPRETERS,
    TFLITE_MIN_TF,
    default_interpreters,
    litert_available,
    make_interpreter,
    tflite_unsupported,
)

__all__ = ["INTERPRETERS", "TFLITE_MIN_TF", "default_interpreters", "litert_available",
           "make_interpreter", "tflite_unsupported"]
