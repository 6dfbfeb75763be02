"""Images a `.tflite` conv or matrix product runs per image of the file: dilated convs.

The TensorFlow Lite converter (TF 2.21) lowers a dilated convolution of a dynamic-batch model
(`Conv2D(dilation_rate=2)`, a causal dilated `Conv1D`, ...) to SPACE_TO_BATCH_ND -> CONV_2D
(or DEPTHWISE_CONV_2D) -> BATCH_TO_SPACE_ND: the conv runs undilated over the
`prod(block_shape)` blocks of each image, stacked on the batch axis. The stored shapes give
a dynamic batch as 1, blocks included (`[1, 6, 6, 3]` for the 4 blocks of a 12x12 image); a
fixed-batch file may store them (`[4 * batch, ...]`), or keep the dilation in the conv's
options. `dkm_tf.export` may lower the undilated conv further to an im2col
DEPTHWISE_CONV_2D, a RESHAPE and a BATCH_MATMUL, whose rows then also miss the blocks.

Where the conv's output size is not a multiple of the dilation, SPACE_TO_BATCH_ND pads the
input to whole blocks and BATCH_TO_SPACE_ND crops the extra outputs away: such a conv is read
as the Keras conv it was (`conv_geometry`: the SPACE_TO_BATCH_ND's input sizes, the
BATCH_TO_SPACE_ND's output sizes from its crops), a matrix product for the kept positions
only (`kept_positions`), so neither is charged for positions the model does not compute.
"""

_CONV_OPS = ("convolution", "depthwise", "separable_conv2d")  # TensorFlow's dilated conv ops
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



def lowered_by_conv(s2b, b2s):
    """Whether ops named `s2b` (a SPACE_TO_BATCH_ND / SpaceToBatchND) and `b2s` (its
    BATCH_TO_SPACE_ND) are TensorFlow's lowering of a dilated conv: `<scope>/convolution/
    SpaceToBatchND` and `.../BatchToSpaceND` in the same conv op's scope (`b2s` may be a
    signature output, `StatefulPartitionedCall:0`), not a hand-written `tf.space_to_batch`
    (`model/lambda_1/SpaceToBatchND`, read as before: its conv computes all the blocks)."""
    head, _, tail = s2b.split(";")[0].rpartition("/")
    b2s = b2s.split(";")[0]
    return tail == "SpaceToBatchND" and head.rsplit("/", 1)[-1] in _CONV_OPS and (
        b2s == f"{head}/BatchToSpaceND" or "/" not in b2s)


def _valid(view, j):
    """Whether CONV_2D / DEPTHWISE_CONV_2D `j` pads VALID (the lowering's inner conv)."""
    from tensorflow.lite.python import schema_py_generated as schema

    cls = {"CONV_2D": schema.Conv2DOptions, "DEPTHWISE_CONV_2D":
           schema.DepthwiseConv2DOptions}.get(view.names[j])
    table = view.ops[j].BuiltinOptions()
    if cls is None or table is None:
        return cls is None  # another op (a BATCH_MATMUL): its im2col is checked
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts.Padding() == schema.Padding.VALID


def _ints(view, t):
    """The values of constant int32 / int64 tensor `t`, or None."""
    import numpy as np

    dtype = {2: np.int32, 4: np.int64}.get(view.dtype(t))
    raw = view.raw(t)
    return None if dtype is None or not raw else np.frombuffer(raw, dtype).astype(int)


def _batch_to_space(view, users, t):
    """The BATCH_TO_SPACE_ND reading `t` through layout ops and a bias ADD, each the only
    reader of the tensor before it; None when there is none."""
    seen = set()
    while len(users.get(t, ())) == 1 and t not in seen:
        seen.add(t)
        k = users[t][0]
        name, ins = view.names[k], view.inputs(k)
        if name == "BATCH_TO_SPACE_ND" and ins[0] == t:
            return k
        bias = name == "ADD" and len(ins) == 2 and len(view.shape(ins[ins[0] == t])) <= 1
        if not (name in _THROUGH and ins[0] == t or bias) or not view.ops[k].OutputsLength():
            return None
        t = int(view.ops[k].OutputsAsNumpy()[0])
    return None


def cropped(view, users, k, t):
    """What the Keras conv computes of a dilated conv lowered to SPACE_TO_BATCH_ND -> op `k`
    (input `t`) -> BATCH_TO_SPACE_ND: `(in_sizes, out_sizes, stored_in, kept)`.

    `in_sizes`: the spatial sizes of the SPACE_TO_BATCH_ND's input (its padding the
    converter's, not the model's); `out_sizes`: the BATCH_TO_SPACE_ND's block output sizes
    times the block, less its crops (the rows and columns the converter pads to make the
    blocks whole and crops away after); `stored_in`: the stored batch of the input; `kept`:
    `(kept positions, computed positions)` of the blocks. None when op `k` is not so lowered
    (another layout, open sizes or crops that are not constants, a `tf.space_to_batch`
    written by hand, `lowered_by_conv`, or an inner conv that pads: before 2026-12-07 such a
    hand-written pair around a "same" Conv2D on 9x9x3 was read as 8,748 MACs for 10,800).
    """
    seen, s2b = set(), None
    while t in view.producer and t not in seen:  # back to the SPACE_TO_BATCH_ND
        seen.add(t)
        j = view.producer[t]
        if view.names[j] == "SPACE_TO_BATCH_ND":
            s2b = j
            break
        if view.names[j] not in _THROUGH and not (_im2col(view, j) and _valid(view, j)):
            return None
        t = view.inputs(j)[0]
    b2s = _batch_to_space(view, users, int(view.ops[k].OutputsAsNumpy()[0]))
    if s2b is None or b2s is None or min(len(view.inputs(j)) for j in (s2b, b2s)) < 3 or \
            not _valid(view, k) or not lowered_by_conv(*(view.name(
                int(view.ops[j].OutputsAsNumpy()[0])) for j in (s2b, b2s))):
        return None
    block, other = (_ints(view, view.inputs(j)[1]) for j in (s2b, b2s))
    crops = _ints(view, view.inputs(b2s)[2])
    n = 0 if block is None else len(block)
    x = view.shape(view.inputs(s2b)[0])
    z = view.shape(view.inputs(b2s)[0])
    if not n or other is None or list(block) != list(other) or crops is None or \
            crops.size != 2 * n or len(x) < n + 2 or len(z) < n + 2 or \
            min((*x[1:n + 1], *z[1:n + 1], *block)) < 1:
        return None
    blocks = [z[1 + i] * int(block[i]) for i in range(n)]
    out = [b - int(c) for b, c in zip(blocks, crops.reshape(n, 2).sum(axis=1))]
    y = view.shape(view.ops[b2s].OutputsAsNumpy()[0])
    if min(out) < 1 or any(len(y) >= n + 1 and y[1 + i] > 0 and y[1 + i] != out[i]
                           for i in range(n)):
        return None
    import math

    return (tuple(x[1:n + 1]), tuple(out), max(x[0], 1), (math.prod(out), math.prod(blocks)))


def _im2col(view, j):
    from dkm_tf.energy.tflite_palettes import im2col_helper

    return view.names[j] == "DEPTHWISE_CONV_2D" and im2col_helper(view, j)


def conv_geometry(view, users, k, x, y, batch, strides):
    """`(in_hw, out_hw, images)` of CONV_2D / DEPTHWISE_CONV_2D `k` (input shape `x`, output
    `y`): for a dilated conv lowered to blocks (`cropped`; undilated in the file, stride 1),
    the Keras conv's input and output sizes (1-D: `(1, length)`) and the images per image of
    the file `batch`, so that its MACs and memory records are the Keras conv's; otherwise
    `x`'s and `y`'s sizes and `conv_images`."""
    t = int(view.ops[k].InputsAsNumpy()[0])
    got = cropped(view, users, k, t) if tuple(strides) == (1, 1) else None
    if got is not None and len(got[0]) == 1 and x[1] == y[1] == 1:
        got = ((1, *got[0]), (1, *got[1]), *got[2:])
    if got is None or len(got[0]) != 2:
        return x[1:3], y[1:3], conv_images(view, t, x, batch)
    return got[0], got[1], max(got[2] // batch if got[2] % batch == 0 else 1, 1)


def kept_positions(view, users, k, t, positions):
    """`positions` of a matrix product `k` (activation input `t`) charged for all the blocks
    of a dilated conv (`missing_blocks`), less those BATCH_TO_SPACE_ND crops away."""
    got = cropped(view, users, k, t)
    if got is None or positions * got[3][0] % got[3][1]:
        return positions
    return positions * got[3][0] // got[3][1]


def after_blocks(view, k):
    """True when op `k` is a RELU / RELU6 / RELU_N1_TO_1 reading a BATCH_TO_SPACE_ND: the
    converter cannot fuse a dilated conv's own activation into the conv between the blocks
    (`Conv2D(dilation_rate=2, activation="relu")`), so it runs after them."""
    if view.names[k] not in ("RELU", "RELU6", "RELU_N1_TO_1") or not view.inputs(k):
        return False
    j = view.producer.get(view.inputs(k)[0])
    if j is None or view.names[j] != "BATCH_TO_SPACE_ND":
        return False
    head = view.name(view.inputs(k)[0]).split(";")[0].rpartition("/")[0]
    return head.rsplit("/", 1)[-1] in _CONV_OPS  # not a hand-written `tf.batch_to_space`
