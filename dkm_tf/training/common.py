"""Defaults shared by the functions that compile and fit a copy of the user's model."""

from __future__ import annotations

from dkm_tf.core.labels import is_binary_loss, is_sparse_loss  # is_sparse_loss: pipeline_args
from dkm_tf.core.loss_kind import for_outputs as for_outputs  # finetune: renamed outputs
from dkm_tf.core.loss_kind import output_activation  # also read here by distill, metrics
from dkm_tf.core.loss_kind import source_loss as source_loss  # pipeline_args: a copy's loss


def compiled_loss(model):
    """The loss ``model`` was compiled with, or None (not compiled, or compiled without one;
    a model loaded with ``compile=False`` has none)."""
    return getattr(model, "loss", None) if getattr(model, "compiled", False) else None


def compiled_loss_weights(model):
    """The ``loss_weights`` ``model`` was compiled with (a number, list or dict, as given to
    ``compile``), or None. The training functions compile their copy with the model's own loss
    and these weights: without them a two-output model compiled with
    ``loss_weights={"a": 1.0, "b": 0.0}`` trained on the sum of both losses (a fine-tuning
    loss of 2.72 where Keras' own gives 1.31)."""
    if compiled_loss(model) is None:
        return None
    config = getattr(getattr(model, "_compile_config", None), "config", None) or {}
    return config.get("loss_weights")


def compiled_metrics(model, key="metrics"):
    """The metrics ``model`` was compiled with, as new objects (a metric holds state), or None
    (not compiled, or no metrics). Re-created from its compile config; when Keras cannot
    (an unregistered custom metric), the objects given to ``compile`` are reused.
    ``key="weighted_metrics"``: its ``weighted_metrics`` (the training functions dropped them:
    a fit on weighted samples reported no weighted metric)."""
    import keras  # noqa: PLC0415

    if not getattr(model, "compiled", False):
        return None
    metrics = (model.get_compile_config() or {}).get(key)
    if not metrics:
        return None
    try:
        metrics = keras.saving.deserialize_keras_object(metrics)
    except (TypeError, ValueError):
        config = getattr(getattr(model, "_compile_config", None), "config", None) or {}
        metrics = config.get(key) or None
    return metrics


def fresh_metrics(metrics):
    """``metrics`` (a list or dict of names and metric objects) with new metric objects.

    A metric holds state: compiled again into another model, the objects of a finished ``fit``
    would start that model's first ``evaluate`` from the training totals (Keras resets the
    compiled metrics only once they are built): a probe's first ``evaluate`` after
    ``finetune`` read 0.740 for a true 0.854. Re-created from their config, else reset.
    """
    import keras  # noqa: PLC0415

    def fresh(m):
        if not isinstance(m, keras.metrics.Metric):
            return m
        try:
            return m.__class__.from_config(m.get_config())
        except (TypeError, ValueError, NotImplementedError):
            m.reset_state()
            return m

    return None if metrics is None else keras.tree.map_structure(fresh, metrics)


def default_loss(model, shape=None, x=None):
    """The cross-entropy that fits the model's output (of ``shape``: default the model's
    ``output_shape``, which a subclassed model lacks). One output unit (labels 0/1): binary
    cross-entropy, from logits unless the model ends in a sigmoid. Otherwise sparse
    categorical cross-entropy, from logits unless the model ends in a softmax
    (:func:`output_activation`); where that cannot tell and inputs ``x`` are given, outputs
    on ``x[:32]`` in [0, 1] summing to 1 on each row are read as probabilities, and one unit
    as a sigmoid where its last layer keeps it in [0, 1] for any scale of its input
    (:func:`~dkm_tf.training.probabilities.read_activation`)."""
    import keras  # noqa: PLC0415

    from dkm_tf.training.probabilities import read_activation  # noqa: PLC0415

    activation = output_activation(model)
    shape = getattr(model, "output_shape", None) if shape is None else shape
    unit = isinstance(shape, tuple) and len(shape) == 2 and shape[1] == 1
    if activation == "" and x is not None:
        activation = read_activation(model, x, unit)
    if unit:
        return keras.losses.BinaryCrossentropy(from_logits=activation != "sigmoid")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=activation != "softmax")


def check_learning_rate(learning_rate):
    """Return ``learning_rate`` if it is a finite number > 0 (numpy scalars too; as a float)
    or a Keras ``LearningRateSchedule``; ``ValueError`` otherwise (bools, strings, NaN, inf:
    an infinite rate trained NaN weights).

    A schedule (e.g. ``keras.optimizers.schedules.CosineDecay``) is passed to Adam as it is,
    so long fine-tuning runs can decay the rate.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.core.validate import check_finite_positive  # noqa: PLC0415

    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    return check_finite_positive("learning_rate", learning_rate, "a finite number > 0 or a "
                                 "keras.optimizers.schedules.LearningRateSchedule")


def check_fit_args(model, *, batch_size=None, callbacks=None, metrics=None, verbose=None):
    """Check the arguments a training function passes on to Keras' ``compile``/``fit``.

    ``batch_size`` an integer in [1, 2**31 - 1]; ``callbacks`` None or a list of Keras
    callbacks; ``metrics`` None or a list (a bare string would be read letter by letter);
    ``verbose`` 0, 1, 2 (numpy integers too; True / False read as 1 / 0, as Keras reads
    them) or "auto". Raises ``TypeError``/``ValueError`` in Keras' message pattern.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.core.validate import (  # noqa: PLC0415
        check_int,
        invalid,
        invalid_type,
        is_bool,
        is_int,
    )

    if not isinstance(model, keras.Model):
        raise invalid_type("model", "a keras.Model", model)
    if batch_size is not None and check_int("batch_size", batch_size, minimum=1) > 2**31 - 1:
        raise invalid("batch_size", "an integer >= 1 and <= 2147483647 (2**31 - 1)",
                      batch_size)  # 2**64 reached Keras as an OverflowError
    if callbacks is not None and (not isinstance(callbacks, (list, tuple)) or not all(
            isinstance(c, keras.callbacks.Callback) for c in callbacks)):
        raise invalid_type("callbacks", "None or a list of keras.callbacks.Callback", callbacks)
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        raise invalid_type("metrics", "None or a list of metrics (e.g. ['accuracy'])", metrics)
    if verbose is not None and not (isinstance(verbose, str) and verbose == "auto") and (
            not (is_int(verbose) or is_bool(verbose)) or verbose not in (0, 1, 2)):
        raise invalid("verbose", "0, 1, 2 or 'auto'", verbose)


DATA_FORMS = ("an (x, y) pair of arrays, a batched tf.data.Dataset or a "
              "keras.utils.PyDataset")


def check_data(name, data, model, *, required=True, labels=True):
    """Check training or test data before any work; return it (an ``(x, y)`` list as a tuple).

    ``data`` is an ``(x, y)`` pair (tuple or list of two; ``x`` and ``y`` arrays or dicts /
    lists of arrays, as Keras' ``fit`` takes them) or a finite, batched dataset
    (``tf.data.Dataset``, ``keras.utils.PyDataset``). Refused before any work: a generator
    or iterator (read once: every epoch after the first would see no data), an infinite
    dataset (``fit`` would never return: take a finite part with ``.take(n)``), one of unknown
    length built on ``.repeat()`` without a count
    (:func:`~dkm_tf.training.data_checks.repeats_forever`), an empty one or 0 samples, arrays
    of ``x`` and ``y`` with different numbers of samples, and, with
    ``labels``, data without labels. A single-input model's input shape must match ``x``'s
    (and a dataset's elements must be batches of it). Python lists of numbers in ``x`` or
    ``y`` become arrays (Keras would read a list as one input or label set per element).
    """
    import numpy as np  # noqa: PLC0415

    from dkm_tf.core.validate import invalid, invalid_type  # noqa: PLC0415

    if data is None:
        if required:
            raise invalid(name, DATA_FORMS, data)
        return None
    if isinstance(data, (str, bytes, dict)) or hasattr(data, "shape"):
        raise invalid_type(name, DATA_FORMS, data)
    if not isinstance(data, (tuple, list)):
        return _check_dataset(name, data, model, labels)  # Keras reads it
    if len(data) != 2:
        hint = ("; to weigh samples, pass a tf.data.Dataset of (x, y, sample_weight) batches"
                if len(data) == 3 and name in ("train_data", "val_data") else "")
        raise ValueError(f"Invalid value for argument `{name}`. Expected {DATA_FORMS}. "
                         f"Received: a sequence of length {len(data)}{hint}")
    from dkm_tf.training.data_checks import as_arrays  # noqa: PLC0415

    x, y = data = (as_arrays(data[0]), as_arrays(data[1]))  # Keras reads a list per element
    if x is None:
        raise invalid(name, "an (x, y) pair with inputs x", "(None, ...)")
    if labels and y is None:
        raise invalid(name, "an (x, y) pair with labels y (the loss needs them)", "(x, None)")
    counts = _sample_counts("x", x) + ([] if y is None else _sample_counts("y", y))
    if len({n for _, n in counts}) > 1:
        raise ValueError(f"Invalid value for argument `{name}`. Expected x and y with the same "
                         "number of samples (the first dimension of every array). Received: "
                         + (f"{counts[0][1]} and {counts[1][1]}" if len(counts) == 2 else
                            ", ".join(f"{what}: {n}" for what, n in counts)))
    if counts and counts[0][1] == 0:
        raise ValueError(f"Invalid value for argument `{name}`. Expected at least 1 sample. "
                         f"Received: {counts[0][0]} with 0 samples")
    _check_input_count(name, x, model)
    want = _input_shape(model)
    if hasattr(x, "shape") and want is not None:
        got = tuple(np.shape(x))[1:]
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(f"Invalid value for argument `{name}`. Expected x of shape "
                             f"(samples, {', '.join(str(w) for w in want)}) (the model's "
                             f"input). Received: x of shape {tuple(np.shape(x))}")
    return tuple(data)


def _check_input_count(name, x, model):
    """A built model of several inputs given one array ``x`` (or a list of another number of
    arrays): Keras refused it mid-run, after the float model's evaluation, in its own words.
    A list counts its leaves (``None`` for an optional input is one), so the nested form of a
    model built as ``keras.Model([[a, b], c], ...)`` is accepted."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    inputs = getattr(model, "inputs", None) if getattr(model, "built", False) else None
    if not inputs or len(inputs) < 2:
        return
    n = len(keras.tree.flatten(x)) if isinstance(x, (list, tuple)) else None
    got = (f"one array of shape {tuple(np.shape(x))}" if hasattr(x, "shape") else
           f"a {type(x).__name__} of {n} array{'s' * (n != 1)}"
           if n is not None and n != len(inputs) else None)
    if got:
        struct = getattr(model, "_inputs_struct", None)
        flat = isinstance(struct, dict) or (isinstance(struct, (list, tuple)) and not any(
            isinstance(s, (list, tuple, dict)) for s in struct))
        names = ", ".join(repr(getattr(t, "name", "?")) for t in inputs)
        form = ("a list (or a dict keyed by input name)" if flat or struct is None else
                "a nested list, as the model was built,")
        raise ValueError(f"Invalid value for argument `{name}`. Expected x as {form} of "
                         f"{len(inputs)} arrays, one per model input ({names}). "
                         f"Received: {got}")


def _input_shape(model):
    """A built single-input model's input shape without the batch axis, else None."""
    inputs = getattr(model, "inputs", None) if getattr(model, "built", False) else None
    return tuple(inputs[0].shape)[1:] if inputs and len(inputs) == 1 else None


def _sample_counts(what, part):
    """``(name, samples)`` of every array in ``part`` (an array, or a dict / list of them,
    as ``keras.tree`` walks it; a plain list of numbers counts as one array)."""
    import keras  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    if isinstance(part, (list, tuple)) and not any(
            hasattr(v, "shape") for v in keras.tree.flatten(part)):
        try:
            part = np.asarray(part)
        except ValueError:  # ragged
            return []
    out = []
    for path, leaf in keras.tree.flatten_with_path(part):
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) and shape[0] is not None:
            out.append((what + "".join(f"[{p!r}]" for p in path), int(shape[0])))
    return out


def _check_dataset(name, data, model, labels):
    """The checks of :func:`check_data` for a dataset; returns it."""
    import collections.abc  # noqa: PLC0415
    import inspect  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from dkm_tf.core.validate import invalid_type  # noqa: PLC0415

    tf, is_tf = sys.modules.get("tensorflow"), is_tf_dataset(data)
    if not is_tf and (inspect.isgenerator(data) or isinstance(data, collections.abc.Iterator)):
        raise invalid_type(name, f"{DATA_FORMS} (a generator or iterator is read once: the "
                           "epochs after the first would see no data; wrap it in "
                           "tf.data.Dataset.from_generator or a PyDataset)", data)
    kind = "tf.data.Dataset" if is_tf else type(data).__name__
    if is_tf:
        n = int(data.cardinality())
        n = None if n == int(tf.data.INFINITE_CARDINALITY) else (
            "unknown" if n == int(tf.data.UNKNOWN_CARDINALITY) else n)
    else:
        try:
            n = data.num_batches if hasattr(data, "num_batches") else "unknown"
        except NotImplementedError:  # Keras says what to implement
            n = "unknown"
    if n is None:
        raise ValueError(f"Invalid value for argument `{name}`. Expected a finite dataset "
                         "(training takes every batch of it per epoch and has no "
                         "steps_per_epoch: an infinite one never ends). Received: an infinite "
                         + ("tf.data.Dataset (e.g. from .repeat()); take a finite part with "
                            ".take(n)" if is_tf else f"{kind} (num_batches is None); give it "
                            "a finite num_batches (the batches of one epoch)"))
    from dkm_tf.training.data_checks import repeats_forever  # noqa: PLC0415

    if repeats_forever(data):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a finite dataset "
                         "(training takes every batch of it per epoch: an endless one never "
                         "ends). Received: a tf.data.Dataset of unknown length built on an "
                         "endless one (.repeat() without a count, counter(), random(); e.g. "
                         ".repeat().filter(...)); repeat it a number of times, or take a "
                         "finite part with .take(n)")
    if n == 0:
        raise ValueError(f"Invalid value for argument `{name}`. Expected a dataset with at "
                         f"least 1 batch. Received: an empty {kind}")
    if is_tf:
        _check_element_spec(name, data.element_spec, model, labels)
    return data


def _check_element_spec(name, spec, model, labels):
    """A ``tf.data.Dataset``'s elements: ``(x, y)`` batches (with ``labels``), whose ``x``
    has the rank of a single-input model's input (one less: the dataset is not batched)."""
    has_y = isinstance(spec, tuple) and len(spec) in (2, 3)
    if labels and not has_y:
        raise ValueError(f"Invalid value for argument `{name}`. Expected a dataset of (x, y) "
                         "batches (the loss needs labels y). Received: a dataset whose "
                         f"elements hold x only ({spec})")
    x_spec, want = spec[0] if has_y else spec, _input_shape(model)
    rank = getattr(getattr(x_spec, "shape", None), "rank", None)
    if want is not None and rank is not None and rank == len(want):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a batched dataset: "
                         f"elements x of shape (batch, {', '.join(str(w) for w in want)}) "
                         f"(the model's input). Received: elements x of shape "
                         f"{tuple(x_spec.shape)}; call .batch(n) on the dataset")


def is_tf_dataset(data):
    """Whether ``data`` is a ``tf.data.Dataset`` (Keras' ``fit`` cannot shuffle it, and warns
    when asked to: pass ``shuffle=False``)."""
    import sys  # noqa: PLC0415

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def check_class_ids(name, data, loss, model=None):
    """With a sparse categorical cross-entropy ``loss``, the labels of ``data`` (an ``(x, y)``
    pair or a ``tf.data.Dataset``) must be class ids, shape (samples,) or (samples, 1): one-hot
    (samples, C) labels would fail inside ``fit``, after the clustering or copying work. For
    a ``model`` whose output holds class scores per position, ``(samples, T, C)`` (a sequence
    tagger), one class id per position: (samples, T) or (samples, T, 1)."""
    import sys  # noqa: PLC0415

    from dkm_tf.training.data_checks import (  # noqa: PLC0415
        check_per_position_shape,
        per_position_output,
    )

    if data is None or not is_sparse_loss(loss):
        return
    tf, shape = sys.modules.get("tensorflow"), None
    if isinstance(data, tuple):
        shape = tuple(data[1].shape) if hasattr(data[1], "shape") else None  # dicts: Keras
    elif tf is not None and isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        if isinstance(spec, tuple) and len(spec) >= 2 and hasattr(spec[1], "shape"):
            shape = spec[1].shape
            shape = None if shape.rank is None else tuple(shape)
    out = per_position_output(model)
    if shape is not None and out is not None:
        check_per_position_shape(name, shape, out)
    elif shape is not None and (len(shape) > 2 or len(shape) == 2 and
                                shape[1] not in (None, 1)):
        raise ValueError(f"Invalid value for argument `{name}`. Expected labels y of shape "
                         "(samples,) or (samples, 1): class ids, as the sparse categorical "
                         "cross-entropy loss reads them (for one-hot labels pass "
                         "y.argmax(-1), or compile the model with "
                         "keras.losses.CategoricalCrossentropy). Received: y of shape "
                         f"{tuple(shape)}")


def check_labels_for(name, data, model, loss):
    """:func:`check_class_ids`, then the label checks of :func:`dkm_tf.compress` on an
    ``(x, y)`` pair or a dataset (:func:`~dkm_tf.training.data_checks.check_labels`; a
    dataset's labels as far as :func:`~dkm_tf.training.data_checks.dataset_labels` reads
    them): numbers only, with a sparse cross-entropy whole class ids in [0, C) (0.5 would be
    truncated by the loss; whole-number floats become integers in a pair), with a binary
    cross-entropy integer labels 0 / 1. Returns ``data``, a pair's labels converted."""
    from dkm_tf.training.data_checks import check_labels  # noqa: PLC0415

    check_class_ids(name, data, loss, model)
    sparse = is_sparse_loss(loss)
    return check_labels(name, data, model, class_ids=sparse,
                        ranges=sparse or is_binary_loss(loss))
