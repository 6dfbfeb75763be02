"""The ``dkm-tf`` command.

Usage:
  dkm-tf compress                      # built-in demo: digits CNN, K=16, no network
  dkm-tf compress --model m.keras --n_clusters 8 --unit row --granularity per_channel
  dkm-tf energy --model m.keras        # or a .tflite file

The logic lives in plain functions (:func:`run_compress`, :func:`run_energy`) that the tests
call; :func:`run` parses flags, checks every argument first (:mod:`dkm_tf.cli_args`), and
turns errors into one line on stderr with exit status 2 (usage) or 1 (failure).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback

from absl import flags

from dkm_tf.cli_args import (
    COMMANDS,
    CliUsageError,
    check_command_flags,
    check_energy_args,
    check_export_size,
    check_outputs,
    dataset_words,
    load_dataset,
    path_flag,
)
from dkm_tf.cli_custom import HELP as CUSTOM_HELP
from dkm_tf.cli_custom import custom_code, loss_note, train_loss
from dkm_tf.cli_energy import run_energy
from dkm_tf.cli_env import quiet_fd
from dkm_tf.cli_export import clear_earlier_outputs, compile_as_saved, write_plots, write_tflite
from dkm_tf.cli_help import command_error, early_exit, flag_message, load_model_flag
from dkm_tf.cli_overrides import HELP, check_compress_args, check_model_overrides, default_method
from dkm_tf.cli_run_state import INTERRUPTS as _INTERRUPTS
from dkm_tf.cli_run_state import REMOVED as _REMOVED
from dkm_tf.cli_run_state import TOUCHED as _TOUCHED
from dkm_tf.cli_run_state import check_interrupted as _check_interrupted
from dkm_tf.cli_run_state import on_sigint as _on_sigint
from dkm_tf.cli_run_state import unfinished as _unfinished
from dkm_tf.cli_tables import import_tensorflow_quietly
from dkm_tf.core.files import atomic_path, is_home_tilde
from dkm_tf.core.validate import CALIBRATION_SAMPLES

_MODEL = flags.DEFINE_string("model", None, "Path to a .keras model (default: train the "
                             "built-in digits CNN).")
_DATASET = flags.DEFINE_string("dataset", None, "Data for training/evaluation: digits, mnist, "
                               "keras:<name>, or your own .npz with x_train, y_train, x_test, "
                               "y_test (a --model of several inputs: x_train.<input name>, "
                               "x_test.<input name> per input; without labels, for --method wr: "
                               "x_train calibrates --refine / --weighting, x_test gives agreement"
                               " with float; either sets the TFLite input size) (default: digits"
                               " for the built-in model, none for --model).")
_METHOD = flags.DEFINE_enum("method", None, ["wr", "finetune", "dkm", "dkm+finetune"],
                            "Compression method (default: wr for --model without a labelled "
                            "--dataset or with --weighting / --refine, else finetune).")
_N_CLUSTERS = flags.DEFINE_integer("n_clusters", 16, "K, centroids per codebook.")
_UNIT = flags.DEFINE_enum("unit", "scalar", ["scalar", "row", "kernel", "auto"],
                          "Clustering unit.")
_GRANULARITY = flags.DEFINE_enum("granularity", "per_tensor", ["per_tensor", "per_channel"],
                                 "One codebook per tensor or per output channel (per_channel: "
                                 "K centroids for each channel, so a larger file and a lower "
                                 "CR, as the size table shows). Depthwise kernels are "
                                 "clustered per channel under per_tensor too (a note names "
                                 "them) unless --overrides sets granularity for their "
                                 "layer. --unit kernel with --codebook shared or --transforms "
                                 "> 1 takes per_tensor only.")
_CODEBOOK = flags.DEFINE_enum("codebook", "layer", ["layer", "shared"], "--unit kernel: "
                              "shared = one codebook per kernel size for the network.")
_TRANSFORMS = flags.DEFINE_integer("transforms", 1, "--unit kernel: 1, 2, 4, 8 flips/turns.")
_SCALE_BITS = flags.DEFINE_integer("scale_bits", 16, "--unit kernel: scale bits, 16, 8, 32.")
_WEIGHTING = flags.DEFINE_enum("weighting", "none", ["none", "fisher"], "Post-training "
                               "(--method wr): fisher = sensitivity-weighted k-means.")
_REFINE = flags.DEFINE_enum("refine", "none", ["none", "outputs", "gptq"], "Post-training "
                            "(--method wr): fit the codebooks to the float layer outputs "
                            "(gptq: with GPTQ's assignment too).")
_CALIBRATION = flags.DEFINE_integer("calibration_samples", CALIBRATION_SAMPLES, "Training "
                                    "samples that --weighting / --refine calibrate on "
                                    "(--method wr): drawn at random with --seed from the "
                                    "training part of "
                                    "--dataset (of the built-in digits without it), all of it "
                                    "if it has fewer. --refine on fewer than 16 is noted (the "
                                    "fits over-fit so few); on 1 it keeps the k-means "
                                    f"codebooks. Another value than {CALIBRATION_SAMPLES} "
                                    "without --weighting / --refine is refused (unused).")
_INIT = flags.DEFINE_enum("init", "kmeans++", ["kmeans++", "linear", "density", "random"],
                          "k-means initialisation.")
_EPOCHS = flags.DEFINE_integer("epochs", 30, "Training epochs of the built-in model.")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 3, "Fine-tuning epochs (methods "
                                        "finetune and dkm+finetune; compress() in Python "
                                        "defaults to 2).")
_DKM_EPOCHS = flags.DEFINE_integer("dkm_epochs", 5, "Re-training epochs with the regularizer.")
_LAM = flags.DEFINE_float("lam", 1.0, "Regularizer strength lambda (the paper's 1e-4 is too "
                          "weak for a few epochs of Adam; see dkm_tf.compress).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output_dir", "dkm_tf_out", "Where to write the results (a run "
                              "first removes an earlier run's files there; never --model).")
_TFLITE = flags.DEFINE_bool("tflite", True, "Also write float, int8 and palettized .tflite "
                            "files, verified against Keras, with their sizes and latencies.")
_PLOTS = flags.DEFINE_bool("plots", True, "Write weights.png, formats.png and energy.png "
                           "(needs matplotlib; --no_plots is --noplots).")
_PLOTS_DIR = flags.DEFINE_string("plots_dir", None, "Where to write the plots (default: "
                                 "--output_dir).")
_INPUT_SHAPE = flags.DEFINE_string("input_shape", None, "Input size without the batch axis, "
                                   "e.g. 12,12,3, for a model or .tflite that leaves "
                                   "it open, or a subclassed model.")
_OVERRIDES = flags.DEFINE_string("overrides", None, HELP)
_CUSTOM = flags.DEFINE_string("custom_objects", None, CUSTOM_HELP)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bars or progress lines on stderr "
                           "(the tables and written paths still print).")


def _log(msg):
    print(msg, flush=True)


def _one_line(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _atomic_write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def run_compress(model_path=None, *, dataset=None, method=None, n_clusters=16, unit="scalar",
                 granularity="per_tensor", init="kmeans++", epochs=30, finetune_epochs=3,
                 dkm_epochs=5, lam=1.0, seed=0, output_dir="dkm_tf_out", tflite=True,
                 plots=True, plots_dir=None, quiet=False, progress=None, codebook="layer",
                 transforms=1, scale_bits=16, weighting="none", refine="none",
                 calibration_samples=CALIBRATION_SAMPLES, overrides=None,
                 custom_objects=None):
    """Run ``dkm-tf compress``; returns the :class:`~dkm_tf.pipeline.CompressionResult`.

    Training, k-means, export and evaluation show progress on stderr
    (:class:`dkm_tf.progress.Progress`; none with ``quiet``); with ``plots`` the PNGs of
    :mod:`dkm_tf.plots` go to ``plots_dir`` (default ``output_dir``), their paths in
    ``result.plots`` and report.json. Every argument is checked first, as on the command line
    (:func:`~dkm_tf.cli_args.check_compress_args`: a ``ValueError``, before any work).
    ``overrides``: --overrides' JSON text or .json path, or a dict (:mod:`dkm_tf.cli_overrides`).
    ``custom_objects``: --custom_objects' ``.py`` files / module names (a comma-separated str
    or a list), imported before the model loads (:func:`dkm_tf.cli_custom.custom_code`).
    """
    overrides = check_compress_args(  # overrides: --overrides parsed (JSON text or file)
        model_path, dataset=dataset, method=method, n_clusters=n_clusters, unit=unit,
        granularity=granularity, init=init, epochs=epochs, finetune_epochs=finetune_epochs,
        dkm_epochs=dkm_epochs, lam=lam, seed=seed, output_dir=output_dir, tflite=tflite,
        plots=plots, plots_dir=plots_dir, quiet=quiet, codebook=codebook,
        transforms=transforms, scale_bits=scale_bits, weighting=weighting, refine=refine,
        calibration_samples=calibration_samples, overrides=overrides,
        custom_objects=custom_objects)
    n_clusters, epochs, finetune_epochs, dkm_epochs, seed, lam = (  # numpy numbers: report.json
        int(n_clusters), int(epochs), int(finetune_epochs), int(dkm_epochs), int(seed), float(lam))
    model_path, dataset, output_dir, plots_dir = (path_flag(f, v) for f, v in (  # a Path: str
        ("model", model_path), ("dataset", dataset), ("output_dir", output_dir),
        ("plots_dir", plots_dir)))
    from dkm_tf.core.files import folder_lock, same_file  # noqa: PLC0415

    with contextlib.ExitStack() as held:  # one run per folder, taken before any work
        held.enter_context(custom_code(custom_objects, usage_error=CliUsageError,
                                       model_path=model_path))
        held.enter_context(folder_lock(output_dir))
        if plots_dir and not same_file(plots_dir, output_dir):  # folders too
            held.enter_context(folder_lock(plots_dir, "plots_dir"))  # its PNGs are replaced
        from dkm_tf import cli_tables, models, pipeline  # noqa: PLC0415
        from dkm_tf.cli_export import compress_notes, logits_notes  # noqa: PLC0415
        from dkm_tf.export.verify import choose_interpreters  # noqa: PLC0415
        from dkm_tf.graph import sensitivity_loss  # noqa: PLC0415
        from dkm_tf.pipeline_args import DataMismatchError  # noqa: PLC0415

        if tflite:  # TF < 2.21 without LiteRT cannot verify a file: say so before any training
            choose_interpreters(None)
        from dkm_tf.graph.copying import save_model_atomic  # noqa: PLC0415
        from dkm_tf.progress import Progress  # noqa: PLC0415

        progress = progress if progress is not None else Progress(enabled=not quiet)
        weighting, refine = (None if v == "none" else v for v in (weighting, refine))
        metric, notes = "test accuracy", []
        if model_path is None:
            dataset = dataset or "digits"
            method = method or default_method(None, True, bool(weighting or refine))
            train, test = load_dataset(dataset)
            _log(cli_tables.data_line(dataset, train, test))
            model = models.digits_cnn(input_shape=train[0].shape[1:], seed=seed,
                                      num_classes=cli_tables.n_classes(train, test))
            check_model_overrides(model, overrides, method, locals())  # before any training
            _log(f"[train] built-in {model.name} ({model.count_params():,} params), "
                 f"{epochs} epochs")
            t = time.perf_counter()
            pipeline.train_classifier(model, train, epochs=epochs,
                                      callbacks=[progress.keras_callback("train")])
            _log(f"[train] done in {time.perf_counter() - t:.1f} s")
        else:
            model = load_model_flag(model_path)  # errors name --model and the file
            check_export_size(model, tflite, dataset)  # an open input size needs --dataset
            train = test = None
            if dataset:
                train, test = load_dataset(dataset, model)  # fits its inputs
                _log(cli_tables.data_line(dataset, train, test, bool(weighting or refine), model))
            labelled = train is not None and train[1] is not None
            given, method = method, method or default_method(model_path, labelled,
                                                             bool(weighting or refine))
            _log(f"[model] {model_path}: {model.name} ({model.count_params():,} params)")
            check_outputs(len(getattr(model, "outputs", None) or ()), method, dataset)
            check_model_overrides(model, overrides, method, locals())  # keys naming its layers
            notes += train_loss(model, model_path, method, train, given is None)  # "mse"
            notes += [n for n in [loss_note(model_path, method, weighting, model, train)] if n]
            from dkm_tf.core.custom_code import compiled_loss_name  # noqa: PLC0415
            from dkm_tf.pipeline_metrics import not_class_scores  # noqa: PLC0415

            loss = compiled_loss_name(model_path)  # loaded without it: "mse" = regressor
            if weighting and (why := not_class_scores(model, loss)):  # Python refuses
                raise CliUsageError("weighting", "none for a model that is not a classifier "
                                    f"(the true Fisher needs class probabilities; {why})",
                                    weighting)
            if test is not None and test[1] is None:  # held-out inputs without labels: the
                test, note = pipeline.agreement_data(model, test[0], loss=loss)  # float classes
                metric = metric if test is None else cli_tables.AGREEMENT
                notes += [note] if note else []  # inputs where it outputs NaN: left out
                _log(cli_tables.agreement_line(test and test[1],
                                               pipeline.accuracy_note(model, loss), notes))
            elif test is not None and (why := not_class_scores(model, loss)):  # labelled: its
                notes.append(f"no test accuracy: {why}")  # arg-max is no class either
                test = None  # (the .tflite files are then verified on training inputs)
            notes += logits_notes(model, loss, metric != "test accuracy", weighting, tflite,
                                  (train, test))  # (log-)probability rows: class scores
        try:
            result = pipeline.compress(
                model, train, test, method=method, n_clusters=n_clusters, unit=unit,
                granularity=granularity, init=init, seed=seed, finetune_epochs=finetune_epochs,
                dkm_epochs=dkm_epochs, lam=lam, progress=progress, codebook=codebook,
                transforms=transforms, scale_bits=scale_bits, weighting=weighting, refine=refine,
                calibration_samples=calibration_samples, overrides=overrides)
        except DataMismatchError as e:  # found before any work: the flag, not the argument
            if dataset is None:
                raise
            raise CliUsageError("dataset", f"data that fits --model ({dataset_words(e)})",
                                dataset) from e
        except sensitivity_loss.LossMismatchError as e:  # the cross-entropy picked here
            raise CliUsageError("weighting", "none for this model (the cross-entropy dkm-tf "
                                "compress reads from its output activation does not give its "
                                f"class probabilities: {e.received}; to weigh by a loss of "
                                "your own, call dkm_tf.compress in Python on the model compiled "
                                "with it)", weighting) from e
        except sensitivity_loss.WeightingError as e:  # sigmoid unit, time steps, outputs
            raise CliUsageError("weighting", "none" + e.expected[len("None"):],
                                f"{weighting} with {e.received}") from e
        result.metric, result.notes = metric, notes + compress_notes(result.notes, model_path)
        _log(result.summary())
        _log(cli_tables.size_legend(output_dir, result))
        _check_interrupted()  # a swallowed Ctrl-C: stop before the earlier run's files go
        _TOUCHED[:] = [output_dir]  # from here on, a failure leaves an unfinished run there
        _REMOVED[:] = clear_earlier_outputs(output_dir, plots_dir or output_dir)
        out_model = os.path.join(output_dir, "clustered.keras")
        save_model_atomic(result.model, out_model)
        compile_as_saved(result.model, model_path)  # the int8 check reads the loss
        _log(cli_tables.keras_line(out_model, tflite))  # its size, and why it is not smaller
        pal_path = pipeline.save_palettes(result.palettes, out_model)  # read by `dkm-tf energy`
        _log(f"[write] {pal_path} (the palettes: codebooks + indices)")
        accuracy = {}
        _check_interrupted()
        if tflite:
            source = test if test is not None else train  # verify on the user's own inputs
            samples = source and cli_tables.first_samples(source[0], 16, model)  # its order
            scored = test if result.accuracy_after is not None else None  # else: no classes
            result.tflite, accuracy = write_tflite(result, output_dir, samples, scored, progress)
        result.plots = write_plots(result, model, plots_dir or output_dir, accuracy, progress) \
            if plots else []
        report = {**result.to_dict(), "overrides": overrides}  # as given (None: none)
        report["tflite"] = {k: (v.to_dict() if hasattr(v, "to_dict") else str(v))
                            for k, v in result.tflite.items()}
        for label, acc in accuracy.items():
            report["tflite"][label][metric.replace(" ", "_")] = acc
        report["plots"] = {os.path.basename(p.path): {"path": p.path, "shows": p.summary}
                           for p in result.plots}
        report_path = os.path.join(output_dir, "report.json")
        _check_interrupted()  # never mark an interrupted run finished
        _atomic_write_text(report_path, cli_tables.json_text(report))
        _TOUCHED[:] = [output_dir, "complete"]  # the run is complete
        _log(f"[write] {report_path}")
        for p in result.plots:
            _log(f"[plot] {p.path}: {p.summary}")
        return result


def main(argv):
    """Run the command named in ``argv`` (flags already parsed); returns the exit status."""
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise command_error(argv[1] if len(argv) > 1 else None)  # with a close match
    if len(argv) > 2:
        raise CliUsageError("arguments", "no positional arguments after the command",
                            " ".join(argv[2:]))
    given = [f.name for f in flags.FLAGS.get_flags_for_module(__name__) if f.present]
    # "--output_dir=~/out": the shell leaves a ~ after "=" alone (it made a folder named ~);
    # "~name/..." is user name's home unless a folder "~name" is here; a bare "~name" a name
    model, output_dir, plots_dir, dataset = (
        os.path.expanduser(v) if v is not None and is_home_tilde(v) else v
        for v in (_MODEL.value, _OUTPUT.value, _PLOTS_DIR.value, _DATASET.value))
    if argv[1] == "energy":
        shape = check_energy_args(model, given, _INPUT_SHAPE.value)
        with custom_code(_CUSTOM.value, usage_error=CliUsageError, model_path=model):
            run_energy(model, input_shape=shape)
        return 0
    check_command_flags("compress", given)
    kwargs = {"dataset": dataset, "method": _METHOD.value,
              "n_clusters": _N_CLUSTERS.value, "unit": _UNIT.value,
              "granularity": _GRANULARITY.value, "init": _INIT.value, "epochs": _EPOCHS.value,
              "finetune_epochs": _FINETUNE_EPOCHS.value, "dkm_epochs": _DKM_EPOCHS.value,
              "lam": _LAM.value, "seed": _SEED.value, "output_dir": output_dir,
              "tflite": _TFLITE.value, "plots": _PLOTS.value, "plots_dir": plots_dir,
              "quiet": _QUIET.value, "codebook": _CODEBOOK.value,
              "transforms": _TRANSFORMS.value, "scale_bits": _SCALE_BITS.value,
              "weighting": _WEIGHTING.value, "refine": _REFINE.value,
              "calibration_samples": _CALIBRATION.value, "overrides": _OVERRIDES.value,
              "custom_objects": _CUSTOM.value}
    run_compress(model, **kwargs)  # checks every argument before any work
    return 0


def run(argv, *, stdout=None, stderr=None):
    """The whole command line: parse ``argv``, run, and turn errors into exit statuses.

    ``--help`` / ``-h`` prints the flags, 0; a usage error (unknown command or flag, bad
    value) one line naming the flag, what is allowed and what was received, 2; a failure
    while running one line, 1 (``--verbose`` adds the traceback); Ctrl-C 130; stdout closed
    early, 141. Nothing is trained or written before every argument has been checked."""
    _INTERRUPTS.clear()
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if ours:  # remember every Ctrl-C (not when SIGINT is ignored, as under nohup)
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        return _run(argv, stdout, stderr)
    finally:
        _INTERRUPTS.clear()  # a later run_compress call in this process starts afresh
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(argv, stdout, stderr):
    stdout, stderr, argv = stdout or sys.stdout, stderr or sys.stderr, list(argv)
    flags.FLAGS.unparse_flags()  # a second run in one process starts from the defaults
    _TOUCHED.clear()
    _REMOVED.clear()
    command = next((a for a in argv[1:] if not a.startswith("-")), None)
    status = early_exit(argv, stdout, stderr)  # help, `dkm-tf help compress`, bare dkm-tf
    if status is not None:
        return status
    verbose = any(a in ("--verbose", "-v") for a in argv[1:])
    argv = [a for a in argv if a not in ("--verbose", "-v", "--noverbose")]
    argv = ["--noplots" if a == "--no_plots" else a for a in argv]  # the spelling people try
    try:
        rest = flags.FLAGS(argv, known_only=False)
    except flags.Error as e:
        where = f"dkm-tf {command} --help" if command in COMMANDS else "dkm-tf --help"
        print(f"dkm-tf: error: {flag_message(_one_line(e), command)} (see {where})",
              file=stderr)
        return 2
    try:
        if len(rest) == 2 and rest[1] in COMMANDS:
            import_tensorflow_quietly()
        return main(rest)
    except CliUsageError as e:
        where = f"dkm-tf {command} --help" if command in COMMANDS else "dkm-tf --help"
        print(f"dkm-tf: error: {e} (see {where})", file=stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (dkm-tf energy ... | head): not an error
        quiet_fd(sys.stdout)  # a real stdout only: its exit flush would fail again
        return 141  # 128 + SIGPIPE, as a shell tool killed by it
    except KeyboardInterrupt:
        print("dkm-tf: interrupted; " + (_unfinished() or "nothing was written or removed "
              "(the output folder is as it was)"), file=stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure becomes one line (+ --verbose)
        if verbose:
            traceback.print_exc(file=stderr)
        print(f"dkm-tf: error: {type(e).__name__}: {_one_line(e)}"
              + ("" if verbose else " (run with --verbose for the traceback)")
              + (f"; {_unfinished()}" if _TOUCHED else ""), file=stderr)
        return 1


def entry_point():
    """Console-script entry (``dkm-tf``): quiet TF's C++ logs, then :func:`run`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dkm_tf.cli_env import guarded  # noqa: PLC0415 - std streams, encodings, SIGTERM
    sys.exit(guarded(run, sys.argv, on_signal=_on_sigint, unfinished=_unfinished))


if __name__ == "__main__":
    entry_point()
