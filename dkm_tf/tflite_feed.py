"""Feeding a ``.tflite`` file for :func:`dkm_tf.pipeline.tflite_accuracy`: float inputs as
an integer-input file reads them (:func:`_quantized`), integer outputs back to real values
(:func:`_dequantized`), and a file of several inputs fed by its signature keys, the Keras
model's input names (:func:`keyed_scores`)."""

from __future__ import annotations

import numpy as np

__all__ = ["keyed_inputs", "keyed_scores"]


def keyed_inputs(model, x):
    """Inputs ``x`` of ``model`` for its exported ``.tflite`` files: one array as it is;
    several (a list or dict as the model takes them, nested as it was built) as a dict keyed
    by the files' signature keys (:func:`dkm_tf.export.io_names.input_keys`), in
    ``model.inputs`` order (:func:`dkm_tf.data_inputs.model_order`: a dict keyed by the
    input names by name, for a model built on a list too)."""
    if hasattr(x, "shape"):
        return x
    from dkm_tf.data_inputs import model_order  # noqa: PLC0415
    from dkm_tf.export.io_names import input_keys  # noqa: PLC0415

    arrays = model_order(model, x)
    return arrays[0] if len(arrays) == 1 else dict(zip(input_keys(model, len(arrays)), arrays))


def keyed_scores(kind, content, x, y, batch_size, notes, path, max_samples):
    """The (dequantized) output of the ``.tflite`` bytes ``content`` of several inputs for
    the first ``max_samples`` samples of ``x``, one array per batch of ``batch_size`` (1 for a
    file of a fixed batch, or one ``tf.lite`` cannot run at a larger batch: noted in
    ``notes``), in interpreter ``kind``. ``x``: a dict keyed by the file's signature keys
    (those of an exported file are the Keras input names: :mod:`dkm_tf.export.io_names`);
    a list of arrays gives one None, and a note, since the order of a file's inputs need not
    be the Keras model's. ``y``: the labels, one per sample (already cut to ``max_samples``).

    Raises:
        ValueError: ``x`` does not name the file's inputs, or has another number of samples
            than labels.
    """
    from dkm_tf.export.interpreters import file_refusal, make_interpreter  # noqa: PLC0415
    from dkm_tf.export.io_names import file_keys  # noqa: PLC0415

    keys, it = file_keys(content), make_interpreter(kind, content)
    inputs = it.get_input_details()  # subgraph order: the keys' order (file_keys)
    if not isinstance(x, dict):
        notes.append(f"no accuracy of {path}: it has {len(inputs)} inputs, and x is no dict "
                     f"keyed by them ({keys}; a list's order need not be the file's)")
        yield None
        return
    if sorted(map(str, x)) != sorted(keys) or len(keys) != len(inputs):
        raise ValueError(f"Invalid value for argument `data`. Expected x keyed by the file's "
                         f"inputs {keys} (signature keys; an exported file's are the Keras "
                         f"input names). Received: x keyed {sorted(map(str, x))}")
    arrays = [x[k] for k in keys]
    arrays = [np.asarray(a)[:max_samples] for a in arrays]
    if any(a.ndim == 0 or len(a) != len(y) for a in arrays):
        raise ValueError(f"Invalid value for argument `data`. Expected (x, y) with one label "
                         f"per sample of each input. Received: x of shapes "
                         f"{[a.shape for a in arrays]}, {len(y)} label(s) (after "
                         f"max_samples={max_samples})")
    if any(int(d["shape_signature"][0]) != -1 for d in inputs):
        batch_size = 1
    if kind == "tflite" and min(batch_size, len(y)) > 1 and (
            why := file_refusal(content, min(batch_size, len(y)))):
        notes.append(f"accuracy of {path} run one sample per invoke: {why}")
        batch_size = 1
    out = it.get_output_details()[0]
    shapes = [tuple(d["shape"]) for d in inputs]
    for start in range(0, len(y), batch_size):
        chunks = [_quantized(a[start:start + batch_size], d) for a, d in zip(arrays, inputs)]
        if any(s != c.shape for s, c in zip(shapes, chunks)):
            for d, c in zip(inputs, chunks):
                it.resize_tensor_input(d["index"], c.shape)
            it.allocate_tensors()
            shapes = [c.shape for c in chunks]
        for d, c in zip(inputs, chunks):
            it.set_tensor(d["index"], c)
        it.invoke()
        yield _dequantized(it.get_tensor(out["index"]), out)


def _scale(detail):
    """``(scale, zero_point)`` of an integer input / output tensor of a quantized file, or
    None (a float tensor, or an integer one without quantization parameters)."""
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return None
    scale, zero = detail.get("quantization", (0.0, 0)) or (0.0, 0)
    return (float(scale), int(zero)) if scale else None


def _quantized(x, detail):
    """Float inputs as an integer-input file (full int8 with ``inference_input_type``
    int8 / uint8 / int16) reads them: ``round(x / scale) + zero_point``, clipped to its dtype;
    a plain cast read 0.4 as 0 (accuracy 0.44 measured where the file's is 0.98). Integer
    inputs of another dtype (uint8 pixels for an int8 input) are real values too (a cast
    wrapped 200 to -56: 0.14 for 0.985; review R3), refused where they would not fit read so
    (int64 codes 0..255 for a uint8 input of scale 1/255: saturated, 0.505 for 0.99; review
    R4); inputs of the file's own dtype, and files with float inputs, are cast as they are.
    Halves round away from zero, as TFLite's QUANTIZE (``std::round``)."""
    dtype, x = np.dtype(detail["dtype"]), np.asarray(x)
    q = _scale(detail)
    if q is None or x.dtype == dtype:
        return x.astype(dtype)
    info, v = np.iinfo(dtype), x.astype(np.float64) / q[0]
    v = np.sign(v) * np.floor(np.abs(v) + 0.5) + q[1]
    if x.dtype.kind in "iu" and (v.min() < info.min or v.max() > info.max):
        raise ValueError(  # integer data: real values, or the file's codes in another dtype?
            f"Invalid value for argument `data`. Expected x as the real values the model "
            f"takes (floats), or as the file's own {dtype} input codes (x.astype({dtype.name})"
            f"; scale {q[0]:.4g}, zero point {q[1]}). Received: x of dtype {x.dtype} whose "
            f"values {x.min()}..{x.max()}, read as real values, fall outside {dtype}'s range "
            f"(ambiguous: {x.dtype} codes sent to a {dtype} input read as reals saturate)")
    return np.clip(v, info.min, info.max).astype(dtype)


def _dequantized(scores, detail):
    """An integer output as the real values it stands for, ``(q - zero_point) * scale``: a
    one-unit output is compared with a threshold in real units (0.5 after a sigmoid)."""
    q = _scale(detail)
    return scores if q is None else (scores.astype(np.float64) - q[1]) * q[0]
