"""Argument checks of :func:`dkm_tf.compress`, run before any evaluation, training or k-means.

Every check raises ``ValueError`` / ``TypeError`` naming the argument, what is allowed and what
was received (the messages of :mod:`dkm_tf.core.validate`).
"""

from __future__ import annotations

__all__ = ["REGULARIZER_WIDE", "DataMismatchError", "calibration_set", "check_args",
           "check_calibration",
           "check_labels", "check_method_overrides", "check_regularizer_overrides",
           "check_train_data", "finetune_lr", "fisher_loss", "input_range_note",
           "override_settings", "regularizer_settings", "repeats_forever", "smallest_k"]

import numpy as np

from dkm_tf.data_inputs import calibration_set
from dkm_tf.training.data_checks import check_labels, repeats_forever


class DataMismatchError(ValueError):
    """``train_data`` / ``test_data`` that do not fit the model, found by :func:`check_args`
    before any work (``dkm-tf compress`` reports it as a bad ``--dataset``, exit status 2)."""


# settings the Deep k-Means re-training (dkm_retrain) takes for the whole model only
REGULARIZER_WIDE = ("unit", "preserve_sparsity")


def check_args(model, train_data, test_data, args):
    """Every argument of :func:`compress`, checked before any evaluation, training or k-means.

    Returns ``(train_data, test_data)`` as checked (``(x, y)`` tuples or datasets).
    """
    import keras  # noqa: PLC0415

    from dkm_tf.core import validate  # noqa: PLC0415
    from dkm_tf.graph.clusterable import check_has_clusterable  # noqa: PLC0415
    from dkm_tf.graph.layer_features import check_not_quantized  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise validate.invalid_type("model", "a built keras.Model", model)
    check_not_quantized(model, "compress", overrides=args["overrides"])  # before any reading
    check_has_clusterable(model, "compress")
    method, a = args["method"], args
    trains = method.endswith("finetune")
    settings, check = override_settings(method, a)
    check(settings)  # the defaults first, then each override on top of them
    # a training method's seed is also keras.utils.set_random_seed's, which wants it < 2**32
    validate.check_int("seed", a["seed"], minimum=0, maximum=None if method == "wr" else 2**32 - 1)
    check_method_overrides(model, a["overrides"], method, a)
    validate.check_number("sparsity", a["sparsity"], "a fraction in [0, 1)", low=0, high=1,
                          high_open=True)
    if a["preserve_sparsity"] and a["sparsity"]:
        raise validate.invalid("sparsity", "0 with preserve_sparsity=True", a["sparsity"])
    if trains and a["sparsity"]:  # was dropped: 0 % zeros where "wr" / "dkm" gave 30 %
        raise validate.invalid("sparsity", f"0 with method={method!r} (its clustering, "
                               "cluster_weights, has no fixed zero cluster; sparsity applies "
                               "to method 'wr' or 'dkm')", a["sparsity"])
    validate.check_int("batch_size", a["batch_size"], minimum=1)
    if not isinstance(a["verbose"], bool):  # True/False read as 1/0
        validate.check_int("verbose", a["verbose"], minimum=0, maximum=2)
    if trains:
        validate.check_int("finetune_epochs", a["finetune_epochs"], minimum=0)
        finetune_lr(model, method, a)  # named as compress names it; finite; numpy floats too
    if a["progress"] is not None and not all(callable(getattr(a["progress"], f, None))
                                             for f in ("stage", "keras_callback")):
        raise validate.invalid_type("progress", "None or a dkm_tf.progress.Progress",
                                    a["progress"])  # was an AttributeError mid-run
    if method.startswith("dkm"):
        validate.check_int("dkm_epochs", a["dkm_epochs"], minimum=1)
        validate.check_number("lam", a["lam"], "a finite number >= 0", low=0)
        from dkm_tf.training.regularizer import RELAXATIONS  # noqa: PLC0415

        validate.check_choice("relaxation", a["relaxation"], RELAXATIONS)
    try:
        data = _check_datasets(model, train_data, test_data, method, a)
    except ValueError as e:  # ``TypeError``s stay: the Python API's wrong types, not data
        if isinstance(e, DataMismatchError) or not any(
                f"`{name}`" in str(e) for name in ("train_data", "test_data")):
            raise
        raise DataMismatchError(str(e)) from e
    if a.get("class_weight") is not None:  # before the first stage (dkm+finetune: both)
        from dkm_tf.training.class_weights import check_class_weight  # noqa: PLC0415
        from dkm_tf.training.common import default_loss, source_loss  # noqa: PLC0415

        if method == "wr":
            raise validate.invalid("class_weight", "None with method='wr' (it trains "
                                   "nothing)", a["class_weight"])
        check_class_weight(a["class_weight"], model,
                           source_loss(model) or default_loss(model), data[0])  # a copy's
    return data


def _check_datasets(model, train_data, test_data, method, a):
    """The data part of :func:`check_args`."""
    from dkm_tf.core import validate  # noqa: PLC0415
    from dkm_tf.training.common import check_data  # noqa: PLC0415

    train_data = check_data("train_data", train_data, model, required=method != "wr",
                            labels=False)  # (x, None) gets its own message below
    if method != "wr" and isinstance(train_data, tuple) and train_data[1] is None:
        raise validate.invalid("train_data", f"(x, y) with labels y for method={method!r} "
                               "(it trains)", "(x, None)")
    heads = len(getattr(model, "outputs", None) or ())
    if method != "wr" and heads > 1 and isinstance(train_data, tuple):
        y = train_data[1]
        hint = " (dkm_tf.finetune / dkm_retrain train every output with its compiled loss)"
        got = (f"labels for {len(y)} outputs ({', '.join(map(str, y))}){hint}"
               if isinstance(y, dict) else f"a {type(y).__name__} of {len(y)} labels{hint}"
               if isinstance(y, (list, tuple)) else f"one label array y of shape {np.shape(y)}")
        raise ValueError(f"Invalid value for argument `train_data`. Expected a single-output "
                         f"classifier for method={method!r}, which trains on the labels y (the "
                         f"model has {heads} outputs; method='wr' trains nothing). Received: "
                         f"{got}")  # a dict was "one label array y of shape ()"
    check_calibration(model, method, train_data, a)
    test_data = check_data("test_data", test_data, model, required=False, labels=False)
    if test_data is not None and not isinstance(test_data, tuple):
        raise validate.invalid_type("test_data", "an (x, y) pair of arrays", test_data)
    from dkm_tf.core.labels import is_binary_loss  # noqa: PLC0415
    from dkm_tf.training.common import is_sparse_loss, source_loss  # noqa: PLC0415

    # training labels are class ids for the default loss (a sparse or, for one unit, binary
    # cross-entropy) or a sparse compiled one; their range ([0, C), 0 / 1 for one unit) is
    # checked for every loss except another loss of a one-unit model (integer regression
    # targets); test labels are class ids
    loss, shape = source_loss(model), getattr(model, "output_shape", None)  # a copy: its source's
    reads_ids = loss is None or is_sparse_loss(loss)
    train_ranges = reads_ids or is_binary_loss(loss) or not (
        isinstance(shape, tuple) and shape[-1:] == (1,))
    for name, data, ids, ranges in (
            ("train_data", train_data, reads_ids, train_ranges),
            ("test_data", test_data, True, True)):
        data = check_labels(name, data, model, class_ids=ids, ranges=ranges)
        if isinstance(data, tuple) and hasattr(data[0], "dtype"):  # arrays (not a Dataset)
            validate.check_finite_samples(name, data[0], "x (NaN inputs train NaN weights)")
        train_data, test_data = (data, test_data) if name == "train_data" else (train_data, data)
    return train_data, test_data


def override_settings(method, args):
    """``(defaults, check)`` of the per-layer settings that ``overrides`` may change for
    ``method``: those of :func:`dkm_tf.cluster_weights` for the methods that fine-tune
    (``latent`` included), else those of :func:`dkm_tf.share_weights` (``sparsity``
    included); ``check`` checks one layer's settings (the defaults updated by an entry).
    ``args``: the arguments of :func:`compress` (``preserve_sparsity`` / ``sparsity``
    default to off)."""
    from dkm_tf.graph.share import _check_settings  # noqa: PLC0415
    from dkm_tf.training.wrapper import validate_settings  # noqa: PLC0415

    trains = method.endswith("finetune")
    settings = {k: args[k] for k in ("n_clusters", "unit", "granularity", "init")}
    settings["preserve_sparsity"] = args.get("preserve_sparsity", False)
    settings.update({"latent": False} if trains else {"sparsity": args.get("sparsity", 0.0)})
    return settings, ((lambda cfg: validate_settings(**cfg)) if trains else _check_settings)


def check_regularizer_overrides(method, overrides, defaults, model=None):
    """``method="dkm"`` / ``"dkm+finetune"``: the re-training regularizes every layer with
    one ``unit`` and one ``preserve_sparsity`` (``dkm_retrain`` takes no other), so an entry
    setting another value would cluster a layer in a form it was not trained for: refused.
    A ``unit`` is compared as the layers of ``model`` the entry names resolve it (``"auto"``
    is ``"scalar"`` for a Dense kernel; a row of one value is a scalar); without ``model``
    (the CLI's flags, before the model is loaded) it is left to the check with the model.
    Its ``n_clusters``, ``sparsity`` and None (no penalty) do reach the re-training
    (:func:`regularizer_settings`)."""
    from dkm_tf.core import validate  # noqa: PLC0415

    if not method.startswith("dkm"):
        return
    for key, value in (overrides or {}).items():
        for name in REGULARIZER_WIDE:
            if not (isinstance(value, dict) and name in value and value[name] != defaults[name]):
                continue
            if name == "unit" and (model is None or _same_units(model, key, defaults,
                                                                 overrides)):
                continue
            raise validate.invalid(
                f"overrides[{key!r}]", f"no {name!r} other than {defaults[name]!r} with "
                f"method={method!r} (its re-training regularizes every layer with "
                f"{name}={defaults[name]!r}; the per-layer k-means would then cluster a "
                "layer in a form it was not trained for)", value)


def _same_units(model, key, defaults, overrides):
    """Whether every clusterable weight of the layers that ``key`` names is clustered in
    the same unit under ``overrides`` as under ``defaults["unit"]`` (both resolved)."""
    from dkm_tf.core.units import layout_for, resolve_unit  # noqa: PLC0415
    from dkm_tf.graph import clusterable  # noqa: PLC0415

    for layer in clusterable.walk_layers(model):
        if key not in clusterable.override_keys(layer) or not clusterable.is_clusterable(
                layer):
            continue
        cfg = clusterable.resolve_layer_config(layer, defaults, overrides)
        for _, var, kind in clusterable.clusterable_weights(layer) if cfg is not None else ():
            shape = tuple(int(s) for s in var.shape)
            used, trained = (layout_for(shape, kind, resolve_unit(unit, kind, shape))
                             .effective_unit for unit in (cfg["unit"], defaults["unit"]))
            if used != trained:
                return False
    return True


def check_method_overrides(model, overrides, method, args):
    """The per-layer ``overrides`` of :func:`compress` for ``method``, checked against
    ``model`` before any work (:func:`dkm_tf.graph.clusterable.check_overrides`: every key
    names a layer or layer class, close matches listed; each entry's settings valid), and
    refused where the method would not apply them (:func:`check_regularizer_overrides`) or
    where they leave every clusterable layer float (nothing to cluster: the ``"dkm"``
    methods failed only once re-training started, after the CLI had trained its built-in
    model, and ``"finetune"`` fine-tuned the float model with no weight shared).
    Returns them as a dict (``{}`` for None)."""
    from dkm_tf.graph.clusterable import check_overrides  # noqa: PLC0415

    settings, check = override_settings(method, args)
    overrides = check_overrides(model, overrides, settings, check)
    check_regularizer_overrides(method, overrides, settings, model)
    ks = regularizer_settings(model, settings["n_clusters"], 0.0, settings, overrides)[0]
    if isinstance(ks, dict) and ks and all(k is None for k in ks.values()):
        work = {"wr": "its k-means would cluster nothing", "finetune": "it would fine-tune "
                "the float model with no weight shared"}.get(
                    method, "its re-training would regularize no kernel")
        raise ValueError(f"Invalid value for argument `overrides`. Expected settings that "
                         f"leave at least one layer clustered (None leaves a layer float; with "
                         f"every layer float method={method!r} has nothing to do: {work}). "
                         f"Received: overrides={overrides!r}, which leave every clusterable "
                         f"layer of model {model.name!r} float ({', '.join(ks)})")
    return overrides


def finetune_lr(model, method, args):
    """The learning rate of :func:`compress`'s fine-tuning: ``finetune_learning_rate``
    checked (a finite number > 0, numpy scalars as a float, or a Keras
    ``LearningRateSchedule``), or by default 1e-3 when the smallest K of any layer
    (:func:`smallest_k`) is <= 4, else 1e-4."""
    import keras  # noqa: PLC0415

    from dkm_tf.core import validate  # noqa: PLC0415

    lr = args["finetune_learning_rate"]
    if lr is None:
        return 1e-3 if smallest_k(model, method, args) <= 4 else 1e-4
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return lr
    return validate.check_number("finetune_learning_rate", lr, "a finite number > 0 or a "
                                 "keras.optimizers.schedules.LearningRateSchedule", low=0,
                                 low_open=True)


def smallest_k(model, method, args):
    """The smallest K any clustered layer of ``model`` gets under ``args["overrides"]`` (the
    per-layer K of :func:`regularizer_settings`; ``args["n_clusters"]`` without overrides):
    the codebook whose centroids move farthest in fine-tuning. ``args``: those of
    :func:`dkm_tf.compress`."""
    defaults = override_settings(method, args)[0]
    ks = regularizer_settings(model, args["n_clusters"], 0.0, defaults, args["overrides"])[0]
    if not isinstance(ks, dict):
        return ks
    return min((k for k in ks.values() if k is not None), default=args["n_clusters"])


def regularizer_settings(model, n_clusters, sparsity, defaults, overrides):
    """``(n_clusters, sparsity)`` for :func:`dkm_tf.dkm_retrain` under per-layer
    ``overrides``: ``{layer name: K}`` (None: a layer left float gets no penalty) and
    ``{layer name: p}``, each layer's as the final k-means resolves it; the plain values
    without overrides."""
    if not overrides:
        return n_clusters, sparsity
    from dkm_tf.graph import clusterable  # noqa: PLC0415

    ks, ps = {}, {}
    for layer in clusterable.walk_layers(model):
        if not clusterable.is_clusterable(layer):
            continue
        cfg = clusterable.resolve_layer_config(layer, defaults, overrides)
        ks[layer.name] = None if cfg is None else cfg["n_clusters"]
        ps[layer.name] = 0.0 if cfg is None else cfg.get("sparsity", sparsity)
    return ks, ps


def check_train_data(model, train_data, **fit_args):
    """The checks of :func:`check_args` for :func:`dkm_tf.pipeline.train_classifier`'s
    ``train_data`` (labelled) and ``fit_args`` (``batch_size``, ``callbacks``, ``verbose``);
    returns the data (lists as arrays, whole-number float labels as class ids)."""
    from dkm_tf.core import validate  # noqa: PLC0415
    from dkm_tf.training.common import check_data, check_fit_args  # noqa: PLC0415

    check_fit_args(model, **fit_args)
    train_data = check_data("train_data", train_data, model)
    data = check_labels("train_data", train_data, model)
    if isinstance(data, tuple) and hasattr(data[0], "dtype"):
        validate.check_finite_samples("train_data", data[0], "x (NaN inputs train NaN weights)")
    return data


def input_range_note(train_data, test_data):
    """A note for :attr:`CompressionResult.notes` when the inputs of ``train_data`` and
    ``test_data`` (arrays) lie in ranges (1st-99th percentiles) a factor >= 10 apart, e.g.
    0-255 pixels against inputs in [0, 1]: the accuracy is measured on the test inputs as
    given (never scaled), so it would silently measure another input scale than the model was
    trained on."""
    ranges = []
    for data in (train_data, test_data):
        x = data[0] if isinstance(data, tuple) else None
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf" or not x.size:
            return None
        flat = x.reshape(-1)[::max(1, x.size // 200_000)]  # a strided sample: bounded cost
        ranges.append(tuple(float(v) for v in np.percentile(flat.astype(np.float64), [1, 99])))
    # the 1st-99th percentiles, not min / max: one outlier (a count of 300 among 0-2) is no
    # other scale; a side all zeros (an empty one-hot row set) has no scale to compare
    spans = [max(abs(lo), abs(hi)) for lo, hi in ranges]
    if min(spans) == 0 or max(spans) / min(spans) < 10:
        return None
    (a, b), (c, d) = ranges
    return (f"train_data inputs lie in [{a:.4g}, {b:.4g}] (1st-99th percentiles) but test_data "
            f"inputs in [{c:.4g}, {d:.4g}]: scaled differently? (e.g. 0-255 pixels for a model "
            "trained on [0, 1]; the accuracy is measured on test_data as given, never rescaled)")


def check_calibration(model, method, train_data, a):
    """``weighting`` / ``refine`` / ``calibration_samples`` (post-training only), with the
    checks ``share_weights`` makes (one calibration sample through the model)."""
    from dkm_tf.core import validate  # noqa: PLC0415
    from dkm_tf.graph import kernel_share, sensitivity  # noqa: PLC0415
    from dkm_tf.graph.refine import REFINES, check_refine  # noqa: PLC0415
    from dkm_tf.graph.share import check_override_options  # noqa: PLC0415

    weighting, refine = (validate.check_choice("weighting", a["weighting"],
                                               sensitivity.WEIGHTINGS),
                         validate.check_choice("refine", a["refine"], REFINES))
    validate.check_int("calibration_samples", a["calibration_samples"], minimum=1)
    if weighting is None and refine is None:
        default = validate.CALIBRATION_SAMPLES  # not silently unused (review R2)
        if a["calibration_samples"] != default:
            raise validate.invalid("calibration_samples", f"{default} (the default) unless "
                                   "weighting or refine is given (only they calibrate)",
                                   a["calibration_samples"])
        return
    name = "weighting" if weighting else "refine"
    if method != "wr":
        raise validate.invalid(name, f"None with method={method!r} (it calibrates "
                               "post-training k-means: method='wr')", a[name])
    if not (isinstance(train_data, tuple) and len(train_data) == 2):
        raise validate.invalid("train_data", f"an (x, y) pair of arrays to calibrate "
                               f"{name}={a[name]!r} on",
                               None if train_data is None else type(train_data).__name__)
    kernel_share.kernel_route(a["unit"], a["codebook"], a["transforms"], a["scale_bits"],
                              weighting=(weighting, None), refine=(refine, None))
    check_override_options({"init": a["init"]}, a["overrides"] or {}, weighting, refine)
    sample = calibration_set(train_data, 1)
    sparse = a["preserve_sparsity"] or a["sparsity"]
    check_refine(model, refine, sample[0], False, sparse)
    sensitivity.check_weighting(model, weighting, sample if weighting else None,
                                fisher_loss(model, weighting, sample[0]), sparse,
                                data_used=refine is not None)


def fisher_loss(model, weighting, x=None):
    """The loss of ``weighting="fisher"``: the compiled model's (None: share_weights reads
    it), that of the model an uncompiled copy was made from (core.loss_kind.source_loss: an
    "mse" copy is refused as its source is), else the cross-entropy that fits its output
    (training.common.default_loss; a model loaded with ``compile=False`` has none):
    from_logits unless it ends in a softmax or, where its last activation is unknown, its
    outputs on the calibration inputs ``x`` are probabilities (from_logits=True on them was
    the Fisher of their softmax)."""
    from dkm_tf.core.loss_kind import source_loss  # noqa: PLC0415
    from dkm_tf.training.common import compiled_loss, default_loss  # noqa: PLC0415

    if weighting is None or compiled_loss(model) is not None:
        return None
    return source_loss(model) or default_loss(model, x=x)  # a copy carries its source's


def merged_lora(model, notes):
    """``model``, or a copy with each LoRA-enabled layer merged into a plain kernel
    (:func:`dkm_tf.graph.layer_features.merge_lora`: what the layer computes with is what
    gets compressed); a note in ``notes`` names them."""
    from dkm_tf.graph.layer_features import merge_lora  # noqa: PLC0415
    from dkm_tf.training.common import compiled_loss  # noqa: PLC0415
    from dkm_tf.training.compile_settings import compile_settings  # noqa: PLC0415

    work, merged = merge_lora(model)
    if merged and compiled_loss(model) is not None:  # the copy trains with the user's loss
        opt = model.optimizer
        work.compile(optimizer=type(opt).from_config(opt.get_config()),
                     **compile_settings(model))  # loss_weights, weighted_metrics too
    if merged:
        notes.append(f"LoRA merged: {len(merged)} layer(s) ({', '.join(merged)}) were "
                     "compressed on their effective kernel kernel + lora_kernel_a @ "
                     "lora_kernel_b * (lora_alpha / rank); the compressed model holds plain "
                     "layers (the given model is unchanged)")
    return work
