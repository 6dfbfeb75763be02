"""The LiteRT interpreters dkm_tf runs files in (``ai_edge_litert``, ``tf.lite``).

One factory for every stage: the exporters verify in them (``export.verify``) and the energy
reader runs a file once to read its open shapes (``energy.tflite_dynamic``). TensorFlow and
LiteRT are imported only inside the functions, so importing this module loads neither.
"""

from __future__ import annotations

import re
import warnings

__all__ = ["INTERPRETERS", "TFLITE_MIN_TF", "default_interpreters", "litert_available",
           "make_interpreter", "tflite_unsupported"]

INTERPRETERS = ("litert", "tflite", "tflm")
# tf.lite.Interpreter runs every file dkm_tf writes from TensorFlow 2.21 on. Older ones (measured
# with 2.19.1 and 2.20.0, KNOWN_LIMITATIONS.md "Versions"): neither loads INT2 tensors
# (decode="per_invoke" at K <= 4: "Unsupported data type 19 in tensor"), and 2.19's XNNPACK
# kills the process (segmentation fault) running a dynamic-range int8 file at batch > 1.
TFLITE_MIN_TF = (2, 21)


def litert_available():
    """True when the ``ai_edge_litert`` package (the ``[litert]`` extra) is importable."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def tflite_unsupported(version=None):
    """Why ``tf.lite.Interpreter`` cannot verify dkm_tf's files, or None (TensorFlow >= 2.21).

    ``version``: a TensorFlow version string (default: the installed TensorFlow's).
    """
    if version is None:
        import tensorflow as tf  # noqa: PLC0415

        version = tf.__version__
    found = re.match(r"(\d+)\.(\d+)", str(version))
    if found is None or (int(found[1]), int(found[2])) >= TFLITE_MIN_TF:
        return None
    return (f"tf.lite.Interpreter of TensorFlow {version} cannot run every file dkm_tf writes "
            f"(TensorFlow >= {TFLITE_MIN_TF[0]}.{TFLITE_MIN_TF[1]} required: older ones cannot "
            "load INT2 tensors, and 2.19 crashes on dynamic-range int8 files at batch > 1)")


def default_interpreters(litert=None):
    """The interpreters an export is verified in by default.

    ``("litert", "tflite")``; ``("litert",)`` under TensorFlow < 2.21
    (:func:`tflite_unsupported`); ``("tflite",)`` without the ``[litert]`` extra.
    ``litert``: whether ``ai_edge_litert`` is importable (default: :func:`litert_available`).

    Raises:
        RuntimeError: TensorFlow < 2.21 and no ``ai_edge_litert``: nothing can verify.
    """
    litert = litert_available() if litert is None else litert
    why = tflite_unsupported()
    if why is None:
        return ("litert", "tflite") if litert else ("tflite",)
    if litert:
        return ("litert",)
    raise RuntimeError(f"{why}; install LiteRT to verify exports: pip install "
                       "'dkm-tf[litert]' (ai-edge-litert>=2.1), or TensorFlow >= 2.21.")


def make_interpreter(kind, content, threads=1, xnnpack=True, input_shapes=None):
    """A ready (tensors allocated) interpreter of ``kind`` for the model bytes.

    ``xnnpack=False``: builtin kernels only (every intermediate tensor gets its real shape;
    inside an XNNPACK partition TFLite's view of them is not updated). ``input_shapes``:
    ``{input tensor index: shape}`` the inputs are resized to before the one allocation (a
    file whose stored shapes are too small to allocate, e.g. an open spatial size stored as 1
    ahead of a valid-padded conv, still loads).
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
    for index, shape in (input_shapes or {}).items():
        it.resize_tensor_input(index, list(shape))
    it.allocate_tensors()
    return it
