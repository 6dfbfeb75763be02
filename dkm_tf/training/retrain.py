"""Deep k-Means re-training of a copy of a model, the whole loop in one call."""

from __future__ import annotations

import keras

from dkm_tf.core.validate import check_finite_samples, check_int, is_int
from dkm_tf.graph.copying import copy_model
from dkm_tf.training import callbacks as callbacks_lib
from dkm_tf.training.attach import attach_regularizer, detach_regularizer, kmeans_regularizers
from dkm_tf.training.batches import BatchCount, fit_counted, report_ran_out
from dkm_tf.training.class_weights import check_class_weight, weigh_classes
from dkm_tf.training.common import (
    check_data,
    check_fit_args,
    check_labels_for,
    check_learning_rate,
    is_tf_dataset,
)
from dkm_tf.training.compile_settings import compile_settings

__all__ = ["dkm_retrain"]


def _split(data, name):
    if data is None:
        return None, None
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(f"Invalid value for argument `{name}`. Expected an (x, y) pair or "
                             f"a tf.data.Dataset. Received: a sequence of length {len(data)}")
        return tuple(data), None
    return None, data


def dkm_retrain(model, train_data, val_data=None, *, n_clusters, lam=1e-4, relaxation="hard",
                unit="auto", epochs=10, learning_rate=1e-4, batch_size=128, refresh_every=5,
                sparsity=0.0, include_dense=True, seed=0, callbacks=None, verbose=0,
                preserve_sparsity=False, class_weight=None):
    """Re-train a copy of ``model`` with the Deep k-Means penalty (Wu et al., ICML 2018, §2.4).

    Steps: clone the model (the input is never modified) → :func:`dkm_tf.attach_regularizer`
    → compile (the model's own loss, ``loss_weights`` and metrics when it is compiled; an
    uncompiled ``share_weights`` / ``strip_clustering`` copy's source's; else sparse
    categorical cross-entropy, from logits unless the last layer is a softmax or, a custom
    one, its outputs on the first training inputs are probabilities, with accuracy; Adam
    at ``learning_rate``) → ``fit`` with :class:`dkm_tf.RefreshKMeans` → remove the penalty.
    The final weight sharing (row-wise k-means, §1.6) is left to the caller.

    Args:
        model: a built Keras model (Sequential or Functional; cloned with
            ``keras.models.clone_model``).
        train_data: ``(x, y)`` arrays (``y`` a dict or list of arrays for a model with several
            outputs) or a finite, batched ``tf.data.Dataset`` / ``keras.utils.PyDataset`` of
            ``(x, y)``; not a generator (read once), nor an infinite dataset (take a finite
            part with ``.take(n)``). Labels are class ids, shape (samples,) or (samples, 1),
            with a sparse categorical cross-entropy (the default loss). An epoch that trains
            no batch (a ``from_generator`` dataset over a one-shot Python generator, used up
            by the first epoch) is a ``UserWarning`` (``compress``: a note).
        val_data: optional ``(x, y)`` or dataset for validation.
        n_clusters: K, an int or ``{layer name: K}``.
        lam: λ of the penalty (λ/2)‖W − W F Fᵀ‖².
        relaxation: ``"hard"`` (cluster-indicator F) or ``"spectral"`` (the paper's text).
        unit: ``"auto"``, ``"row"``, ``"kernel"`` or ``"scalar"``. The default ``"auto"``
            (rows for k x k convs, as :func:`attach_regularizer`) differs on purpose from
            ``share_weights`` / ``cluster_weights`` / ``compress`` (``"scalar"``, which
            ``compress(method="dkm")`` passes here): give the unit of the k-means that follows.
        epochs: training epochs.
        learning_rate: Adam learning rate, a number or a Keras ``LearningRateSchedule``.
        batch_size: batch size for array data (ignored for datasets).
        refresh_every: F-step period in epochs (the paper's 5).
        sparsity: fraction p of zero-centred units, a float or ``{layer name: p}``.
        preserve_sparsity: the kernels' exact zeros (a pruned model's) form a zero cluster
            not counted against K (see :func:`dkm_tf.attach_regularizer`) and stay exactly
            zero through training (a constraint while ``fit`` runs, removed afterwards).
        include_dense: also regularize every clusterable weight that is not a conv kernel
            (Dense, Embedding, recurrent, attention; conv kernels always are), as the
            k-means that follows clusters them (see :func:`dkm_tf.attach_regularizer`, whose
            default is False: it regularizes conv kernels only unless asked).
        seed: k-means and Keras seed (``keras.utils.set_random_seed(seed)`` before ``fit``,
            as :func:`dkm_tf.finetune`: the same seed shuffles the same way), below 2**32.
        callbacks: extra Keras callbacks.
        verbose: passed to ``fit``.
        class_weight: ``{class id: weight}`` for a single-output model, as for
            :func:`dkm_tf.finetune` (per-sample weights from the true labels; the k-means
            penalty is not weighed).

    Returns:
        ``(retrained_model, history)``: the trained copy with the k-means regularizers removed
        (any regularizer the layers had before is kept) and the ``History`` of ``fit``, whose
        logs include ``kmeans_penalty``.

    Raises:
        ValueError: bad ``epochs`` / ``learning_rate`` or regularizer settings, or data
            that cannot train (empty, infinite, unbatched, without labels, one-hot labels
            for a sparse loss, array labels outside the model's classes or fractional).
        TypeError: data that is a generator or iterator, array labels that are not numbers,
            or a subclassed model (Keras cannot copy it; the message says what to do).
    """
    if not is_int(epochs) or epochs < 1:  # numpy integers too (np.int64(1) was refused)
        raise ValueError(f"Invalid value for argument `epochs`. Expected a positive integer. "
                         f"Received: epochs={epochs!r}")
    learning_rate = check_learning_rate(learning_rate)
    # the Keras seed too (fit's shuffle): an int below 2**32, as keras.utils.set_random_seed
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    check_int("refresh_every", refresh_every, minimum=1)
    check_fit_args(model, batch_size=batch_size, callbacks=callbacks, verbose=verbose)
    train_data = check_data("train_data", train_data, model)
    val_data = check_data("val_data", val_data, model, required=False)
    settings = compile_settings(model, data=train_data)  # its own, or the defaults
    reads = settings["loss"]  # the loss that reads the labels
    train_data = check_labels_for("train_data", train_data, model, reads)
    val_data = check_labels_for("val_data", val_data, model, reads)
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        if isinstance(data, tuple):  # NaN inputs trained NaN weights, refused late
            check_finite_samples(name, data[0], "x (NaN inputs train NaN weights)")
    table = check_class_weight(class_weight, model, reads, train_data)
    clone = copy_model(model)
    attach_regularizer(clone, n_clusters, lam, relaxation=relaxation, unit=unit,
                       include_dense=include_dense, sparsity=sparsity, seed=seed,
                       preserve_sparsity=preserve_sparsity)
    undo_pins = _pin_zeros(clone) if preserve_sparsity else (lambda: None)
    clone.compile(optimizer=keras.optimizers.Adam(learning_rate), **settings)
    keras.utils.set_random_seed(seed)  # fit's shuffle, else the caller's global state decides
    train_data, weights = weigh_classes(train_data, table, reads)  # sample_weight, or Keras'
    (xy, train_ds), (val_xy, val_ds) = _split(train_data, "train_data"), _split(val_data,
                                                                                "val_data")
    refresh = callbacks_lib.RefreshKMeans(every_n_epochs=refresh_every)
    counter = BatchCount()  # an epoch of no batch: noted (a one-shot generator)
    fit_kwargs = {"epochs": epochs, "verbose": verbose,
                  "callbacks": [refresh, counter, *(callbacks or [])], **weights,
                  "validation_data": val_xy if val_xy is not None else val_ds}
    if xy is not None:
        history = fit_counted(clone, counter, xy[0], xy[1], batch_size=batch_size,
                              shuffle=True, **fit_kwargs)
    else:
        history = fit_counted(clone, counter, train_ds, shuffle=not is_tf_dataset(train_ds),
                              **fit_kwargs)
    report_ran_out("dkm_retrain", counter)
    detach_regularizer(clone)
    undo_pins()
    return clone, history


def _pin_zeros(model):
    """Keep every exactly-zero weight of the regularized kernels at zero while training.

    The penalty alone does not pull a zero away, but the data loss does; a constraint
    (applied by the optimizer after each step) multiplies the kernel by its initial non-zero
    mask. Returns the function that puts the previous constraints back.
    """
    saved = []
    for var, _ in kmeans_regularizers(model):
        mask = keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(var) != 0, var.dtype)
        old = var.constraint

        def keep_zeros(w, mask=mask, old=old):
            w = w * mask
            return old(w) if old is not None else w

        var.constraint = keep_zeros
        saved.append((var, old))

    def undo():
        for var, old in saved:
            var.constraint = old
    return undo
