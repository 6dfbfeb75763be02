"""A `ZeroPadding2D` the TFLite converter merges into the conv after it.

TF 2.21's converter rewrites a `padding="valid"` conv reading a PAD whose amounts are those
`padding="same"` would give that conv into one `padding="same"` conv reading the PAD's input:
the conv reads the smaller, unpadded tensor (a `ZeroPadding2D(1)` before a 3x3 conv on
8x8x3: CONV_2D reads 1x8x8x3, no PAD op). Before 2026-12-07 the Keras reader charged the conv
on the padded input (Keras / file hierarchy 1.1473; a stride-2 conv after ((0, 1), (0, 1)),
MobileNet's and EfficientNet's stems, 1.1240; a 5x5 depthwise conv after
`ZeroPadding2D(2)` 1.4091). Measured on converted files (`tests/test_energypad26.py`):

- merged: a `Conv2D` (grouped, strided, with an activation), a `DepthwiseConv2D` (any depth
  multiplier), a `SeparableConv2D`, channels_last, each conv reading the pad on its own: a
  pad read by two such convs is merged into each; one also read by a pooling or a model
  output stays a PAD for that reader while the conv reads the unpadded input (the PAD is
  "no compute" either way); through layers the converter removes (`Dropout`, ...:
  `bn_folding.removed`) and across a nested model's boundary (the converter inlines it);
- merged through a `Rescaling` or a constant MUL / DIV / ADD / SUB by one-element
  constants between (`scale_ops.scalar_ops`: the converter folds each into the conv first, then
  merges the pad; before 2026-12-07 `ZeroPadding2D(1)` -> `Rescaling(0.5)` -> `Conv2D(4, 3)`
  was charged on the padded input, 1.1473; one also read by a pooling stays a MUL on the
  padded tensor for it, while the conv reads the unpadded input, 1.0537 before);
- kept (the conv reads the padded input, as charged): amounts other than "same"'s (a
  `ZeroPadding2D(1)` before a stride-2 3x3 conv on an even size, where "same" pads
  ((0, 1), (0, 1)); `ZeroPadding2D(2)` before a 3x3 conv), a dilated conv (SPACE_TO_BATCH_ND
  between), a `Conv1D` after `ZeroPadding1D` (EXPAND_DIMS between), an op between that
  the converter keeps (a ReLU).

A zero `keras.ops.pad` of the rows and columns is merged alike (1.1473 before).

The other way round, a causal `Conv1D` pads inside the layer and the converter keeps that
pad as a PAD op before the conv: the conv is charged on the padded input (`causal_padded`).
"""

_CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")


def same_pad(pad, x_shape, conv):
    """Whether `ZeroPadding2D` `pad` on a tensor of shape `x_shape` pads as the
    `padding="same"` of `conv`, a valid, undilated channels_last 2-D conv (module
    docstring)."""
    return getattr(pad, "data_format", "") == "channels_last" and _same(
        tuple(tuple(int(v) for v in p) for p in pad.padding), x_shape, conv)


def _same(amounts, x_shape, conv):
    """Whether `((top, bottom), (left, right))` zeros around a tensor of shape `x_shape` are
    what `padding="same"` gives `conv` (`same_pad`)."""
    if type(conv).__name__ not in _CONVS or str(conv.padding).lower() != "valid" or \
            len(x_shape) != 4 or getattr(conv, "data_format", "") != "channels_last" or \
            any(int(d) != 1 for d in conv.dilation_rate):
        return False
    want = []
    for size, k, s in zip(x_shape[1:3], conv.kernel_size, conv.strides):
        if size is None:
            return False
        total = max((-(-size // s) - 1) * s + k - size, 0)
        want.append((total // 2, total - total // 2))
    return any(any(p) for p in want) and amounts == tuple(want)  # all 0 (1x1): PAD stays


def _amounts(op, node, keras):
    """`((top, bottom), (left, right))` of `ZeroPadding2D` (channels_last) or `ops.pad`
    op `op` at `node` padding a 4-D tensor's rows and columns with zeros, else None."""
    if type(op).__name__ == "ZeroPadding2D":
        return tuple(tuple(int(v) for v in p) for p in op.padding) if getattr(
            op, "data_format", "") == "channels_last" else None
    if type(op).__name__ != "Pad" or isinstance(op, keras.layers.Layer) or \
            getattr(op, "mode", "") != "constant":
        return None
    args = node.arguments
    value = args.kwargs.get("constant_values", args.args[1] if len(args.args) > 1 else None)
    try:
        width = tuple(tuple(int(v) for v in p) for p in op.pad_width)
    except (TypeError, ValueError):
        return None
    if value not in (None, 0) or len(width) != 4 or width[0] != (0, 0) or width[3] != (0, 0):
        return None
    return width[1:3]


def _padded(x, keras, outer, depth=0):
    """`(pad, its input tensor, amounts)` where tensor `x` is a `ZeroPadding2D`'s or a zero
    `ops.pad`'s output (`_amounts`), looking through removed ops and nested models'
    boundaries (`outer`: as `bn_folding.source`), else None."""
    from dkm_tf.energy.bn_folding import removed
    from dkm_tf.energy.scale_ops import scalar_ops

    try:
        producer, node, index = x._keras_history
    except (AttributeError, ValueError, TypeError):
        return None
    if depth > 64:
        return None
    if isinstance(producer, keras.Model):
        try:
            inner = keras.tree.flatten(producer.outputs)[index]
            inside = (keras.tree.flatten(producer.inputs),
                      keras.tree.flatten(producer._inbound_nodes[node].input_tensors), None,
                      outer)
        except (AttributeError, ValueError, IndexError, TypeError):
            return None
        return _padded(inner, keras, inside, depth + 1)
    if type(producer).__name__ == "InputLayer":
        at = [] if outer is None else [i for i, t in enumerate(outer[0]) if t is x]
        if len(at) != 1 or at[0] >= len(outer[1]):
            return None
        return _padded(outer[1][at[0]], keras, outer[3], depth + 1)
    try:
        ins = keras.tree.flatten(producer._inbound_nodes[node].input_tensors)
    except (AttributeError, IndexError, TypeError):
        return None
    if len(ins) != 1:
        return None
    if isinstance(producer, keras.layers.Pipeline):  # a pad last in it (`pipeline_folds`)
        found = pipeline_padded(producer, producer._inbound_nodes[node], keras)
        return found if found is None or found[0] is not None else _padded(
            found[1], keras, outer, depth + 1)
    amounts = _amounts(producer, producer._inbound_nodes[node], keras)
    if amounts is not None:
        return producer, ins[0], amounts
    through = removed(producer, keras) or scalar_ops(
        producer, (ins, producer._inbound_nodes[node].outputs), keras)
    return _padded(ins[0], keras, outer, depth + 1) if through else None


def unpadded(conv, call, keras, outer=None):
    """`(input shapes, note)` of conv `conv` at `call` (`(inputs, outputs)`) where the
    converter merges the `ZeroPadding2D` before it into it (module docstring): the pad's
    input shape, which the converted conv reads; for a causal `Conv1D`, the padded shape
    it reads (`causal_padded`); else None. `outer`: as for `bn_folding.source`, where the
    call is in a nested model."""
    if isinstance(conv, keras.layers.Conv1D) and not isinstance(call, Exception):
        return causal_padded(conv, call, keras)
    if type(conv).__name__ not in _CONVS or isinstance(call, Exception):
        return None
    x = keras.tree.flatten(call[0])
    found = _padded(x[0], keras, outer) if len(x) == 1 else None
    if found is None:
        return None
    pad, source, amounts = found
    shape = tuple(source.shape)
    if not _same(amounts, shape, conv):
        return None
    return [shape], (f"reads the input of {pad.name}, its padding merged into the conv (as "
                     'a .tflite runs it, padding="same")')


def pipeline_padded(layer, node, keras):
    """`(pad, a tensor of its input's shape, amounts)` where `keras.layers.Pipeline` `layer`'s
    output at `node` is that of a `ZeroPadding2D` in it (over removed layers and one-element
    scales: `pipeline_folds`), `(None, the Pipeline's input)` where only such layers are in
    it, else None."""
    from dkm_tf.energy.bn_folding import removed
    from dkm_tf.energy.keras_pipeline import pipeline_calls
    from dkm_tf.energy.scale_ops import scalar_ops

    subs, _ = pipeline_calls(layer, (node.input_tensors, node.outputs))
    if not subs:
        return None
    for sub, (ins, _) in reversed(subs):
        if removed(sub, keras) or (type(sub).__name__ == "Rescaling" and scalar_ops(
                sub, None, keras)):
            continue
        amounts = _amounts(sub, None, keras) if type(sub).__name__ == "ZeroPadding2D" else None
        return None if amounts is None else (sub, ins[0], amounts)
    return None, subs[0][1][0][0]


def causal_padded(conv, call, keras):
    """`([padded input shape], note)` of a channels_last `Conv1D(padding="causal")` at
    `call`: the converter (TF 2.21) keeps Keras' PAD of `dilation * (kernel - 1)` zeros
    before the length as a PAD op, and the conv reads its output (`Conv1D(4, 3,
    padding="causal")` on 11x3: CONV_2D reads 13; with dilation 2, SPACE_TO_BATCH_ND reads
    15; before 2026-12-07 charged on 11: Keras / file hierarchy 0.9532, 0.9105). None
    otherwise (no padding, channels_first, an open length)."""
    if str(conv.padding).lower() != "causal" or getattr(conv, "data_format", "") != \
            "channels_last":
        return None
    x = keras.tree.flatten(call[0])
    shape = tuple(x[0].shape) if len(x) == 1 else ()
    pad = int(conv.dilation_rate[0]) * (int(conv.kernel_size[0]) - 1)
    if len(shape) != 3 or shape[1] is None or pad < 1:
        return None
    return [(shape[0], shape[1] + pad, shape[2])], (
        f"reads its causal padding, {pad} zeros before the input (a PAD op in a .tflite)")
