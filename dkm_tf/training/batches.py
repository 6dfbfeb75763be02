"""How many batches each epoch of a training function's ``fit`` trained, and the note when an
epoch trained none (:func:`ran_out_note`): a ``tf.data.Dataset.from_generator`` over a one-shot
Python generator is used up by the first pass over it, so a second epoch (or ``compress``'s
fine-tune stage after its DKM stage) trained no batch, with only Keras' "Your input ran out of
data" warning, which Keras also gives at the normal end of any dataset of unknown length.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings

import keras

__all__ = ["BatchCount", "fit_counted", "ran_out_collected", "ran_out_note", "report_ran_out"]

_NOTES = contextvars.ContextVar("dkm_tf_ran_out_notes", default=None)


class BatchCount(keras.callbacks.Callback):
    """Counts the batches ``fit`` trains in each epoch (``per_epoch``, one int per epoch
    begun; with ``steps_per_execution`` Keras reports the last batch of each call);
    ``began``: whether ``fit`` called ``on_train_begin`` (give it before other callbacks)."""

    def __init__(self):
        super().__init__()
        self.per_epoch = []
        self.began = False

    def on_train_begin(self, logs=None):
        self.began = True

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        if self.per_epoch:
            self.per_epoch[-1] = max(self.per_epoch[-1], int(batch) + 1)


def fit_counted(model, counter, *args, epochs, **kwargs):
    """``model.fit(*args, epochs=epochs, **kwargs)``, ``counter`` (a :class:`BatchCount`) among
    its callbacks, with two faults of Keras' JAX backend kept out (TensorFlow has neither):

    * its ``fit`` reads the data to build the compiled loss and metrics before epoch 1, which
      takes batches a one-shot generator does not give again (a ``from_generator`` dataset of
      4 batches trained 2): a ``tf.data.Dataset``'s model is built here from its
      ``element_spec`` instead, reading nothing (:func:`_build_from_spec`); a spec of unknown
      rank (``tf.TensorSpec(None)``: 2 of 4 batches trained, silently) is given the first
      batch's shapes, read here and given back to training
      (:func:`~dkm_tf.training.first_batch.keep_first_batch`: 4 of 4);
    * data of no batch at all (a one-shot generator an earlier stage used up) raised a bare
      ``StopIteration`` from that read (before ``on_train_begin``: a callback's own, or one on
      TensorFlow, goes through), and a first epoch of no batch an ``UnboundLocalError``
      (``logs``) from Keras, which had then dropped the model's, optimizer's and metrics'
      values (put back here): each is taken as ``epochs`` epochs of no batch, as TensorFlow's
      ``fit`` runs them (noted by :func:`report_ran_out`): the optimizer is built, and a
      ``keras.callbacks.History`` of no logs is returned (callbacks then saw no epoch end).
    """
    saved, on_jax = [], keras.backend.backend() == "jax"
    if on_jax:
        if _reads_to_build(model):  # a spec of unknown rank: read here, given back (no loss)
            args, kwargs = _kept(args, kwargs)
        _build_from_spec(model, args[0] if args else kwargs.get("x"))
        opt = getattr(model, "optimizer", None)
        if opt is not None and not opt.built and model.built:
            opt.build(model.trainable_variables)
        saved = [(v, v.value) for v in (  # the values Keras' JAX fit purges (below)
            *model.trainable_variables, *model.non_trainable_variables,
            *model.metrics_variables, *(opt.variables if opt is not None and opt.built else ()))]
    try:
        return model.fit(*args, epochs=epochs, **kwargs)
    except StopIteration:
        if counter.began or not on_jax:  # a callback's, not Keras' read of the data to build
            raise
    except UnboundLocalError:  # keras/src/backend/jax/trainer.py: `logs` of no train step
        if counter.per_epoch != [0] or not on_jax:
            raise
        for variable, value in saved:  # Keras had dropped them for its step, not put back
            variable.assign(value)
    counter.per_epoch = [0] * int(epochs)
    if getattr(model, "optimizer", None) is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # built, as TensorFlow's fit leaves it
    history = keras.callbacks.History()
    history.set_model(model)
    history.epoch = list(range(int(epochs)))  # as TensorFlow's fit of no batch returns it
    return history


def _reads_to_build(model):
    """Whether Keras' JAX ``fit`` would read a batch to build (``Trainer._symbolic_build``):
    a layer, the compiled loss or the compiled metrics not built."""
    unbuilt = [getattr(model, name, None) for name in ("_compile_loss", "_compile_metrics")]
    return (not all(layer.built for layer in model._flatten_layers())  # noqa: SLF001
            or any(c is not None and not c.built for c in unbuilt))


def _kept(args, kwargs):
    """``fit``'s arguments with its data ``x`` passed through
    :func:`~dkm_tf.training.first_batch.keep_first_batch`."""
    from dkm_tf.training.first_batch import keep_first_batch  # noqa: PLC0415

    if args:
        return (keep_first_batch(args[0]), *args[1:]), kwargs
    if kwargs.get("x") is not None:
        return args, {**kwargs, "x": keep_first_batch(kwargs["x"])}
    return args, kwargs


def _build_from_spec(model, data):
    """Build ``model`` (layers, compiled loss and metrics) on symbolic tensors of the
    ``element_spec`` of ``data`` where it is a ``tf.data.Dataset`` (else, or where that fails,
    nothing: Keras reads the data itself), so that Keras' ``fit`` reads no batch to build."""
    from dkm_tf.training.common import is_tf_dataset  # noqa: PLC0415

    if not is_tf_dataset(data):
        return
    import tensorflow as tf  # noqa: PLC0415

    from dkm_tf.training.first_batch import build_spec  # noqa: PLC0415

    try:
        batch = tf.nest.map_structure(
            lambda s: keras.KerasTensor(tuple(s.shape.as_list()), s.dtype.name),
            build_spec(data))
        model._symbolic_build(data_batch=batch)  # noqa: SLF001 - Keras' own build, unread
    except Exception:  # noqa: BLE001 - any spec it cannot take: Keras' read, as before
        return


def ran_out_note(stage, per_epoch):
    """A sentence when an epoch of ``per_epoch`` (batches trained in each epoch of ``stage``,
    e.g. ``"finetune"``) trained no batch, else None."""
    empty = [i + 1 for i, n in enumerate(per_epoch) if n == 0]
    if not empty:
        return None
    cause = ("a tf.data.Dataset.from_generator over a one-shot Python generator is used up by "
             "the first pass over it (an earlier epoch, or compress's DKM stage before its "
             "fine-tune stage); pass a generator function that makes a new generator each "
             "call (from_generator(lambda: gen(...))), or arrays")
    if len(empty) == len(per_epoch):
        return (f"{stage} trained no batch in its {len(per_epoch)} epoch(s): the training data "
                f"gave none ({cause}); its weights are those it started from, clustered "
                "without training")
    trained = sum(per_epoch)
    return (f"{stage} trained {trained} batch(es) in {len(per_epoch) - len(empty)} of its "
            f"{len(per_epoch)} epochs and none in epoch(s) {_spans(empty)}: the training data "
            f"ran out ({cause})")


def _spans(numbers):
    """``[2, 3, 4, 7]`` as ``"2-4, 7"``."""
    spans, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            spans.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(spans)


@contextlib.contextmanager
def ran_out_collected():
    """Within it, :func:`report_ran_out` appends its note to the yielded list instead of
    warning (``compress`` turns it into a result note)."""
    notes = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def report_ran_out(stage, counter):
    """Warn (a ``UserWarning`` at the user's call), or note within :func:`ran_out_collected`,
    when ``counter`` (a :class:`BatchCount` that ``fit`` ran with) saw an epoch of no batch."""
    note = ran_out_note(stage, counter.per_epoch)
    if note is None:
        return
    if (notes := _NOTES.get()) is not None:
        notes.append(note)
        return
    from dkm_tf.training.wrapper_extras import user_stacklevel  # noqa: PLC0415

    warnings.warn(note, UserWarning, stacklevel=user_stacklevel())
