"""Which ReLU layers a `.tflite` fuses into the op before them, so the Keras reader leaves them out.

The TensorFlow Lite converter (TF 2.21) fuses a ReLU / ReLU6 into the op that produces its
input (that op's ``fused_activation_function``) when that output feeds the ReLU only. Checked
by converting each case (`tests/test_energy_relu24d.py`): a linear Conv1D/2D, Depthwise- or
SeparableConv1D/2D, a Dense (any rank), a BatchNormalization (folded into the conv before it,
or run as MUL + ADD), an Add / Subtract / Multiply layer and a max / average pooling all
absorb it, as does an Average (its MUL by 1 / n) and a conv ending a nested model (the
converter inlines it: `bn_folding.source`; Keras / file 1.29 before 2026-12-07) or a
`keras.layers.Pipeline` (its last layer kept: `Pipeline([Conv2D(4, 3)])` -> ReLU, 1.5297
before 2026-12-07); so do a
`Rescaling` / `Normalization` that is not an identity (their last MUL or ADD) and an `a + b`,
`a - b`, `a * b` or `a / b` of a Functional model (each charged before 2026-12-07: tanh ->
`Rescaling(0.5, offset=1)` -> ReLU, Keras / file hierarchy 1.21; `ReLU()(a + b)` 1.20;
`tests/test_energy2_25.py`), and the op before a removed identity (a `Dropout`, an identity
batch norm: `bn_folding.source` steps over them); a
Conv2DTranspose, a Concatenate, a Maximum, or a producer whose output is read twice keep a
RELU op of their own. A ReLU capped at other than 6 is a RELU, a MINIMUM and a RELU
(`keras_lowered.relu_ops`): its first RELU is fused the same way, the MINIMUM and the last
RELU stay charged; one with a threshold or a slope (and a cap or threshold) starts with other
ops and is charged in full, and one with a slope (and a cap or threshold) ends with a SUB /
ADD that absorbs a ReLU after it. A ReLU after a `Lambda` is fused into (or merged with) the
op ending its traced function (`_in_lambda`). A `keras.ops.clip(x, 0, 6)` (a RELU6) or
`(x, -1, 1)` (a RELU_N1_TO_1) is fused the same way (`keras_lowered.clip_ops`), and so are
`keras.ops.relu` / `keras.ops.relu6`; a same-shape `Reshape` between the op and the ReLU is removed
(`identity_reshape`). A ReLU whose leading RELU / RELU6 reads an op ending with the same one
(a conv or Dense of that activation, dilated or not, another ReLU layer, a capped ReLU's last
RELU, `ops.relu`, `ops.clip(x, 0, 6)`) is dropped by the converter whatever else reads that
op's output (`_merged`; checked by converting each case: `tests/test_reluchain30.py`): a
RELU after a RELU6 or a RELU6 after a RELU stays, and so does one reading it through an
identity `BatchNormalization` / `Normalization` (the converter removes its MUL by 1 / ADD of
0 after keeping the RELU: a relu conv -> `BatchNormalization(epsilon=0.0)` -> ReLU, Keras /
file hierarchy 0.7167 before 2026-12-07, `tests/test_reluchain230.py`), not through a
`Dropout`, `Identity`, `Rescaling(1.0)` or `+ 0.0` (gone before: the RELU is dropped).

Before this, `energy.estimate(keras_model)` charged each such ReLU layer a full DRAM round trip
of its activations that the model's own `.tflite` never makes: a MobileNetV2 (224x224, K = 16)
read 7.40e9 hierarchy units from Keras and 4.74e9 from its palettized file.
"""

from dkm_tf.energy.activations import activation_name
from dkm_tf.energy.bn_folding import _calls, consumers, folded_into, removed, source_at
from dkm_tf.energy.keras_calls import graph_ops
from dkm_tf.energy.keras_lowered import affine_ops, clip_ops, relu_ops
from dkm_tf.energy.keras_wrapped import lambda_model
from dkm_tf.energy.relu_like import activation_relu, zero_maximum, zero_second

_OPS = ("Add", "Subtract", "Multiply", "TrueDivide", "Divide")  # non-layer ops: ADD, ... DIV


def _fusable_relu(layer, keras):
    L = keras.layers
    if isinstance(layer, L.ReLU):
        cap = layer.max_value
        return (float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
                and (cap is None or float(cap) == 6.0))
    return isinstance(layer, L.Activation) and activation_name(layer.activation) in (
        "relu", "relu6")


def leading_relu(layer, keras):
    """Whether the first op `layer` converts to is a RELU / RELU6 of its input alone (a ReLU
    without slope nor threshold: capped at 3 it is a RELU, a MINIMUM and a RELU, whose first
    RELU the op before absorbs; `keras_lowered.relu_ops`)."""
    L = keras.layers
    if isinstance(layer, L.ReLU):
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
    if not isinstance(layer, L.Layer):  # `keras.ops.relu` / `relu6` (before 2026-12-07
        name = type(layer).__name__  # charged as a RELU op: `ops.relu(Conv2D(4, 3)(x))`,
        if name in ("Relu", "Relu6") or zero_maximum(layer, keras):  # Keras / file 1.5297;
            return True  # `ops.relu6` of a Dense 1.1037; `ops.maximum(y, 0)`: `relu_like`
        if activation_relu(layer, keras):  # `keras.activations.relu`: as a ReLU layer
            return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
        return name == "Clip" and clip_ops(layer) == ["relu"]  # (0, 6): RELU6, (-1, 1)
    return _fusable_relu(layer, keras)  # RELU_N1_TO_1


def relu_kind(op, keras):
    """The activation the converter fuses for the leading RELU of `op` (`leading_relu`) into
    the op before it: "relu" (a ReLU, also one capped at other than 6), "relu6" (capped at
    6, `keras.ops.relu6`, `keras.ops.clip(x, 0, 6)`) or "relu_n1_to_1" (a clip to [-1, 1]);
    for a `keras.layers.Pipeline`, its first layer's that the converter keeps; else None."""
    if isinstance(op, keras.layers.Pipeline):
        first = next((s for s in op.layers if not removed(s, keras)), None)
        return None if first is None else relu_kind(first, keras)
    if op is None or not leading_relu(op, keras):
        return None
    name = type(op).__name__ if not isinstance(op, keras.layers.Layer) else None
    if name == "Clip":
        return "relu6" if float(op.x_max) == 6.0 else "relu_n1_to_1"
    cap = getattr(op, "max_value", None)
    six = name == "Relu6" or cap is not None and float(cap) == 6.0
    return "relu6" if six or activation_name(getattr(op, "activation", None)) == "relu6" \
        else "relu"


def lambda_reader(op, keras):
    """`op`; for a `Lambda`, the op reading its input in the graph of its calls
    (`keras_wrapped.lambda_model`), one in each and of one `relu_kind` in all (the converter
    traces the function: its leading RELU is fused into a Dense before it, so twin Dense
    calls read by a `Lambda(ops.relu)` and a ReLU are one FULLY_CONNECTED), else None."""
    if not isinstance(op, keras.layers.Lambda):
        return op
    found = []
    for node in op._inbound_nodes:
        sub = lambda_model(op, (node.input_tensors, node.outputs), keras)
        inputs = [] if sub is None else keras.tree.flatten(sub.inputs)
        if len(inputs) != 1 or any(o is inputs[0] for o in keras.tree.flatten(sub.outputs)):
            return None
        found.append([o for o in sub.operations for n in o._inbound_nodes
                      if any(t is inputs[0] for t in n.input_tensors)])
    kinds = {relu_kind(r[0], keras) if len(r) == 1 else None for r in found}
    return found[0][0] if found and len(kinds) == 1 and None not in kinds else None


def identity_reshape(op, ins, keras):
    """Whether `op` (a `Reshape` / `Flatten` layer, `keras.ops.reshape`) called on `ins`
    gives a tensor of the shape of its input: the converter removes it (a ReLU after it is
    fused into the op before it: `Dense(8)` -> `Reshape((8,))` -> ReLU, Keras / file
    hierarchy 1.1037 before 2026-12-07)."""
    if type(op).__name__ not in ("Reshape", "Flatten") or len(ins) != 1:
        return False
    try:
        node = next(n for n in op._inbound_nodes if [id(t) for t in n.input_tensors] == [
            id(t) for t in ins])
        return len(node.outputs) == 1 and tuple(node.outputs[0].shape) == tuple(ins[0].shape)
    except (AttributeError, StopIteration, TypeError):
        return False


def _absorbs(producer, keras):
    L = keras.layers
    if isinstance(producer, (L.TimeDistributed, L.Bidirectional)):
        return False  # unstacked per step: PACK, then a RELU of its own
    inner = producer.layer if isinstance(producer, L.Wrapper) else producer
    if isinstance(inner, (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D)) and any(
            int(d) != 1 for d in inner.dilation_rate):
        return False  # SPACE_TO_BATCH_ND / CONV / BATCH_TO_SPACE_ND: the RELU stays
    linear = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
              L.SeparableConv2D, L.Dense)
    if isinstance(inner, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3D)):
        return False
    if isinstance(inner, linear):
        return activation_name(getattr(inner, "activation", None)) == "linear"
    if isinstance(inner, (L.BatchNormalization, L.Rescaling, L.Normalization)):
        return bool(affine_ops(inner, keras))  # its last MUL / ADD; an identity is removed
    if not isinstance(inner, L.Layer) and type(inner).__name__ in _OPS:
        return True  # `a + b`, `keras.ops.multiply(a, b)`, `a / b`: an ADD / SUB / MUL / DIV
    if isinstance(inner, L.ReLU) or activation_relu(inner, keras):  # of a slope and a cap
        # or threshold: its last SUB / ADD (not a LEAKY_RELU; charged before 2026-12-07:
        # `ReLU()(ReLU(negative_slope=0.1, threshold=0.5)(tanh(x)))`, Keras / file 1.2221)
        return float(inner.negative_slope) != 0 and relu_ops(inner, keras)[-1:] == ["add"]
    return isinstance(inner, (L.Add, L.Subtract, L.Multiply, L.Average, L.MaxPooling1D,
                              L.MaxPooling2D, L.AveragePooling1D, L.AveragePooling2D))


def _ends_with(op, keras):
    """The RELU ("relu") or RELU6 ("relu6") the ops of `op` end with as converted, else None:
    a conv or Dense of that activation (fused; after a dilated conv's BATCH_TO_SPACE_ND,
    `tflite_blocks.after_blocks`), a ReLU without slope nor threshold (capped at other than 6
    it ends with the RELU after its MINIMUM: `keras_lowered.relu_ops`), an `Activation`,
    `keras.ops.relu` / `relu6`, a `keras.ops.clip(x, 0, 6)`. Not a TimeDistributed or
    Bidirectional layer (per-step ops, PACK, a RELU of its own) nor a transposed conv."""
    L = keras.layers
    if isinstance(op, (L.TimeDistributed, L.Bidirectional)):
        return None
    inner = op.layer if isinstance(op, L.Wrapper) else op
    if isinstance(inner, L.ReLU):
        if float(inner.negative_slope) != 0.0 or float(inner.threshold) != 0.0:
            return None
        cap = inner.max_value
        return "relu6" if cap is not None and float(cap) == 6.0 else "relu"
    if not isinstance(inner, L.Layer):
        name = type(inner).__name__
        six = name == "Clip" and clip_ops(inner) == ["relu"] and float(inner.x_max) == 6.0
        if zero_second(inner, keras) or activation_relu(inner, keras):  # `relu_like`: a
            return relu_kind(inner, keras)  # ReLU after it was charged (before 2026-12-07)
        if zero_maximum(inner, keras):  # `ops.maximum(0, y)`: its RELU is not merged
            return None
        return name.lower() if name in ("Relu", "Relu6") else "relu6" if six else None
    convs = (L.Conv1D, L.Conv2D, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D,
             L.SeparableConv2D, L.Dense)
    if not isinstance(inner, (L.Activation, *convs)) or isinstance(
            inner, (L.Conv1DTranspose, L.Conv2DTranspose)):
        return None
    act = activation_name(getattr(inner, "activation", None))
    return act if act in ("relu", "relu6") else None


def _merged(layer, producer, keras):
    """Whether the leading RELU / RELU6 of ReLU `layer` (`relu_kind`) is the one `producer`
    ends with (`_ends_with`): the converter drops a RELU of a RELU (a RELU6 of a RELU6),
    whatever else reads the first, dilated conv or not (charged before 2026-12-07: a ReLU
    after a relu conv, Keras / file hierarchy 1.2933 dilated, 1.3954 undilated on 9x9x3; a
    second ReLU after it again 1.3954 / 1.2933; `ReLU(max_value=3)` after it 1.1988, its
    MINIMUM and last RELU run)."""
    kind = relu_kind(layer, keras)
    if zero_maximum(layer, keras) and not zero_second(layer, keras):
        return False  # `ops.maximum(0, y)` after a RELU: both kept (`relu_like.zero_second`)
    return kind is not None and _ends_with(producer, keras) == kind


def _source(x, counts, keras, outer, norms=True, any_readers=False):
    """`bn_folding.source_at` of `x`, past same-shape reshapes (`identity_reshape`) and into
    a `Lambda` (`_in_lambda`); `norms`, `any_readers`: as there."""
    found = source_at(x, counts, keras, outer, norms, any_readers)
    while found is not None and identity_reshape(found[0], found[1], keras):
        found = source_at(found[1][0], found[2], keras, found[3], norms, any_readers)
    inside = None if found is None else _in_lambda(found, keras)
    return found if inside is None else _source(
        inside[0], inside[1], keras, inside[2], norms, any_readers)


def _in_lambda(found, keras):
    """`(its output, counts, outer)` in the graph of the call of `Lambda` `found[0]` on
    `found[1]` (`keras_wrapped.lambda_model`), else None: the converter traces the function,
    so a ReLU after it is fused into (or dropped after) the op ending it (before 2026-12-07
    charged: `ReLU()(Lambda(keras.activations.relu)(tanh(x)))`, Keras / file hierarchy
    2.0000, read by a sigmoid too 1.4000; `ReLU()(Lambda(lambda t: t * 2.0)(tanh(x)))`
    1.6658)."""
    op, ins = found[:2]
    node = next((n for n in getattr(op, "_inbound_nodes", None) or () if [
        id(t) for t in n.input_tensors] == [id(t) for t in ins]), None)
    if not isinstance(op, keras.layers.Lambda) or node is None:
        return None
    sub = lambda_model(op, (node.input_tensors, node.outputs), keras)
    outs = [] if sub is None else keras.tree.flatten(sub.outputs)
    if len(outs) != 1 or len(keras.tree.flatten(node.outputs)) != 1:
        return None
    counts = consumers(sub, [(o, _calls(sub, o)) for o in graph_ops(sub)], keras)
    return outs[0], counts, (keras.tree.flatten(sub.inputs), list(ins), found[2], found[3])


class NoMerge(tuple):
    """A call `(inputs, outputs)` of a ReLU whose RELU is not merged into a RELU before it
    (`relu_fused_into`), its inputs' Keras history kept for `dense_copies`
    (before, a Pipeline's first ReLU after an identity batch norm was walked on an input of
    no history: `Pipeline([BatchNormalization(epsilon=0.0), ReLU()])` on a linear Dense(8)
    read beside it charged no FULLY_CONNECTED copy, Keras / file hierarchy 0.7343)."""


def relu_fused_into(layer, call, counts, keras, outer=None):
    """The name of the layer the leading RELU of ReLU `layer` (`leading_relu`) is fused into
    at `call` (`(inputs, outputs)`), else None (not such a ReLU, or its producer keeps a RELU
    op). `counts`: consumers per tensor `id` (`bn_folding.consumers`); the producer is found
    through nested models (`bn_folding.source`), also out of the nested model the call is in
    (`outer`, as for `bn_folding.source`). Where `call` is a `NoMerge`: not into an op
    ending with a RELU (`_merged`), as where an identity batch norm of a
    `keras.layers.Pipeline` is between."""
    if isinstance(call, Exception) or not call[0] or not leading_relu(layer, keras):
        return None
    found = _source(call[0][0], counts, keras, outer)
    if (found is None or not _absorbs(found[0], keras)) and isinstance(call, NoMerge):
        return None
    if found is None or not _absorbs(found[0], keras):  # the RELU it ends with, read by any
        found = _source(call[0][0], counts, keras, outer, norms=False,  # an identity batch
                        any_readers=True)  # norm between keeps it (`_merged`)
        return found[0].name if found is not None and _merged(layer, found[0], keras) else None
    producer, ins, at_counts, at_outer = found
    if isinstance(producer, keras.layers.BatchNormalization):  # the conv it is folded into
        x = ins[0] if ins else None
        return folded_into(producer, at_counts, keras, x, at_outer) or producer.name
    return producer.name


def relu_fused_after(layer, prev, keras, before=None):
    """As :func:`relu_fused_into` for a layer of a `keras.layers.Pipeline`: `prev` is the
    layer before it there that the converter keeps (None for the first), whose output only
    `layer` reads; `before`: the same where an identity batch norm / `Normalization` counts
    as kept (`bn_folding.removed(norms=False)`; by default `prev`), the layer whose RELU a
    RELU must read to be dropped (`_merged`)."""
    if prev is None or not leading_relu(layer, keras):
        return None
    if _absorbs(prev, keras):
        return prev.name
    before = prev if before is None else before
    return before.name if _merged(layer, before, keras) else None
