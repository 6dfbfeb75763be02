"""`ops.matmul` / `ops.einsum` / `ops.mean` ops of a Functional Keras model, read as the
`.tflite` reader and the traced reader read them (the Keras reader listed them as
"unsupported operation Matmul / Einsum / Mean", their MACs not charged, where both others
charged them):

* `Matmul` of two activations or of an activation and a constant, and `Einsum` of two
  operands (`traced_products.einsum_shape`): one grouped dense record per image, as
  `tflite_matmul` reads the BATCH_MATMUL / FULLY_CONNECTED they convert to;
* a `Mean` / `Sum` / `Max` over every axis between the batch and the channels of a 3-D, 4-D or
  5-D tensor: a global pooling record (`tflite_ops.reduce_shape`, `graph_reader`);
* `Pad` and `Flip` copy values: "no compute" (PAD, REVERSE_V2 in a `.tflite`).
"""


NO_COMPUTE = ("Pad", "Flip")
_POOLS = {"Mean": "avg", "Sum": "avg", "Max": "max"}


def _args(op, call):
    """The positional arguments of the node of `op` whose first output is `call`'s, or None."""
    for node in getattr(op, "_inbound_nodes", None) or []:
        if node.outputs and node.outputs[0] is call[1][0]:
            return list(node.arguments.args)
    return None


def _shape(value):
    import numpy as np

    shape = getattr(value, "shape", None)
    shape = np.shape(value) if shape is None else shape
    return tuple(1 if d is None else int(d) for d in shape)


def product_records(op, call, in_shapes, out_shape):
    """`(records, reason)` of a Matmul / Einsum / reduction op (module docstring), or None."""
    from dkm_tf.energy import shapes as sh

    cls = type(op).__name__
    if cls in ("Matmul", "Einsum") and not isinstance(call, Exception):
        args = _args(op, call)
        if args is None:
            return None
        if cls == "Einsum":
            from dkm_tf.energy.traced_products import einsum_shape

            record, why = einsum_shape(op.subscripts, [_shape(a) for a in args[:2]], op.name,
                                       op.name, cls) if len(args) == 2 else (None, "einsum "
                                                                             "of 3+ operands")
            return ([record] if record else []), why
        from dkm_tf.energy.tflite_matmul import batch_matmul_shape

        a, b = (_shape(x) for x in args[:2])
        if len(a) < 2 or len(b) < 2:
            return None
        out = _shape(call[1][0])
        record = batch_matmul_shape(op.name, a=a, b=b, out=out, adj_x=False, adj_y=False,
                                    batch=1, repeat=1, label=op.name, skipped=[])
        import dataclasses

        return [dataclasses.replace(record, op=cls)], None
    x = tuple(in_shapes[0]) if in_shapes else ()
    axis = getattr(op, "axis", None)
    if cls in _POOLS and len(x) in (3, 4, 5) and axis is not None and None not in x[1:]:
        axes = sorted(a % len(x) for a in (axis if isinstance(axis, (list, tuple)) else [axis]))
        if axes == list(range(1, len(x) - 1)):
            hw = (1, x[1]) if len(x) == 3 else (x[1], x[2]) if len(x) == 4 else \
                (x[1] * x[2], x[3])
            return [sh.pool_shape(op.name, in_hw=hw, channels=x[-1], out_hw=1, window=hw,
                                  pool_op=_POOLS[cls], op=cls)], None
    return None
