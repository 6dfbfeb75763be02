"""Checks of ``(x, y)`` data shared by the training functions and :func:`dkm_tf.compress`:
Python lists as arrays, labels as class ids (numbers, whole, inside the model's classes),
and datasets that would repeat forever. Raise ``ValueError`` / ``TypeError`` naming the
argument, what is allowed and what was received, before any work.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_arrays", "check_label_range", "check_labels", "class_ids", "repeats_forever"]


def class_ids(y, name="data"):
    """``y`` as a 1-D array of class ids: shape (samples,) or (samples, 1). One-hot
    (samples, C) labels raise ``ValueError`` naming ``name`` (flattened they would be compared
    with the wrong samples: a silently wrong accuracy); pass ``y.argmax(-1)``. Float labels
    must be whole numbers (0.0, 1.0, ...; 0.5 would match no class: a silently low accuracy),
    booleans are 0 / 1, and anything else (strings, objects) raises ``TypeError``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels y of shape "
                         "(samples,) or (samples, 1): class ids (for one-hot labels pass "
                         f"y.argmax(-1)). Received: y of shape {y.shape}")
    if y.dtype.kind in "iu":
        return y
    if y.dtype.kind == "b":
        return y.astype(np.int32)
    if y.dtype.kind != "f":
        raise TypeError(f"Invalid type for argument `{name}`. Expected labels y holding "
                        "integer class ids (or whole-number floats, or booleans). Received: "
                        f"y of dtype {y.dtype}" + (f" (e.g. {y[0].item()!r}: map class names to "
                                                   "ids first)" if y.size else ""))
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(y) & (y == np.round(y)) & (np.abs(y.astype(np.float64)) < 2**31))
    if bad.any():
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels y holding "
                         "class ids (whole numbers such as 0.0, 1.0, 2.0 in a float array). "
                         f"Received: {int(bad.sum())} of {y.size} labels that are not, e.g. "
                         f"{y[bad][0].item()!r}")
    return y.astype(np.int64)


_to_class_ids = class_ids  # check_labels' argument class_ids hides the name


def as_arrays(part):
    """``part`` of ``(x, y)`` as an array when it is a (nested) Python list of numbers, which
    Keras would read as one input (or label set) per element; arrays, dicts and lists of
    arrays (one per input or output) are returned as they are."""
    if not isinstance(part, (list, tuple)):
        return part
    import keras  # noqa: PLC0415

    if any(np.ndim(leaf) for leaf in keras.tree.flatten(part)):
        return part
    try:
        return np.asarray(part)
    except ValueError:  # ragged: left to Keras
        return part


def check_labels(name, data, model, class_ids=True, ranges=True):
    """Labels of an ``(x, y)`` pair must be numbers, and integer class labels must index the
    model's C output scores: out of range they would give a silently wrong accuracy, or a NaN
    loss on CPU. Returns ``data``, with labels given as whole-number floats or booleans as
    integer class ids where class ids are read.

    With ``class_ids``, a single-output model's labels must be class ids, shape (samples,)
    or (samples, 1), integers or whole-number floats (0.5 would be truncated by the loss and
    match no class in the accuracy): one-hot (samples, C) labels are refused (pass
    ``y.argmax(-1)``), as the accuracy compares class ids. Labels that are not one array (a
    dict or list of arrays, one per output) are left to Keras (no accuracy is reported for
    several outputs). ``ranges=False`` skips the range check (a loss that reads no class
    ids, e.g. integer regression targets).
    """
    if not isinstance(data, tuple) or not hasattr(data[1], "dtype"):
        return data
    y, shape = np.asarray(data[1]), getattr(model, "output_shape", None)
    heads = len(getattr(model, "outputs", None) or ())
    if y.dtype.kind not in "biuf":
        raise TypeError(f"Invalid type for argument `{name}`. Expected labels y of numbers "
                        "(integer class ids). Received: y of dtype " + str(y.dtype)
                        + (f" (e.g. {y.flat[0].item()!r}: map class names to ids first)" if y.size
                           else ""))
    if class_ids and heads <= 1:
        ids = _to_class_ids(y, name)  # (samples, 1) passes; one-hot (samples, C) raises
        if y.dtype.kind in "bf":
            y = ids.reshape(y.shape)
            data = (data[0], y)
    if ranges and y.dtype.kind in "iu":
        check_label_range(name, y, shape)
    return data


def check_label_range(name, labels, shape):
    """Raise when integer class ids ``labels`` fall outside the C scores of an output of
    ``shape`` ``(samples, C)`` (0 / 1 for one unit: a binary classifier): they would count as
    wrong, or give a NaN loss. False when the shape is unknown (nothing checked), else True."""
    classes = shape[1] if isinstance(shape, tuple) and len(shape) == 2 else None
    if not isinstance(classes, int):
        return False
    if not labels.size:
        return True
    if classes == 1 and (labels.min() < 0 or labels.max() > 1):
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels 0 and 1 (the "
                         "model has one output unit: a binary classifier). Received: labels "
                         f"from {labels.min()} to {labels.max()}")
    if classes > 1 and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"Invalid value for argument `{name}`. Expected class labels in "
                         f"[0, {classes - 1}] (the model has {classes} outputs). Received: "
                         f"labels from {labels.min()} to {labels.max()}")
    return True


# One-input datasets that pass every element of their input on (or batches, maps, shuffles,
# windows them) and cannot end before it: endless exactly when their input is. flat_map and
# interleave are judged by their outer input (the inner datasets live in functions).
_AS_INPUT = frozenset((
    "_AutoShardDataset", "_BatchDataset", "_DenseToRaggedDataset", "_DenseToSparseBatchDataset",
    "_FilterDataset", "_FlatMapDataset", "_GroupByReducerDataset", "_GroupByWindowDataset",
    "_IgnoreErrorsDataset", "_InterleaveDataset", "_LegacyRebatchDataset", "_MapAndBatchDataset",
    "_MapDataset", "_OptionsDataset", "_PaddedBatchDataset", "_ParallelBatchDataset",
    "_ParallelInterleaveDataset", "_ParallelMapDataset", "_PrefetchDataset", "_RebatchDataset",
    "_RestructuredDataset", "_ScanDataset", "_ShardDataset", "_ShuffleDataset", "_SkipDataset",
    "_UnbatchDataset", "_UniqueDataset", "_WindowDataset", "CacheDataset",
    "ParallelInterleaveDataset"))


def repeats_forever(data):
    """Whether ``data`` is a ``tf.data.Dataset`` of unknown length (``cardinality()`` -2, as
    after ``.filter``) that never ends; :func:`dkm_tf.training.common.check_data` refuses
    both these and infinite cardinalities (a generator that never ends cannot be seen).

    Judged from the output dataset back through its inputs (the Python dataset objects; no
    graph is serialized, so the size of ``from_tensor_slices`` arrays costs nothing):

    - a dataset whose own cardinality is known is endless when it is infinite (``counter``,
      ``random``, ``repeat()`` of a known non-empty input), else finite;
    - ``repeat()`` / ``repeat(-1)`` (and ``shuffle_and_repeat``) is endless (its input is not
      proved non-empty); ``repeat(0)`` is finite; ``repeat(n > 0)`` is as its input;
    - ``take(n >= 0)`` and ``take_while`` end it (finite); ``take(-1)`` is as its input;
    - ``zip`` is endless only when all its inputs are (it stops at its shortest);
    - ``concatenate`` is endless when either input is;
    - ``choose_from_datasets`` / ``sample_from_datasets`` only when the selector and all the
      datasets are (with a finite one among them it may stop, or the selector may never pick
      the endless one: not judged);
    - one-input steps that pass their input on (map, filter, batch, padded / ragged batch,
      prefetch, shuffle, cache, options, unbatch, skip, shard, window, scan, unique,
      group_by_window, ignore_errors, rebatch; flat_map / interleave by their outer input)
      are as their input;
    - anything else (a generator, file readers of unknown length, a step not listed, a
      private attribute missing in another TensorFlow) is not judged endless: it is never
      refused on a guess.
    """
    import sys  # noqa: PLC0415

    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(data, tf.data.Dataset) or int(
            data.cardinality()) != int(tf.data.UNKNOWN_CARDINALITY):
        return False
    try:
        return _endless(data, tf)
    except Exception:  # noqa: BLE001 (internals of another TensorFlow: not judged)
        return False


def _endless(root, tf):
    """:func:`repeats_forever`'s rules over the datasets feeding ``root``, walked with a stack
    (a long chain of ``concatenate`` would pass Python's recursion limit), each once."""
    done, rules, stack = {}, {}, [root]
    while stack:
        ds = stack[-1]
        if id(ds) in done:
            stack.pop()
            continue
        if id(ds) not in rules:
            rules[id(ds)] = _rule(ds, tf)
        combine, inputs = rules[id(ds)]
        todo = [d for d in inputs if id(d) not in done]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        done[id(ds)] = bool(combine([done[id(d)] for d in inputs]))
    return done[id(root)]


def _rule(ds, tf):
    """How ``ds`` ends: ``(combine, inputs)``, ``combine`` taking whether each input is
    endless."""
    card = int(ds.cardinality())
    if card == int(tf.data.INFINITE_CARDINALITY) or card >= 0:
        return (lambda _: card < 0), ()
    name = type(ds).__name__
    if isinstance(ds, tf.compat.v1.data.Dataset) and hasattr(ds, "_dataset"):
        return all, (ds._dataset,)  # noqa: SLF001 (a V1 adapter: as the dataset it wraps)
    inputs = tuple(ds._inputs())  # noqa: SLF001
    if name in ("_RepeatDataset", "_ShuffleAndRepeatDataset"):
        count = tf.get_static_value(ds._count)  # noqa: SLF001
        if count is None or int(count) == 0:
            return (lambda _: False), ()
        return ((lambda _: True), ()) if int(count) < 0 else (all, inputs[:1])
    if name == "_TakeDataset":
        count = tf.get_static_value(ds._count)  # noqa: SLF001
        return ((all, inputs[:1]) if count is not None and int(count) < 0
                else ((lambda _: False), ()))
    if name in ("_ZipDataset", "_DirectedInterleaveDataset") and inputs:
        return all, inputs
    if name == "_ConcatenateDataset":
        return any, inputs
    if name in _AS_INPUT and len(inputs) == 1:
        return all, inputs
    return (lambda _: False), ()  # take_while, generators, readers, unknown steps
