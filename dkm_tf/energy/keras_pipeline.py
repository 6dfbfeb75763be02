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
mask Keras gives it (`carried_masks.masked_chain`), as a Functional call of the layer records
it (its node's second input: the SUM of a `GlobalAveragePooling1D`'s mask charged,
`attention_mask`; merged with the same layer called outside on the same tensors,
`pipeline_cse`). Before 2026-12-07 the
Pipeline was listed in `skipped`, "not read (one of each)", and charged nothing (Embedding ->
`Pipeline([GlobalAveragePooling1D(), Dense(4)])` on 6 tokens beside the same pooling and
Dense outside: Keras / file hierarchy 0.7072, paper 0.6345; `Pipeline([GlobalAveragePooling1D(),
Dense(3)])(t, mask=m)` beside `GlobalAveragePooling1D()(t)`, 5x4: 0.3280 / 0.2759).
"""

from dkm_tf.energy.carried_masks import _chain, _leaves, _listed, _output_shape, pipeline_mask


def pipeline_calls(layer, call):
    """``(calls, reason)``: ``[(sub_layer, (inputs, outputs))]`` of one call ``(inputs,
    outputs)`` of the Pipeline ``layer``, or ``([], reason)`` where the chain of shapes cannot
    be followed (several inputs, several outputs but those of a Functional model of a list of
    outputs last, a layer without `compute_output_shape`, a chain that does not end at the
    Pipeline's recorded output shapes). A call given a mask (`pipeline_mask`) is read along
    its first input; a layer called with a mask has it as its second input. A later layer
    taking the mask the Pipeline's input carries from outside a nested model (its layers
    before pass it on) has that input as `_dkm_outer_of` on its own (`attention_mask`: before
    session 31 `Model(j, Pipeline([Dense(8), GlobalAveragePooling1D()])(j))` on an
    Embedding(20, 8, mask_zero=True) of 6 tokens charged no mask SUM, 0.9697 / 0.9936)."""
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
    start = keras.KerasTensor(ins[0][:-1], dtype="bool")  # the mask `data` gets at run time
    runs = _chain(leaves, data[0], None, ins[0], keras, start)[0] if given is None and all(
        m is None for m in masks) else masks  # from outside a nested model (`_outer_mask`)
    for sub in leaves:
        try:
            nxt = _output_shape(sub, shape, keras)
        except Exception as e:  # noqa: BLE001 - any layer's own error
            return [], (f"Pipeline layer {sub.name!r} ({type(sub).__name__}): no output shape "
                        f"for input {shape} ({type(e).__name__}: {e}); the Pipeline not read")
        x = first if not out else out[-1][1][1][:1]  # the one before's output: a chain
        x = x + ([masks[len(out)]] if masks[len(out)] is not None else [])  # as Keras records
        if out and masks[len(out)] is None and runs[len(out)] is start:
            x[0]._dkm_outer_of = data[0]  # reads the mask `data` carries (`attention_mask`)
        made = getattr(masks[len(out)], "_dkm_made_at", None)
        if made is not None and made < len(out):  # made on that layer's output (`mask_key`)
            masks[len(out)]._dkm_on = out[made][1][1][0]
        many = [tuple(s) for s in nxt] if len(outs) > 1 and sub is leaves[-1] else [nxt]
        out.append((sub, (x, [keras.KerasTensor(s) for s in many])))
        shape = nxt
    if [s[1:] for s in many] != [s[1:] for s in outs]:
        return [], (f"Pipeline layers' shapes end at {shape}, the Pipeline's output is "
                    f"{outs[0] if len(outs) == 1 else outs}; not read")
    return out, "; ".join(notes) or None


def _n_outputs(last, keras):
    """The number of outputs of the Functional model in `last` (a Pipeline's last layer, the
    one that may have several: before 2026-12-07 a Pipeline ending in a model of two outputs
    was not read, charged nothing), else 1."""
    try:
        return len(keras.tree.flatten(last[0].outputs)) if isinstance(
            last[0], keras.Model) and isinstance(last[0].outputs, (list, tuple)) else 1
    except (AttributeError, ValueError, TypeError, IndexError):  # subclassed: no graph
        return 1


def same_shape_reshape(sub, call):
    """Whether `sub`, a layer of a Pipeline at its call `(inputs, outputs)` (`pipeline_calls`),
    is a `Reshape` / `Flatten` to its input's shape, which the converter removes (a ReLU after
    it is fused into the op before, a Dense before it is copied for the ReLU after it)."""
    return type(sub).__name__ in ("Reshape", "Flatten") and [
        tuple(t.shape) for t in call[0]] == [tuple(t.shape) for t in call[1]]
