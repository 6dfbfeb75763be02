"""Checks of ``(x, y)`` data shared by the training functions and :func:`dkm_tf.compress`:
Python lists as arrays, labels as class ids (numbers, whole, inside the model's classes; in
a dataset too, as far as they can be read without side effects: :func:`dataset_labels`),
and datasets that would repeat forever. Raise ``ValueError`` / ``TypeError`` naming the
argument, what is allowed and what was received, before any work.
"""

from __future__ import annotations

import contextvars
import functools

import numpy as np

from dkm_tf.core.endless import repeats_forever  # noqa: F401 (its callers import it here)
from dkm_tf.core.labels import as_arrays, check_label_range, class_ids

__all__ = ["as_arrays", "check_label_range", "check_labels", "class_ids", "dataset_inputs",
           "dataset_labels", "reads_once", "repeats_forever"]

_to_class_ids = class_ids  # check_labels' argument class_ids hides the name


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

    A dataset's labels get the same checks (the messages end saying where they were read),
    as far as :func:`dataset_labels` reads them; the dataset is returned as it is (its float
    labels are not converted: the loss reads whole-number floats as class ids).
    """
    if not isinstance(data, tuple):
        labels, where = dataset_labels(name, data)
        if labels is not None:
            try:
                _checked_labels(name, labels, model, class_ids, ranges)
            except (TypeError, ValueError) as e:
                (_READS.get() or {}).pop(id(data), None)  # labels fixed in place: read again
                raise type(e)(f"{e} ({where})") from None
        return data
    if not hasattr(data[1], "dtype"):
        return data
    y = _checked_labels(name, data[1], model, class_ids, ranges)
    return data if y is data[1] else (data[0], y)


def per_position_output(model):
    """The output shape ``(samples, T..., C)`` of a single-output ``model`` whose output has
    more than two axes (class scores per token or pixel), else None."""
    shape = getattr(model, "output_shape", None)
    if len(getattr(model, "outputs", None) or ()) > 1 or not isinstance(shape, tuple) or \
            len(shape) <= 2 or not all(d is None or isinstance(d, int) for d in shape):
        return None
    return shape


def check_per_position_shape(name, label_shape, out):
    """Labels of shape ``label_shape`` for a sparse loss on an output ``out`` of shape
    ``(samples, T..., C)`` must be one class id per position: ``(samples, T...)`` or
    ``(samples, T..., 1)``, as Keras' sparse categorical cross-entropy reads them."""
    rank = len(out)
    if len(label_shape) == rank - 1 or len(label_shape) == rank and label_shape[-1] in (None, 1):
        positions = tuple(label_shape)[1:rank - 1]
        if all(a is None or b is None or a == b for a, b in zip(positions, out[1:-1])):
            return
    want = ", ".join(["samples", *("None" if d is None else str(d) for d in out[1:-1])])
    raise ValueError(f"Invalid value for argument `{name}`. Expected labels y of shape "
                     f"({want}) or ({want}, 1): one class id per position of the model's "
                     f"output {out}, as the sparse categorical cross-entropy loss reads them "
                     "(for one-hot labels pass y.argmax(-1)). Received: y of shape "
                     f"{tuple(label_shape)}")


def _checked_labels(name, y, model, class_ids, ranges):
    """:func:`check_labels` on one label array ``y``; returns it (whole-number floats and
    booleans as integer class ids where class ids are read). A model whose output holds
    class scores per position (``(samples, T, C)``: a sequence tagger) takes one label per
    position (:func:`check_per_position_shape`), its range checked against C."""
    labels, shape = np.asarray(y), getattr(model, "output_shape", None)
    heads = len(getattr(model, "outputs", None) or ())
    if labels.dtype.kind not in "biuf":
        raise TypeError(f"Invalid type for argument `{name}`. Expected labels y of numbers "
                        "(integer class ids). Received: y of dtype " + str(labels.dtype)
                        + (f" (e.g. {labels.flat[0].item()!r}: map class names to ids first)"
                           if labels.size else ""))
    out = per_position_output(model) if class_ids else None
    if out is not None:
        shape = (None, out[-1])  # the range check reads C (or 0 / 1 for one unit)
    if class_ids and heads <= 1:
        if out is not None:  # whole numbers, one per position
            check_per_position_shape(name, labels.shape, out)
            ids = _to_class_ids(labels.reshape(-1), name)
        else:  # (samples, 1) passes; one-hot (samples, C) raises
            ids = _to_class_ids(labels, name)
        if labels.dtype.kind in "bf":
            y = labels = ids.reshape(labels.shape)
    if ranges and labels.dtype.kind in "iu":
        check_label_range(name, labels, shape)
    return y


def dataset_labels(name, data):
    """``(labels, where)``: labels of ``data`` (a ``tf.data.Dataset`` or a
    ``keras.utils.PyDataset`` of ``(x, y)`` or ``(x, y, sample_weight)`` elements, ``y`` one
    array) read before training, and where they were read (for the messages); ``(None, None)``
    when nothing is read. Reads at most one batch (plus what a prefetch or parallel map
    fetches ahead of it), never through a step that may read far more than that, and never a
    dataset whose reading would change what training sees:

    - a dataset of ``from_tensor_slices`` (or ``zip`` of them) through steps that keep every
      label as it is (batch, padded / parallel batch, shuffle, prefetch, cache, options,
      repeat, unbatch, rebatch): all its labels, read from the source arrays (nothing is
      iterated);
    - else, a dataset of known, side-effect-free steps that read about one input element per
      element they give (file readers, ``from_tensors``, ``range``; map, flat_map,
      interleave, batch, take, take_while, zip, concatenate, prefetch, repeat, ...) whose
      functions hold no stateful op and no shuffle, cache, filter, skip, shard, unique or
      ignore_errors step: the labels of its first batch (``take(1)``);
    - not read: a ``from_generator`` dataset (it may wrap a one-shot Python generator, which
      reading would consume), steps with Python functions (``py_function``,
      ``numpy_function``) or random ops, and, outside the first case, a shuffle (it fills its
      whole buffer before giving a batch; one that reshuffles each epoch would also move
      training to the next epoch's order), a cache (a partial read is discarded with a
      warning), a filter, skip, shard, unique or ignore_errors (they may read many elements
      per batch), ``sample_from_datasets``, steps not listed; their labels are checked by
      the loss only, inside ``fit``. A string label dtype is refused from the element spec
      in every case;
    - a ``PyDataset``: its first batch, ``data[0]``.

    Inside one call of a function decorated with :func:`reads_once` (:func:`dkm_tf.compress`)
    a dataset object is read once, so compress and the training function it calls read the
    same batch once; every other call reads it again (labels changed in place are seen).
    """
    reads = _READS.get()
    held = reads.get(id(data)) if reads is not None else None
    if held is not None and held[0] is data:
        return held[1]
    labels, where, kept = _read_labels(name, data)
    if kept and reads is not None:
        reads[id(data)] = (data, (labels, where))  # held until the decorated call returns
    return labels, where


_READS = contextvars.ContextVar("dkm_tf_label_reads", default=None)  # id -> (data, read)


def reads_once(fn):
    """Decorate ``fn`` so that within one call each dataset's labels are read once
    (:func:`dataset_labels`); the reads are forgotten when it returns."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _READS.set({})
        try:
            return fn(*args, **kwargs)
        finally:
            _READS.reset(token)
    return wrapper


def _read_labels(name, data):
    """:func:`dataset_labels` without the kept reads: ``(labels, where, keep)``, ``keep``
    for a dataset or PyDataset."""
    import sys  # noqa: PLC0415

    tf, keras = sys.modules.get("tensorflow"), sys.modules.get("keras")
    if tf is not None and isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) in (2, 3)
                and isinstance(spec[1], tf.TensorSpec)):
            return None, None, True  # no labels (check_data says so), or per output: Keras
        if not (spec[1].dtype.is_bool or spec[1].dtype.is_integer or spec[1].dtype.is_floating):
            raise TypeError(f"Invalid type for argument `{name}`. Expected labels y of numbers "
                            "(integer class ids). Received: y of dtype "
                            f"{spec[1].dtype.name} (the dataset's element spec)")
        try:
            labels = _source_labels(data, tf)
            if labels is not None:
                return labels, f"all {labels.shape[0] if labels.ndim else 1} labels of the " \
                    "dataset, read from its from_tensor_slices arrays", True
            labels = _first_batch_labels(data, tf)
            return (None, None, True) if labels is None else (
                labels, "the labels of the dataset's first batch", True)
        except Exception:  # noqa: BLE001 (internals of another TensorFlow: not read)
            return None, None, True
    if keras is not None and isinstance(data, keras.utils.PyDataset):
        batch = data[0]
        if isinstance(batch, tuple) and len(batch) in (2, 3) and hasattr(batch[1], "shape"):
            return np.asarray(batch[1]), "the labels of the PyDataset's first batch, data[0]", \
                True
        return None, None, True
    return None, None, False


# Steps that pass every label on unchanged (all of them, some order, some batching)
_KEEP_LABELS = frozenset((
    "_BatchDataset", "_PaddedBatchDataset", "_ParallelBatchDataset", "_ShuffleDataset",
    "_PrefetchDataset", "CacheDataset", "_OptionsDataset", "_RepeatDataset", "_UnbatchDataset",
    "_RebatchDataset", "_LegacyRebatchDataset"))
# Steps and sources that reading one batch leaves as they were (their functions checked), and
# that read about one input element per output element: not a shuffle (it fills its whole
# buffer first, reshuffling or not), a cache (an in-memory one logs a partial read, a file one
# writes a partial file), filter / unique / skip / shard (they may read many elements per one
# they pass on: a filter that rarely passes read 4.3 s of a 200k-sample map)
_READ_SAFE = frozenset((
    "_BatchDataset", "_PaddedBatchDataset", "_ParallelBatchDataset", "_PrefetchDataset",
    "_OptionsDataset", "_RepeatDataset", "_UnbatchDataset", "_RebatchDataset",
    "_LegacyRebatchDataset", "_TensorSliceDataset", "_TensorDataset", "_RangeDataset",
    "TFRecordDatasetV2", "_TFRecordDataset", "TextLineDatasetV2", "FixedLengthRecordDatasetV2",
    "_MapDataset", "_ParallelMapDataset", "_FlatMapDataset", "_InterleaveDataset",
    "_ParallelInterleaveDataset", "_MapAndBatchDataset", "_TakeDataset", "_ZipDataset",
    "_ConcatenateDataset", "_TakeWhileDataset"))


# Dataset ops (in the functions of flat_map / interleave) that may read far more than one
# element per element they give, as the steps left out of _READ_SAFE
_FAR_READING = ("ShuffleDataset", "ShuffleAndRepeatDataset", "CacheDataset", "FilterDataset",
                "SkipDataset", "ShardDataset", "UniqueDataset", "ExperimentalUniqueDataset",
                "IgnoreErrorsDataset", "ExperimentalIgnoreErrorsDataset")


def dataset_inputs(data):
    """The inputs ``x`` of a ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)``
    elements, as numpy, read without changing what training sees (as :func:`dataset_labels`
    reads): of a ``from_tensor_slices`` dataset through batch, shuffle, prefetch, cache,
    options and repeat steps, the first 32 of its source arrays (nothing is iterated); else its
    first batch where :func:`dataset_labels` would read it (``take(1)``; once inside a
    :func:`reads_once` call, with the labels); else None (a ``from_generator`` dataset, whose
    one-shot generator a read consumed: fine-tuning trained 2 of its 4 batches; a shuffle,
    whose read moved training to another order; ...)."""
    import sys  # noqa: PLC0415

    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(data, tf.data.Dataset) or not (
            isinstance(data.element_spec, tuple) and len(data.element_spec) in (2, 3)):
        return None
    try:
        x = _source_element(data, tf, 0, _KEEP_INPUTS)
        if x is not None:
            return tf.nest.map_structure(lambda t: t[:32].numpy(), x)
        element = _first_element(data, tf)
        return None if element is None else tf.nest.map_structure(
            lambda t: t.numpy(), element[0])
    except Exception:  # noqa: BLE001 (internals of another TensorFlow, ragged x: not read)
        return None


# Steps that pass every input on unchanged and in the source's shape (batched or not)
_KEEP_INPUTS = frozenset((
    "_BatchDataset", "_ParallelBatchDataset", "_ShuffleDataset", "_PrefetchDataset",
    "CacheDataset", "_OptionsDataset", "_RepeatDataset"))


def _source_labels(ds, tf):
    """All labels of ``ds`` read from its ``from_tensor_slices`` arrays, or None when a step
    between may change, drop or add labels."""
    y = _source_element(ds, tf, 1, _KEEP_LABELS)
    return y.numpy() if isinstance(y, tf.Tensor) else None


def _source_element(ds, tf, index, keep):
    """Component ``index`` of ``ds``'s elements as the tensors of its ``from_tensor_slices``
    source (all of them), or None when a step between is not in ``keep``."""
    path = (index,)
    while True:
        name = type(ds).__name__
        if name == "_ZipDataset" and path and isinstance(ds._datasets, tuple):  # noqa: SLF001
            ds, path = ds._datasets[path[0]], path[1:]  # noqa: SLF001
        elif name in keep:
            (ds,) = ds._inputs()  # noqa: SLF001
        elif name == "_TensorSliceDataset":
            spec = ds.element_spec
            leaves = tf.nest.flatten(spec)
            if len(leaves) != len(ds._tensors) or not all(  # noqa: SLF001
                    isinstance(s, tf.TensorSpec) for s in leaves):
                return None  # ragged / sparse components
            element = tf.nest.pack_sequence_as(spec, list(ds._tensors))  # noqa: SLF001
            for p in path:
                if not isinstance(element, (tuple, list)):
                    return None  # one array: no (x, y) in it
                element = element[p]
            return element
        else:
            return None


def _first_batch_labels(ds, tf):
    """The labels of ``ds``'s first element (``take(1)``), or None when reading it could
    consume or move anything (:func:`dataset_labels`), or when it has none."""
    element = _first_element(ds, tf)
    if element is None:
        return None
    y = element[1]
    return np.reshape(y.numpy(), (-1,)) if isinstance(y, tf.Tensor) and y.shape.rank == 0 \
        else (y.numpy() if isinstance(y, tf.Tensor) else None)  # rank 0: not batched


def _first_element(ds, tf):
    """``ds``'s first element, read once inside a :func:`reads_once` call (the labels' and the
    inputs' read), or None (:func:`_safe_first`)."""
    reads = _READS.get()
    held = reads.get((id(ds), "first")) if reads is not None else None
    if held is not None and held[0] is ds:
        return held[1]
    element = _safe_first(ds, tf)
    if reads is not None:
        reads[(id(ds), "first")] = (ds, element)
    return element


def _safe_first(ds, tf):
    """``ds``'s first element (``take(1)``), or None when reading it could consume or move
    anything (:func:`dataset_labels`), or when it has none."""
    from tensorflow.python.framework import op_def_registry  # noqa: PLC0415

    if int(ds.cardinality()) == int(tf.data.INFINITE_CARDINALITY) or repeats_forever(ds):
        return None  # a filter over it might never let an element through
    seen, stack = set(), [ds]
    while stack:
        d = stack.pop()
        if id(d) in seen:
            continue
        seen.add(id(d))
        name = type(d).__name__
        if name not in _READ_SAFE:
            return None  # unknown steps, or ones that may read far more than one batch
        for fn in d._functions():  # noqa: SLF001
            graph = fn.function.graph.as_graph_def()
            ops = ({n.op for n in graph.node} | {
                n.op for f in graph.library.function for n in f.node_def}) - {
                f.signature.name for f in graph.library.function}  # calls of nested functions
            if any(op_def_registry.get(op) is None or op_def_registry.get(op).is_stateful
                   or op.startswith(_FAR_READING) for op in ops):
                return None  # generators, py_function, random ops, variables; a filter, ...
                # inside a flat_map / interleave function
        stack.extend(d._inputs())  # noqa: SLF001
    for element in ds.take(1):
        return element
    return None
