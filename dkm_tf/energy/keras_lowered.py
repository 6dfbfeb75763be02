"""Element-wise Keras layers charged as the ops the TFLite converter (TF 2.21) lowers them to.

The `.tflite` reader charges each ADD / SUB / MUL / MAXIMUM / MINIMUM as a two-input record
(a constant operand read like an activation tensor) and each RELU / RELU6 / LEAKY_RELU as a
one-input one; the Keras reader charges these layers as the same ops, so that a Keras model's
estimate equals its float file's. Measured before 2026-12-07 (Keras / file hierarchy totals,
`tests/test_energy25.py`), when each was one record:

- a merge of n inputs (`Add`, `Multiply`, `Maximum`, `Minimum`) is n - 1 two-input ops
  (Add of 3: 0.839, of 4: 0.772); an `Average` of n is n - 1 ADDs and a MUL by 1 / n
  (0.708 for 2); op j runs at the broadcast shape of inputs 0..j (Keras folds left), and a
  merge of one input is an identity (`_merge_sizes`; `tests/test_energy2_25.py`);
- an inference `BatchNormalization` the converter does not fold, a `Rescaling` and a
  `Normalization` are a MUL by their scale and an ADD (a SUB of the mean for a
  `Normalization`, before its MUL; after it with `invert=True`) of their offset; the
  converter drops a MUL by all ones (but a `Normalization`'s by a standard deviation of
  ones after its SUB in a dynamic-batch file: `affine_ops`) and an ADD of all zeros (an
  untrained batch norm is a MUL only), an identity entirely
  (0.34-0.85 as one "affine" record);
- a `ReLU` layer is Keras' `relu(x, negative_slope, max_value, threshold)` as converted: a
  cap other than 6 a MINIMUM and a RELU after the RELU (which the op before may absorb,
  `relu_fusion`); a threshold a GREATER and a SELECT (not priced), then the cap's MINIMUM and
  RELU (a RELU6 for a cap of 6); a slope with a cap or threshold a RELU (a SUB with its RELU
  for a threshold) of the negated input, a MUL and a SUB (0.30-0.65, 1.58 for a threshold);
  a slope of 1 drops the MUL, and without cap or threshold is an identity (removed);
- a `keras.ops.clip(x, lo, hi)` (in a `Lambda`, or on a Functional model's tensor) is
  `tf.clip_by_value`, a MINIMUM by hi then a MAXIMUM by lo, converted (`clip_ops`) to a
  RELU6 for [0, 6] and a RELU_N1_TO_1 for [-1, 1] (which the op before may absorb, as a
  ReLU6: `relu_fusion`), a MINIMUM and a RELU for lo = 0, else a MINIMUM and a MAXIMUM;
  the converter matches a bound of +0.0 only: one of -0.0 is a MINIMUM and a MAXIMUM (it was
  read as a RELU before 2026-12-07: [-0.0, 6.0] after a conv, Keras / file hierarchy 0.3862;
  [-0.0, 1.0] 0.8977); a clip of integers is not charged (`keras_ops`).
  Before 2026-12-07 it was listed as an "unsupported operation Clip" and charged nothing
  (after a 3x3 Conv2D(4) on 8x8x3: [-1, 2] Keras / file hierarchy 0.3862, paper 0.9397;
  [0, 1] 0.4302 / 0.9540; [0, 6] after a tanh 0.6537 / 0.9841).
"""

import contextlib
import contextvars
import math

import numpy as np


def _records(name, ops, elements, common):
    """One record per op: `name`, `name/2`, ... (a second call's records then `name#2`,
    `name#2/2`, ...: `keras_calls.call_names`); `elements`: one size for all, or a list
    of one per op."""
    from dkm_tf.energy import shapes as sh

    sizes = elements if isinstance(elements, list) else [elements] * len(ops)
    return [sh.eltwise_shape(name if i == 0 else f"{name}/{i + 1}", elements=n,
                             eltwise_op=op, n_inputs=1 if op == "relu" else 2, **common)
            for i, (op, n) in enumerate(zip(ops, sizes))]


def relu_ops(layer, keras):
    """The priced ops (`eltwise_op`s, in order) of a ReLU / LeakyReLU layer or an
    `Activation("relu" / "relu6" / "leaky_relu")`, as converted (module docstring)."""
    from dkm_tf.energy.relu_like import activation_relu

    L = keras.layers  # `keras.activations.relu`'s op: as the ReLU layer (`relu_like`)
    if not (isinstance(layer, L.ReLU) or activation_relu(layer, keras)):  # LEAKY_RELU (of
        # slope 1 an identity), RELU, RELU6; `ops.maximum(y, 0)` (`relu_like`): a RELU
        return [] if isinstance(layer, L.LeakyReLU) and float(layer.negative_slope) == 1 \
            else ["relu"]
    s, t = float(layer.negative_slope), float(layer.threshold)
    cap = None if layer.max_value is None else float(layer.max_value)
    if s != 0 and cap is None and t == 0:
        return [] if s == 1 else ["relu"]  # LEAKY_RELU; of slope 1 an identity, removed
    ops = ["add" if t != 0 else "relu"] if s != 0 else []  # relu(t - x) / relu(-x)
    clip = [] if cap is None else ["relu"] if cap == 6 else ["max", "relu"]
    if t != 0:
        ops += clip  # GREATER and SELECT_V2, not priced
    else:
        ops += ["relu"] if cap == 6 else ["relu"] + clip
    return ops + (["mul"] * (s != 1) + ["add"] if s != 0 else [])  # no MUL by a slope of 1


def clip_ops(op):
    """The priced ops (`eltwise_op`s, in order) of a `Clip` operation (`keras.ops.clip`) as
    converted (module docstring), or None where a bound is not one number."""
    try:
        lo, hi = (np.asarray(v) for v in (op.x_min, op.x_max))
    except (TypeError, ValueError):
        return None
    if lo.ndim or hi.ndim or lo.dtype.kind not in "iuf" or hi.dtype.kind not in "iuf":
        return None
    lo, hi = float(lo), float(hi)
    zero = lo == 0 and not np.signbit(lo)  # a bound of -0.0 is no RELU's: MINIMUM + MAXIMUM
    if (zero and hi == 6) or (lo, hi) == (-1, 1):
        return ["relu"]  # RELU6, RELU_N1_TO_1
    return ["max", "relu"] if zero else ["max", "max"]


def _numpy(value):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float32)


# a `Normalization`'s division by a standard deviation of all ones after its SUB stays a MUL
# in a dynamic-batch file where it has this many elements or more (TF 2.21, measured: 8, 9,
# 12, 16, 64 channels, rank 2 to 5; 3 to 7 channels, a fixed batch, no SUB: removed)
_KEPT_DIVISION = 8
# whether the file the Keras reader estimates has a fixed batch (`file_batch`)
_FIXED_BATCH = contextvars.ContextVar("dkm_tf_fixed_batch", default=False)


def recurrent(model, keras):
    """Whether `model` (nested models included) holds a recurrent layer the converter lowers
    to a loop (not unrolled): `export.convert` then writes its file at batch 1."""
    return any(isinstance(x, keras.layers.RNN) and not getattr(x, "unroll", False)
               for x in model._flatten_layers(include_self=False, recursive=True))


@contextlib.contextmanager
def file_batch(fixed):
    """Estimates made inside read a file of a fixed batch (`fixed`) or a dynamic one."""
    token = _FIXED_BATCH.set(bool(fixed))
    try:
        yield
    finally:
        _FIXED_BATCH.reset(token)


def affine_ops(layer, keras):
    """The priced ops of an inference batch norm, `Rescaling` or `Normalization` (module
    docstring), from its values as the converter folds them (float32). A `Normalization`
    with a mean and variance 1 keeps its MUL by 1 (`_KEPT_DIVISION`: charged its SUB only
    before 2026-12-07, Keras / file hierarchy 0.8812 after a Dense(8)) in a dynamic-batch
    file; a fixed-batch one (a recurrent model's, `file_batch`) drops it (it was charged
    there: an LSTM then a Dense(8) and such a layer, 1.0052)."""
    L = keras.layers
    if isinstance(layer, L.BatchNormalization):
        var = _numpy(layer.moving_variance)
        inv = np.float32(1) / np.sqrt(var + np.float32(layer.epsilon))
        inv = inv * _numpy(layer.gamma) if layer.scale else inv
        offset = -_numpy(layer.moving_mean) * inv
        offset = offset + _numpy(layer.beta) if layer.center else offset
        return ["mul"] * bool(np.any(inv != 1)) + ["add"] * bool(np.any(offset != 0))
    if isinstance(layer, L.Normalization):
        if getattr(layer, "mean", None) is None or getattr(layer, "variance", None) is None:
            return ["add", "mul"]  # not built: its statistics unknown
        eps = np.float32(keras.config.epsilon())
        div = np.maximum(np.sqrt(_numpy(layer.variance)), eps)
        sub = bool(np.any(_numpy(layer.mean) != 0))
        invert = getattr(layer, "invert", False)
        ops = ["add"] * sub + ["mul"] * bool(np.any(div != 1) or (
            sub and not invert and np.size(div) >= _KEPT_DIVISION and
            not _FIXED_BATCH.get()))
        return ops[::-1] if invert else ops  # x * div + mean
    return ["mul"] * bool(np.any(_numpy(layer.scale) != 1)) + \
        ["add"] * bool(np.any(_numpy(layer.offset) != 0))


def _merge_sizes(in_shapes, elements):
    """Outputs of the n - 1 ops of a merge of `in_shapes`: Keras folds left, so op j runs at
    the broadcast shape of inputs 0..j (`Add([g, g2, c])`, g and g2 of 1x1x4, c of 8x8x4:
    4 then 256; each was charged at 256 before 2026-12-07, Keras / file hierarchy 1.19)."""
    try:
        shape, sizes = tuple(in_shapes[0][1:]), []
        for s in in_shapes[1:]:
            shape = np.broadcast_shapes(shape, tuple(s[1:]))
            sizes.append(int(math.prod(shape)))
        return sizes
    except (ValueError, TypeError, IndexError):  # unknown dimensions: the output's size
        return [elements] * max(len(in_shapes) - 1, 0)


def lowered_records(layer, name, in_shapes, elements, common, keras):
    """`(records, reason)` of a merge (of inputs of `in_shapes`), ReLU / LeakyReLU (or relu
    `Activation`), batch norm or `Rescaling` layer (module docstring), None for any other
    layer. A merge of one input is an identity the converter removes (one op was charged
    before 2026-12-07: Keras / file hierarchy 1.86 for `Add()([conv])`)."""
    from dkm_tf.energy.activations import activation_name

    L = keras.layers
    merges = ((L.Add, "add"), (L.Subtract, "add"), (L.Multiply, "mul"), (L.Maximum, "max"),
              (L.Minimum, "max"), (L.Average, "add"))
    for klass, op in merges:
        if isinstance(layer, klass):
            sizes = _merge_sizes(in_shapes, elements)
            mul = ["mul"] if isinstance(layer, L.Average) and sizes else []
            return _records(name, [op] * len(sizes) + mul, sizes + [elements] * len(mul),
                            common), None if sizes else (
                "one input: an identity the converter removes, not charged")
    if isinstance(layer, (L.ReLU, L.LeakyReLU)) or (isinstance(layer, L.Activation) and
                                                   activation_name(layer.activation) in (
                                                       "relu", "relu6", "leaky_relu")):
        ops = relu_ops(layer, keras)
        return _records(name, ops, elements, common), None if ops else (
            f"ReLU(threshold={float(layer.threshold)}): a GREATER and a SELECT_V2 in a "
            ".tflite, not priced" if float(getattr(layer, "threshold", 0)) != 0 else
            "negative_slope 1: an identity the converter removes, not charged")
    if isinstance(layer, (L.BatchNormalization, L.Rescaling)):
        ops = affine_ops(layer, keras)
        return _records(name, ops, elements, common), None if ops else (
            "scale 1 and offset 0: an identity the converter removes, not charged")
    return None


def normalization_ops_records(layer, name, out_shape, common):
    """`(records, reason)` of an adapted `Normalization` layer: a SUB of its mean and a MUL
    by the inverse of its standard deviation, each left out where it is an identity."""
    import keras

    ops = affine_ops(layer, keras)
    return _records(name, ops, math.prod(out_shape[1:]), common), None if ops else (
        "mean 0 and variance 1: an identity the converter removes, not charged")
