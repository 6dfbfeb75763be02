"""Fills in the open shapes Keras records in a Functional graph whose input size is fixed.

Keras records an `EinsumDense(..., output_shape=(None, 7))` output (the usual way to keep a
sequence axis) as `(None, None, 7)` whatever the length of its input, and every layer after
it then reads an open shape: the walk of the Keras graph skipped them all ("unknown
dimension", measured: `Input((5, 6))`, that EinsumDense and a `Dense(3)` read 0 MACs, their
`.tflite` 315). The model is traced once (a `tf.function`'s concrete function: nothing runs,
so a stateful RNN's states and variables a layer updates in `call` are left alone; an eager
call changed them, review R8) at its (fixed) input size, as a `keras.Model(model.inputs,
<every tensor of its graph>)`, and the tensors' recorded shapes get the static sizes of that
trace where they are open beyond the batch axis, for the time of the
walk (`filled`; restored after): the walk keeps its own rules (pads merged into convs,
`Rescaling` / batch norms folded, ReLUs fused, calls of shared layers, names) and reads the
layers after the open shape as the file does. A nested Functional model is filled at its own
input size, or at its calls' where its own is open and they call it at one size (called at
several, also by different parents, it stays open: its calls are listed, `keras_reader`). A
dimension is never taken as 1: where the trace fails, or gives a tensor another rank, a size
0 or no static size (a size that depends on the data, e.g. after `tf.boolean_mask`), its
shape stays open and the layers on it are listed ("unknown dimension"), with a note in
`skipped` saying why.
"""

import contextlib

from dkm_tf.energy.keras_calls import calls, graph_ops
from dkm_tf.energy.keras_wrapped import has_inputs


@contextlib.contextmanager
def filled(model, keras, skipped):
    """Within the `with` block, the open dimensions (beyond the batch) of the tensors of
    `model`'s graph, and of its nested Functional models' graphs, hold their static sizes in
    one trace at the model's input size; a note for `skipped` is appended to `skipped`."""
    saved = {}
    try:
        _fill(model, keras, None, saved, skipped, {})
        yield
    finally:
        for tensor, shape in saved.values():
            tensor._shape = shape


def _open(shape):
    return any(d is None for d in tuple(shape)[1:])


def _graph_tensors(model, keras):
    """Every tensor of `model`'s own graph (inputs and outputs of each call), deduplicated,
    and the nested Functional models called in it with each call's inputs."""
    tensors, nested = {}, []
    for t in keras.tree.flatten(model.inputs) + keras.tree.flatten(model.outputs):
        tensors[id(t)] = t
    for op in graph_ops(model):
        try:
            op_calls = calls(model, op)
        except (AttributeError, ValueError):
            continue
        for ins, outs in op_calls:
            for t in list(ins) + list(outs):
                if isinstance(t, keras.KerasTensor):
                    tensors[id(t)] = t
        if isinstance(op, keras.Model) and has_inputs(op) and op_calls:
            nested.append((op, [list(ins) for ins, _ in op_calls]))
    return list(tensors.values()), nested


def _traced(probe, inputs, shapes):
    """The static output shapes of `probe` traced (not run) on inputs of `shapes`
    (`jax.eval_shape` on the JAX backend, a `tf.function`'s concrete function elsewhere)."""
    from keras import backend

    if backend.backend() == "jax":
        import jax
        from keras import StatelessScope

        structs = [jax.ShapeDtypeStruct(s, str(t.dtype)) for t, s in zip(inputs, shapes)]
        with StatelessScope():  # a variable a layer assigns keeps its value (no tracer in it)
            return jax.eval_shape(lambda *xs: probe(list(xs), training=False), *structs)
    import tensorflow as tf

    specs = [tf.TensorSpec(s, tf.as_dtype(str(t.dtype))) for t, s in zip(inputs, shapes)]
    fn = tf.function(lambda *xs: probe(list(xs), training=False))
    return fn.get_concrete_function(*specs).structured_outputs


def _last_line(error):
    """The last non-empty line of `error`'s message (a traced call's starts with a traceback
    of "in user code"), at most 200 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:200]


def _unfill(model, keras, saved):
    """Puts back the recorded shapes of `model`'s graph and its nested models' graphs."""
    tensors, nested = _graph_tensors(model, keras)
    for t in tensors:
        if id(t) in saved:
            t._shape = saved.pop(id(t))[1]
    for inner, _ in nested:
        _unfill(inner, keras, saved)


def _fill(model, keras, input_shapes, saved, skipped, seen):
    """Fills `model`'s graph (`input_shapes`: its inputs' shapes with the batch, for a nested
    model whose own are open), then its nested models'."""
    if id(model) in seen:  # a nested model called twice: at other sizes (another parent's
        if seen[id(model)] != input_shapes:  # call, review R8: read at the first's), open
            _unfill(model, keras, saved)
            skipped.append(("shapes", f"{model.name!r} is called at other sizes by another "
                            "model: its shapes are put back open (its layers listed)"))
        return
    seen[id(model)] = input_shapes
    tensors, nested = _graph_tensors(model, keras)
    inputs = keras.tree.flatten(model.inputs)
    opened = [t for t in tensors if _open(t.shape)]
    if opened:
        shapes = input_shapes or [tuple(t.shape) for t in inputs]
        shapes = [tuple(1 if d is None else d for d in s[:1]) + tuple(s[1:]) for s in shapes]
        where = ", ".join(str(s[1:]) for s in shapes)
        names = sorted({t._keras_history.operation.name for t in opened
                        if getattr(t, "_keras_history", None)})
        if any(_open((1,) + tuple(s[1:])) for s in shapes):
            skipped.append(("shapes", f"Keras recorded open shapes in {model.name!r} "
                            f"({', '.join(names)}) and its input size {where} is open too: "
                            "they are skipped"))
        else:
            try:
                probe = keras.Model(model.inputs, tensors)
                got = [tuple(v.shape) for v in keras.tree.flatten(_traced(probe, inputs, shapes))]
            except Exception as e:  # noqa: BLE001 (any failure of the call: shapes stay open)
                skipped.append(("shapes", f"Keras recorded open shapes in {model.name!r} "
                                f"({', '.join(names)}); a trace of it at its input "
                                f"size {where} failed ({type(e).__name__}: {_last_line(e)}): "
                                "they are skipped"))
                got = None
            if got is not None and len(got) == len(tensors):
                for t, shape in zip(tensors, got):
                    _set(t, shape, saved)
                still = sorted({t._keras_history.operation.name for t in opened
                                if _open(t.shape) and getattr(t, "_keras_history", None)})
                skipped.append(("shapes", f"Keras recorded open shapes in {model.name!r} "
                                f"({', '.join(names)}): filled in from one trace of it at its "
                                f"input size {where}"
                                + (f"; still open: {', '.join(still)}" if still else "")))
    for inner, call_inputs in nested:
        own = [tuple(saved[id(t)][1] if id(t) in saved else t.shape)  # as recorded (review
               for t in keras.tree.flatten(inner.inputs)]  # R9: a filled one read as fixed)
        at = {tuple((None,) + tuple(t.shape)[1:] for t in ins) for ins in call_inputs}
        # called at one size: read at it; at several: at its own (open: listed, per call)
        at = list(at.pop()) if len(at) == 1 and any(_open(s) for s in own) else None
        _fill(inner, keras, at, saved, skipped, seen)


def _set(tensor, shape, saved):
    """Gives `tensor` the sizes of `shape` where its recorded shape is open beyond the batch
    and the two agree elsewhere (same rank, same known sizes)."""
    recorded = tuple(tensor.shape)
    if not _open(recorded) or len(shape) != len(recorded) or any(
            s is None or int(s) < 1 or r is not None and r != int(s)
            for r, s in zip(recorded[1:], shape[1:])):  # a size 0: data-dependent, left open
        return
    saved.setdefault(id(tensor), (tensor, tensor._shape))
    tensor._shape = recorded[:1] + tuple(int(s) if r is None else r
                                         for r, s in zip(recorded[1:], shape[1:]))


def call_shape(shape, in_shapes):
    """`shape` (a sub-layer's build shape, e.g. a MultiHeadAttention's query_dense's), its
    open dimensions beyond the batch taken from the one size the call's `in_shapes` of its
    rank and known sizes give them (left open where they give none or several)."""
    shape = tuple(shape)
    if not any(d is None for d in shape[1:]):
        return shape
    fits = {tuple(s) for s in in_shapes if len(s) == len(shape) and not _open(s) and all(
        d is None or d == e for d, e in zip(shape[1:], tuple(s)[1:]))}
    return shape[:1] + tuple(fits.pop())[1:] if len(fits) == 1 else shape
