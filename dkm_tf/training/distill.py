"""Knowledge distillation from the uncompressed model while compressing it.

Compression re-trains a copy of a model that was already trained; that model is the best
teacher there is. :class:`DistillationLoss` is Hinton et al.'s loss (arXiv:1503.02531, §2):

    L = α · CE(y, softmax(z_s)) + (1 − α) · T² · CE(softmax(z_t / T), softmax(z_s / T))

with student logits z_s, teacher logits z_t and temperature T (the T² keeps the gradient
scale of the soft term independent of T). The teacher's logits travel with the labels, so
the loss works in any ``compile`` / ``fit`` workflow and in every dkm_tf function that trains
with the model's own compiled loss (:func:`dkm_tf.dkm_retrain`, :func:`dkm_tf.finetune`):

    y = dkm_tf.distillation_targets(teacher, x, labels)      # [one-hot | teacher logits]
    model.compile(loss=dkm_tf.DistillationLoss(num_classes=10),
                  metrics=[dkm_tf.DistillationAccuracy(num_classes=10)])
    retrained, _ = dkm_tf.dkm_retrain(model, (x, y), n_clusters=4, ...)

Keras' ``"accuracy"`` would take the arg-max over all 2C columns of these targets (~0);
:class:`DistillationAccuracy` reads the labels' half (:func:`dkm_tf.finetune` and
:func:`dkm_tf.dkm_retrain` use it in place of ``"accuracy"`` for a model compiled with a
:class:`DistillationLoss`). On LeNet-5 / MNIST it adds about 0.3 points to the sparsity
variant at CR ≥ 100x (``bench/dkm_mnist.py``).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dkm_tf.core.loss_kind import loss_said, non_class_loss, source_loss
from dkm_tf.core.validate import (
    check_finite_samples,
    check_int,
    check_number,
    invalid,
    invalid_type,
)

__all__ = ["DistillationAccuracy", "DistillationLoss", "distillation_targets"]


@keras.saving.register_keras_serializable(package="dkm_tf")
class DistillationLoss(keras.losses.Loss):
    """Hard-label cross-entropy plus temperature-softened cross-entropy to a teacher.

    ``y_true`` is ``[one-hot labels (C) | teacher logits (C)]`` (see
    :func:`distillation_targets`), ``y_pred`` the student's logits (C).

    Args:
        num_classes: C.
        temperature: T > 0 of the soft term.
        alpha: weight in [0, 1] of the hard-label term (1 - alpha on the soft term).
        name: loss name.
        **kwargs: ``keras.losses.Loss`` arguments (``reduction``, ``dtype``).

    Example:
        >>> loss = DistillationLoss(num_classes=3, temperature=2.0, alpha=0.5)
        >>> y = np.array([[0, 1, 0, 0.0, 2.0, 0.0]], np.float32)  # label 1, teacher logits
        >>> round(float(loss(y, np.array([[0.0, 2.0, 0.0]], np.float32))), 4)
        2.0704
    """

    def __init__(self, num_classes, temperature=4.0, alpha=0.5, name="distillation",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 2:
            raise invalid("num_classes", "an integer >= 2", num_classes)
        # finite numbers, numpy scalars too (np.float32(4.0) was refused, inf accepted)
        temperature = check_number("temperature", temperature, "a finite number > 0", low=0,
                                   low_open=True)
        alpha = check_number("alpha", alpha, "a number in [0, 1]", low=0, high=1)
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        c, t = self.num_classes, self.temperature
        y_pred = ops.convert_to_tensor(y_pred)
        for name, y, width in (("y_true", y_true, 2 * c), ("y_pred", y_pred, c)):
            if len(y.shape) != 2 or y.shape[-1] not in (None, width):  # (None,): int labels
                raise ValueError(f"Invalid value for argument `{name}` of DistillationLoss("
                                 f"num_classes={c}). Expected width {width} ("
                                 + ("[one-hot labels | teacher logits], see "
                                    "dkm_tf.distillation_targets" if name == "y_true"
                                    else "logits") + f"). Received: shape {tuple(y.shape)}")
        y_true = ops.cast(y_true, y_pred.dtype)
        hard = keras.losses.categorical_crossentropy(y_true[:, :c], y_pred, from_logits=True)
        soft_targets = ops.softmax(y_true[:, c:] / t, axis=-1)
        soft = keras.losses.categorical_crossentropy(soft_targets, y_pred / t,
                                                     from_logits=True)
        return self.alpha * hard + (1.0 - self.alpha) * (t * t) * soft

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, temperature=self.temperature,
                      alpha=self.alpha)
        return config


def _distillation_accuracy(y_true, y_pred, num_classes):
    labels = ops.argmax(y_true[:, :num_classes], axis=-1)
    return ops.cast(ops.equal(labels, ops.argmax(y_pred, axis=-1)), "float32")


@keras.saving.register_keras_serializable(package="dkm_tf")
class DistillationAccuracy(keras.metrics.MeanMetricWrapper):
    """Top-1 accuracy on :func:`distillation_targets` (``[one-hot labels | teacher logits]``):
    the student's arg-max against the labels' (the first ``num_classes`` columns).

    Args:
        num_classes: C, an integer >= 2: the targets' first C columns are the one-hot labels
            (the rest, the teacher's logits, are ignored); the student predicts C scores.
        name: the metric's name in logs (default ``"accuracy"``).
        dtype: the metric's dtype (None: Keras' ``floatx()``, float32 by default).

    Example:
        >>> m = DistillationAccuracy(num_classes=2)
        >>> y = np.array([[0, 1, 5.0, 0.0], [1, 0, 5.0, 0.0]], np.float32)
        >>> _ = m.update_state(y, np.array([[0.0, 1.0], [0.0, 1.0]], np.float32))
        >>> float(m.result())
        0.5
    """

    def __init__(self, num_classes, name="accuracy", dtype=None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 2:
            raise invalid("num_classes", "an integer >= 2", num_classes)
        super().__init__(_distillation_accuracy, name=name, dtype=dtype,
                         num_classes=int(num_classes))
        self.num_classes = int(num_classes)

    def get_config(self):
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}


def distillation_metrics(model, metrics):
    """With a `DistillationLoss` compiled into ``model``, Keras' "accuracy" in ``metrics`` (an
    arg-max over [one-hot | teacher logits]) becomes a `DistillationAccuracy`; other metrics
    are kept (also for an uncompiled copy that carries such a loss: ``source_loss``)."""
    loss = source_loss(model)
    if not isinstance(loss, DistillationLoss) or not isinstance(metrics, (list, tuple)):
        return metrics
    return [DistillationAccuracy(loss.num_classes)
            if m in ("accuracy", "acc", "categorical_accuracy") else m for m in metrics]


def distillation_targets(teacher, x, labels, *, num_classes=None, batch_size=1024):
    """``[one-hot labels | teacher logits]`` for :class:`DistillationLoss`.

    Args:
        teacher: the uncompressed Keras model. Its logits are used; a teacher that returns
            probabilities (ending in a softmax, or rows of non-negative values summing to 1,
            as ``keras.applications`` models do) gives their logarithms, logits up to a
            constant per row, so ``softmax(z_t / T)`` is the softened teacher either way
            (``softmax(p / T)`` of the probabilities would be nearly uniform).
        x: inputs, an array with a leading sample axis (a list of numbers is read as one;
            a list / dict of arrays for a teacher with several inputs). A
            ``tf.data.Dataset``, ``keras.utils.PyDataset`` or generator is refused
            (``TypeError``): its length counts batches and its order need not be the labels'.
        labels: integer class labels, shape (N,) or (N, 1) (not one-hot: pass
            ``labels.argmax(-1)``), one per sample of ``x``.
        num_classes: C; default the teacher's output width.
        batch_size: prediction batch size.

    Returns:
        float32 array (N, 2C).

    Raises:
        ValueError: labels not of shape (N,) / (N, 1) or outside [0, C), ``x`` without
            samples, or a teacher whose output is not (N, C).
        TypeError: ``x`` not arrays (a dataset or generator).
    """
    if not isinstance(teacher, keras.Model):
        raise invalid_type("teacher", "a keras.Model", teacher)
    _check_teacher(teacher)
    if check_int("batch_size", batch_size, minimum=1) > 2**31 - 1:  # Keras' OverflowError
        raise invalid("batch_size", "an integer <= 2,147,483,647 (2**31 - 1)", batch_size)
    if num_classes is not None:
        check_int("num_classes", num_classes, minimum=2, maximum=2**31 - 1)
    if not isinstance(x, (np.ndarray, list, tuple, dict)) and not hasattr(x, "shape"):
        # a tf.data.Dataset / PyDataset / generator: len() counts batches, not samples, and
        # the labels could not follow a shuffled or batched order
        raise invalid_type("x", "inputs as arrays aligned with `labels` (an array with a "
                           "leading sample axis, or a list / dict of them for a teacher with "
                           "several inputs; a dataset or generator is not accepted: take "
                           "its inputs and labels out as arrays)", x)
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError("Invalid value for argument `labels`. Expected integer class labels "
                         "of shape (samples,) or (samples, 1) (for one-hot labels pass "
                         f"labels.argmax(-1)). Received: labels of shape {labels.shape}")
    if labels.dtype.kind not in "iu":  # whole-number floats / booleans as class ids, else raise
        from dkm_tf.core.labels import class_ids  # noqa: PLC0415

        labels = class_ids(labels, "labels")
    from dkm_tf.training.common import check_data  # noqa: PLC0415

    # >= 1 sample, the teacher's input; a list of numbers becomes an array
    x = check_data("x", (x, None), teacher, labels=False)[0]
    n = len(x) if hasattr(x, "shape") else next(  # None: an optional input not given
        len(a) for a in keras.tree.flatten(x) if a is not None)
    if labels.size != n:
        raise ValueError(f"Invalid value for argument `labels`. Expected one label per sample "
                         f"of x ({n}). Received: {labels.size} labels")
    check_finite_samples("x", x, "(NaN inputs give NaN targets)")
    shape = getattr(teacher, "output_shape", None)  # None for a subclassed teacher: below
    width = shape[-1] if isinstance(shape, tuple) and shape else None
    if num_classes is not None and isinstance(width, int) and num_classes != width:
        raise invalid("num_classes", f"None or the teacher's output width, {width}",
                      num_classes)
    known = num_classes or (shape[-1] if isinstance(shape, tuple) else None)
    if known and labels.size and (labels.min() < 0 or labels.max() >= known):  # before predict
        raise invalid("labels", f"integers in [0, {known})", _out_of_range(labels, known))
    logits = np.asarray(teacher.predict(x, batch_size=batch_size, verbose=0), np.float32)
    c = int(num_classes or logits.shape[-1])
    if logits.ndim != 2 or logits.shape != (labels.size, c):
        raise ValueError(f"Invalid value for argument `teacher`. Expected logits of shape "
                         f"({labels.size}, {c}). Received: shape {logits.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise invalid("labels", f"integers in [0, {c})", _out_of_range(labels, c))
    from dkm_tf.training.common import output_activation  # noqa: PLC0415

    if output_activation(teacher, _guess=True) == "softmax" or (
            logits.size and logits.min() >= 0 and np.allclose(logits.sum(-1), 1, atol=1e-3)):
        logits = np.log(np.maximum(logits, np.finfo(np.float32).tiny))  # log p: logits
    return np.concatenate([np.eye(c, dtype=np.float32)[labels], logits], axis=1)


def _check_teacher(teacher):
    """Refuse a teacher whose output is no softmax over classes: several outputs (numpy's
    "inhomogeneous shape" error), a regressor, a multi-label model (compiled loss) or a
    sigmoid output. Its values were read as logits: a multi-label teacher's probabilities
    0.42 / 0.50 / 0.49 / 0.43 gave soft targets 0.247 to 0.253 at T=4 (uniform, nothing to
    distil), a regressor's outputs a softmax over its targets."""
    from dkm_tf.training.common import output_activation  # noqa: PLC0415

    found, heads = non_class_loss(teacher), len(getattr(teacher, "outputs", None) or ())
    said = loss_said(teacher, found[0]) if found else ""  # a copy: its source's loss
    why = (f"{heads} outputs ({', '.join(teacher.output_names)}): one head of class scores "
           "is needed (a Model(inputs, that_head) of it is a teacher)" if heads > 1 else
           f"{said}: {found[1]}" + ("" if said.startswith("compiled") else "; compiling "
                                    "the copy with a cross-entropy overrides it") if found else
           "its output ends in a sigmoid (binary or multi-label probabilities)"
           if output_activation(teacher, _guess=True) == "sigmoid" else None)
    if why:
        raise invalid("teacher", "a classifier of C >= 2 classes whose output is logits or "
                      "softmax probabilities (DistillationLoss softens a softmax over "
                      "classes; train a regressor or multi-label model with its own loss, "
                      "without distillation_targets)", f"model {teacher.name!r}, {why}")


def _out_of_range(labels, n):
    """``"<count> of <size> labels outside, e.g. [..]"``: the values, not an array's shape."""
    bad = labels[(labels < 0) | (labels >= n)]
    return f"{bad.size} of {labels.size} labels outside, e.g. {bad[:8].tolist()}"
