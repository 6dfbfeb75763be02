"""The LiteRT interpreters: moved to :mod:`dkm_tf.core.interpreters` (shared with ``energy``).

This module re-exports them, so ``dkm_tf.export.interpreters`` keeps working, and reads a
file's tensor types for :func:`~dkm_tf.core.interpreters.tflite_refusal`: which files an
older TensorFlow's ``tf.lite`` may verify (``export.verify`` refuses the others).
"""

from dkm_tf.core.interpreters import (
    INTERPRETERS,
    TFLITE_MEASURED_TF,
    TFLITE_MIN_TF,
    TFLITE_TYPES,
    _tf_version,  # the installed version when None (also read by tflite_unsupported)
    default_interpreters,
    litert_available,
    make_interpreter,
    tflite_refusal,
    tflite_unsupported,
    unassigned_variable_reads,
)

__all__ = ["INTERPRETERS", "TFLITE_MEASURED_TF", "TFLITE_MIN_TF", "TFLITE_TYPES",
           "default_interpreters", "file_refusal", "file_tensor_types", "litert_available",
           "make_interpreter", "tflite_file_refusal", "tflite_note", "tflite_refusal",
           "tflite_unsupported", "unassigned_variable_reads"]

INSTALL = ("install LiteRT to verify it: pip install 'dkm-tf[litert]' (ai-edge-litert>=2.1), "
           "or TensorFlow >= 2.21")


def file_tensor_types(content):
    """``(type names, dynamic_range)`` of ``.tflite`` bytes, over every subgraph.

    ``dynamic_range``: some op reads an int8 constant and writes float32 (the converter's
    dynamic-range int8 ops; full-int8 ops write int8, and their float edges QUANTIZE /
    DEQUANTIZE activations, not constants).
    """
    from dkm_tf.export.rewrite import FlatModel  # noqa: PLC0415

    fm = FlatModel.from_bytes(content)
    types, dynamic = set(), False
    for g in range(len(fm.model.subgraphs)):
        sg = fm.subgraph(g)
        names = [sg.type_name(t) for t in range(len(sg.tensors))]
        types.update(names)
        for op in sg.operators:
            ins = [int(t) for t in op.inputs if int(t) >= 0]
            dynamic = dynamic or (any(names[t] == "int8" and sg.raw(t) for t in ins)
                                  and any(names[int(t)] == "float32" for t in op.outputs))
    return frozenset(types), dynamic


def file_refusal(content, batch=1, version=None):
    """Why ``tf.lite.Interpreter`` of TensorFlow ``version`` (default: the installed one)
    must not run the ``.tflite`` bytes at ``batch``, or None.

    :func:`~dkm_tf.core.interpreters.tflite_refusal` on the types read from the file itself
    (:func:`file_tensor_types`); under TensorFlow >= 2.21 None at once, the file unread.
    """
    if tflite_unsupported(version) is None:
        return None
    types, dynamic = file_tensor_types(content)
    return tflite_refusal(version, types, batch, dynamic)


def tflite_file_refusal(content, batch=1, version=None):
    """:func:`file_refusal` worded for an export: nothing written, what to install."""
    why = file_refusal(content, batch, version)
    return f"Cannot verify this file: {why}. Nothing was written; {INSTALL}." if why else None


def tflite_note(version=None):
    """What the export notes add when ``tf.lite`` alone verifies under TensorFlow < 2.21."""
    if tflite_unsupported(version) is None:
        return ""
    version = _tf_version(version)[0]
    return (f"; TensorFlow {version}'s refuses the files it cannot run (INT2 tensors; on 2.19 "
            "also dynamic-range int8)")
