"""Whether a ``tf.data.Dataset`` of unknown length never ends (:func:`repeats_forever`).

In ``core`` (no Keras or TensorFlow import: the dataset's own ``tensorflow`` module is read
from ``sys.modules``) so that both the training functions' data checks and the post-training
path's dataset reader (:mod:`dkm_tf.graph.sensitivity_data`) refuse an endless dataset before
reading it, instead of hanging.
"""

from __future__ import annotations

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
    after ``.filter``) that never ends; :func:`dkm_tf.training.common.check_data` and
    :func:`dkm_tf.graph.sensitivity_data.dataset_arrays` refuse both these and infinite
    cardinalities (a generator that never ends cannot be seen).

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
