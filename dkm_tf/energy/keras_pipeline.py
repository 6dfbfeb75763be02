"""The calls of the layers of a `keras.layers.Pipeline`, for `keras_reader` to read.

A Pipeline calls its layers in order and records no per-layer shapes in the outer graph: each
layer's input and output shapes are those `compute_output_shape` gives along the chain from the
Pipeline's input. The layers are read as if called in the outer model (records named by the
layer, so that palettes of `share_weights`, which clusters the Dense layers of a Pipeline, are
charged). Before 2026-12-06 the Pipeline was listed as "unsupported layer type" (its MACs
left out) and an estimate with those palettes raised "Compression info names layer 'pd',
which is not a conv or dense layer of the model".

A `BatchNormalization` of the Pipeline is folded as the Functional reader folds it
(`bn_folding`): into the layer before it in the Pipeline (`pipeline_folds.pipeline_fold`), or,
as the Pipeline's first layer, into the outer layer producing the Pipeline's input (its first
layer's call is given the Pipeline's own input tensor). Before 2026-12-06 it was charged as an
"affine" record (Conv2D, BatchNormalization, ReLU, MaxPooling2D: paper 30,272 vs the `.tflite`
28,392). A Pipeline in a Pipeline is read in its place, as if its layers were the outer
Pipeline's (so a batch norm first in it is folded into the layer before it). A Pipeline
ending in a Functional model of a list of outputs is read too (before 2026-12-07 it was
listed in `skipped`, "not read (one of each)", and charged nothing).

A Pipeline called on a masked tensor (`Embedding(20, 8, mask_zero=True)` before it), or with
`mask=`, has the mask as its call's second input (Keras records the `mask` keyword as its
node's): its layers are read along the first, and each layer whose call takes a mask reads the
mask Keras gives it (`masked_chain`), as a Functional call of the layer records it (its node's
second input: the SUM of a `GlobalAveragePooling1D`'s mask charged, `attention_mask`; merged
with the same layer called outside on the same tensors, `pipeline_cse`). Before 2026-12-07 the
Pipeline was listed in `skipped`, "not read (one of each)", and charged nothing (Embedding ->
`Pipeline([GlobalAveragePooling1D(), Dense(4)])` on 6 tokens beside the same pooling and
Dense outside: Keras / file hierarchy 0.7072, paper 0.6345; `Pipeline([GlobalAveragePooling1D(),
Dense(3)])(t, mask=m)` beside `GlobalAveragePooling1D()(t)`, 5x4: 0.3280 / 0.2759).
"""


def pipeline_calls(layer, call):
    """``(calls, reason)``: ``[(sub_layer, (inputs, outputs))]`` of one call ``(inputs,
    outputs)`` of the Pipeline ``layer``, or ``([], reason)`` where the chain of shapes cannot
    be followed (several inputs, several outputs but those of a Functional model of a list of
    outputs last, a layer without `compute_output_shape`, a chain that does not end at the
    Pipeline's recorded output shapes). A call given a mask (`pipeline_mask`) is read along
    its first input; a layer called with a mask has it as its second input."""
    import keras

    def shape_of(tensors):
        items = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        return [tuple(t.shape) for t in items]

    given = pipeline_mask(call)
    data = _listed(call[0])[:1] if given is not None else _listed(call[0])
    ins, outs = shape_of(data), shape_of(call[1])
    leaves = list(_leaves(layer, keras))
    if len(ins) != 1 or len(outs) != 1 and _n_outputs(leaves[-1:], keras) != len(outs):
        return [], f"Pipeline with inputs {ins} and outputs {outs}: not read (one of each)"
    shape, out, first = ins[0], [], data
    masks, _, notes = _chain(leaves, data[0], given, ins[0], keras)
    for sub in leaves:
        try:
            nxt = _output_shape(sub, shape, keras)
        except Exception as e:  # noqa: BLE001 - any layer's own error
            return [], (f"Pipeline layer {sub.name!r} ({type(sub).__name__}): no output shape "
                        f"for input {shape} ({type(e).__name__}: {e}); the Pipeline not read")
        x = first if not out else out[-1][1][1][:1]  # the one before's output: a chain
        x = x + ([masks[len(out)]] if masks[len(out)] is not None else [])  # as Keras records
        many = [tuple(s) for s in nxt] if len(outs) > 1 and sub is leaves[-1] else [nxt]
        out.append((sub, (x, [keras.KerasTensor(s) for s in many])))
        shape = nxt
    if [s[1:] for s in many] != [s[1:] for s in outs]:
        return [], (f"Pipeline layers' shapes end at {shape}, the Pipeline's output is "
                    f"{outs[0] if len(outs) == 1 else outs}; not read")
    return out, "; ".join(notes) or None


def _listed(tensors):
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def pipeline_mask(call):
    """The mask tensor a Pipeline's call `(inputs, outputs)` was given (its second input: the
    `mask` keyword of its node, passed or the mask its input carries), else None."""
    ins = _listed(call[0])
    if len(ins) != 2:
        return None
    try:
        op, index, _ = _listed(call[1])[0]._keras_history
        arguments = op._inbound_nodes[index].arguments
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    args, kwargs = tuple(arguments.args), dict(arguments.kwargs)
    mask = kwargs.get("mask", args[2] if len(args) > 2 else None)
    return ins[1] if mask is ins[1] else None


def masked_chain(leaves, x, given, shape, keras):
    """The mask each layer of `leaves` (a Pipeline's, in order) is called with, else None: as
    `Pipeline.call` gives it (`given`, else the one its input `x` carries, also one Keras
    records none of, `carried_masks`, to the first layer whose call takes a mask; to a later
    one the mask its input carries, the one before's `compute_mask`: passed on unchanged by
    Dense, Dropout, ..., dropped by a pooling, a new one where a layer computes its own, a
    fresh tensor never merged; a nested model's, `carried_masks.model_mask`)."""
    return _chain(leaves, x, given, shape, keras)[0]


def output_mask(layer, call, keras):
    """The mask on the output of call `(inputs, outputs)` of the Pipeline `layer` when it
    runs (its last layer's, which `Pipeline.call` returns; Keras records none on it), else
    None: read by a layer after it that takes a mask (`carried_masks`)."""
    given = pipeline_mask(call)
    data = _listed(call[0])[:1]
    if not data or not hasattr(data[0], "shape"):
        return None
    return _chain(list(_leaves(layer, keras)), data[0], given, tuple(data[0].shape), keras)[1]


def passes_mask(layer, call, keras):
    """Whether the Pipeline `layer`'s call `(inputs, outputs)`, given no mask, returns the
    mask its first input carries unchanged (`Pipeline([Dense(8)])`; not one with a pooling
    or a `Masking`): `attention_mask._passed_back` follows a mask back through it."""
    if pipeline_mask(call) is not None or not _listed(call[0]):
        return False
    x = _listed(call[0])[0]
    start = keras.KerasTensor(tuple(x.shape)[:-1], dtype="bool")
    return _chain(list(_leaves(layer, keras)), x, None, tuple(x.shape), keras, start)[1] is start


def _chain(leaves, x, given, shape, keras, start=None):
    """`(masks, last, notes)`: `masked_chain`'s masks, the mask on the last layer's output,
    and the notes of `_next_mask` (a `compute_mask` that failed); `start`: the mask `x`
    carries, where not its own (`carried_masks`)."""
    from dkm_tf.energy.carried_masks import carried_mask

    carried = carried_mask(x, keras) if start is None else start
    passed, out, notes = given, [], []
    for sub in leaves:
        takes = getattr(sub, "_call_has_mask_arg", False)
        mask = (passed if passed is not None else carried) if takes else None
        out.append(mask)
        previous = mask if mask is not None else carried
        carried = passed = _next_mask(sub, previous, shape, keras, notes)
        try:
            shape = _output_shape(sub, shape, keras)
        except Exception:  # noqa: BLE001 - `pipeline_calls` says why
            break
    return out + [None] * (len(leaves) - len(out)), carried, notes


def _next_mask(sub, mask, shape, keras, notes):
    """The mask on the output of layer `sub` called on a tensor of `shape` with `mask`
    (`Layer._set_mask_metadata`): a nested Functional / Sequential model's its graph's
    output carries (`carried_masks.model_mask`: before 2026-12-07 None, its
    `supports_masking` is False, though its output carries the mask its Dense passes on:
    `Pipeline([Model(j, Dense(8)(j)), GlobalAveragePooling1D()])` on an Embedding(mask_zero)
    0.9697 / 0.9936); None where it does not support masking; `mask` where it passes it on
    (Keras' own `compute_mask`), else its `compute_mask` on symbolic tensors (a new mask: a
    fresh tensor of its shape; an error: None, and a line in `notes`)."""
    from dkm_tf.energy.carried_masks import fresh, model_mask

    if isinstance(sub, keras.Model):
        return model_mask(sub, 0, [mask], keras)
    if not getattr(sub, "supports_masking", False):
        return None
    if getattr(type(sub), "compute_mask", None) is keras.layers.Layer.compute_mask:
        return mask
    try:
        new = sub.compute_mask(keras.KerasTensor(shape), mask)
    except Exception as e:  # noqa: BLE001 - any layer's own error: no mask known, said
        notes.append(f"Pipeline layer {sub.name!r} ({type(sub).__name__}): its compute_mask "
                     f"failed on an input of shape {shape} ({type(e).__name__}: {e}); the "
                     "layers after it read as given no mask")
        return None
    if new is None or not hasattr(new, "shape"):
        return None
    return mask if new is mask else fresh(tuple(new.shape), keras)


def _n_outputs(last, keras):
    """The number of outputs of the Functional model in `last` (a Pipeline's last layer, the
    one that may have several: before 2026-12-07 a Pipeline ending in a model of two outputs
    was not read, charged nothing), else 1."""
    try:
        return len(keras.tree.flatten(last[0].outputs)) if isinstance(
            last[0], keras.Model) and isinstance(last[0].outputs, (list, tuple)) else 1
    except (AttributeError, ValueError, TypeError, IndexError):  # subclassed: no graph
        return 1


def _leaves(layer, keras):
    """The layers of Pipeline ``layer``, a nested Pipeline's in its place (recursively): a
    batch norm first in a nested Pipeline then follows the layer before it, into which it is
    folded (before 2026-12-06 it was charged: Pipeline([Conv2D, Pipeline([BN, ReLU])]))."""
    for sub in layer.layers:
        yield from (_leaves(sub, keras) if isinstance(sub, keras.layers.Pipeline) else [sub])


def _output_shape(layer, shape, keras):
    """``layer``'s output shape for input ``shape``; a nested Pipeline (which has no
    `compute_output_shape`: before 2026-12-06 the outer Pipeline was skipped whole) along the
    chain of its layers."""
    if isinstance(layer, keras.layers.Pipeline):
        for sub in layer.layers:
            shape = _output_shape(sub, shape, keras)
        return tuple(shape)
    return tuple(layer.compute_output_shape(shape))


def same_shape_reshape(sub, call):
    """Whether `sub`, a layer of a Pipeline at its call `(inputs, outputs)` (`pipeline_calls`),
    is a `Reshape` / `Flatten` to its input's shape, which the converter removes (a ReLU after
    it is fused into the op before, a Dense before it is copied for the ReLU after it)."""
    return type(sub).__name__ in ("Reshape", "Flatten") and [
        tuple(t.shape) for t in call[0]] == [tuple(t.shape) for t in call[1]]
