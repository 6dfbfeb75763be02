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
"""


def pipeline_calls(layer, call):
    """``(calls, reason)``: ``[(sub_layer, (inputs, outputs))]`` of one call ``(inputs,
    outputs)`` of the Pipeline ``layer``, or ``([], reason)`` where the chain of shapes cannot
    be followed (several inputs, several outputs but those of a Functional model of a list of
    outputs last, a layer without `compute_output_shape`, a chain that does not end at the
    Pipeline's recorded output shapes)."""
    import keras

    def shape_of(tensors):
        items = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        return [tuple(t.shape) for t in items]

    ins, outs = shape_of(call[0]), shape_of(call[1])
    leaves = list(_leaves(layer, keras))
    if len(ins) != 1 or len(outs) != 1 and _n_outputs(leaves[-1:], keras) != len(outs):
        return [], f"Pipeline with inputs {ins} and outputs {outs}: not read (one of each)"
    shape, out, first = ins[0], [], list(call[0]) if isinstance(call[0], (list, tuple)) else [
        call[0]]
    for sub in leaves:
        try:
            nxt = _output_shape(sub, shape, keras)
        except Exception as e:  # noqa: BLE001 - any layer's own error
            return [], (f"Pipeline layer {sub.name!r} ({type(sub).__name__}): no output shape "
                        f"for input {shape} ({type(e).__name__}: {e}); the Pipeline not read")
        x = first if not out else out[-1][1][1]  # the one before's output: a chain
        many = [tuple(s) for s in nxt] if len(outs) > 1 and sub is leaves[-1] else [nxt]
        out.append((sub, (x, [keras.KerasTensor(s) for s in many])))
        shape = nxt
    if [s[1:] for s in many] != [s[1:] for s in outs]:
        return [], (f"Pipeline layers' shapes end at {shape}, the Pipeline's output is "
                    f"{outs[0] if len(outs) == 1 else outs}; not read")
    return out, None


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
