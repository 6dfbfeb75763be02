"""The LiteRT interpreters dkm_tf runs files in (``ai_edge_litert``, ``tf.lite``).

One factory for every stage: the exporters verify in them (``export.verify``) and the energy
reader runs a file once to read its open shapes (``energy.tflite_dynamic``). TensorFlow and
LiteRT are imported only inside the functions, so importing this module loads neither.
"""

from __future__ import annotations

import re
import warnings

from dkm_tf.core import std_fds

__all__ = ["INTERPRETERS", "TFLITE_MEASURED_TF", "TFLITE_MIN_TF", "TFLITE_TYPES",
           "default_interpreters", "litert_available", "make_interpreter", "tflite_refusal",
           "tflite_unsupported", "unassigned_variable_reads"]

INTERPRETERS = ("litert", "tflite", "tflm")
# tf.lite.Interpreter runs every file dkm_tf writes from TensorFlow 2.21 on. Older ones,
# measured with 2.19.1 and 2.20.0 (KNOWN_LIMITATIONS.md "Versions"; 38 files of every format,
# written by 2.19, 2.20 and 2.21, batch 1 and batch 4): both refuse INT2 tensors
# (decode="per_invoke" at K <= 4: "Unsupported data type 19 in tensor"), and 2.19's XNNPACK
# ends the process (segmentation fault) or corrupts its heap (an abort later) running a
# dynamic-range int8 file (int8 weights read by float ops) at batch 4 after batch 1. Every
# other file ran and matched Keras in both. Older TensorFlows were not measured.
TFLITE_MIN_TF = (2, 21)
TFLITE_MEASURED_TF = (2, 19)
_DYNAMIC_BATCH_TF = (2, 20)  # from here tf.lite runs dynamic-range int8 at batch > 1
# the tensor types those measured tf.lite interpreters ran (int4: decode="per_invoke" K <= 16)
TFLITE_TYPES = frozenset({"float32", "float16", "int32", "int64", "int16", "int8", "uint8",
                          "int4", "bool"})


def _tf_version(version):
    """``(version string, (major, minor) or None)``; None: unreadable, taken as current."""
    if version is None:
        import tensorflow as tf  # noqa: PLC0415

        version = tf.__version__
    found = re.match(r"(\d+)\.(\d+)", str(version))
    return str(version), (int(found[1]), int(found[2])) if found else None


def litert_available():
    """True when the ``ai_edge_litert`` package (the ``[litert]`` extra) is importable."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def tflite_unsupported(version=None):
    """Why ``tf.lite.Interpreter`` cannot verify every file dkm_tf writes, or None (TensorFlow
    >= 2.21); which files it can verify is :func:`tflite_refusal`'s answer.

    ``version``: a TensorFlow version string (default: the installed TensorFlow's).
    """
    version, found = _tf_version(version)
    if found is None or found >= TFLITE_MIN_TF:
        return None
    return (f"tf.lite.Interpreter of TensorFlow {version} cannot run every file dkm_tf writes "
            f"(TensorFlow >= {TFLITE_MIN_TF[0]}.{TFLITE_MIN_TF[1]} required: older ones cannot "
            "load INT2 tensors, and 2.19 crashes on dynamic-range int8 files at batch > 1)")


def tflite_refusal(version, types, batch=1, dynamic_range=False):
    """Why ``tf.lite.Interpreter`` of TensorFlow ``version`` must not run a file, or None.

    The measured rule (TensorFlow 2.19 and 2.20, see :data:`TFLITE_MIN_TF`): no tensor
    type outside :data:`TFLITE_TYPES` (INT2 above all), and on 2.19 no dynamic-range int8
    op at a batch > 1; before 2.19 nothing was measured, so every file is refused; from
    2.21 on (or an unreadable version) nothing is.

    Args:
        version: TensorFlow version string (None: the installed TensorFlow's).
        types: the file's tensor type names (``"float32"``, ``"int2"``, ...), every subgraph.
        batch: the largest batch the file is run at in one invoke (an int >= 1).
        dynamic_range: the file has an op reading an int8 constant and writing float32.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError("Invalid value for argument `batch`. Expected an integer >= 1. "
                         f"Received: batch={batch!r}")
    names = None if isinstance(types, str) or not hasattr(types, "__iter__") else tuple(types)
    if names is None or not all(isinstance(t, str) for t in names):
        raise TypeError("Invalid value for argument `types`. Expected an iterable of tensor "
                        f"type names. Received: types={types!r}")
    version, found = _tf_version(version)
    if found is None or found >= TFLITE_MIN_TF:
        return None
    where = f"tf.lite.Interpreter of TensorFlow {version}"
    if found < TFLITE_MEASURED_TF:
        return (f"{where} is untested (dkm_tf measured 2.19 and 2.20; TensorFlow >= "
                f"{TFLITE_MIN_TF[0]}.{TFLITE_MIN_TF[1]} runs every file it writes)")
    unknown = sorted(set(names) - TFLITE_TYPES)
    if "int2" in unknown:
        return (f"{where} cannot load INT2 tensors (decode=\"per_invoke\" indices at "
                "K <= 4: \"Unsupported data type 19 in tensor\")")
    if unknown:
        return f"{where} was not measured on tensors of type {', '.join(unknown)}"
    if dynamic_range and batch > 1 and found < _DYNAMIC_BATCH_TF:
        return (f"{where} crashes (segmentation fault, or a corrupted heap that aborts "
                f"later) running a dynamic-range int8 file at batch {batch} after batch 1")
    return None


def default_interpreters(litert=None):
    """The interpreters an export is verified in by default.

    ``("litert", "tflite")``; ``("litert",)`` under TensorFlow < 2.21
    (:func:`tflite_unsupported`); ``("tflite",)`` without the ``[litert]`` extra, also under
    TensorFlow 2.19 and 2.20, whose ``tf.lite`` runs the files :func:`tflite_refusal` lets
    through (the exporter refuses the others). ``litert``: whether ``ai_edge_litert`` is
    importable (default: :func:`litert_available`).

    Raises:
        RuntimeError: TensorFlow < 2.19 and no ``ai_edge_litert``: nothing can verify.
    """
    litert = litert_available() if litert is None else litert
    if tflite_unsupported() is None:
        return ("litert", "tflite") if litert else ("tflite",)
    if litert:
        return ("litert",)
    why = tflite_refusal(None, ())
    if why is None:
        return ("tflite",)
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
    with std_fds.catch_warnings():  # thread-safe: an 'ignore' left behind hid all warnings
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation warning
        it = Interpreter(model_content=bytes(content), num_threads=threads,
                         experimental_op_resolver_type=resolver)
    for index, shape in (input_shapes or {}).items():
        it.resize_tensor_input(index, list(shape))
    it.allocate_tensors()
    return it


def unassigned_variable_reads(op_counts):
    """The number of ``READ_VARIABLE`` ops of a ``.tflite`` none of whose ops is an
    ``ASSIGN_VARIABLE`` (0 otherwise): such a file stores no values for its variables.

    ``tf.saved_model.save`` of a Keras 3 model converted by ``TFLiteConverter
    .from_saved_model`` (TensorFlow 2.21) gives one, whose weights are variables: LiteRT and
    ``tf.lite`` both run it to all-NaN outputs, without an error. ``op_counts``: op name ->
    count over all subgraphs (read by ``export.inspect`` and by the energy reader).
    """
    return 0 if op_counts.get("ASSIGN_VARIABLE", 0) else op_counts.get("READ_VARIABLE", 0)
