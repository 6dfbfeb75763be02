"""What the training functions compile their copy of the user's model with
(:func:`compile_settings`: :func:`dkm_tf.finetune`, :func:`dkm_tf.dkm_retrain` and
``compress``'s LoRA-merged copy), and the checks of what Keras would refuse only inside
``fit``, after the k-means: a single loss with a list or dict of ``loss_weights``, and a
``PyDataset`` whose labels are keyed by the output layers' names (:func:`check_label_keys`).
"""

from __future__ import annotations

import warnings

from dkm_tf.core.loss_kind import class_losses, loss_names, source_loss, source_settings
from dkm_tf.core.validate import invalid
from dkm_tf.training.common import (
    compiled_loss,
    compiled_loss_weights,
    compiled_metrics,
    default_loss,
    fresh_metrics,
)
from dkm_tf.training.distill import distillation_metrics

__all__ = ["carried_loss_note", "check_label_keys", "compile_like", "compile_settings",
           "probabilities_note", "sample_inputs", "warn_logits_doubt"]


def compile_settings(model, metrics=None, data=None):
    """The ``compile`` keyword arguments ``loss``, ``loss_weights``, ``metrics`` and
    ``weighted_metrics`` (a dict) for a copy of ``model``.

    A compiled model gives its own loss, ``loss_weights``, metrics and ``weighted_metrics``
    (Keras' ``"accuracy"`` read as :class:`~dkm_tf.DistillationAccuracy` with a
    :class:`~dkm_tf.DistillationLoss`); else the default cross-entropy
    (:func:`~dkm_tf.training.common.default_loss`) with ``"accuracy"`` once per output (a
    single ``["accuracy"]`` failed inside ``fit`` for two outputs: "tuple arity mismatch");
    where the last activation is not known (a custom or ``Lambda`` last layer), its outputs
    on the first inputs of ``data`` (the training data, :func:`sample_inputs`) that are rows
    of probabilities, or one unit of a sigmoid
    (:func:`~dkm_tf.training.probabilities.read_activation`), give ``from_logits=False``
    (from_logits=True trained a hand-written softmax's outputs through a second softmax).
    ``metrics`` (a list or dict) replaces the metrics. A single loss compiled with a list or
    dict of ``loss_weights`` (one per output) becomes one loss per output (Keras refused it
    inside ``fit``: "`loss_weights` must match the number of losses"); ``loss_weights`` that
    name no output, or of another count than the outputs, raise ``ValueError`` here.
    An uncompiled ``share_weights`` / ``strip_clustering`` copy gives the loss,
    ``loss_weights``, metrics and ``weighted_metrics`` of the model it was copied from
    (:func:`~dkm_tf.core.loss_kind.source_settings`; new metric objects), with
    ``"accuracy"`` once per output where that had no metrics and its loss is a classifier's
    (a copy was trained without its source's ``loss_weights`` and metrics).
    """
    loss, default = compiled_loss(model), False
    carried = loss is None and source_loss(model) is not None  # a copy: its source's
    if carried:
        loss, given = source_loss(model), source_settings(model)
    if loss is None:
        loss, default = default_loss(model, x=sample_inputs(model, data)), True
    heads = ["accuracy"] * (len(getattr(model, "outputs", None) or ()) or 1)
    if metrics is None and carried:
        metrics = distillation_metrics(model, fresh_metrics(given.get("metrics")) or (
            heads if class_losses(loss) else None))  # a distillation: its own accuracy
    elif metrics is None:
        metrics = heads if default else distillation_metrics(model, compiled_metrics(model))
    elif isinstance(metrics, (list, tuple)):
        metrics = list(metrics)  # a copy (a dict as it is)
    weighted = None if default else distillation_metrics(model, fresh_metrics(
        given.get("weighted_metrics")) if carried else compiled_metrics(
        model, "weighted_metrics"))
    loss, weights = _per_output(loss, given.get("loss_weights") if carried else
                                compiled_loss_weights(model), model)
    return {"loss": loss, "loss_weights": weights, "metrics": metrics,
            "weighted_metrics": weighted}


def carried_loss_note(model):
    """A note when the training functions train ``model``, an uncompiled copy, with the loss
    it carries from the model it was copied from (:func:`compile_settings`), else None."""
    loss = None if compiled_loss(model) is not None else source_loss(model)
    if loss is None:
        return None
    return (f"trained with the loss {loss_names(loss, model)!r} of the model it was copied "
            "from (the given model is an uncompiled share_weights / strip_clustering copy, "
            "which carries it; not the default cross-entropy of an uncompiled model): compile "
            "the model to train it with another loss")


def probabilities_note(model, data, shape=None):
    """A note when the training functions train ``model`` (not compiled, carrying no loss,
    its last layer's activation not known: a custom or ``Lambda`` layer) with the
    cross-entropy ``from_logits=False`` because its outputs on the first inputs of ``data``
    are rows of probabilities or one unit of a sigmoid (:func:`compile_settings`), or with
    ``from_logits=True`` because they could not be read (a dataset is read only where that
    changes nothing training sees) or are one unit in [0, 1] from a last layer dkm_tf cannot
    open; else None. ``shape``: the output shape (default the model's ``output_shape``, which
    a subclassed model lacks: :func:`dkm_tf.pipeline.train_classifier` gives it)."""
    from dkm_tf.core.loss_kind import output_activation  # noqa: PLC0415

    if (data is None or compiled_loss(model) is not None or source_loss(model) is not None
            or output_activation(model) != ""):
        return None
    x = sample_inputs(model, data)
    shape = getattr(model, "output_shape", None) if shape is None else shape
    unit = isinstance(shape, tuple) and len(shape) == 2 and shape[1] == 1  # as default_loss
    if x is not None:
        if default_loss(model, shape, x).get_config().get("from_logits") is not False:
            return _opaque_note(model, x) if unit else None
        return ("trained with the cross-entropy from_logits=False: the model's last layer is "
                "not one whose activation dkm_tf can read (a custom or Lambda layer) and its "
                "outputs on the training inputs are " + (
                    "in [0, 1] and stay there when its input is scaled by -100 to 100 (a "
                    "sigmoid)" if unit else "rows of probabilities") +
                "; compile the model to train it with another loss")
    if _outputs(model) > 1 or not unit and isinstance(shape, tuple) and shape[-1:] == (1,):
        return None  # never read (one loss for all outputs; compress refuses it to train),
        # or one unit per position (binary cross-entropy: not read)
    whole = not getattr(model, "outputs", None)  # a subclassed model itself: no graph
    return ("trained with the cross-entropy from_logits=True: the model" + (
            " is a subclassed model, whose activation dkm_tf cannot read," if whole else
            "'s last layer is not one whose activation dkm_tf can read (a custom or Lambda "
            "layer)") + " and its outputs on the training data could not be read without "
            "changing what training sees (a from_generator, shuffled or filtered tf.data "
            "dataset, ...): if they are probabilities, compile the model to train it with "
            "another loss")


def _opaque_note(model, x):
    """The note of a one-unit custom last layer of weighted sublayers whose outputs are in [0,
    1] (:func:`~dkm_tf.training.probabilities.read_activation`: ``"opaque"``), else None."""
    from dkm_tf.training.probabilities import OPAQUE, read_activation  # noqa: PLC0415

    if read_activation(model, x, unit=True) != OPAQUE:
        return None
    whole = not getattr(model, "outputs", None)  # a subclassed model itself: no graph
    return ("trained with the cross-entropy from_logits=True: the model" + (
        " is a subclassed model" if whole else "'s last layer is a custom layer of sublayers "
        "with weights") + " and its outputs on the training inputs are in [0, 1], but dkm_tf "
        "cannot open it to tell a sigmoid from logits that happen to lie there: if they are "
        "probabilities, compile the model with BinaryCrossentropy()")


def warn_logits_doubt(model, data, shape, loss):
    """Warn (``UserWarning``, the text of ``compress``' note: :func:`probabilities_note`) where
    :func:`dkm_tf.pipeline.train_classifier` trains ``model`` (its output of ``shape``) with
    ``loss`` ``from_logits=True`` though its outputs may be probabilities: one unit in [0, 1]
    on the first inputs of ``data`` from a last layer dkm_tf cannot open (a custom layer of
    weighted sublayers, a subclassed model, as the last layer or the model itself: a hand
    sigmoid in its ``call``), or one unit whose outputs could not be read without changing
    what training sees. Never for several units (a subclassed 10-class classifier on a
    ``from_generator`` dataset was warned, an error under ``filterwarnings=error``). It
    returns a History, where a note has nowhere to go: such a head trained with no word as
    logits (held-out BCE 0.140 where 0.088 as probabilities). Its reading
    is not changed: that is how ``compress`` trains it too (dkm_tf cannot tell a sigmoid
    from logits there); where it reads probabilities, nothing is warned."""
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    unit = isinstance(shape, tuple) and len(shape) == 2 and shape[1] == 1
    if (config.get("from_logits") is True and unit  # never a multi-unit head (review)
            and (note := probabilities_note(model, data, shape))):
        warnings.warn(note, UserWarning, stacklevel=3)


def _outputs(model):
    return len(getattr(model, "outputs", None) or ()) or 1


def sample_inputs(model, data):
    """The inputs of ``data`` (``(x, y)`` arrays; a ``tf.data.Dataset``, as
    :func:`~dkm_tf.training.data_checks.dataset_inputs` reads it; a ``PyDataset``: its first
    batch) that :func:`~dkm_tf.training.common.default_loss` reads a custom last layer's
    outputs on; None where its last activation is known (nothing is read: a dataset is not
    iterated), where the model has several outputs (one loss for all: not read), or where the
    inputs cannot be read."""
    import sys  # noqa: PLC0415

    from dkm_tf.core.loss_kind import output_activation  # noqa: PLC0415
    from dkm_tf.training.data_checks import dataset_inputs  # noqa: PLC0415

    if data is None or output_activation(model) != "" or _outputs(model) > 1:
        return None
    if isinstance(data, tuple):
        return data[0] if data else None
    tf, keras = sys.modules.get("tensorflow"), sys.modules.get("keras")
    if tf is not None and isinstance(data, tf.data.Dataset):
        return dataset_inputs(data)
    try:
        batch = data[0] if keras is not None and isinstance(data, keras.utils.PyDataset) \
            else None
    except Exception:  # noqa: BLE001 (a batch that cannot be read: from_logits as before)
        return None
    return batch[0] if isinstance(batch, tuple) and batch else None


def compile_like(model, copy):
    """Compile ``copy`` (an uncompiled clustered copy of ``model``) as ``model`` is compiled:
    its loss, ``loss_weights``, metrics and ``weighted_metrics`` (new metric objects,
    :func:`compile_settings`), with a built plain SGD at ``model``'s optimizer's learning rate,
    as :func:`dkm_tf.finetune` returns its model (no slot variables: it saves and loads back
    without Keras' optimizer warning, where an unbuilt Adam failed to load and a built one
    tripled the file; training the copy further would undo the sharing anyway). Returns None
    when done or nothing to do (``model`` compiled without a loss, or not at all; ``copy``
    already compiled), else why not (a sentence for a note).

    Without it ``compress``'s model lost the loss it was given: ``to_tflite(..., "int8")`` of
    a regressor compiled with ``"mse"`` checked the arg-max of its file again ("top-1
    agreement") and ``evaluate`` / ``fit`` needed a ``compile`` first."""
    if compiled_loss(model) is None or getattr(copy, "compiled", False):
        return None
    import keras  # noqa: PLC0415

    try:
        rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except (AttributeError, TypeError, ValueError):  # no optimizer, or a rate it cannot give
        rate = 0.01  # SGD's default
    try:
        settings = compile_settings(model)
    except (TypeError, ValueError) as e:
        return f"the compressed model is not compiled ({type(e).__name__}: {e})"
    if (custom := _not_loadable(settings, keras)) is not None:
        return (f"the compressed model is not compiled: the given model's {custom} is custom "
                f"code Keras cannot load back from a saved file (register it with "
                f"keras.saving.register_keras_serializable); compile it before evaluate / fit")
    try:
        copy.compile(optimizer=keras.optimizers.SGD(rate),
                     **{k: fresh_metrics(v) if "metrics" in k else v for k, v in settings.items()})
        copy.optimizer.build(copy.trainable_variables)
    except (TypeError, ValueError, NotImplementedError) as e:  # a custom metric
        return (f"the compressed model is not compiled (compiling it as the given model is "
                f"compiled failed: {type(e).__name__}: {e}); compile it before evaluate / fit")
    return None


def _not_loadable(settings, keras):
    """The first loss / metric of ``settings`` that does not survive Keras' serialization
    round trip (an unregistered function or class), named, else None: compiled with it, the
    returned model's saved file failed to load (``Could not locate function``) where the
    uncompiled copy loaded."""
    for key in ("loss", "metrics", "weighted_metrics"):
        for obj in keras.tree.flatten(settings.get(key)):
            if obj is None or isinstance(obj, (str, int, float)):
                continue
            try:
                with warnings.catch_warnings():  # Keras' own (a lambda's): not the user's
                    warnings.simplefilter("ignore")
                    keras.saving.deserialize_keras_object(
                        keras.saving.serialize_keras_object(obj))
            except Exception:  # noqa: BLE001 (any failure here is a failure of load_model)
                name = getattr(obj, "__name__", None) or type(obj).__name__
                what = {"loss": "loss", "metrics": "metric"}.get(key, "weighted metric")
                return f"{what} {name!r}"
    return None


def _per_output(loss, weights, model):
    """``(loss, loss_weights)`` with a single loss repeated per output where the weights
    are a list or dict (Keras pairs them only with as many losses)."""
    if weights is None or isinstance(loss, (list, tuple, dict)) or not isinstance(
            weights, (list, tuple, dict)):
        return loss, weights
    struct = getattr(model, "_outputs_struct", None)
    names = list(struct) if isinstance(struct, dict) else list(
        getattr(model, "output_names", None) or ())
    n = len(getattr(model, "outputs", None) or ()) or 1
    if isinstance(weights, dict):
        if set(weights) == set(names):
            return {k: loss for k in weights}, weights
        raise invalid("loss_weights", f"loss weights keyed by the model's output names "
                      f"{names} (as compiled into `model`, with one loss)", weights)
    if len(weights) != n:
        raise invalid("loss_weights", f"{n} loss weight(s), one per output of the model (as "
                      "compiled into `model`, with one loss)", weights)
    if n == 1:
        return loss, weights  # Keras pairs one weight with one loss
    if isinstance(struct, dict):  # Keras would pair the list with its sorted keys
        raise invalid("loss_weights", f"loss weights keyed by the model's output names "
                      f"{names} (its outputs are a dict; as compiled into `model`)", weights)
    return [loss] * n, list(weights)


def check_label_keys(name, data, model):
    """Refuse a ``keras.utils.PyDataset`` ``data`` whose labels (of its first batch,
    ``data[0]``) are a dict, for a model whose outputs are a list: :func:`dkm_tf.finetune`
    trains a clustered copy whose output layers are renamed ``cluster_<name>``, and Keras
    failed inside ``fit``, after the k-means ("Expected float32, but got a of type 'str'").
    Arrays and ``tf.data`` labels are re-keyed instead; a PyDataset is not wrapped."""
    import sys  # noqa: PLC0415

    keras = sys.modules.get("keras")
    if (data is None or keras is None or not isinstance(data, keras.utils.PyDataset)
            or isinstance(getattr(model, "_outputs_struct", None), dict)
            or len(getattr(model, "outputs", None) or ()) < 2):
        return
    batch = data[0]
    if isinstance(batch, tuple) and len(batch) in (2, 3) and isinstance(batch[1], dict):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a PyDataset whose "
                         "labels are a list, one array per output in the model's order "
                         f"{list(model.output_names)} (the clustered copy's outputs are "
                         "renamed cluster_<name>). Received: a PyDataset yielding a label "
                         f"dict with keys {sorted(batch[1])}; yield "
                         "[y[name] for name in model.output_names] instead")
