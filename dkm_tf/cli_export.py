"""The write steps of ``dkm-tf compress``: clear an earlier run's files, write, time and score
every format's ``.tflite`` file, and the plots."""

from __future__ import annotations

import os
import time

from dkm_tf.cli_args import run_outputs


def _log(msg):
    print(msg, flush=True)


def write_tflite(result, output_dir, sample_inputs=None, test_data=None, progress=None):
    """Write float / int8 / palettized .tflite files and print size, latency and accuracy.

    Two palettized files: ``palettized`` (decode once at load, near-float speed) and
    ``palettized_per_invoke`` (the smallest file, decoded on every invoke). Each file is
    verified against Keras as it is written (:func:`dkm_tf.export.to_tflite`), then timed
    (interleaved) and, with ``test_data``, its top-1 accuracy measured in LiteRT.

    A format whose file disagrees with Keras beyond its tolerance is refused (nothing written
    for it, the reason in the table and in the returned reports) and the others are written.

    Returns:
        ``(reports, accuracy)``: label -> ExportReport (or the refusal, a string), label ->
        accuracy (with test data).

    Raises:
        ExportVerificationError: every format was refused.
    """
    from dkm_tf import cli_tables, export  # noqa: PLC0415
    from dkm_tf.export import convert as convert_lib  # noqa: PLC0415
    from dkm_tf.export.tflite import check_export_args  # noqa: PLC0415
    from dkm_tf.pipeline import binary_threshold, tflite_accuracy  # noqa: PLC0415
    from dkm_tf.progress import Progress  # noqa: PLC0415
    from dkm_tf.tflite_feed import keyed_inputs  # noqa: PLC0415

    progress = progress if progress is not None else Progress(enabled=False)
    targets = cli_tables.TARGETS
    _log("[tflite] converting and verifying float, int8 (dynamic range) and palettized "
         "(decode once; decode per invoke) files")
    t = time.perf_counter()
    reports, accuracy, refused = {}, {}, {}
    with cli_tables.native_stderr_filtered(progress):
        check_export_args(result.model, sample_inputs)
        stage = progress.stage("export", len(targets), "formats")
        float_content = convert_lib.convert(
            result.model, convert_lib.input_specs(result.model, sample_inputs), "none")
        for label in targets:
            stage.update(0, f"{label}...")
            try:
                reports[label] = export.to_tflite(
                    result.model, os.path.join(output_dir, f"clustered.{label}.tflite"),
                    palettes=result.palettes, sample_inputs=sample_inputs,
                    float_content=float_content, **export.EXPORT_TARGETS[label])
            except export.ExportVerificationError as e:  # the other formats still get written
                refused[label] = " ".join(str(e).split()).replace(  # no flag here: the script's
                    "to_tflite(tolerance=...)", "export/to_tflite.py --tolerance=...")
                stage.update(1, f"{label}: refused")
                continue
            stage.update(1, f"{label}: {reports[label].bytes:,} bytes")
        stage.close(", ".join(f"{t}{' (refused)' if t in refused else ''}" for t in targets))
        if not reports:
            raise export.ExportVerificationError("; ".join(refused.values()))
        stage = progress.stage("latency", len(reports), "formats")  # refused ones: not timed
        stage.finish_on_close = True
        x = None
        if sample_inputs is not None:
            x = [a[0] for a in convert_lib.as_input_list(sample_inputs)]
        timed = export.benchmark_latency({k: r.path for k, r in reports.items()}, x,
                                         threads=1, runs=50)
        for label, stats in timed.items():
            reports[label].latency["1t"] = stats
        stage.close("50 invokes each, interleaved")
        if test_data is not None:
            test_data = (keyed_inputs(result.model, test_data[0]), test_data[1])  # by name
            n = min(len(test_data[1]), 10_000)
            what = ("accuracy ({n} test samples)" if result.metric == "test accuracy" else
                    "agreement with the float model ({n} held-out inputs)")
            stage = progress.stage(what.format(n=n), len(reports), "formats")
            threshold = result.threshold if result.threshold is not None else (
                binary_threshold(result.model))  # one unit: where class 1 starts, as compress
            for label, rep in reports.items():
                why = []  # no accuracy, or a slower run: the reason, logged
                accuracy[label] = tflite_accuracy(rep.path, test_data, max_samples=n,
                                                  threshold=threshold, notes=why)
                for line in why:
                    _log(f"[tflite] note: {line}")
                    result.notes.append(line)  # names the file; report.json says it too
                stage.update(1, f"{label}: {100 * accuracy[label]:.2f}%"
                             if accuracy[label] is not None else label)
            stage.close(", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items()
                                  if v is not None))
    _log(f"[tflite] done in {time.perf_counter() - t:.1f} s")
    _log(cli_tables.tflite_table(reports, accuracy, result.metric, refused))
    return {**reports, **refused}, accuracy


def logits_notes(model, loss, agreement, weighting, tflite, data=()):
    """``dkm-tf compress --model``'s note when the file's model is read as a classifier of
    logits by assumption (:func:`dkm_tf.pipeline_metrics.logits_note`, with the loss the file
    was compiled with: it is loaded with ``compile=False``) for the agreement of held-out
    inputs, ``--weighting fisher``'s softmax or the int8 file's arg-max check; [] if none, or
    if its outputs on ``data``'s inputs (``--dataset``' pairs) are rows of (log-)probabilities
    (a ``log_softmax`` output: class scores, as ``to_tflite`` reads them)."""
    from dkm_tf import pipeline_metrics as pm  # noqa: PLC0415

    note = pm.logits_note(model, [agreement and pm.AGREEMENT_USE, weighting and pm.FISHER_USE,
                                  tflite and pm.INT8_USE], loss, data)
    return [note] if note else []


def compress_notes(notes, model_path):
    """``compress``' own notes, less its logits note for a ``--model`` file: compress sees the
    model loaded without its loss, :func:`logits_notes` read the file's. Advice to compile
    the model (the command line trains a classifier file without its compiled loss) says to
    call ``dkm_tf.compress`` in Python on the compiled model instead."""
    from dkm_tf.pipeline_metrics import LOGITS_NOTE  # noqa: PLC0415

    advice = ("compile the model to train it with another loss", "call dkm_tf.compress in "
              "Python on the model compiled with another loss to train it with that loss")
    return [n.replace(*advice) if model_path else n for n in notes
            if model_path is None or not n.startswith(LOGITS_NOTE)]


def compile_as_saved(model, model_path):
    """Compile ``model`` (the compressed one) with the loss the ``--model`` file was compiled
    with when that loss makes it a regressor or multi-label model and ``model`` does not say
    so itself (the file is loaded with ``compile=False``): the int8 ``.tflite`` check reads
    the loss, and gave a 3-output "mse" regressor's int8 file, off by 0.15 % of its range, an
    arg-max check and a refusal for a "top-1 agreement" of 0.56. A classifier's loss (a
    cross-entropy) is given too, so the int8 check does not note the model as read as a
    classifier of logits by assumption. Other losses: unchanged."""
    if model_path is None:
        return
    from dkm_tf.core.custom_code import compiled_loss_name  # noqa: PLC0415
    from dkm_tf.core.loss_kind import assumed_logits, non_class_loss  # noqa: PLC0415

    loss = compiled_loss_name(model_path)
    said = loss and assumed_logits(model) and not assumed_logits(model, loss)  # a classifier's
    if loss and (said or non_class_loss(model, loss) and not non_class_loss(model)):
        try:
            model.compile(loss=loss if said else non_class_loss(model, loss)[0])
        except (ValueError, TypeError):  # a name Keras cannot resolve here: checked as before
            return


def clear_earlier_outputs(output_dir, plots_dir):
    """Remove an earlier run's files here (our names only; report.json, written last, first):
    one folder never mixes two runs (e.g. old .tflite files beside a --notflite run).
    Returns the paths removed (an interrupted run says so)."""
    gone = [p for p in run_outputs(output_dir, plots_dir) if os.path.isfile(p)]
    for path in gone:
        os.remove(path)
    if gone:
        _log(f"[write] removed {len(gone)} file(s) of an earlier run: "
             + ", ".join(os.path.basename(p) for p in gone))
    return gone


def write_plots(result, model, plots_dir, accuracy, progress):
    """The PNGs of :mod:`dkm_tf.plots` (a missing matplotlib is said once, not an error)."""
    from dkm_tf import plots as plots_lib  # noqa: PLC0415

    if not plots_lib.matplotlib_available():
        _log(plots_lib.MISSING_MATPLOTLIB)
        result.notes.append(plots_lib.MISSING_MATPLOTLIB)  # report.json says it too
        return []
    os.makedirs(plots_dir, exist_ok=True)
    formats = [(label, rep.bytes, accuracy.get(label)) for label, rep in result.tflite.items()
               if hasattr(rep, "bytes")]
    stage = progress.stage("plots", 3, "plots")
    written, skipped = plots_lib.write_plots(result, plots_dir, model, formats)
    stage.set_total(len(written))
    stage.update(len(written))
    stage.close(", ".join(os.path.basename(p.path) for p in written))
    for name, why in skipped:
        _log(f"[plot] {name} skipped: {why}")
        result.notes.append(f"plot {name} skipped: {why}")  # report.json says it too
    return written
