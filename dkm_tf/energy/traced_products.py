"""Matrix products of a traced graph (`graph_reader`) that are not a layer's variable kernel.

* `Einsum` (an `EinsumDense`'s kernel, a `MultiHeadAttention`'s projections, its scores and
  context, `ops.einsum`): per image, the letters of the equation give G (in both operands and
  the output: heads), K (in both operands, not the output: contracted), M (first operand and
  output only) and N (second operand and output only), one grouped dense record of G·M·K·N
  MACs (`in_features=G·K`, `units=G·N`, `positions=M`, `groups=G`), as `tflite_matmul` reads
  the BATCH_MATMUL these convert to and `sequence_reader` reads `MultiHeadAttention`. With a
  variable operand, the record is named after its layer (`variable.path`) and the second
  operand's values are the layer's weights; otherwise after the op's name scope.
* `MatMul` / `BatchMatMulV2` / `BatchMatMulV3` of two activations (`ops.matmul(q, k)`,
  attention), or of a constant that is no variable (`ops.matmul(x, np_array)`): the same
  record, as the `.tflite` reader charges them (were listed, "unsupported TensorFlow op
  BatchMatMulV2" / "matmul without a variable kernel", their MACs not charged).

Before, a traced `MultiHeadAttention` of 2 heads of 4 on 6 x 8 inputs charged 288 of its
2,400 MACs (the Functional reader and the `.tflite` 2,400).
"""

import math


def _dims(tensor):
    shape = tensor.shape
    if shape.rank is None:
        return ()
    return tuple(1 if d is None else int(d) for d in shape.as_list())


def einsum_record(op, name, layer):
    """The grouped dense record of Einsum op `op` (module docstring), or `(None, reason)`."""
    eq = op.get_attr("equation")
    eq = eq.decode() if isinstance(eq, bytes) else eq
    return einsum_shape(eq, [_dims(t) for t in op.inputs], name, layer, "Einsum")


def einsum_shape(eq, dims, name, layer, op):
    """`(record, None)` of einsum `eq` over operands of shapes `dims` (batch 1), or `(None,
    reason)` for an equation of another form."""
    from dkm_tf.energy import shapes as sh

    if "." in eq or "->" not in eq or len(dims) != 2 or len(eq.split("->")[0].split(",")) != 2:
        return None, f"einsum {eq!r}: not a product of two operands with explicit axes"
    (left, right), out = eq.split("->")[0].split(","), eq.split("->")[1]
    sizes = {}
    for spec, shape in ((left, dims[0]), (right, dims[1])):
        if len(shape) != len(spec):
            return None, f"einsum {eq!r}: operand shapes {dims} unknown"
        sizes.update(zip(spec, shape))
    letters = set(left) | set(right)

    def prod(keep):
        return math.prod(sizes[c] for c in letters if keep(c))

    groups = prod(lambda c: c in left and c in right and c in out)
    k = prod(lambda c: c not in out)
    m = prod(lambda c: c in left and c not in right and c in out)
    n = prod(lambda c: c in right and c not in left and c in out)
    return sh.dense_shape(name, layer=layer, op=op, in_features=groups * k,
                          units=groups * n, positions=m, groups=groups), None


def matmul_record(op, name, ins, out):
    """The grouped dense record of a MatMul / BatchMatMul of `ins` -> `out` (traced shapes,
    batch 1), its right-hand operand counted as weights."""
    from dkm_tf.energy.tflite_matmul import batch_matmul_shape

    if op.type == "MatMul":
        adj_x, adj_y = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    else:
        adj_x, adj_y = op.get_attr("adj_x"), op.get_attr("adj_y")
    record = batch_matmul_shape(name, a=ins[0], b=ins[1], out=out, adj_x=adj_x, adj_y=adj_y,
                                batch=1, repeat=1, label=op.name, skipped=[])
    import dataclasses

    return dataclasses.replace(record, op=op.type, layer=name.split("#")[0])
