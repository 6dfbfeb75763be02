"""Keras 3 model -> ``.tflite`` bytes with the stock converter (float, fp16, int8).

Conversion goes through a concrete function over a ``tf.Module`` that holds the model's
variables (toolchain.md section 3, path "C fixed"): it works for Sequential, functional and
subclassed models alike and prints nothing on stdout. The batch dimension of every input is
dynamic (signature ``[-1, ...]``; the stored shapes say 1), so ``resize_tensor_input`` to any
batch gives per-sample results; ``batch=1`` in :func:`input_specs` fixes it (TFLite Micro).
Outputs come in Keras' order (signature ``output_i`` = Keras output ``i``), see
:mod:`dkm_tf.export.canonical`; inputs are named after the Keras inputs
(:mod:`dkm_tf.export.io_names`).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from dkm_tf.core import std_fds
from dkm_tf.export.calibration import check_calibration, require_calibration_data
from dkm_tf.export.canonical import canonicalize
from dkm_tf.export.convert_failures import check_signature, system_failure
from dkm_tf.export.io_names import check_names, input_keys, keras_input_names, name_inputs
from dkm_tf.export.layer_refusals import flex_layer_hint, float64_hint
from dkm_tf.graph.input_struct import as_model_inputs
from dkm_tf.graph.untracked import record_captured

__all__ = ["QUANTIZATIONS", "as_input_list", "check_int8_mode", "convert", "input_specs",
           "masking_inputs", "pad_odd_rows", "quiet", "require_tensorflow_backend",
           "synthesize_inputs", "synthetic_samples"]

QUANTIZATIONS = ("none", "fp16", "dynamic", "full")


def require_tensorflow_backend(what="dkm_tf.export"):
    """Raise a clear error unless Keras runs on TensorFlow (the converter traces with TF).

    A model built on the JAX or PyTorch backend computes with that framework's arrays, which
    ``tf.function`` cannot trace; train anywhere, export from a TensorFlow-backend process.
    """
    import keras  # noqa: PLC0415

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow backend of Keras (the TFLite converter traces the "
            f"model with TensorFlow); this process runs Keras on {backend!r}. Save the model "
            "(model.save('m.keras')) and export it from a process started with "
            "KERAS_BACKEND=tensorflow: plain, palettes = dkm_tf.strip_clustering("
            "dkm_tf.load_model('m.keras')) for a model saved while clustering (palettes = "
            "dkm_tf.palettes_of(m) for one saved stripped), then dkm_tf.export.to_tflite(plain, "
            "..., palettes=palettes).")


@contextlib.contextmanager
def quiet(enabled=True, into=None):
    """Silence stdout/stderr at the file-descriptor level (converter and interpreter logs);
    with ``into`` (an open binary file), send them there instead, for the caller to read.
    Safe from several threads (:mod:`dkm_tf.core.std_fds`); meanwhile every thread's output
    at the fd level goes there too."""
    if not enabled:
        yield
        return
    # thread-safe: two threads' exports overlapping left the process silenced for good
    with std_fds.silenced() if into is None else std_fds.captured(into):
        yield


def as_input_list(sample_inputs):
    """Normalize sample inputs to a list of arrays (float32, or int32 for integer inputs)."""
    if isinstance(sample_inputs, dict):
        raise TypeError("Invalid type for argument `sample_inputs`. Expected an array or a "
                        "list of arrays (one per model input). Received: dict")
    raw = sample_inputs if isinstance(sample_inputs, (list, tuple)) else [sample_inputs]
    arrays = [np.asarray(a) for a in raw]
    arrays = [a.astype(np.int32) if a.dtype.kind in "iub" else a.astype(np.float32)
              for a in arrays]
    if not arrays or any(a.ndim < 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError("Invalid value for argument `sample_inputs`. Expected arrays with the "
                         "same number of samples along axis 0. Received shapes: "
                         f"{[a.shape for a in arrays]}")
    return arrays


def input_list_form(model):
    """What sample inputs must be: an array, or a list in `model.inputs` order (named)."""
    names = keras_input_names(model)  # the input layers' (an unnamed one: input_layer_N)
    return ("an array or a list of arrays (one per model input" +
            (f", in model.inputs order: {names})" if len(names) > 1 else ")"))


def structured_inputs(model, xs):
    """Inputs `xs` (one per model input, in `model.inputs` order) as the model takes them: one
    tensor, a list, or the dict / nested list of a Functional model built on them (Keras 3
    calls it with that structure only, a flat list of ``[a, [b, c]]`` warned; `model.inputs`
    is its flattened, key-sorted order)."""
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, (dict, list, tuple)) and len(xs) > 1:
        import keras  # noqa: PLC0415

        if len(keras.tree.flatten(struct)) == len(xs):
            return keras.tree.pack_sequence_as(struct, list(xs))
    return as_model_inputs(model, xs[0]) if len(xs) == 1 else list(xs)


def model_inputs(model):
    """The model's symbolic inputs, or [] (a subclassed model declares none)."""
    try:
        return list(model.inputs or ())
    except (AttributeError, TypeError, ValueError):
        return []


def _file_dtype(t):
    """The file input's dtype for a Keras input: bool stays bool (the converter keeps a bool
    signature: a float32 one took the mask as numbers), integers are int32, else float32."""
    dtype = str(t.dtype)
    return "bool" if dtype == "bool" else "int32" if "int" in dtype else "float32"


def input_specs(model, sample_inputs=None, batch=None):
    """Per-input (shape, dtype) of the model, from its inputs or the samples.

    The leading dimension is ``batch``: None (dynamic, the default) or a fixed size. The
    dtype is the model input's where it declares one (uint8 images fed to a float model
    give a float32 input, as in Keras), else the samples' (float32, or int32 for integers).
    """
    if sample_inputs is not None:
        arrays, inputs = as_input_list(sample_inputs), model_inputs(model)
        dtypes = ([_file_dtype(t) for t in inputs] if len(inputs) == len(arrays)
                  else [a.dtype.name for a in arrays])
        return [((batch, *a.shape[1:]), d) for a, d in zip(arrays, dtypes)]
    inputs = model_inputs(model)
    shapes, dtypes = [tuple(t.shape) for t in inputs], [_file_dtype(t) for t in inputs]
    if not shapes or any(s is None or any(d is None for d in s[1:]) for s in shapes):
        raise ValueError("Invalid value for argument `sample_inputs`. The model has no fully "
                         "defined input shape (subclassed model or dynamic dimensions), so "
                         "sample inputs are required. Received: sample_inputs=None")
    return [((batch, *s[1:]), d) for s, d in zip(shapes, dtypes)]


def open_dims(model):
    """Why the model's input size is not fixed by the model itself, or None when it is.

    A Keras input with an unknown non-batch dimension (a fully convolutional net on
    ``(None, None, 3)``), or a subclassed model (no declared input), runs at sizes the export
    does not see: the file is built and verified at the samples' size only.
    """
    shapes = [tuple(t.shape) for t in model_inputs(model)]
    if not shapes:
        return "a subclassed model declares no input size"
    open_ = [s for s in shapes if any(d is None for d in s[1:])]
    if open_:
        return f"the Keras model's input shape is {open_[0]}"
    return None


def as_specs_dtypes(inputs, specs):
    """``inputs`` cast to the dtypes of ``specs`` (what the file's inputs take)."""
    return [a if a.dtype.name == d else a.astype(d) for a, (_, d) in zip(inputs, specs)]


def synthesize_inputs(specs, n=8, seed=0, int_high=2):
    """Seeded samples matching ``specs`` (when the caller gives none): standard normal for
    float inputs, integers uniform in ``[0, int_high)`` for integer ones, and for bool ones
    (an attention mask) True with probability 0.75, so the masked path is verified too."""
    rng = np.random.default_rng(seed)

    def one(shape, dtype):
        shape = (n, *shape[1:])
        if dtype == "int32":
            return rng.integers(0, int_high, shape).astype(np.int32)
        if dtype == "bool":
            return rng.random(shape) < 0.75
        return rng.standard_normal(shape).astype(np.float32)

    return [one(shape, dtype) for shape, dtype in specs]


def synthetic_samples(model, specs, n=8):
    """``(inputs, note)``: :func:`synthesize_inputs` for ``model``, integer inputs drawn over
    the smallest ``Embedding`` table of the model (token ids reach every row it can read;
    ``{0, 1}`` when it has none; with a masking ``Embedding``, every other sequence padded by
    :func:`pad_odd_rows`), and the note saying what verified the file."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    layers = [getattr(layer, "layer", layer) for layer in walk_layers(model)]  # unwrapped
    tables = [int(layer.input_dim) for layer in layers
              if isinstance(layer, keras.layers.Embedding)]
    high = min(tables) if tables else 2
    kinds = []
    if any(d not in ("int32", "bool") for _, d in specs):
        kinds.append("float inputs standard normal")
    if any(d == "bool" for _, d in specs):
        kinds.append("bool inputs True with probability 0.75")
    if any(d == "int32" for _, d in specs):
        kinds.append(f"integer inputs uniform in [0, {high})" + (
            " (the smallest Embedding table)" if tables else " (no Embedding to bound them)"))
    inputs = synthesize_inputs(specs, n, int_high=high)
    masked = masking_inputs(model)
    padded = [i for i, a in enumerate(inputs)
              if i in masked and a.dtype == np.int32 and a.ndim >= 2 and pad_odd_rows(a)]
    if padded:
        kinds.append(f"every other row of input(s) {padded} padded with trailing 0s (read by "
                     "an Embedding that masks 0)")
    return inputs, f"no sample_inputs given: verified on {n} seeded inputs ({'; '.join(kinds)})"


def masking_inputs(model):
    """Positions of the inputs of ``model`` an ``Embedding(mask_zero=True)`` reads, directly
    or through other layers (an ``Identity``, a cast ``Lambda``), in the model or in a nested
    Functional / Sequential model it calls on them."""
    import keras  # noqa: PLC0415

    position = {id(t): i for i, t in enumerate(model_inputs(model))}
    found = set()
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, keras.layers.Embedding) and layer.mask_zero:
            reads = None  # all its inputs
        elif isinstance(layer, keras.Model) and model_inputs(layer):
            reads = masking_inputs(layer)
            if not reads:
                continue
        else:
            continue
        for node in getattr(layer, "_inbound_nodes", ()):
            tensors = keras.tree.flatten(node.input_tensors)
            found |= _input_sources([t for j, t in enumerate(tensors)
                                     if reads is None or j in reads], position)
    return found


def _input_sources(tensors, position):
    """The positions (``position``: ``{id(input tensor): i}``) of the model inputs that
    symbolic ``tensors`` are computed from, walking their layers' inbound nodes back."""
    import keras  # noqa: PLC0415

    found, seen, stack = set(), set(), list(tensors)
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if id(t) in position:
            found.add(position[id(t)])
            continue
        op, node_index, _ = getattr(t, "_keras_history", (None, 0, 0))
        nodes = getattr(op, "_inbound_nodes", ())
        if node_index < len(nodes):
            stack += keras.tree.flatten(nodes[node_index].input_tensors)
    return found


def pad_odd_rows(ids, seed=1):
    """Set a seeded tail of every odd row of integer ``ids`` (samples, steps, ...) to 0, in
    place, each row keeping at least its first step: the padding a masking ``Embedding``
    (``mask_zero=True``) skips, so verification covers padded rows too. True when any row
    was padded (two or more steps)."""
    steps = ids.shape[1]
    if steps < 2:
        return False
    rng = np.random.default_rng(seed)
    for row in range(1, len(ids), 2):
        ids[row, rng.integers(1, steps):] = 0
    return len(ids) > 1


def check_int8_mode(model, format, int8_mode, modes, calibration=None):  # noqa: A002
    """Check ``int8_mode`` (one of ``modes``) and, for ``format="int8"`` with
    ``int8_mode="full"``, that ``model`` can be calibrated
    (:func:`~dkm_tf.export.model_check.check_full_int8`: no recurrent loop) on data
    (:func:`~dkm_tf.export.calibration.require_calibration_data`), before any work.

    Args:
        model: the model to export (anything else is left to the model checks).
        format: the export format (``to_tflite``'s name).
        int8_mode: ``"dynamic"`` or ``"full"``.
        modes: the allowed ``int8_mode`` values.
        calibration: None (not checked) or the pair ``(sample_inputs,
            representative_data)``; full int8 with both None is refused.
    """
    from dkm_tf.core.validate import check_choice  # noqa: PLC0415
    from dkm_tf.export.model_check import check_full_int8  # noqa: PLC0415

    check_choice("int8_mode", int8_mode, modes)
    if format == "int8" and int8_mode == "full" and hasattr(model, "_flatten_layers"):
        check_full_int8(model)
    if format == "int8" and int8_mode == "full" and calibration is not None:
        require_calibration_data(*calibration)


def _flatten_outputs(y):
    import tensorflow as tf  # noqa: PLC0415

    flat = tf.nest.flatten(y)
    return {f"output_{i}": t for i, t in enumerate(flat)}


def convert(model, specs, quantization="none", representative_data=None):
    """Convert ``model`` to ``.tflite`` bytes.

    Args:
        model: a built Keras 3 model (TensorFlow backend).
        specs: from :func:`input_specs`.
        quantization: ``"none"`` (float32), ``"fp16"`` (float16 weights), ``"dynamic"``
            (dynamic-range int8 weights) or ``"full"`` (int8 weights and activations,
            calibrated on ``representative_data``; float input and output).
        representative_data: list of input arrays (see :func:`as_input_list`) for ``"full"``.

    Returns:
        The flatbuffer bytes, inputs and outputs in Keras order, batch-free reshapes
        (:func:`~dkm_tf.export.canonical.canonicalize`), the signature's inputs named after
        the Keras inputs (:mod:`dkm_tf.export.io_names`).

    Raises:
        ValueError: the converter rejects the model (e.g. an op without a TFLite builtin).
            For ``"full"``, also calibration data giving a file right on those samples
            only (:func:`~dkm_tf.export.calibration.check_calibration`).
    """
    require_tensorflow_backend()
    import tensorflow as tf  # noqa: PLC0415

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Invalid value for argument `quantization`. Expected one of "
                         f"{list(QUANTIZATIONS)}. Received: quantization={quantization!r}")
    if quantization == "full":  # the calibrator segfaults on a recurrent loop
        from dkm_tf.export.model_check import check_full_int8  # noqa: PLC0415

        check_full_int8(model)
    module = tf.Module()
    module.vars = [getattr(v, "value", v) for v in model.variables]
    signature = [tf.TensorSpec(shape, dtype, name=f"input_{i}")
                 for i, (shape, dtype) in enumerate(specs)]

    def call(*xs):
        return _flatten_outputs(model(structured_inputs(model, xs), training=False))

    module.f = tf.function(call, input_signature=signature, autograph=False)
    function = module.f.get_concrete_function()
    # a layer a Lambda calls that the model does not track (graph.untracked): its variables
    # are captured too; untracked, the temporary SavedModel was refused and the file lost
    # its signature ("SignatureDef signature_key is None")
    held = {id(v) for v in module.vars}
    module.untracked = [v for v in function.variables if id(v) not in held]
    record_captured(model, module.untracked)  # n_params counts what the file stores
    conv = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
    if quantization != "none":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "fp16":
        conv.target_spec.supported_types = [tf.float16]
    if quantization == "full":
        if representative_data is None:
            raise ValueError("Full-integer quantization needs representative data.")
        data = as_specs_dtypes(as_input_list(representative_data), specs)  # bool stays bool
        check_calibration(data)  # one value, or one sample setting the range: refused

        def gen():
            for i in range(len(data[0])):
                yield {f"input_{j}": a[i:i + 1] for j, a in enumerate(data)}

        conv.representative_dataset = gen
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with quiet(), std_fds.catch_warnings():  # not warnings': it is not thread-safe
            # full int8 calibrates in tf.lite.Interpreter, which warns it is deprecated: an
            # error where warnings are, blamed on the model's ops
            warnings.filterwarnings("ignore", ".*tf.lite.Interpreter is deprecated", UserWarning)
            content = bytes(conv.convert())
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        msg = str(e).strip().splitlines()
        if (any(op in str(e) for op in ("TensorList", "DataFormatVecPermute"))
                and any(s[0] is None for s, _ in specs)):
            # a recurrent layer's loop (tf.TensorArray): TFLite lowers its TensorList ops
            # only with a static batch, nor the output-shape permute of a channels_first
            # Conv2DTranspose (DataFormatVecPermute), so such models convert at batch 1
            return convert(model, [((1, *s[1:]), d) for s, d in specs], quantization,
                           representative_data)
        detail = "; ".join(line.strip() for line in msg if "error" in line.lower())[:800]
        system = system_failure(e)
        if system:  # not the model's fault: "probably uses operations ..." misled
            import tempfile  # noqa: PLC0415

            raise OSError(system[0], f"TFLite conversion of model "
                          f"{getattr(model, 'name', '?')!r} failed: {system[1]} (the "
                          "converter writes a temporary SavedModel under "
                          f"{tempfile.gettempdir()!r}; TMPDIR moves it). Converter said: "
                          f"{detail or ' '.join(msg)[:400]}") from e
        raise ValueError(
            f"TFLite conversion of model {getattr(model, 'name', '?')!r} failed "
            f"({type(e).__name__}). The model probably uses operations that have no TFLite "
            f"builtin kernel (only builtin ops are allowed). Converter said: "
            f"{detail or ' '.join(msg)[:800]}{float64_hint(model)}"
            f"{flex_layer_hint(model, str(e))}") from e
    check_signature(model, content)
    content, keys = canonicalize(content), input_keys(model, len(specs))
    return check_names(content, name_inputs(content, keys), keys)  # never a silent mix-up
