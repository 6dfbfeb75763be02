"""Argument checks of :func:`dkm_tf.export.to_tflite`, run before any conversion (Keras'
message pattern: the argument, what is allowed, what was received)."""

from __future__ import annotations

import os

import numpy as np

from dkm_tf.core.files import check_target, str_path, tilde_note
from dkm_tf.core.palette_checks import check_one_per_weight
from dkm_tf.core.validate import check_bool, check_int, check_number, invalid, invalid_type
from dkm_tf.export import convert as convert_lib
from dkm_tf.export.io_names import keras_input_names, signature_keys
from dkm_tf.export.layer_refusals import check_not_stateful
from dkm_tf.export.model_check import check_built_model, palette_layers

__all__ = ["check_export_args", "check_inputs", "check_palettes", "check_path", "inputs_by_name"]


def check_path(path):
    """``path`` as a str: a file path (not a directory, not empty, not a device or FIFO, not a
    Keras model's file, through a symlink too) in a writable directory (a symlink's: the
    directory of the file it names, where the temp file goes)."""
    text = str_path(path)
    if text is None:
        raise invalid_type("path", "a file path (str or os.PathLike)", path)
    path = text
    real = os.path.realpath(path)  # a symlink is written through: check the file it names
    d = os.path.dirname(real)
    if os.path.isdir(path) or not path:  # "" failed after the conversion, naming a temp file
        raise ValueError(f"Invalid value for argument `path`. Expected a file path. Received "
                         f"{'a directory' if path else 'an empty path'}: path={path!r}")
    if not os.path.isdir(d):
        raise ValueError(f"Invalid value for argument `path`. Its directory does not exist. "
                         f"Received: path={path!r}" + tilde_note(path))
    if any(p.lower().endswith((".keras", ".h5", ".hdf5")) for p in (path, real)):
        raise ValueError(f"Invalid value for argument `path`. Expected a .tflite file path, "
                         f"not a Keras model's suffix (it replaced the model). Received: "
                         f"path={path!r}" + (f", a symlink to {real!r}"
                                             if os.path.islink(path) else ""))
    check_target(path)  # a trailing separator, a device or FIFO, a link into a read-only folder
    if not os.access(d, os.W_OK):
        raise PermissionError(f"Cannot write {path!r}: directory {d!r} is not writable.")
    return path


def check_export_args(model, sample_inputs=None, *, representative_data=None, tolerance=None,
                      interpreters=None, max_table_bytes=0, matmul_lowering=True,
                      float_content=None):
    """Check :func:`to_tflite`'s arguments before any conversion (Keras' message pattern): a
    built Keras model computing in float32 (not float16 / bfloat16 / float64:
    :func:`~dkm_tf.export.model_check.check_float_model`); sample inputs (and representative
    data) real, finite, at least one sample, one array per model input, shaped like it."""
    import keras  # noqa: PLC0415

    convert_lib.require_tensorflow_backend()
    if not isinstance(model, keras.layers.Layer):
        from dkm_tf.graph.result_objects import check_not_a_result  # noqa: PLC0415

        check_not_a_result(model)  # a (model, palettes) tuple, a ShareResult
        raise invalid_type("model", "a built Keras model", model)
    check_built_model(model)  # built, no float16 / bfloat16 (mixed precision) / float64 layers
    check_not_stateful(model)  # a stateful RNN cannot run at batch 1 and n
    for name, data in (("sample_inputs", sample_inputs),
                       ("representative_data", representative_data)):
        if data is not None:
            check_inputs(name, data, model)
    if tolerance is not None:
        check_number("tolerance", tolerance, "None or a finite number >= 0", low=0)
    if interpreters is not None and (isinstance(interpreters, str)
                                     or not isinstance(interpreters, (list, tuple))):
        raise invalid_type("interpreters", "None or a list such as ['litert', 'tflite']",
                           interpreters)
    if interpreters is not None and not interpreters:
        raise invalid("interpreters", "None or at least one of ['litert', 'tflite'] (an "
                      "export is always verified)", interpreters)
    check_int("max_table_bytes", max_table_bytes, minimum=0)
    check_bool("matmul_lowering", matmul_lowering)
    if float_content is not None and (not isinstance(float_content, (bytes, bytearray))
                                      or bytes(float_content[4:8]) != b"TFL3"):
        raise invalid("float_content", "None or the bytes of the model's float .tflite",
                      bytes(float_content[:8]) if isinstance(float_content, (bytes, bytearray))
                      else float_content)


_UNNAMED = "input_0, input_1, ... (a subclassed model declares no input names)"


def inputs_by_name(name, data, model):
    """``data`` as a list in `model.inputs` order where it is a dict keyed by exactly the model's
    input names (a Functional model built on a dict: its keys; else the input layers' names,
    as ``model.predict`` takes them, the input tensors' or the ``.tflite`` signature's:
    :mod:`dkm_tf.export.io_names`; a subclassed model: ``input_0``, ``input_1``, ...), else
    unchanged. Before 2026-12-06 a dict was refused with a TypeError; before 2026-12-07 one
    keyed by an unnamed input's layer name, or any dict for a subclassed model."""
    if not isinstance(data, dict):
        return data
    inputs = convert_lib.model_inputs(model)
    struct = getattr(model, "_inputs_struct", None)
    key_of = {id(t): k for k, t in struct.items()} if isinstance(struct, dict) else {}
    tensors = [key_of.get(id(t), getattr(t, "name", None)) for t in inputs]
    names = keras_input_names(model)  # the input layers' (Keras' predict), or the tensors'
    if not inputs and data and set(data) == set(keys := signature_keys([], len(data))):
        # a subclassed model declares no inputs: the file's input_0, input_1, ...
        return [data[k] for k in keys] if len(keys) > 1 else data[keys[0]]
    names = next((n for n in (names, tensors, signature_keys(names)) if n and
                  len(data) == len(n) and set(data) == set(n)), names)
    if not names or len(data) != len(names) or set(data) != set(names):
        keys = signature_keys(names)  # the file's, where a name is no usable key
        also = f" (or the file's keys {keys})" if names and keys != names else ""
        raise ValueError(f"Invalid value for argument `{name}`. Expected "
                         f"{convert_lib.input_list_form(model)}, or a dict keyed by exactly "
                         f"the model's input names {names or _UNNAMED}{also}. Received: "
                         f"{name}=a dict with keys {list(data)}")
    return [data[k] for k in names]


def check_inputs(name, data, model):
    """Sample inputs: real, finite, >= 1 sample, one array per model input of its shape (a dict
    keyed by the model's input names: :func:`inputs_by_name`)."""
    data = inputs_by_name(name, data, model)
    arrays = []
    for a in data if isinstance(data, (list, tuple)) else [data]:
        try:
            arr = np.asarray(a)
        except ValueError as e:  # ragged
            raise invalid(name, "rectangular arrays of numbers", a) from e
        if arr.dtype.kind not in "biuf":
            raise invalid_type(name, "arrays of real numbers", arr)
        arrays.append(arr)
    if not arrays or any(a.ndim < 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise invalid(name, "arrays with the same number of samples along axis 0",
                      [a.shape for a in arrays])
    if len(arrays[0]) == 0:
        raise invalid(name, "at least one sample along axis 0", [a.shape for a in arrays])
    bad = sum(int(a.size - np.count_nonzero(np.isfinite(a))) for a in arrays)
    if bad:
        raise ValueError(f"Invalid value for argument `{name}`. Expected finite numbers (the "
                         f"export is verified by comparing outputs). Received: {bad} NaN/Inf "
                         "value(s)")
    inputs = convert_lib.model_inputs(model)
    if not inputs:  # subclassed: no symbolic inputs
        return
    if len(arrays) != len(inputs):
        raise invalid(name, f"{len(inputs)} array(s), one per input of model "
                      f"{model.name!r}", f"{len(arrays)} array(s)")
    for i, (a, t) in enumerate(zip(arrays, inputs)):
        want = tuple(t.shape)[1:]
        if len(want) != a.ndim - 1 or any(w is not None and w != g
                                          for w, g in zip(want, a.shape[1:])):
            raise invalid(name, f"input {i} of shape (samples, "
                          f"{', '.join(str(w) for w in want)}) like the model's", a.shape)


def check_palettes(model, palettes):
    """Validate that each palette names a weight of ``model`` that equals ``palette.decode()``.

    Args:
        model: the Keras model to export (plain, with the palettes' values in its weights).
        palettes: list of :class:`~dkm_tf.Palette`, equal within 1e-6 x max(1, max |w|).

    Raises:
        TypeError: ``palettes`` is not a list of Palette objects.
        ValueError: a missing layer or weight, a palette's layer name used twice, a weight
            given two palettes, other shapes or values."""
    from dkm_tf.core.palette import Palette  # noqa: PLC0415

    if not isinstance(palettes, (list, tuple)) or not all(isinstance(p, Palette)
                                                          for p in palettes):
        raise TypeError("Invalid type for argument `palettes`. Expected a list of "
                        f"dkm_tf.Palette. Received: {type(palettes).__name__}")
    from dkm_tf.graph.clusterable import get_weight  # noqa: PLC0415 (keras)

    layers = palette_layers(model, palettes)  # refuses two layers of a palette's name
    check_one_per_weight(palettes)
    for p in palettes:
        layer = layers.get(p.layer_name)
        var = get_weight(layer, p.weight_name) if layer is not None else None
        if var is None:
            raise ValueError(f"Palettes do not match the model: palette {p.name!r} names no "
                             f"weight of model {model.name!r} (layers: "
                             f"{sorted(layers)[:12]}...).")
        w = np.asarray(var)
        if tuple(w.shape) != tuple(p.layout.kernel_shape):
            raise ValueError(f"Palettes do not match the model: {p.name!r} has shape "
                             f"{p.layout.kernel_shape}, the model's weight {tuple(w.shape)}.")
        err = float(np.max(np.abs(w - p.decode()))) if w.size else 0.0
        if err > 1e-6 * max(1.0, float(np.max(np.abs(w)))):
            raise ValueError(f"Palettes do not match the model: weight {p.name!r} differs from "
                             f"palette.decode() by up to {err:.3g}. Assign the decoded values "
                             "(or strip the clustered model) before exporting.")
