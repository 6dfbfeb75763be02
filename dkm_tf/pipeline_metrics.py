"""Accuracy of classifiers for :func:`dkm_tf.compress` and ``dkm-tf compress``: top-1 of a
Keras model or a ``.tflite`` file, binary classifiers (one output unit), and why a model has
no accuracy (several outputs, not class scores). Re-exported by :mod:`dkm_tf.pipeline`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from dkm_tf.core.validate import check_int, check_number, invalid_type
from dkm_tf.tflite_feed import _dequantized, _quantized, keyed_scores
from dkm_tf.training.data_checks import as_arrays, check_label_range, class_ids

__all__ = ["AGREEMENT_USE", "FISHER_USE", "INT8_USE", "LOGITS_NOTE", "accuracy_note",
           "agreement_data", "as_arrays", "binary_threshold", "class_ids", "evaluate_accuracy",
           "float_predictions", "logits_note", "not_class_scores", "predicted_classes",
           "tflite_accuracy"]

LOGITS_NOTE = "the model was read as a classifier of logits"  # starts logits_note's line
# what read it so (logits_note's ``uses``)
AGREEMENT_USE = "the agreement with the float model compares its arg-max (one unit: its sign)"
FISHER_USE = "weighting='fisher' weighs by a cross-entropy over a softmax of its outputs"
INT8_USE = "its int8 .tflite files are checked to keep its arg-max"


def not_class_scores(model, loss=None):
    """Why ``model``'s output is not class scores, read from its compiled loss: a regression
    loss (``"mse"``, ``"mae"``, Huber, ...) or a binary cross-entropy over several output
    units (multi-label: several classes per sample, no single top-1). None otherwise (a
    cross-entropy, a custom loss, several outputs, or a model that is not compiled).
    Their arg-max or sign read as a class gave a regressor an "agreement with the float
    model" (0.94 for one linear unit: the sign of its output). ``loss``: the compiled loss's
    name for a model loaded with ``compile=False`` (``dkm-tf compress --model``)."""
    from dkm_tf.core.loss_kind import non_class_loss  # noqa: PLC0415

    found = non_class_loss(model, loss)
    if found is None:
        return None
    from dkm_tf.core.loss_kind import loss_said  # noqa: PLC0415

    said = loss_said(model, found[0], loss)  # an uncompiled copy: its source's loss
    said = f"is {said}" if said.startswith("compiled") else f"is read by {said}"
    return (f"the model {said}: {found[1]}, its output is not one class "
            "per sample (no top-1 accuracy or agreement)")


def logits_note(model, uses, loss=None, data=()):
    """A line for :attr:`CompressionResult.notes` when ``model`` was read as a classifier of
    logits by assumption (:func:`dkm_tf.core.loss_kind.assumed_logits`: no softmax or sigmoid
    output, no compiled loss that says what it is) for ``uses`` (what read it so: the
    agreement's arg-max, Fisher's softmax, the int8 file's arg-max check); None when nothing
    read it so or its output or loss says it is a classifier. An uncompiled regressor got an
    "agreement with the float model" of 1.0 -> 0.75 (the arg-max of 3 regression outputs)
    with no word. ``loss``: as in :func:`not_class_scores`. ``data``: ``(x, y)`` pairs (or
    None, datasets: skipped); where the model's outputs on the first's ``x[:32]`` are rows of
    probabilities or log-probabilities (a ``log_softmax`` output), or one unit read as a
    sigmoid (:func:`binary_threshold`), they are class scores and nothing is noted, as
    ``to_tflite``'s int8 check reads them."""
    from dkm_tf.core.loss_kind import assumed_logits  # noqa: PLC0415

    uses = [u for u in uses if u]
    why = assumed_logits(model, loss) if uses else None
    if why is None or _probability_rows(model, data):
        return None
    shape = getattr(model, "output_shape", None)  # "(one unit: its sign)" for one unit only
    if not (isinstance(shape, tuple) and shape and shape[-1] == 1):
        uses = [u.replace(" (one unit: its sign)", "") for u in uses]
    return (f"{LOGITS_NOTE} ({'; '.join(uses)}) because {why} and its output has no softmax "
            "or sigmoid: if it is a regressor or an embedding model, compile it with its loss "
            "(e.g. \"mse\") before compressing, and read these figures as meaningless")


def _probability_rows(model, data):
    """Whether ``model``'s outputs on the first ``(x, y)`` of ``data``'s ``x[:32]`` are rows
    of (log-)probabilities (:func:`dkm_tf.core.loss_kind.probability_rows`). Run in a
    :class:`keras.StatelessScope`: ``predict`` moved a stateful RNN's state (the float model's
    "agreement with itself" then read 0.875 for 1.0)."""
    from dkm_tf.core.loss_kind import probability_rows  # noqa: PLC0415

    x = next((d[0] for d in data if isinstance(d, tuple) and d and d[0] is not None), None)
    try:
        import keras  # noqa: PLC0415

        batch = keras.tree.map_structure(lambda a: np.asarray(a)[:32], x)
        if x is None:
            return False
        with keras.StatelessScope(), warnings.catch_warnings():  # no state update (a
            warnings.simplefilter("ignore")  # stateful RNN's); Keras' input-structure note
            out = model(batch, training=False)  # (predict gave none for inputs=[x])
        out = keras.tree.map_structure(keras.ops.convert_to_numpy, out)
        return _threshold(model, out, batch) == 0.5 or probability_rows(out)  # or a sigmoid
    except Exception:  # noqa: BLE001 (inputs the model does not take: cannot tell)
        return False


def binary_threshold(model, x=None):
    """Where a one-unit output (a binary classifier) turns to class 1: 0.5 after a sigmoid,
    0 for a logit (no activation); None for any other final activation (no class). A custom
    or ``Lambda`` last layer is read as the training functions read it
    (:func:`~dkm_tf.training.probabilities.unit_threshold`): by the binary cross-entropy the
    model is compiled with, else as a sigmoid by its outputs on the inputs ``x`` (optional;
    its first 32 samples are read)."""
    from dkm_tf.training.probabilities import unit_threshold  # noqa: PLC0415

    return unit_threshold(model, x)


def _threshold(model, out, x):
    """:func:`binary_threshold` of ``model`` (its outputs ``out`` on ``x``) where ``out`` is
    one column, else None (a custom last layer's outputs are not read for nothing)."""
    leaves = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(
        out, (list, tuple)) else [out]
    one = len(leaves) == 1 and np.ndim(leaves[0]) == 2 and np.shape(leaves[0])[1] == 1
    return binary_threshold(model, x) if one else None


def accuracy_note(model, loss=None, x=None):
    """Why ``model`` has no top-1 accuracy (its output is not one row of class scores per
    sample): a line for :attr:`CompressionResult.notes`. ``x``: the held-out inputs its one
    output unit was read on (:func:`binary_threshold`)."""
    names = list(getattr(model, "output_names", None) or ())
    if (why := not_class_scores(model, loss)) is not None:  # loss: see not_class_scores
        return why
    if len(names) > 1:
        return (f"the model has {len(names)} outputs ({', '.join(names)}): top-1 accuracy "
                "needs a single-output classifier")
    from dkm_tf.core.loss_kind import output_activation  # noqa: PLC0415

    if tuple(getattr(model, "output_shape", ()))[-1:] == (1,) and not output_activation(model):
        from dkm_tf.training.probabilities import contradiction  # noqa: PLC0415
        if x is not None and (why := contradiction(model, x)) is not None:
            return why
        return ("the model's one output unit is read neither as a probability nor as a logit "
                "(its last layer is a custom or Lambda layer, or a subclassed model, that "
                "dkm_tf cannot read as a sigmoid from its outputs on the first 32 held-out "
                "inputs): compile it with BinaryCrossentropy() if "
                "it outputs probabilities (class 1 above 0.5), BinaryCrossentropy(from_logits"
                "=True) if logits (above 0), and pass it to dkm_tf.compress")
    return "the model's output is not one row of class scores per sample"


def predicted_classes(scores, n, threshold=None):
    """Top-1 classes of ``scores``, one row per sample (``n`` of them): the arg-max, or for
    one column (a binary classifier) class 1 where the score is above ``threshold``. None
    when the output is not that (several outputs: a list of arrays, one per head, has no
    single arg-max), or is one column and ``threshold`` is None. A row holding NaN (a
    diverged model) predicts no class: -1, which matches no label."""
    if isinstance(scores, dict):
        scores = list(scores.values())
    if isinstance(scores, (list, tuple)) and scores and all(hasattr(s, "shape") for s in scores):
        if len(scores) != 1:
            return None
        scores = scores[0]
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != n:
        return None
    if scores.shape[1] == 1:
        if threshold is None:
            return None
        pred = (scores[:, 0] > threshold).astype(np.int32)
    else:
        pred = np.argmax(scores, axis=1).astype(np.int32)
    # argmax of a NaN row and NaN > threshold both said class 0: a share of 0s as accuracy
    if scores.dtype.kind in "fc":
        pred[np.isnan(scores).any(axis=1)] = -1
    return pred


def float_predictions(model, x, batch_size=256, loss=None):
    """The model's top-1 classes on ``x`` (labels for held-out inputs that have none: the
    accuracy of a compressed copy against them is its agreement with this model), or None
    when the output is not class scores (:func:`predicted_classes`, :func:`not_class_scores`)."""
    if not_class_scores(model, loss) is not None:  # loss: see not_class_scores
        return None
    out = model.predict(x, batch_size=_batch(batch_size), verbose=0)
    return predicted_classes(out, _n_samples(x), _threshold(model, out, x))


def agreement_data(model, x, batch_size=256, loss=None):
    """``((x, labels), note)`` for held-out inputs without labels: ``labels`` the float
    model's top-1 classes (:func:`float_predictions`; ``(None, None)`` when its output is not
    class scores). Inputs where the float model outputs NaN have no class to agree with: they
    are left out, and ``note`` says how many (None when none is).

    Raises:
        ValueError: the float model outputs NaN for every input.
    """
    labels = float_predictions(model, x, batch_size=batch_size, loss=loss)
    if labels is None or not (labels < 0).any():
        return (None if labels is None else (x, labels)), None
    keep, n = labels >= 0, len(labels)
    if not keep.any():
        raise ValueError(f"Invalid value for argument `test_data`. Expected inputs on which the "
                         f"float model gives class scores. Received: {n} inputs, on every one "
                         "of which it outputs NaN (no class to measure agreement with)")
    import keras  # noqa: PLC0415

    kept = keras.tree.map_structure(lambda a: np.asarray(a)[keep], x)
    return (kept, labels[keep]), (
        f"the float model outputs NaN for {n - int(keep.sum())} of {n} held-out inputs: "
        f"agreement is measured on the other {int(keep.sum())}")


def _batch(batch_size):
    """``batch_size`` checked: an integer in [1, 2**31 - 1] (numpy ones too); a float, a
    bool, 0 or a negative one reached Keras / the interpreter loop and failed there."""
    return check_int("batch_size", batch_size, minimum=1, maximum=2**31 - 1)


def _n_samples(x):
    """Samples in ``x``: the first dimension of its first array (``x`` may be a dict or list
    of arrays, one per input)."""
    import keras  # noqa: PLC0415

    leaves = [v for v in keras.tree.flatten(x) if hasattr(v, "shape") and len(v.shape)]
    return len(leaves[0]) if leaves else len(x)


def evaluate_accuracy(model, data, batch_size=256):
    """Top-1 accuracy of a classifier on ``(x, y)``; None when the output is not class scores
    (several outputs: a dict or list of labels, one per output, gives None too; so does a
    model compiled as a regressor or multi-label model, :func:`not_class_scores`).

    ``y`` holds class ids, shape (samples,) or (samples, 1); one-hot labels raise
    ``ValueError`` (:func:`class_ids`), as do labels outside the model's classes, before
    anything is predicted. A one-unit output is a binary classifier (:func:`binary_threshold`,
    labels 0/1). A dataset raises ``TypeError`` (its batches would be unpacked as x and y).
    """
    _batch(batch_size)
    if not isinstance(data, (tuple, list)) or len(data) != 2:  # a Dataset would be unpacked
        raise TypeError("Invalid type for argument `data`. Expected an (x, y) pair of arrays. "
                        f"Received: data of type {type(data).__name__}")
    x, y = (as_arrays(part) for part in data)
    if not_class_scores(model) is not None:  # whole-number targets of a regressor: no classes
        return None
    if y is None:
        raise ValueError("Invalid value for argument `data`. Expected (x, y) with labels y "
                         "(for the agreement with the float model, pass "
                         "(x, float_predictions(model, x))). Received: (x, None)")
    labels, checked = y, False
    if isinstance(y, dict) or isinstance(y, (list, tuple)) and any(
            hasattr(v, "shape") for v in y):  # labels per output: one array or none
        import keras  # noqa: PLC0415

        leaves = keras.tree.flatten(y)
        labels = leaves[0] if len(leaves) == 1 else None
    if labels is not None:  # checked before predict: strings, 0.5, 7 of 3 classes
        labels = class_ids(labels)
        n = _n_samples(x)
        if n == 0 or len(labels) != n:
            raise ValueError("Invalid value for argument `data`. Expected at least 1 sample "
                             f"and one label per sample. Received: x with {n} samples, "
                             f"{len(labels)} labels")
        checked = check_label_range("data", labels, getattr(model, "output_shape", None))
    out = model.predict(x, batch_size=_batch(batch_size), verbose=0)
    pred = predicted_classes(out, _n_samples(x), _threshold(model, out, x))
    if pred is None or labels is None:
        return None
    if not checked:  # a subclassed model: its output width is known now
        check_label_range("data", labels, tuple(np.shape(out)))
    if len(labels) != len(pred):
        raise ValueError(f"Invalid value for argument `data`. Expected one label per sample "
                         f"({len(pred)}). Received: {len(labels)} labels")
    return float(np.mean(pred == labels))


def tflite_accuracy(path, data, *, max_samples=10_000, batch_size=256, threshold=None,
                    notes=None):
    """Top-1 accuracy of a classifier ``.tflite`` file on ``(x, y)`` (the first
    ``max_samples``), run in LiteRT (``tf.lite`` without the ``[litert]`` extra) in batches
    of ``batch_size`` (one sample at a time when the file has a fixed batch of 1). A file
    with integer inputs (full int8 converted with ``inference_input_type`` int8 / uint8) gets
    float ``x`` quantized by its input's scale and zero point, and an integer output is
    dequantized before the arg-max / ``threshold``.

    Returns None when the file's output is not one row of class scores per sample (several
    outputs included). ``x``: one array (``[x]`` or ``{name: x}`` are read as ``x``); for a
    file of several inputs, a dict keyed by its signature keys, the Keras model's input names
    (:func:`~dkm_tf.tflite_feed.keyed_scores`; :func:`~dkm_tf.tflite_feed.keyed_inputs` makes
    it from the inputs as the model takes them); a list gives None, with a note in ``notes``
    (the order of a file's inputs need not be the Keras model's).
    A one-column output is a binary classifier with this ``threshold`` (the Keras model's
    :func:`binary_threshold`); None then gives None.

    In ``tf.lite`` of TensorFlow 2.19 / 2.20 the file is checked first
    (:func:`dkm_tf.core.interpreters.tflite_refusal` on its tensor types): one it cannot
    run (INT2 tensors) gives None, and a dynamic-range int8 file, which 2.19 crashes on at a
    batch > 1, runs one sample per invoke; either way with the reason appended to ``notes``
    (a list, when given), never a crash.
    """
    from dkm_tf.export.interpreters import (  # noqa: PLC0415
        default_interpreters,
        file_refusal,
        make_interpreter,
    )

    _batch(batch_size)
    check_int("max_samples", max_samples, minimum=1)
    if not isinstance(path, (str, os.PathLike)):  # open(3) read file descriptor 3
        raise invalid_type("path", "a .tflite file path (str or os.PathLike)", path)
    if threshold is not None:
        check_number("threshold", threshold, "None or a finite number", low=None)
    x, y = data
    if isinstance(x, dict) and len(x) == 1:
        x = next(iter(x.values()))  # a one-input model's samples keyed by its input name
    y = class_ids(y)[:max_samples]
    with open(path, "rb") as f:
        content = f.read()
    kind, notes = default_interpreters()[0], notes if notes is not None else []
    if kind == "tflite" and (why := file_refusal(content, 1)):
        notes.append(f"no accuracy of {path}: {why}; install LiteRT: pip install "
                     "'dkm-tf[litert]'")
        return None
    it = make_interpreter(kind, content)
    if len(it.get_output_details()) != 1:  # several heads: no single arg-max
        return None
    if len(it.get_input_details()) != 1:  # fed by its signature keys: Keras' input names
        preds = [s if s is None else predicted_classes(s, len(s), threshold)
                 for s in keyed_scores(kind, content, x, y, batch_size, notes, path, max_samples)]
        if any(p is None for p in preds):
            return None
        return float(np.mean(np.concatenate(preds) == y))
    inp, out, x = it.get_input_details()[0], it.get_output_details()[0], np.asarray(x)
    if x.ndim == len(inp["shape"]) + 1 and len(x) == 1:
        x = x[0]  # [x]: the one input's samples in a list
    x = x[:max_samples] if x.ndim else x
    if x.dtype == object or x.ndim == 0 or len(x) != len(y):  # one label broadcast: 0.5 read
        raise ValueError(f"Invalid value for argument `data`. Expected (x, y) with one array x "
                         f"of samples and one label per sample. Received: x of shape "
                         f"{x.shape} ({x.dtype}), {len(y)} label(s) (after max_samples="
                         f"{max_samples})")
    if int(inp["shape_signature"][0]) != -1:
        batch_size = 1
    batch = min(batch_size, len(x))
    if kind == "tflite" and batch > 1 and (why := file_refusal(content, batch)):
        notes.append(f"accuracy of {path} run one sample per invoke: {why}")
        batch_size = 1
    preds, shape = [], tuple(inp["shape"])
    for start in range(0, len(x), batch_size):
        chunk = _quantized(x[start:start + batch_size], inp)
        if shape != chunk.shape:
            it.resize_tensor_input(inp["index"], chunk.shape)
            it.allocate_tensors()
            shape = chunk.shape
        it.set_tensor(inp["index"], chunk)
        it.invoke()
        pred = predicted_classes(_dequantized(it.get_tensor(out["index"]), out), len(chunk),
                                 threshold)
        if pred is None:
            return None
        preds.append(pred)
    return float(np.mean(np.concatenate(preds) == y))


def ratio_words(ratio):
    """A before / after cost ratio in words: "2.11x lower", or "1.25x higher" where the
    compressed model costs more (a ratio below 1 read as "0.80x lower" said the opposite)."""
    if not ratio or ratio != ratio or ratio == float("inf"):
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x lower" if ratio >= 1 else f"{1 / ratio:.2f}x higher"
