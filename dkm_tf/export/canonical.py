"""Post-conversion fix-ups every exported ``.tflite`` gets: Keras I/O order, batch-free reshapes.

Two edits of the converter's flatbuffer (both exact; neither changes a computed value):

* **Input and output order.** The converter lists a subgraph's outputs in an order of its own
  (a Functional model with outputs ``[a, b, c]`` came out as ``[b, a, c]``), while the
  signature ``serving_default`` maps ``output_0 .. output_{n-1}`` to the right tensors. The
  subgraph's inputs and outputs, and the signature's lists, are put in signature (= Keras)
  order, so ``get_output_details()[i]`` is Keras' output ``i``.
* **Batch-free reshapes.** With a dynamic batch, Keras' ``Flatten`` / ``Reshape`` become
  ``RESHAPE(x, PACK(STRIDED_SLICE(SHAPE(x))[0], c1, c2, ...))``, and a Dense on a sequence
  ``RESHAPE(x, PACK(REDUCE_PROD(GATHER(SHAPE(x), [0, 1])), C))``: integer ops that XNNPACK
  does not take (they split its partition) and that leave the shape unknown (``[-1, -1]``),
  so the palettized lowering cannot run there. When the output shape has one dimension
  proportional to the batch (read from the interpreter at batches 1, 2, 3), the shape operand
  becomes the constant ``[.., -1, ..]`` (RESHAPE infers it; XNNPACK takes it), and the shape
  ops go away.

Example: digits CNN, batch None: ``SHAPE, STRIDED_SLICE, PACK, RESHAPE [?, 512]`` becomes one
``RESHAPE`` with new shape ``[-1, 512]``; two XNNPACK partitions become one.

:func:`fix_batch` is for the few files that cannot change their batch (TFLite's recurrent
loops): it fixes the signature at batch 1 and adds a guard so that another batch raises.
:func:`fix_size` does the same for the other dimensions of a model whose Keras input leaves
them open (a fully convolutional net on ``(None, None, 3)``): the file is built and verified
at the samples' size, and another size raises instead of running reshapes built for it.
"""

from __future__ import annotations

import re

import numpy as np

from dkm_tf.export.rewrite import FlatModel, schema

__all__ = ["canonicalize", "fix_batch", "fix_size", "fixed_like", "fold_batch_reshapes",
           "order_io", "static_batch"]


def _index(name, prefix):
    name = name.decode() if isinstance(name, bytes) else str(name)
    m = re.fullmatch(prefix + r"_(\d+)", name)
    return int(m.group(1)) if m else None


def order_io(fm):
    """Put subgraph inputs/outputs and signature lists in ``input_i`` / ``output_i`` order.

    Returns:
        True when something changed.
    """
    changed = False
    for sd in fm.model.signatureDefs or ():
        if int(sd.subgraphIndex or 0) != 0:
            continue
        for attr, prefix, io in (("inputs", "input", "inputs"), ("outputs", "output", "outputs")):
            entries = list(getattr(sd, attr) or ())
            keys = [_index(e.name, prefix) for e in entries]
            if not entries or None in keys or len(set(keys)) != len(keys):
                continue
            entries = [e for _, e in sorted(zip(keys, entries), key=lambda p: p[0])]
            order = [int(e.tensorIndex) for e in entries]
            current = [int(t) for t in getattr(fm.graph, io)]
            if sorted(order) != sorted(current):
                continue
            if order != current or [e.name for e in entries] != \
                    [e.name for e in getattr(sd, attr)]:
                changed = True
            setattr(sd, attr, entries)
            setattr(fm.graph, io, np.asarray(order, np.int32))
    return changed


def _producers(fm):
    return {int(t): i for i, op in enumerate(fm.operators) for t in op.outputs}


def _shapes_at(fm, batches):
    """Every tensor's shape after resizing the batch-dynamic inputs to each batch, or None.

    Taken from the interpreter (after one invoke on zeros: RESHAPE with a computed shape sets
    its output's shape in Eval), so they are what the kernels compute, not a guess from
    signatures (a -1 may stand for 16 x batch).
    """
    from dkm_tf.core.interpreters import default_interpreters, make_interpreter  # noqa: PLC0415

    content = fm.to_bytes()
    out = []
    for b in batches:
        try:
            it = make_interpreter(default_interpreters()[0], content, xnnpack=False)
            for d in it.get_input_details():
                sig = list(d["shape_signature"])
                if sig and sig[0] < 0:
                    it.resize_tensor_input(d["index"], [b, *list(d["shape"])[1:]])
            it.allocate_tensors()
            for d in it.get_input_details():  # run-time shapes are set by Eval: invoke once
                it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
            out.append({d["index"]: tuple(int(v) for v in d["shape"])
                        for d in it.get_tensor_details()})
        except (RuntimeError, ValueError):  # the graph cannot change its batch: leave it
            return None
    return out


def fold_batch_reshapes(fm):
    """Give every RESHAPE whose new shape is computed at run time a constant one with -1.

    The output's shape is read at batches 1, 2 and 3 (:func:`_shapes_at`); when exactly one
    dimension grows in proportion to the batch and the others stay fixed, the shape operand
    becomes those constants with -1 there (``[-1, c...]`` for Flatten, ``[-1, C]`` for a
    Dense on a sequence), the output's signature says so, and dead shape ops go.

    Returns:
        The number of reshapes rewritten.
    """
    todo = [op for op in fm.operators if fm.op_name(op) == "RESHAPE" and len(op.inputs) > 1
            and not fm.raw(int(op.inputs[1]))]
    shapes = _shapes_at(fm, (1, 2, 3)) if todo and any(
        fm.signature(int(t))[:1] == (-1,) for t in fm.graph.inputs) else None
    if shapes is None:
        return 0
    done = 0
    for op in todo:
        out = int(op.outputs[0])
        r1, r2, r3 = (np.asarray(s.get(out, ()), np.int64) for s in shapes)
        if not r1.size or r1.shape != r2.shape or r1.shape != r3.shape or (r1 <= 0).any():
            continue
        moving = np.flatnonzero((r1 != r2) | (r1 != r3))
        if len(moving) != 1 or r2[moving[0]] != 2 * r1[moving[0]] \
                or r3[moving[0]] != 3 * r1[moving[0]]:
            continue
        new = r1.astype(np.int32)
        new[moving[0]] = -1
        shape_t = int(op.inputs[1])
        op.inputs = np.asarray([int(op.inputs[0]), fm.add_const(fm.tensor_name(shape_t), new)],
                               np.int32)
        if op.builtinOptions is not None and hasattr(op.builtinOptions, "newShape"):
            op.builtinOptions.newShape = new.tolist()
        fm.tensors[out].shape = r1.astype(np.int32)
        fm.tensors[out].shapeSignature = new
        done += 1
    if done:
        _drop_dead_ops(fm)
    return done


_PURE_INT_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "GATHER", "REDUCE_PROD", "CONCATENATION",
                 "SLICE", "CAST", "MUL", "ADD", "SUB", "FLOOR_DIV")


def _drop_dead_ops(fm):
    """Remove integer shape ops (repeatedly) whose outputs nothing reads."""
    keep_ops = list(fm.operators)
    while True:
        read = {int(t) for op in keep_ops for t in op.inputs if t >= 0}
        read |= {int(t) for t in fm.graph.outputs}
        alive = [op for op in keep_ops if fm.op_name(op) not in _PURE_INT_OPS
                 or any(int(t) in read for t in op.outputs)
                 or any(fm.type_name(int(t)) not in ("int32", "int64") for t in op.outputs)]
        if len(alive) == len(keep_ops):
            break
        keep_ops = alive
    fm.graph.operators = keep_ops
    fm.compact()


def canonicalize(content):
    """Apply :func:`order_io` and :func:`fold_batch_reshapes` to ``.tflite`` bytes.

    Returns:
        The (possibly) rewritten bytes; the input bytes unchanged when there was nothing to do.
    """
    fm = FlatModel.from_bytes(content)
    changed = order_io(fm)
    changed = fold_batch_reshapes(fm) > 0 or changed
    return fm.to_bytes() if changed else bytes(content)


def fix_batch(content):
    """Fix every input at its stored shape (batch 1), and make another batch fail loudly.

    For a file that cannot change its batch. Each input gets a fixed shape signature (so
    ``resize_tensor_input(..., strict=True)`` raises) and a guard ``RESHAPE(x, [1, ...])``
    in front of its readers (so a non-strict resize fails in ``allocate_tensors`` with
    "num_input_elements != num_output_elements" instead of running ops built for batch 1).
    """
    fm = FlatModel.from_bytes(content)
    guards = {}
    for t in (int(v) for v in fm.graph.inputs):
        fm.tensors[t].shapeSignature = None
        shape = list(fm.shape(t))
        opt = schema().ReshapeOptionsT()
        opt.newShape = shape
        out = fm.add_tensor(fm.tensor_name(t) + "/fixed_batch", shape, fm.type_name(t),
                            quantization=fm.tensors[t].quantization)
        shape_t = fm.add_const(fm.tensor_name(t) + "/fixed_shape", np.asarray(shape, np.int32))
        guards[t] = (out, fm.make_op("RESHAPE", [t, shape_t], [out], opt))
    for op in fm.operators:
        op.inputs = np.asarray([guards[int(v)][0] if int(v) in guards else int(v)
                                for v in op.inputs], np.int32)
    fm.graph.operators = [g for _, g in guards.values()] + list(fm.operators)
    return fm.to_bytes()


_GUARD_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32,
                 "int64": np.int64}


def fix_size(content):
    """Make every input's non-batch dimensions fixed: a resize to another size raises.

    The batch stays dynamic. Each input of rank >= 2 gets two broadcasting ``ADD``s of zeros
    in front of its readers, of shapes ``[1, d1, 1, d3, ..]`` and ``[1, 1, d2, 1, ..]``
    (exact: ``x + 0 == x``; a few hundred bytes). An input resized to another size then fails
    in ``allocate_tensors`` ("does not broadcast") instead of running the decode-once
    lowering's reshapes, which are built for the converted size: a fully convolutional net
    converted at 12x12 answered a 30x30 image with one 1x1 map, silently.

    Returns:
        ``(content, guarded)``: the new bytes and the names of the inputs guarded (inputs of
        other types, e.g. int8, are left as they are).
    """
    fm = FlatModel.from_bytes(content)
    guards, guarded = {}, []
    for t in (int(v) for v in fm.graph.inputs):
        shape, dtype = list(fm.shape(t)), _GUARD_DTYPES.get(fm.type_name(t))
        if len(shape) < 2 or dtype is None:
            continue
        x, ops = t, []
        for parity in (1, 0):
            dims = [1] + [d if i % 2 == parity else 1 for i, d in enumerate(shape[1:], 1)]
            if all(d == 1 for d in dims[1:]) and parity == 0:
                continue
            zero = fm.add_const(f"{fm.tensor_name(t)}/size_guard_{parity}",
                                np.zeros(dims, dtype))
            out = fm.add_tensor(f"{fm.tensor_name(t)}/fixed_size_{parity}", shape,
                                fm.type_name(t), signature=[-1, *shape[1:]])
            ops.append(fm.make_op("ADD", [x, zero], [out], schema().AddOptionsT()))
            x = out
        guards[t] = (x, ops)
        guarded.append(fm.tensor_name(t))
    if not guards:
        return bytes(content), []
    for op in fm.operators:
        op.inputs = np.asarray([guards[int(v)][0] if int(v) in guards else int(v)
                                for v in op.inputs], np.int32)
    fm.graph.operators = [g for _, ops in guards.values() for g in ops] + list(fm.operators)
    return fm.to_bytes(), guarded


def fixed_like(content, fixed_size, dynamic_batch):
    """``content`` (the float file an export report compares with) with the fixes
    :func:`dkm_tf.export.verify.verify_batches` gave the exported file (:func:`fix_size` where
    ``fixed_size``, :func:`fix_batch` unless ``dynamic_batch``), so both count the same
    RESHAPE / ADD ops: a subclassed model's float export was reported at 6,640 bytes for a
    7,264-byte file, its analytic size 9 % low."""
    if fixed_size:
        content = fix_size(content)[0]
    return content if dynamic_batch else fix_batch(content)


def static_batch(content):
    """True when every input of the ``.tflite`` has a fixed batch dimension (no -1).

    Models with recurrent layers are converted at batch 1 (see
    :func:`dkm_tf.export.convert.convert`); they are verified one sample per invoke.
    """
    fm = FlatModel.from_bytes(content)
    return all(fm.signature(int(t))[:1] != (-1,) for t in fm.graph.inputs)
