"""Images a `.tflite` conv or matrix product runs per image of the file: dilated convs.

The TensorFlow Lite converter (TF 2.21) lowers a dilated convolution of a dynamic-batch model
(`Conv2D(dilation_rate=2)`, a causal dilated `Conv1D`, ...) to SPACE_TO_BATCH_ND -> CONV_2D
(or DEPTHWISE_CONV_2D) -> BATCH_TO_SPACE_ND: the conv runs undilated over the
`prod(block_shape)` blocks of each image, stacked on the batch axis. The stored shapes give
a dynamic batch as 1, blocks included (`[1, 6, 6, 3]` for the 4 blocks of a 12x12 image); a
fixed-batch file may store them (`[4 * batch, ...]`), or keep the dilation in the conv's
options. `dkm_tf.export` may lower the undilated conv further to an im2col
DEPTHWISE_CONV_2D, a RESHAPE and a BATCH_MATMUL, whose rows then also miss the blocks.
"""

_THROUGH = ("RESHAPE", "EXPAND_DIMS", "SQUEEZE", "QUANTIZE", "DEQUANTIZE", "CAST")


def missing_blocks(view, t):
    """Blocks per stored image that activation tensor `t` holds beyond its stored batch.

    Follows `t` back through layout and (de)quantize ops and `dkm_tf.export`'s im2col helper
    to a SPACE_TO_BATCH_ND with a constant block shape: its `prod(block_shape)`, divided by
    the blocks its stored output shape already counts. 1 when there is none.
    """
    import numpy as np

    from dkm_tf.energy.tflite_palettes import im2col_helper

    seen = set()
    while t in view.producer and t not in seen:
        seen.add(t)
        k = view.producer[t]
        name = view.names[k]
        if name == "SPACE_TO_BATCH_ND":
            x, block = view.inputs(k)[:2]
            raw = view.raw(block)
            dtype = {2: np.int32, 4: np.int64}.get(view.dtype(block))
            if dtype is None or not raw:
                return 1
            blocks = int(np.prod(np.frombuffer(raw, dtype)))
            stored_in = max(view.shape(x)[0], 1) if view.shape(x) else 1
            stored_out = max(view.shape(t)[0], 1) if view.shape(t) else 1
            return max(blocks * stored_in // stored_out, 1)
        if name not in _THROUGH and not (name == "DEPTHWISE_CONV_2D" and im2col_helper(view, k)):
            return 1
        t = view.inputs(k)[0]
    return 1


def conv_images(view, t, x, batch):
    """Undilated images a conv with input tensor `t` (stored shape `x`) runs per image: the
    stored batch `x[0]` divided by the file's `batch` (when it divides), times the blocks of
    a dynamic batch that `x` leaves out (`missing_blocks`)."""
    stored = x[0] // batch if x and x[0] % batch == 0 else 1
    return max(stored, 1) * missing_blocks(view, int(t))

