"""The LiteRT interpreters the exporters run files in (``ai_edge_litert``, ``tf.lite``)."""

from __future__ import annotations

import warnings

__all__ = ["INTERPRETERS", "default_interpreters", "litert_available", "make_interpreter"]

INTERPRETERS = ("litert", "tflite", "tflm")


def litert_available():
    """True when the ``ai_edge_litert`` package (the ``[litert]`` extra) is importable."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def default_interpreters():
    """``("litert", "tflite")``, or ``("tflite",)`` without the ``[litert]`` extra."""
    return ("litert", "tflite") if litert_available() else ("tflite",)


def make_interpreter(kind, content, threads=1, xnnpack=True):
    """A ready (tensors allocated) interpreter of ``kind`` for the model bytes.

    ``xnnpack=False``: builtin kernels only (every intermediate tensor gets its real shape;
    inside an XNNPACK partition TFLite's view of them is not updated).
    """
    if kind == "litert":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415
    elif kind == "tflite":
        import tensorflow as tf  # noqa: PLC0415

        Interpreter = tf.lite.Interpreter  # noqa: N806
        OpResolverType = tf.lite.experimental.OpResolverType  # noqa: N806
    else:
        raise ValueError(f"Invalid value for argument `kind`. Expected one of "
                         f"{list(INTERPRETERS[:2])}. Received: kind={kind!r}")
    resolver = OpResolverType.AUTO if xnnpack else \
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation warning
        it = Interpreter(model_content=bytes(content), num_threads=threads,
                         experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    return it
