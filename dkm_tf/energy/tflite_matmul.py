"""A `.tflite` BATCH_MATMUL whose right-hand side is not a 2-D weight: attention's products.

`MultiHeadAttention`, `tf.einsum("bqhk,bthk->bhqt", ...)` and `tf.matmul` of two activations
convert to BATCH_MATMUL of `(..., M, K)` by `(..., K, N)` (`adj_x` / `adj_y` transpose the
last two axes): `prod(...)` independent products. Per image of the file, the G = `prod(...)`
/ batch products (one per attention head) are one grouped dense record, as
`sequence_reader` reads `MultiHeadAttention` (`<layer>/scores`, `<layer>/context`): M
positions, G·K inputs, G·N outputs, groups G, so G·M·K·N MACs, and the right-hand operand's
G·K·N values counted as its weights (an activation fetched like a weight). Broadcast operands
(a 2-D left-hand side against a batched right-hand side) are covered: the products are those
of the output. A 2-D right-hand side is a weight (`tflite_reader`'s FULLY_CONNECTED path).
"""

import math


def batch_matmul_shape(name, *, a, b, out, adj_x, adj_y, batch, repeat, label, skipped):
    """The grouped dense `LayerShape` of BATCH_MATMUL `a` x `b` -> `out` (stored shapes, `out`
    of rank >= 2), `repeat` times per image; `batch`: the file's images per invoke."""
    from dkm_tf.energy import shapes as sh

    k = a[-2] if adj_x else a[-1]
    n = b[-2] if adj_y else b[-1]
    m = out[-2]
    products = math.prod(out[:-2]) if len(out) > 2 else 1
    if len(out) == 2:  # no batch axes: the rows hold the images
        m, groups = (m // batch, 1) if m % batch == 0 else (m, 1)
    elif products % batch == 0:
        groups = products // batch
    else:
        skipped.append((label, f"{products} products, not a multiple of the file's batch of "
                        f"{batch} images: all charged to one image"))
        groups = products
    if (b[-1] if adj_y else b[-2]) != k:
        raise ValueError(f"operands {a} and {b} do not share the contracted axis")
    return sh.dense_shape(name, layer=name.split("#")[0], op="BATCH_MATMUL",
                          in_features=groups * k, units=groups * n, positions=repeat * m,
                          groups=groups)
