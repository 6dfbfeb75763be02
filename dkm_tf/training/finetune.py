"""Cluster, fine-tune with hard weight sharing and strip, in one call (:func:`finetune`)."""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np

from dkm_tf.core.validate import check_finite_samples, check_int
from dkm_tf.training.batches import BatchCount, fit_counted, report_ran_out
from dkm_tf.training.class_weights import check_class_weight, weigh_classes
from dkm_tf.training.clustering import cluster_weights, strip_clustering
from dkm_tf.training.common import (
    check_data,
    check_fit_args,
    check_labels_for,
    check_learning_rate,
    for_outputs,
    fresh_metrics,
    is_tf_dataset,
)
from dkm_tf.training.compile_settings import check_label_keys, compile_settings
from dkm_tf.training.wrapper_extras import collecting_scale_notes, scale_loss_collected

__all__ = ["finetune"]


def finetune(model, train_data, val_data=None, *, n_clusters=16, unit="scalar",
             granularity="per_tensor", init="kmeans++", epochs=3, learning_rate=1e-3,
             batch_size=32, overrides=None, latent=False, reassign_every=None, metrics=None,
             callbacks=None, seed=0, verbose=0, preserve_sparsity=False, kernel_options=None,
             class_weight=None):
    """Cluster a copy of ``model``, fine-tune it with hard weight sharing, and strip it.

    Args:
        model: a Sequential or Functional model (not modified).
        train_data: ``(x, y)`` arrays (``y`` a dict or list of arrays for a model with several
            outputs) or a finite ``tf.data.Dataset`` / ``keras.utils.PyDataset`` yielding
            ``(x, y)`` batches; not a generator (read once), nor an infinite dataset (take a
            finite part with ``.take(n)``). Labels are class ids, shape (samples,) or
            (samples, 1), with a sparse categorical cross-entropy (the default loss). An
            epoch that trains no batch (a ``from_generator`` dataset over a one-shot Python
            generator, used up by the first epoch) is a ``UserWarning`` (``compress``: a note).
        val_data: optional validation data in the same form.
        n_clusters, unit, granularity, init, overrides, latent, preserve_sparsity: see
            :func:`cluster_weights` (``preserve_sparsity`` keeps a pruned model's zeros).
        epochs: fine-tuning epochs (0 gives post-training clustering only). Defaults differ
            on purpose: ``compress(method="finetune")`` runs 2, ``dkm-tf compress`` 3.
        learning_rate: Adam learning rate, a number or a Keras ``LearningRateSchedule``
            (``compress`` picks 1e-3 when the smallest K is <= 4, else 1e-4).
        batch_size: used with array data.
        reassign_every: with ``latent=True``, re-assign indices every this many epochs
            (:class:`dkm_tf.ReassignClusters`); ``None`` never re-assigns.
        metrics: compile metrics; default: the model's own when it is compiled (as
            :func:`dkm_tf.dkm_retrain`), ``["accuracy"]`` with the default loss.
        callbacks: extra Keras callbacks for ``fit``.
        seed: k-means and Keras seed.
        verbose: passed to ``fit``.
        kernel_options: ``{"codebook": ..., "transforms": ..., "scale_bits": ...}`` for kernel
            clustering with a shared codebook (see :func:`cluster_weights`), or None.
        class_weight: ``{class id: weight}`` (ids in [0, C); a class left out weighs 1) for a
            single-output model, as Keras' ``fit`` takes it, applied as per-sample weights
            read from the true labels (the labels' half of distillation targets, which
            Keras' own would misread); not with ``(x, y, sample_weight)`` batches.

    The loss is the model's own (with its ``loss_weights``) when it is compiled; for an
    uncompiled ``share_weights`` / ``strip_clustering`` copy, that of the model it was copied
    from, with its ``loss_weights`` and metrics (``compress`` notes it); otherwise sparse
    categorical cross-entropy, from logits unless the last layer is a softmax (a custom or
    ``Lambda`` last layer: unless its outputs on the first training inputs are probabilities).

    Returns:
        ``(stripped_model, palettes, history)``: the plain fine-tuned model, its palettes (a
        palette's ``note`` names the kernel scales ``unit="kernel"``'s first k-means lost,
        which ``cluster_weights`` warns of and ``compress`` notes), and
        the ``fit`` History (``None`` when ``epochs`` is 0). The model is compiled with the
        same loss and metrics, ready for ``evaluate``, and a built plain SGD at
        ``learning_rate`` (no slot variables: ``save`` then ``load_model`` restores it without
        Keras' optimizer-mismatch warning, and the file holds only the weights). Training the
        stripped model further would move its shared weights apart: fine-tune the clustered
        model instead.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"Invalid value for argument `epochs`. Expected an integer >= 0. "
                         f"Received: epochs={epochs!r}")
    learning_rate = check_learning_rate(learning_rate)
    # an int below 2**32, as keras.utils.set_random_seed takes it (it refused np.int64(0))
    seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
    check_fit_args(model, batch_size=batch_size, callbacks=callbacks, metrics=metrics,
                   verbose=verbose)
    if reassign_every is not None:
        check_int("reassign_every", reassign_every, minimum=1)
        if not latent and not any(isinstance(v, dict) and v.get("latent")
                                  for v in (overrides.values() if isinstance(overrides, dict)
                                            else ())):
            raise ValueError("Invalid value for argument `reassign_every`. Expected None "
                             "unless latent=True (re-assignment moves units to the centroid "
                             "nearest their latent weight). Received: "
                             f"reassign_every={reassign_every!r} with latent=False")
    train_data = check_data("train_data", train_data, model, required=bool(epochs),
                            labels=bool(epochs))
    val_data = check_data("val_data", val_data, model, required=False)
    settings = compile_settings(model, metrics, train_data)  # its own, or the defaults
    loss, metrics = settings["loss"], settings["metrics"] or []
    loss_weights, weighted = settings["loss_weights"], settings["weighted_metrics"]
    table = None
    if epochs:
        train_data = check_labels_for("train_data", train_data, model, loss)
        val_data = check_labels_for("val_data", val_data, model, loss)
        for name, data in (("train_data", train_data), ("val_data", val_data)):
            check_label_keys(name, data, model)  # before the k-means, not inside fit
            if isinstance(data, tuple):  # NaN inputs trained NaN weights, refused late
                check_finite_samples(name, data[0], "x (NaN inputs train NaN weights)")
        table = check_class_weight(class_weight, model, loss, train_data)
    elif class_weight is not None:
        check_class_weight(class_weight, model, loss, None)
    keras.utils.set_random_seed(seed)
    own = not collecting_scale_notes()  # compress collects them itself, for its notes
    with scale_loss_collected() if own else contextlib.nullcontext([]) as lost:
        clustered = cluster_weights(model, n_clusters, unit=unit, granularity=granularity,
                                    init=init, seed=seed, latent=latent, overrides=overrides,
                                    preserve_sparsity=preserve_sparsity, **(kernel_options or {}))
    history = None
    if epochs:
        clustered.compile(optimizer=keras.optimizers.Adam(learning_rate),
                          **{k: for_outputs(v, model, clustered) for k, v in (
                              ("loss", loss), ("loss_weights", loss_weights),
                              ("metrics", metrics), ("weighted_metrics", weighted))})
        callbacks = list(callbacks or [])
        if reassign_every:
            from dkm_tf.training.reassign import ReassignClusters  # noqa: PLC0415

            callbacks.append(ReassignClusters(every_n_epochs=reassign_every))
        counter = BatchCount()  # an epoch of no batch: noted (a one-shot generator)
        fit_kwargs = {"epochs": int(epochs), "verbose": verbose,
                      "callbacks": [counter, *callbacks]}
        train_data, val_data = (_relabel(d, model, clustered) for d in (train_data, val_data))
        if val_data is not None:
            fit_kwargs["validation_data"] = val_data
        train_data, weights = weigh_classes(train_data, table, loss)
        fit_kwargs.update(weights)  # sample_weight (arrays) or class_weight (a PyDataset)
        if isinstance(train_data, tuple):
            history = fit_counted(clustered, counter, train_data[0], train_data[1],
                                  batch_size=batch_size, **fit_kwargs)
        else:
            history = fit_counted(clustered, counter, train_data,
                                  shuffle=not is_tf_dataset(train_data), **fit_kwargs)
        report_ran_out("finetune", counter)
    stripped, palettes = strip_clustering(clustered)
    palettes = [dataclasses.replace(p, note="; ".join(n for n in [p.note, *(
        t for t in lost if f" of {p.layer_name!r} " in t)] if n))
        for p in palettes]  # the scales the first k-means lost: cluster_weights warned
    # plain SGD has no slot variables: built, it saves and loads back without Keras'
    # optimizer-mismatch warning and adds nothing to the .keras file (Adam's slots would
    # triple it); training the stripped model further would undo the sharing anyway
    stripped.compile(optimizer=keras.optimizers.SGD(learning_rate), loss=loss,
                     loss_weights=loss_weights, weighted_metrics=fresh_metrics(weighted),
                     metrics=fresh_metrics(metrics))  # not those fit has updated
    stripped.optimizer.build(stripped.trainable_variables)
    return stripped, palettes, history


def _relabel(data, model, clustered):
    """``data`` with a label dict keyed by a list-output ``model``'s layer names keyed by the
    clustered copy's output names (``cluster_<name>``): Keras failed on the old keys inside
    ``fit``, after the k-means ("Expected float32, but got a of type 'str'"). Arrays and
    ``tf.data.Dataset`` elements ``(x, y[, sample_weight])``; anything else as it is."""
    if isinstance(data, tuple):
        return (data[0], for_outputs(data[1], model, clustered))
    spec = getattr(data, "element_spec", None) if is_tf_dataset(data) else None
    if not (isinstance(spec, tuple) and len(spec) in (2, 3) and isinstance(spec[1], dict)
            and for_outputs(spec[1], model, clustered) is not spec[1]):
        return data
    return data.map(lambda x, y, *w: (x, for_outputs(y, model, clustered), *w))
