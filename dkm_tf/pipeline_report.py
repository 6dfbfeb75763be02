"""What :func:`dkm_tf.compress` reports beside the palettes: the energy estimate of the
compressed model and the notes on its figures, computed once, kept in
:attr:`CompressionResult.notes` and printed from there by ``summary()`` and ``dkm-tf
compress`` (report.json's ``notes``); and the progress stage of the k-means step
(:func:`cluster_stage`).

The notes: the compressed model's parameter count where it differs from the input model's
(BatchNormalization folded into the kernels: fer 58,423 -> 56,215), the tensors clustered
with another granularity than asked for (depthwise kernels default to per channel), and why
the energy was not estimated or at which input size it was, and the layers whose scaled
kernel clustering stored some kernels' float16 scales as 0 (zero kernels) or coarsely.
"""

from __future__ import annotations

__all__ = ["cluster_stage", "estimate_energy", "granularity_note", "params_note", "result_notes"]


def params_note(model, compressed):
    """A note when the compressed model has another parameter count than the input model
    (``[model]`` line): the size table's "whole model" counts the compressed one, whose
    BatchNormalization layers were folded into the kernels before them (fer: 58,423 params in,
    56,215 out, so 743 "other params", not 58,423 minus the clustered 55,472). [] when equal."""
    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    before, after = int(model.count_params()), int(compressed.count_params())
    if before == after:
        return []
    n_bn = sum(type(x).__name__ == "BatchNormalization" for x in walk_layers(model)) - sum(
        type(x).__name__ == "BatchNormalization" for x in walk_layers(compressed))  # folded
    why = (f" ({n_bn} BatchNormalization layer(s) folded into the kernel before each, as "
           "TFLite's converter folds them)" if n_bn and after < before else "")
    return [f"the compressed model has {after:,} parameters, the input model {before:,}"
            f"{why}: the size table's whole-model CR and the bits/w of the .tflite files "
            f"count the compressed model's {after:,}"]


def granularity_note(size, granularity):
    """A note naming the tensors of the size table (``size``: a SizeReport) clustered with
    another granularity than ``granularity`` (depthwise kernels default to per channel):
    their K is per codebook, one per channel, which the table does not show (fer: K 9 and
    CR 0.91 for 3x3 depthwise kernels at --n_clusters 16). [] when none is."""
    rows = [r for r in size.rows if r.get("granularity", granularity) != granularity]
    if not rows:
        return []
    names = ", ".join(f"{r['name']} ({r['granularity']})" for r in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    per = ("their K is per codebook (one per channel) and their CRs count every codebook; "
           if any(r["granularity"] == "per_channel" for r in rows) else "")
    return [f"{len(rows)} tensor(s) clustered with another granularity than {granularity}: "
            f"{names}{more}; {per}depthwise kernels default to per_channel, `overrides` "
            "may set others (each row of `result.size.rows` and each palette's `note` say "
            "which and why; report.json and clustered.palettes.json under dkm-tf compress)"]


def result_notes(model, compressed, size, granularity, palettes=()):
    """The notes on the size figures of ``compressed`` (:func:`params_note`,
    :func:`granularity_note`) and on what its ``palettes`` lost: kernels whose float16 scale
    is 0 or coarse (:func:`dkm_tf.graph.kernel_share.scale_loss_notes`)."""
    from dkm_tf.graph.kernel_share import scale_loss_notes  # noqa: PLC0415

    return (params_note(model, compressed) + granularity_note(size, granularity)
            + scale_loss_notes(palettes))


def estimate_energy(model, palettes, notes, data=()):
    """The energy estimate, at the size of the first of ``data``'s inputs where the model
    leaves its input size open (``Input((None, None, 3))``, subclassed); None if unknown.
    Why it was not estimated, or that it was at the data's size, is appended to ``notes``."""
    from dkm_tf import energy  # noqa: PLC0415
    from dkm_tf.energy.keras_reader import InputShapeError  # noqa: PLC0415

    shape = next((tuple(int(n) for n in d[0].shape[1:]) for d in data  # arrays, tensors
                  if isinstance(d, tuple) and hasattr(d[0], "shape")), None)
    given = any(d is not None for d in data)
    kwargs = {"palettes": palettes, "index_cost": "entropy"}
    for size in (None, shape):
        try:
            return energy.estimate(model, input_shape=size, **kwargs)
        except InputShapeError as e:
            if size is not None or shape is None or e.fixed is not None:
                notes.append(f"energy not estimated: {e.why}; " + (
                    "give data whose inputs have the size" if not given or shape is not None
                    else "the input size could not be read from the data (not one array); "
                    "pass arrays, or estimate it with dkm_tf.energy.estimate(model, "
                    "input_shape=...)"))
                return None
            notes.append(f"energy estimated at the data's input size {shape} ({e.why})")
        except (ValueError, TypeError) as e:  # shapes unknown: report, do not fail the job
            notes.append(f"energy not estimated: {' '.join(str(e).split())}")
            return None
    return None


def cluster_stage(progress, model, n_clusters, overrides):
    """Open the progress stage of the k-means step: one unit per tensor it will cluster.

    The k-means of all tensors runs at once (a thread pool inside ``share_weights`` /
    ``cluster_weights``), so the bar shows the elapsed time while it runs and the tensors
    when it ends (at ``close``, or when a fine-tuning bar takes over).
    """
    if progress is None:
        return None
    from dkm_tf.graph import clusterable  # noqa: PLC0415
    from dkm_tf.graph.copying import iter_layers  # noqa: PLC0415

    overrides, names = overrides or {}, []
    for layer in iter_layers(model):
        excluded = clusterable.skipped_by_overrides(layer, overrides)
        if layer.weights and not excluded and clusterable.is_clusterable(layer):
            names += [f"{layer.name}/{path}" for path, _, _ in
                      clusterable.clusterable_weights(layer)]
    stage = progress.stage(f"k-means K={n_clusters}", len(names), "tensors")
    stage.finish_on_close = True
    stage.note = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:5])}, ..."
    return stage
