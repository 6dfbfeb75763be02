"""The calls of the layers of a `keras.layers.Pipeline`, for `keras_reader` to read.

A Pipeline calls its layers in order and records no per-layer shapes in the outer graph: each
layer's input and output shapes are those `compute_output_shape` gives along the chain from the
Pipeline's input. The layers are read as if called in the outer model (records named by the
layer, so that palettes of `share_weights`, which clusters the Dense layers of a Pipeline, are
charged). Before 2026-12-06 the Pipeline was listed as "unsupported layer type" (its MACs
left out) and an estimate with those palettes raised "Compression info names layer 'pd',
which is not a conv or dense layer of the model".
"""


def pipeline_calls(layer, call):
    """``(calls, reason)``: ``[(sub_layer, (inputs, outputs))]`` of one call ``(inputs,
    outputs)`` of the Pipeline ``layer``, or ``([], reason)`` where the chain of shapes cannot
    be followed (several inputs, a layer without `compute_output_shape`, a chain that does not
    end at the Pipeline's recorded output shape)."""
    import keras

    def shape_of(tensors):
        items = tensors if isinstance(tensors, (list, tuple)) else [tensors]
        return [tuple(t.shape) for t in items]

    ins, outs = shape_of(call[0]), shape_of(call[1])
    if len(ins) != 1 or len(outs) != 1:
        return [], f"Pipeline with inputs {ins} and outputs {outs}: not read (one of each)"
    shape, out = ins[0], []
    for sub in layer.layers:
        try:
            nxt = tuple(sub.compute_output_shape(shape))
        except Exception as e:  # noqa: BLE001 - any layer's own error
            return [], (f"Pipeline layer {sub.name!r} ({type(sub).__name__}): no output shape "
                        f"for input {shape} ({type(e).__name__}: {e}); the Pipeline not read")
        out.append((sub, ([keras.KerasTensor(shape)], [keras.KerasTensor(nxt)])))
        shape = nxt
    if shape[1:] != outs[0][1:]:
        return [], (f"Pipeline layers' shapes end at {shape}, the Pipeline's output is "
                    f"{outs[0]}; not read")
    return out, None
