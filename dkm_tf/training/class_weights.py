"""``class_weight`` of the training functions (:func:`dkm_tf.finetune`,
:func:`dkm_tf.dkm_retrain`): checked before any work, applied as per-sample weights read
from the true labels.

Keras' own ``fit(class_weight=...)`` takes the arg-max of every label column as the class, so
with :func:`dkm_tf.distillation_targets` (``[one-hot | teacher logits]``) a sample whose
teacher logit passes 1 got that logit's column as its class; with a ``tf.data.Dataset`` a
dict without the highest classes failed inside ``fit`` (a gather out of range), and an empty
one too. Here the class is read from the labels' part of the targets, a class missing from
the dict weighs 1 (as Keras' arrays do), and the weights of arrays and datasets agree.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core.labels import is_sparse_loss
from dkm_tf.core.validate import check_number, invalid, invalid_type, is_int

__all__ = ["check_class_weight", "weigh_classes"]

_EXPECTED = "None or a dict {class id: weight} of integer class ids and finite weights >= 0"


def check_class_weight(class_weight, model, loss, train_data):
    """The per-class weight table (float32, one entry per class; a class missing from
    ``class_weight`` weighs 1) of ``class_weight`` for ``model`` trained with ``loss`` on
    ``train_data``, or None. ``TypeError`` / ``ValueError`` naming ``class_weight`` for
    anything Keras would fail on inside ``fit`` or read wrong: not a dict, empty, keys that
    are not integer class ids in [0, C) (C: the model's output width, 2 for one unit; a
    :class:`~dkm_tf.DistillationLoss`'s ``num_classes``), weights that are not finite
    numbers >= 0, a model with several outputs, and data that already weighs its samples."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict):
        raise invalid_type("class_weight", _EXPECTED, class_weight)
    if not class_weight:
        raise invalid("class_weight", _EXPECTED + " (at least one class)", class_weight)
    outputs = len(getattr(model, "outputs", None) or ()) or 1
    if outputs > 1:
        raise ValueError("Invalid value for argument `class_weight`. Expected None for a model "
                         f"with several outputs (it weighs the classes of one output). Received: "
                         f"class_weight={class_weight!r} for a model with {outputs} outputs; "
                         "weigh the samples in a tf.data.Dataset of (x, y, sample_weight) "
                         "batches instead")
    n = _num_classes(model, loss)
    for key, weight in class_weight.items():
        if not is_int(key) or key < 0 or (n is not None and key >= n):
            raise invalid("class_weight", _EXPECTED + (
                f"; the model has {n} classes: ids in [0, {n})" if n else "")
                + f" (key {key!r})", class_weight)
        check_number("class_weight", weight, _EXPECTED + f" (class {key}: {weight!r})", low=0)
    kind, spec = _first_batch(train_data)
    _check_pydataset(kind, spec, loss)
    _check_label_width(spec, loss, n)
    size = max(n or 0, max(int(k) for k in class_weight) + 1)
    table = np.ones(size, np.float32)
    for key, weight in class_weight.items():
        table[int(key)] = float(weight)
    return table


def _num_classes(model, loss):
    """C of ``model`` with ``loss``, or None when the output width is unknown."""
    from dkm_tf.training.distill import DistillationLoss  # noqa: PLC0415

    if isinstance(loss, DistillationLoss):
        return loss.num_classes
    shape = getattr(model, "output_shape", None)
    width = shape[-1] if isinstance(shape, tuple) and shape else None
    return None if not isinstance(width, int) else max(width, 2)


def _first_batch(data):
    """``(kind, spec)`` of ``train_data``: ``"dataset"`` and a ``tf.data.Dataset``'s
    ``element_spec``, ``"pydataset"`` and a ``PyDataset``'s first batch ``data[0]`` (read
    once, for both checks below), else ``"other"`` and ``data`` itself."""
    import sys  # noqa: PLC0415

    tf, keras = sys.modules.get("tensorflow"), sys.modules.get("keras")
    if tf is not None and isinstance(data, tf.data.Dataset):
        return "dataset", data.element_spec
    if keras is not None and isinstance(data, keras.utils.PyDataset):
        return "pydataset", data[0]
    return "other", data


def _check_pydataset(kind, spec, loss):
    """Refuse a dataset of ``(x, y, sample_weight)`` batches (Keras refuses it with
    ``class_weight`` inside ``fit``, after the k-means), and a ``PyDataset`` whose classes
    Keras' ``class_weight`` (used for it) reads wrong: distillation targets, labels per
    position (its first batch, ``data[0]``, is read). ``kind``, ``spec``: :func:`_first_batch`."""
    if kind != "other" and isinstance(spec, tuple) and len(spec) == 3:
        raise ValueError("Invalid value for argument `class_weight`. Expected None with "
                         "train_data of (x, y, sample_weight) batches (the samples are "
                         "weighed already). Received: class_weight with sample weights in "
                         "train_data; multiply the class weights into the sample weights")
    if kind == "other" and not isinstance(spec, tuple):
        return
    first = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
    if first is not None and not hasattr(first, "shape"):  # Keras: "single output" in fit
        raise ValueError("Invalid value for argument `class_weight`. Expected None with "
                         "labels that are not one array (it weighs the classes of one array "
                         f"of labels). Received: class_weight with labels y of type "
                         f"{type(first).__name__}; pass y as one array")
    if kind != "pydataset":
        return
    from dkm_tf.training.distill import DistillationLoss  # noqa: PLC0415

    if isinstance(loss, DistillationLoss) or (hasattr(first, "shape") and np.ndim(
            _class_ids(np.asarray(first), loss, np)) != 1):  # Keras: one class per sample
        raise ValueError("Invalid value for argument `class_weight`. Expected None with a "
                         "keras.utils.PyDataset of distillation targets or labels per "
                         "position (Keras would read the class as the arg-max of the last "
                         "label axis). Received: class_weight with such a PyDataset; pass "
                         "(x, y) arrays or a tf.data.Dataset")


def _check_label_width(spec, loss, n):
    """Refuse labels of several columns that are not one-hot rows of the ``n`` classes under
    a loss not known to be sparse (a custom loss over per-position class ids): their arg-max
    would be a position, not a class (Keras' own reading, silently wrong weights). ``spec``:
    :func:`_first_batch`'s."""
    from dkm_tf.training.distill import DistillationLoss  # noqa: PLC0415

    y = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
    shape = tuple(getattr(y, "shape", ()) or ())
    if (isinstance(loss, DistillationLoss) or is_sparse_loss(loss) or len(shape) < 2
            or shape[-1] in (1, n, None) or n is None):  # None: a width the data leaves open
        return
    raise ValueError("Invalid value for argument `class_weight`. Expected labels of one class "
                     f"id per sample, or one-hot rows of the model's {n} classes, under a loss "
                     "other than a sparse cross-entropy. Received: class_weight with labels of "
                     f"shape {shape} and loss {getattr(loss, '__name__', loss)!r}: the class of "
                     "each label cannot be read; compile with "
                     "keras.losses.SparseCategoricalCrossentropy for per-position class ids, "
                     "or pass a tf.data.Dataset of (x, y, sample_weight) batches")


def _class_ids(y, loss, xp):
    """The class id of every label of ``y`` (a batch), as ``loss`` reads it (``xp``: numpy
    or TensorFlow): the labels' half of distillation targets, class ids (a trailing axis of 1
    dropped) for a sparse loss, else the arg-max of one-hot rows or the rounded 0 / 1 label."""
    from dkm_tf.training.distill import DistillationLoss  # noqa: PLC0415

    tf = xp if xp is not np else None
    argmax = (lambda v: np.argmax(v, -1)) if tf is None else (
        lambda v: tf.argmax(v, -1, output_type=tf.int32))
    rank = len(y.shape)
    if isinstance(loss, DistillationLoss):
        return argmax(y[..., :loss.num_classes])
    if rank >= 2 and y.shape[-1] == 1:
        y = y[..., 0]
    elif rank >= 2 and not is_sparse_loss(loss):
        return argmax(y)
    return np.rint(y).astype(np.int32) if tf is None else tf.cast(tf.round(
        tf.cast(y, tf.float32)), tf.int32)


def weigh_classes(data, table, loss):
    """``(data, fit_kwargs)`` training with the class weights of ``table`` (from
    :func:`check_class_weight`; None: ``data`` as it is, no kwargs): an ``(x, y)`` pair gets
    ``sample_weight`` (one weight per label, per position for a sequence tagger), a
    ``tf.data.Dataset`` a map to ``(x, y, sample_weight)``, a ``PyDataset`` Keras' own
    ``class_weight`` (:func:`check_class_weight` refused those it reads wrong)."""
    if table is None or data is None:
        return data, {}
    import sys  # noqa: PLC0415

    tf = sys.modules.get("tensorflow")  # imported by whoever built a dataset
    if isinstance(data, tuple):  # labels y one array (check_class_weight)
        ids = _class_ids(np.asarray(data[1]), loss, np)
        return data, {"sample_weight": _lookup(table, ids, np)}
    if tf is not None and isinstance(data, tf.data.Dataset):
        const = tf.constant(table)
        return data.map(lambda x, y: (x, y, _lookup(const, _class_ids(y, loss, tf), tf))), {}
    return data, {"class_weight": {i: float(w) for i, w in enumerate(table)}}


def _lookup(table, ids, xp):
    """``table[ids]``, 1 for ids outside the table."""
    n = len(table) if xp is np else int(table.shape[0])
    inside = (ids >= 0) & (ids < n)
    if xp is np:
        return np.where(inside, table[np.clip(ids, 0, n - 1)], 1.0).astype(np.float32)
    return xp.where(inside, xp.gather(table, xp.clip_by_value(ids, 0, n - 1)), 1.0)
