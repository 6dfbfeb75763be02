"""Rows per image of a `.tflite` matrix product, read from stored tensor shapes (for
`tflite_reader`'s FULLY_CONNECTED and 2-D BATCH_MATMUL records).

The converter stores a dimension it leaves open at run time as 1 and folds the batch into
the rows of a flattened input, so the rows a matrix product computes per image are read from
the element counts of its input and output (`stored_count`, `rows_per_image`) and the images
per invoke of the file (`images_per_invoke`).
"""

import math


def images_per_invoke(graph):
    """Images per invoke: the leading dimension of the model's first input of rank >= 2 (1 for
    a dynamic batch, stored as 1 with -1 in the shape signature), else 1."""
    for i in graph.InputsAsNumpy():
        t = graph.Tensors(int(i))
        if t.ShapeLength() >= 2:
            return max(int(t.ShapeAsNumpy()[0]), 1)
    return 1


def elements_per_image(y, batch):
    """Elements per image of an activation tensor of stored shape `y` (open dimensions read
    as 1) in a file of `batch` images per invoke: all its elements over `batch`. The batch
    need not lead: a `TimeDistributed` layer's ops after its PACK run time-major,
    `(T, batch, ...)`, every step of every image (the shape past the first axis held one
    step). A count `batch` does not divide (a tensor without the batch axis) is read past
    the first axis, as before."""
    n = math.prod(y)
    if y and n % batch == 0:
        return max(n // batch, 1)
    return math.prod(y[1:]) or 1


_SAME_COUNT = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS")


def stored_count(view, users, t):
    """Elements of activation tensor `t` at the stored batch: the largest stored count of the
    tensors RESHAPE / SQUEEZE / EXPAND_DIMS connect it to (they hold the same values). The
    converter may store a dimension it leaves open at run time as 1, never as more: `x` of
    `tf.reshape(x, (-1, 6))` on a `(None, 4, 5, 6)` input is stored as `[1, 6]` (20 rows per
    image), a FULLY_CONNECTED's output as `[1, 128]` for its `[-1, 128]`."""
    todo, seen = [int(t)], set()
    while todo:
        u = todo.pop()
        if u in seen or u < 0:
            continue
        seen.add(u)
        k = view.producer.get(u)
        if k is not None and view.names[k] in _SAME_COUNT:
            todo.append(view.inputs(k)[0])
        for j in users.get(u, ()):
            if view.names[j] in _SAME_COUNT and view.inputs(j)[0] == u:
                todo.extend(int(o) for o in view.ops[j].OutputsAsNumpy())
    return max(math.prod(max(d, 1) for d in view.shape(u)) for u in seen)


def rows_per_image(counts, in_features, units, batch, label, skipped):
    """Rows per image of a matrix product whose input and output hold `counts` elements.

    FULLY_CONNECTED flattens its input to `[rows, in_features]` whatever its rank: a Dense on
    an N-D tensor (`(16, 16, 32) -> Dense(128)`) is stored with a 2-D input `[256, 32]`, the
    batch folded into the rows (or, with `keep_num_dims`, N-D: `[1, 16, 16, 32]`); so are the
    2-D operands of `dkm_tf.export`'s lowered convs and dense layers (BATCH_MATMUL). The rows
    are `elements / in_features` of the input (`elements / units` of the output) for every
    layout, the larger of the two (`stored_count`: stored shapes may understate open dimensions),
    divided by the images per invoke `batch` (a dynamic-batch file is stored at batch 1).
    """
    x_count, y_count = counts
    rows = max(x_count // max(in_features, 1), y_count // max(units, 1), 1)
    if rows % batch:
        skipped.append((label, f"{rows} rows, not a multiple of the file's batch of {batch} "
                        "images: all charged to one image"))
        return rows
    return rows // batch
