"""``compress``: the end-to-end job behind ``dkm-tf compress`` and the notebooks.

Methods (Wu et al., ICML 2018, §4 and Table 2 naming):

* ``"wr"`` — k-means on the trained weights, no re-training ("Deep k-Means WR").
* ``"finetune"`` — k-means, then fine-tuning with hard weight sharing (gradients of a cluster
  flow into its centroid; the recipe of Deep Compression and tfmot).
* ``"dkm"`` — re-training with the k-means regularizer, then k-means ("Deep k-Means").
* ``"dkm+finetune"`` — both.
"""

from __future__ import annotations

import dataclasses
import time

from dkm_tf.core import palette as palette_lib
from dkm_tf.core.validate import CALIBRATION_SAMPLES
from dkm_tf.data_inputs import calibration_set, sample_count
from dkm_tf.graph.share import share_weights
from dkm_tf.pipeline_args import check_args, fisher_loss, input_range_note
from dkm_tf.pipeline_metrics import (
    AGREEMENT_USE,
    FISHER_USE,
    accuracy_note,
    agreement_data,
    binary_threshold,
    evaluate_accuracy,
    float_predictions,
    logits_note,
    predicted_classes,
    ratio_words,
    tflite_accuracy,
)
from dkm_tf.pipeline_report import cluster_stage, estimate_energy, result_notes
from dkm_tf.pipeline_skipped import skipped_layers as _skipped_layers
from dkm_tf.pipeline_skipped import skipped_lines
from dkm_tf.training.batches import BatchCount, fit_counted, ran_out_collected, report_ran_out
from dkm_tf.training.data_checks import reads_once

__all__ = ["METHODS", "CompressionResult", "accuracy_note", "agreement_data", "binary_threshold",
           "compress", "evaluate_accuracy", "float_predictions", "predicted_classes",
           "tflite_accuracy", "train_classifier"]

METHODS = ("wr", "finetune", "dkm", "dkm+finetune")


@dataclasses.dataclass
class CompressionResult:
    """What :func:`compress` returns.

    Attributes:
        model: the compressed Keras model (plain layers; clustered kernels hold codebook
            values), compiled with the given model's loss, ``loss_weights``, metrics and
            ``weighted_metrics`` and a plain SGD at its learning rate (the fine-tuning
            methods: with the loss they trained with); for ``"wr"`` / ``"dkm"`` uncompiled
            when the given model has no compiled loss (or compiling failed: a note says why).
        palettes: the :class:`~dkm_tf.core.palette.Palette` of every clustered tensor.
        skipped: ``(layer_name, reason)`` for layers with weights that were not clustered.
        size: the :class:`~dkm_tf.core.palette.SizeReport` (CR by log2 K and by entropy).
        method: the method used.
        accuracy_before: test accuracy of the input model (None without test data).
        accuracy_after: test accuracy of the compressed model.
        seconds: wall time of each stage: ``"retrain"`` (the Deep k-Means retraining of
            ``"dkm"`` / ``"dkm+finetune"``), then ``"cluster"`` (k-means, with calibration for
            a calibrated ``"wr"``) or ``"finetune"`` (k-means plus hard-sharing fine-tuning).
        energy: the :class:`~dkm_tf.energy.EnergyReport` of the compressed model (with the
            uncompressed model as baseline), or None when the shapes could not be read.
        tflite: export reports by format label, when the caller exported the model.
        plots: the :class:`dkm_tf.plots.Plot` files the caller wrote (``dkm-tf compress``).
        calibration: ``{"weighting", "refine", "samples"}`` of a calibrated ``"wr"``, else empty.
        metric: what ``accuracy_*`` measure: ``"test accuracy"``, or ``"agreement with the
            float model"`` when the test labels are the float model's own top-1 predictions
            (:func:`float_predictions`: held-out inputs without labels).
        threshold: where a one-unit output (a binary classifier) turns to class 1 in
            ``accuracy_*`` (:func:`binary_threshold` of ``model``: 0.5 probabilities, 0.0
            logits; ``dkm-tf compress`` scores its ``.tflite`` files with it), else None.
        notes: what was not done and why (e.g. no accuracy for a model with several
            outputs: :func:`accuracy_note`; no energy estimate), and what the figures count
            (a parameter count changed by BatchNormalization folding, tensors clustered with
            another granularity: :mod:`dkm_tf.pipeline_report`); printed by ``summary`` and
            ``dkm-tf compress``, and in report.json.
    """

    model: object
    palettes: list
    skipped: list
    size: palette_lib.SizeReport
    method: str
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    seconds: dict = dataclasses.field(default_factory=dict)
    energy: object = None
    tflite: dict = dataclasses.field(default_factory=dict)
    plots: list = dataclasses.field(default_factory=list)
    calibration: dict = dataclasses.field(default_factory=dict)
    metric: str = "test accuracy"
    notes: list = dataclasses.field(default_factory=list)
    threshold: float | None = None

    def summary(self):
        """The result as text: method, size table, skipped layers, accuracy, energy, notes."""
        lines = [f"method: {self.method}", self.size.summary(), *skipped_lines(self.skipped)]
        if self.accuracy_before is not None:
            before, after = (round(100 * a, 2) for a in (self.accuracy_before,
                                                          self.accuracy_after))
            lines.append(f"{self.metric}: {before:.2f}% before, {after:.2f}% after "
                         f"({round(after - before, 2) + 0.0:+.2f} pt)")  # of the shown values
        if self.energy is not None and self.energy.baseline is not None:
            r = self.energy.ratio_vs(self.energy.baseline)
            lines.append(f"energy (16-bit, entropy-coded indices): {ratio_words(r.paper)} by "
                         f"the paper's metric, {ratio_words(r.hierarchy)} by the "
                         "memory-hierarchy model")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def to_dict(self):
        """A JSON-ready dict (no model, palettes, tflite or plots), the core of report.json."""
        return {"method": self.method, "size": self.size.to_dict(),
                "skipped": [list(s) for s in self.skipped],
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
                "metric": self.metric, "seconds": dict(self.seconds),
                "calibration": dict(self.calibration), "notes": list(self.notes),
                "threshold": self.threshold,
                "energy": None if self.energy is None else self.energy.to_dict()}


def train_classifier(model, train_data, *, epochs=30, batch_size=32, learning_rate=1e-3,
                     verbose=0, callbacks=None):
    """Compile (Adam, the cross-entropy that fits the model's output) and fit a classifier. The
    loss is :func:`dkm_tf.training.common.default_loss`: sparse categorical
    cross-entropy on logits, or on probabilities when the model ends in a softmax (a custom
    last layer: its outputs on the first inputs are rows of probabilities); binary
    cross-entropy for one output unit (labels 0/1; the accuracy metric counts class 1 above
    0 where it is ``from_logits=True``, else above 0.5). ``train_data``: ``(x, y)`` with class ids
    y, or a finite, batched ``tf.data.Dataset`` / ``keras.utils.PyDataset`` (its own batches;
    ``batch_size`` applies to arrays), checked before any training as
    :func:`compress` checks it (labels in range, no endless dataset). ``callbacks``: Keras
    callbacks for ``fit`` (e.g. a :meth:`dkm_tf.progress.Progress.keras_callback` bar). An
    epoch that trains no batch (a one-shot generator used up) is a ``UserWarning``, as is a
    head it trains as logits whose outputs may be probabilities (``compress``' note).
    """
    import keras  # noqa: PLC0415

    from dkm_tf.pipeline_args import check_train_data  # noqa: PLC0415
    from dkm_tf.training.common import default_loss, is_tf_dataset  # noqa: PLC0415
    from dkm_tf.training.compile_settings import sample_inputs as firsts  # noqa: PLC0415
    from dkm_tf.training.compile_settings import warn_logits_doubt  # noqa: PLC0415
    from dkm_tf.training.first_batch import keep_first_batch, output_shape  # noqa: PLC0415

    train_data = check_train_data(model, train_data, batch_size=batch_size,
                                  callbacks=callbacks, verbose=verbose)
    x = firsts(model, train_data)  # the data's own source: keep_first_batch's is unread
    kept = keep_first_batch(train_data)  # JAX, a spec of unknown rank: no batch lost
    shape = output_shape(model, kept)  # from kept's first-batch spec (nothing read)
    loss = default_loss(model, shape, x)  # its metric's threshold is the loss's (review R3)
    warn_logits_doubt(model, train_data, shape, loss)  # compress' note of an unopened head
    train_data = kept
    threshold = (None if not isinstance(loss, keras.losses.BinaryCrossentropy) else
                 0.0 if loss.get_config()["from_logits"] else 0.5)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss,
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold)
                           if threshold is not None else "accuracy"])
    fit = ({"x": train_data[0], "y": train_data[1], "batch_size": batch_size}
           if isinstance(train_data, tuple) else {"x": train_data})
    if is_tf_dataset(train_data):  # Keras cannot shuffle it, and warns when asked to
        fit["shuffle"] = False
    counter = BatchCount()  # an epoch of no batch (a one-shot generator): a UserWarning
    history = fit_counted(model, counter, **fit, epochs=epochs, verbose=verbose,
                          callbacks=[counter, *(callbacks or [])])
    report_ran_out("train_classifier", counter)
    return history


def _other_params(model, palettes):  # a layer a Lambda calls, untracked, counts: the file has it
    from dkm_tf.graph.untracked import param_count  # noqa: PLC0415
    return param_count(model) - sum(p.n_values for p in palettes)


@reads_once  # compress and the training function it calls read a dataset's labels once
def compress(model, train_data=None, test_data=None, *, method="wr", n_clusters=16,
             unit="scalar", granularity="per_tensor", init="kmeans++", seed=0, overrides=None,
             finetune_epochs=2, finetune_learning_rate=None, dkm_epochs=5, lam=1.0,
             relaxation="hard", sparsity=0.0, batch_size=64, verbose=1,
             preserve_sparsity=False, progress=None, codebook="layer", transforms=1,
             scale_bits=16, weighting=None, refine=None,
             calibration_samples=CALIBRATION_SAMPLES,
             class_weight=None):
    """Compress a Keras model by k-means weight sharing.

    Args:
        model: a built Sequential or Functional Keras model (never modified).
        train_data: ``(x, y)`` (or a finite, batched dataset) for the methods that train
            (``finetune``, ``dkm``; see :func:`dkm_tf.finetune` for the forms refused);
            ``(x, None)`` serves as unlabelled calibration inputs of ``weighting`` /
            ``refine``. A stage's epoch that trains no batch is noted (a ``from_generator``
            dataset over a one-shot Python generator: ``"dkm+finetune"``'s fine-tune stage
            trained none after its DKM stage used it up; pass a generator function).
        test_data: ``(x, y)`` to report accuracy before and after (optional); ``y`` holds
            class ids, shape (samples,) or (samples, 1) (one-hot labels are refused: pass
            ``y.argmax(-1)``). ``(x, None)``: held-out inputs without labels; the figures are
            then the agreement with the float model's top-1 classes
            (:attr:`CompressionResult.metric`), as ``dkm-tf compress`` reports them. A dict
            or list of labels (a model with several outputs) gives no accuracy, with a note.
        method: one of ``"wr"``, ``"finetune"``, ``"dkm"``, ``"dkm+finetune"``.
        n_clusters: K per codebook (per layer overrides through ``overrides``).
        unit: ``"scalar"``, ``"row"``, ``"kernel"`` or ``"auto"``.
        granularity: ``"per_tensor"`` or ``"per_channel"``.
        init: k-means init.
        seed: random seed of the k-means, calibration sample and training (< 2**32 then).
        overrides: per-layer settings keyed by layer name or class name (None skips a layer):
            those of :func:`dkm_tf.share_weights` (``"wr"``, ``"dkm"``) or
            :func:`dkm_tf.cluster_weights` (the fine-tuning methods). The ``"dkm"`` methods'
            re-training takes their K, sparsity and None too, and refuses another unit or
            preserve_sparsity (it regularizes every layer with one). Overrides that leave
            every clusterable layer float are refused before any work (nothing to cluster).
        finetune_epochs: epochs of hard-weight-sharing fine-tuning (``dkm-tf compress``: 3).
        finetune_learning_rate: Adam learning rate of the fine-tuning (default: 1e-3 when
            the smallest K of any layer, ``overrides`` included, is <= 4, else 1e-4).
        dkm_epochs: epochs of re-training with the k-means regularizer.
        lam: regularizer strength lambda. The paper's 1e-4 (with SGD over a long schedule)
            barely moves the weights in a few epochs of Adam: on the digits CNN at K=2 it gave
            73 % after k-means vs 92 % with lambda = 1 (measured), hence the default 1.0.
        relaxation: ``"hard"`` or ``"spectral"`` (see :class:`SpectralKMeansRegularizer`).
        sparsity: fraction p of units per tensor tied to a fixed zero centre, in the regularizer
            and the final k-means of ``"wr"`` / ``"dkm"`` (§4.1.4; the finetune methods refuse).
        batch_size: batch size of training and evaluation.
        verbose: 0 silent, 1 progress lines, 2 Keras progress bars too.
        preserve_sparsity: keep a pruned model's exact zeros exactly zero in every step (a
            zero cluster not counted against K; see :func:`dkm_tf.cluster_weights`).
        progress: a :class:`dkm_tf.progress.Progress` showing each stage (re-training and
            fine-tuning batch by batch, clustering with the tensors it clusters), or None.
        codebook, transforms, scale_bits: kernel clustering with scaled units (``unit="kernel"``,
            ``codebook="shared"`` or groups; Son et al., ECCV 2018): see
            :func:`dkm_tf.share_weights` and :func:`dkm_tf.cluster_weights`.
        weighting, refine: post-training only (``method="wr"``): ``weighting="fisher"``
            (sensitivity-weighted k-means, SqueezeLLM §4.1) and ``refine="outputs"`` /
            ``"gptq"`` (codebooks fitted to the float layer outputs, with GPTQ's assignment
            for ``"gptq"``); see :func:`dkm_tf.share_weights`. Both calibrate on
            ``calibration_samples`` samples of ``train_data`` drawn with ``seed``.
        calibration_samples: how many training samples ``weighting`` / ``refine`` use
            (``refine`` over-fits fewer than 16, noted; on one it keeps the k-means codebooks);
            another value than the default (``core.validate.CALIBRATION_SAMPLES``, 256)
            without them is refused (unused).
        class_weight: ``{class id: weight}`` of the training methods' loss (see
            :func:`dkm_tf.finetune`); refused with ``"wr"``.

    Returns:
        A :class:`CompressionResult`.
    """
    if method not in METHODS:
        raise ValueError(f"Invalid value for argument `method`. Expected one of {list(METHODS)}. "
                         f"Received: method={method!r}")
    if method != "wr" and train_data is None:
        raise ValueError(f"method={method!r} trains the model: pass `train_data=(x, y)`.")
    from dkm_tf.graph.kernel_share import kernel_route  # noqa: PLC0415

    kernel = ({"codebook": codebook, "transforms": transforms, "scale_bits": scale_bits}
              if kernel_route(unit, codebook, transforms, scale_bits) else None)
    train_data, test_data = check_args(model, train_data, test_data, locals())
    log = print if verbose else (lambda *a, **k: None)
    bar = (lambda name: [progress.keras_callback(name)]) if progress is not None else (
        lambda name: None)
    seconds, metric, notes = {}, "test accuracy", []
    if (note := input_range_note(train_data, test_data)) is not None:  # 0-255 vs [0, 1]
        notes.append(note)
    if test_data is not None and test_data[1] is None:  # held-out inputs without labels
        agreed, note = agreement_data(model, test_data[0], batch_size=max(batch_size, 256))
        notes += [note] if note else []  # inputs where the float model outputs NaN: left out
        if agreed is None:
            notes.append(f"no agreement with the float model on test_data: "
                         f"{accuracy_note(model, x=test_data[0])}")
        test_data, metric = ((None, metric) if agreed is None else
                             (agreed, "agreement with the float model"))
    from dkm_tf.training.common import compiled_loss  # noqa: PLC0415

    notes += [n for n in [logits_note(model, [  # an uncompiled regressor read as a classifier
        metric != "test accuracy" and AGREEMENT_USE,
        weighting and compiled_loss(model) is None and FISHER_USE], data=(train_data,
                                                                          test_data))] if n]
    acc_before = evaluate_accuracy(model, test_data) if test_data is not None else None
    from dkm_tf.core.loss_kind import keep_source_loss  # noqa: PLC0415
    from dkm_tf.pipeline_args import merged_lora  # noqa: PLC0415
    from dkm_tf.training import compile_settings as trained  # noqa: PLC0415
    work = keep_source_loss(model, merged_lora(model, notes))  # an uncompiled copy's loss
    notes += [n for n in [method != "wr" and (trained.carried_loss_note(model) or (
        trained.probabilities_note(model, train_data)))] if n]  # a custom softmax: no logits
    if method.startswith("dkm"):
        from dkm_tf.pipeline_args import override_settings, regularizer_settings  # noqa: PLC0415
        from dkm_tf.training.retrain import dkm_retrain  # noqa: PLC0415

        log(f"[dkm] re-training {dkm_epochs} epoch(s) with the k-means regularizer "
            f"(lambda={lam}, {relaxation})", flush=True)
        t = time.perf_counter()
        reg_k, reg_p = regularizer_settings(work, n_clusters, sparsity,  # per-layer K, p
                                            override_settings(method, locals())[0], overrides)
        with ran_out_collected() as ran_out:  # a one-shot generator's end: a note
            work, _ = dkm_retrain(work, train_data, n_clusters=reg_k, lam=lam,
                                  relaxation=relaxation, unit=unit, epochs=dkm_epochs,
                                  sparsity=reg_p, batch_size=batch_size,
                                  verbose=max(verbose - 1, 0), callbacks=bar("dkm"),
                                  preserve_sparsity=preserve_sparsity, seed=seed,
                                  class_weight=class_weight)
        notes += ran_out
        seconds["retrain"] = time.perf_counter() - t
    t, calib = time.perf_counter(), None  # the calibration sample of a calibrated "wr"
    if method.endswith("finetune"):
        from dkm_tf.pipeline_args import finetune_lr  # noqa: PLC0415
        from dkm_tf.training.finetune import finetune  # noqa: PLC0415

        lr = finetune_lr(model, method, locals())  # a float, or by the smallest K
        log(f"[finetune] clustering (K={n_clusters}"
            f"{f'; {len(overrides)} per-layer override(s)' if overrides else ''}) and fine-"
            f"tuning {finetune_epochs} epoch(s) with hard weight sharing (Adam, lr "
            f"{format(lr, 'g') if isinstance(lr, float) else type(lr).__name__})",
            flush=True)
        stage = cluster_stage(progress, work, n_clusters, overrides)
        from dkm_tf.training.wrapper_extras import scale_loss_collected  # noqa: PLC0415
        with scale_loss_collected() as lost, ran_out_collected() as ran_out:  # notes, not
            clustered, palettes, _ = finetune(  # cluster_weights' UserWarning (scales lost)
                work, train_data, n_clusters=n_clusters, unit=unit, granularity=granularity,
                init=init, epochs=finetune_epochs, learning_rate=lr, batch_size=batch_size,
                overrides=overrides, verbose=max(verbose - 1, 0), seed=seed,
                preserve_sparsity=preserve_sparsity, callbacks=bar("finetune"),
                kernel_options=kernel, class_weight=class_weight)
        notes += lost + ran_out
        skipped = _skipped_layers(clustered, palettes, overrides, unit)  # after BN fold
    else:
        log(f"[k-means] clustering every kernel (K={n_clusters}, {unit}, {granularity}"
            f"{f'; {len(overrides)} per-layer override(s)' if overrides else ''})", flush=True)
        stage = cluster_stage(progress, work, n_clusters, overrides)
        if weighting or refine:
            calib = calibration_set(train_data, calibration_samples, seed)
            log(f"[k-means] calibrating on {sample_count(calib[0])} training samples "
                f"(weighting={weighting}, refine={refine})", flush=True)
            from dkm_tf.graph.refine import few_samples_note  # noqa: PLC0415
            notes += [n for n in [refine and few_samples_note(sample_count(calib[0]))] if n]
        clustered, palettes, skipped = share_weights(
            work, n_clusters, unit=unit, granularity=granularity, init=init, seed=seed,
            overrides=overrides, sparsity=sparsity, verbose=verbose > 1,
            preserve_sparsity=preserve_sparsity, weighting=weighting, refine=refine,
            data=calib, loss=fisher_loss(work, weighting, None if calib is None else calib[0]),
            **(kernel or {}))
    seconds["finetune" if method.endswith("finetune") else "cluster"] = time.perf_counter() - t
    if stage is not None:  # still open unless a fine-tuning bar took over
        stage.close()
    from dkm_tf.training.compile_settings import compile_like  # noqa: PLC0415
    if (why := compile_like(model, clustered)) is not None:  # the user's loss, metrics, ...
        notes.append(why)
    acc_after = (evaluate_accuracy(clustered, test_data)
                 if test_data is not None and acc_before is not None else None)
    if acc_before is None and test_data is not None:
        notes.append(f"no test accuracy: {accuracy_note(model, x=test_data[0])}")
    one_unit = acc_after is not None and tuple(getattr(clustered, "output_shape", ()))[-1:] == (
        1,)
    threshold = binary_threshold(clustered, test_data[0]) if one_unit else None  # .tflite
    size = palette_lib.size_report(palettes, other_params=_other_params(clustered, palettes))
    options = {k: v for k, v in (("weighting", weighting), ("refine", refine)) if v}
    label = method + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options
                      else "")
    report = estimate_energy(clustered, palettes, notes, (test_data, train_data))
    notes += result_notes(model, clustered, size, granularity, palettes)  # BN folded, ...
    return CompressionResult(clustered, palettes, skipped, size, label, acc_before, acc_after,
                             seconds, report, calibration={**options, "samples": sample_count(
                                 calib[0])} if calib is not None else {}, metric=metric,
                             notes=notes, threshold=threshold)


def save_palettes(palettes, model_path):
    """Write ``<model stem>.palettes.json`` beside a saved model (atomically); its path.

    A JSON list of :meth:`Palette.to_dict`: ``dkm_tf.energy.estimate(model_path)`` and
    ``dkm-tf energy`` read it to charge the codebooks + indices instead of float kernels, and
    ``export/to_tflite.py --palettes`` exports from it.
    """
    import json  # noqa: PLC0415
    import os  # noqa: PLC0415

    from dkm_tf.core.files import atomic_path, check_target  # noqa: PLC0415

    path = os.path.splitext(check_target(model_path, "model_path"))[0] + ".palettes.json"
    with atomic_path(path, suffix=".json") as tmp, open(tmp, "w") as f:
        json.dump([p.to_dict() for p in palettes], f)
    return path
