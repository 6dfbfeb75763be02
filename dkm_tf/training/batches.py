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

__all__ = ["BatchCount", "ran_out_collected", "ran_out_note", "report_ran_out"]

_NOTES = contextvars.ContextVar("dkm_tf_ran_out_notes", default=None)


class BatchCount(keras.callbacks.Callback):
    """Counts the batches ``fit`` trains in each epoch (``per_epoch``, one int per epoch
    begun; with ``steps_per_execution`` Keras reports the last batch of each call)."""

    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        if self.per_epoch:
            self.per_epoch[-1] = max(self.per_epoch[-1], int(batch) + 1)


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
