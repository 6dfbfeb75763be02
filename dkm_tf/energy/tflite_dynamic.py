"""Run-time shapes of a `.tflite` whose stored shapes leave dimensions open.

A tensor's stored shape gives each open dimension (-1 in its `shape_signature`) as 1. An open
batch (the leading axis) is what the readers expect. An open dimension further in is not:
`Input((None, None, 3))` stores a conv's input as `[1, 1, 1, 3]`, and even a fixed-size
Keras model loses sizes on the way (`UpSampling2D` of a dynamic-batch model: `[1, 1, 16, 8]`
for `[1, 16, 16, 8]`), so the stored shapes would undercount its ops without a word.

:func:`run_shapes` resolves them by running the file once on zeros in LiteRT (its input
resized to `input_shape` where that is open or given; the stored batch kept) and reading
every tensor's shape back, for every subgraph. An input left open beyond the batch without
`input_shape` is refused (`keras_reader.InputShapeError`). When LiteRT cannot run the file
(a Flex or custom op, no `ai_edge_litert`), the ops touching open tensors are listed in
`skipped`, charged at their stored shapes.
"""

import os


def _open(t):
    """Whether flatbuffer tensor `t` leaves a dimension beyond the leading one open."""
    return t.ShapeSignatureLength() > 1 and any(
        int(d) < 0 for d in t.ShapeSignatureAsNumpy()[1:])


def _signature(t):
    return [int(d) for d in t.ShapeSignatureAsNumpy()] if t.ShapeSignatureLength() else \
        [int(d) for d in t.ShapeAsNumpy()]


def _input_size(path, graph, input_shape):
    """`{input tensor: shape to run at}`; raises when an input is open and not given."""
    from dkm_tf.energy.keras_reader import InputShapeError

    name = os.path.basename(os.fspath(path))
    inputs = [int(i) for i in graph.InputsAsNumpy()]
    open_in = [i for i in inputs if _open(graph.Tensors(i))]
    if input_shape is None:
        if open_in:
            t = graph.Tensors(open_in[0])
            why = (f"{name!r} leaves input {(t.Name() or b'').decode()!r} open beyond the batch "
                   f"(shape signature {_signature(t)}): the op shapes depend on its size")
            raise InputShapeError(f"{why}; pass input_shape=(...) without the batch axis.",
                                  why)
        return {}
    shape = tuple(int(d) for d in input_shape)
    if len(inputs) != 1:
        why = f"input_shape sets one input and {name!r} has {len(inputs)}"
        raise InputShapeError(f"{why}.", why)
    t = graph.Tensors(inputs[0])
    sig = _signature(t)
    if len(shape) != len(sig) - 1 or any(d <= 0 for d in shape) or any(
            s >= 0 and s != d for s, d in zip(sig[1:], shape)):
        fixed = None if _open(t) else tuple(sig[1:])
        why = (f"{name!r} has input shape signature {sig} (batch first), which input_shape "
               f"{shape} does not fit")
        raise InputShapeError(f"{why}.", why, fixed)
    return {inputs[0]: (max(int(t.ShapeAsNumpy()[0]), 1), *shape)}


def run_shapes(path, model, op_names, input_shape=None):
    """Run-time tensor shapes where the stored ones are open (module docstring).

    Args:
        path: The `.tflite` file.
        model: Its flatbuffer `Model` (schema accessors).
        op_names: `{builtin code: op name}` of the schema.
        input_shape: Input shape without the batch axis, or None.

    Returns:
        `(shapes, skipped)`: `shapes` maps subgraph index to `{tensor index: shape}` (empty
        when nothing is open and no `input_shape` is given); `skipped` holds `(name, reason)`
        entries saying how the shapes were found, or which ops keep stored shapes.

    Raises:
        keras_reader.InputShapeError: An input open beyond the batch without `input_shape`,
            or an `input_shape` the file's input does not accept.
    """
    resize = _input_size(path, model.Subgraphs(0), input_shape)
    graphs = [model.Subgraphs(s) for s in range(model.SubgraphsLength())]
    open_ops = []
    for s, g in enumerate(graphs):
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            ts = [int(t) for t in (*op.InputsAsNumpy(), *op.OutputsAsNumpy()) if t >= 0]
            if any(_open(g.Tensors(t)) for t in ts):
                code = model.OperatorCodes(op.OpcodeIndex())
                name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()),
                                    "CUSTOM")
                open_ops.append(f"{'' if s == 0 else f'subgraph {s}/'}{name.lower()}_{k}")
    if not open_ops and not resize:
        return {}, []
    try:
        import numpy as np

        from dkm_tf.core.interpreters import make_interpreter

        with open(path, "rb") as f:
            content = f.read()
        # LiteRT only (its absence is a skip, not a tf.lite fallback); builtin kernels, so
        # every intermediate tensor is given its run-time shape
        it = make_interpreter("litert", content, xnnpack=False, input_shapes=resize)
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
        shapes = {s: {t: tuple(int(d) for d in it._get_tensor_details(t, s)["shape"])
                      for t in range(g.TensorsLength())} for s, g in enumerate(graphs)}
    except Exception as e:  # a Flex / custom op LiteRT lacks, no ai_edge_litert, ...
        if resize and input_shape is not None:
            raise ValueError(f"Could not run {os.fspath(path)!r} at input_shape "
                             f"{tuple(input_shape)} to read its op shapes: "
                             f"{type(e).__name__}: {e}") from e
        return {}, [(op, "reads or writes a tensor with open dimensions that LiteRT could not "
                     f"resolve ({type(e).__name__}): charged at its stored shape, 1 for each "
                     "open dimension") for op in open_ops]
    at = f"input shape {tuple(next(iter(resize.values())))}" if resize else "its stored input "\
        "shapes"
    return shapes, [("shapes", f"{len(open_ops)} ops read or write tensors with open "
                     f"dimensions: shapes read by running the file once at {at}")]
