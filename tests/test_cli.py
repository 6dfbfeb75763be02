"""The dkm-tf command: plain functions and the real entry point."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from testing import small_cnn

from dkm_tf import cli
from dkm_tf.cli_args import CliUsageError, check_compress_args


def test_run_compress_builtin_demo(tmp_path, capsys):
    result = cli.run_compress(None, method="wr", epochs=1, n_clusters=8,
                              output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "CR log2K" in out and "test accuracy" in out
    assert {p.name for p in tmp_path.iterdir()} == {
        "clustered.keras", "clustered.palettes.json", "report.json", "clustered.float.tflite",
        "clustered.int8.tflite", "clustered.palettized.tflite",
        "clustered.palettized_per_invoke.tflite", "weights.png", "formats.png", "energy.png"}
    assert "palettized" in out and "ms (1 thread)" in out
    # a legend under each table names every column
    size_legend = out.split("legend: unit", 1)[1].split("[write]", 1)[0]
    for column in (" d ", " N ", " K ", "bits", " H ", "CR log2K", "CR entropy"):
        assert column in size_legend, column
    tflite_legend = out.split("legend: bytes", 1)[1]
    for column in ("x float", "bits/w", "ms (1 thread)", "acc %", "int8", "palettized_per_invoke"):
        assert column in tflite_legend, column
    # the plots' paths, printed at the end
    tail = out.strip().splitlines()[-3:]
    assert [line.split(":")[0] for line in tail] == [
        f"[plot] {tmp_path / name}" for name in ("weights.png", "formats.png", "energy.png")]
    report = json.loads((tmp_path / "report.json").read_text())
    sizes = {k: v["bytes"] for k, v in report["tflite"].items()}
    assert sizes["palettized"] == (tmp_path / "clustered.palettized.tflite").stat().st_size
    assert sizes["palettized"] < 0.3 * sizes["float"]
    assert sizes["palettized_per_invoke"] < sizes["palettized"]
    assert report["method"] == "wr"
    assert set(report["plots"]) == {"weights.png", "formats.png", "energy.png"}
    # each file's own accuracy in LiteRT: the float file agrees with Keras on all but ties
    accs = {k: v["test_accuracy"] for k, v in report["tflite"].items()}
    assert abs(accs["float"] - report["accuracy_after"]) <= 2 / 449
    assert abs(accs["palettized"] - accs["float"]) <= 2 / 449
    assert f"{100 * accs['int8']:.2f}" in out
    assert len(report["size"]["rows"]) == 4
    assert 0.0 <= report["accuracy_after"] <= 1.0
    for p in result.palettes:
        kernel = getattr(result.model.get_layer(p.layer_name), p.weight_name).numpy()
        assert np.unique(kernel).size <= 8


def test_run_compress_user_model(tmp_path):
    path = tmp_path / "user.keras"
    small_cnn().save(path)
    result = cli.run_compress(str(path), n_clusters=4, unit="row", granularity="per_channel",
                              output_dir=str(tmp_path / "out"), tflite=False)
    assert result.method == "wr" and result.accuracy_before is None
    assert ("bn", result.skipped[0][1]) == result.skipped[0]
    assert (tmp_path / "out" / "clustered.keras").is_file()


def test_missing_model_file(tmp_path):
    with pytest.raises(CliUsageError, match="invalid --model: expected an existing file"):
        cli.run_compress(str(tmp_path / "nope.keras"), output_dir=str(tmp_path))
    assert not (tmp_path / "clustered.keras").exists()


def test_usage_errors():
    with pytest.raises(CliUsageError, match="invalid command: expected one of"):
        cli.main(["dkm-tf"])
    with pytest.raises(CliUsageError, match="received 'shrink'"):
        cli.main(["dkm-tf", "shrink"])


def _in_process(*args):
    """``dkm-tf *args`` in this process: ``(status, stdout, stderr)`` (a fresh Python costs
    ~5 s of TensorFlow import; the console script runs in the tests that use :func:`_cli`)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", *[str(a) for a in args]], stdout=stdout, stderr=stderr)
    return subprocess.CompletedProcess(args, rc, stdout.getvalue(), stderr.getvalue())


def _cli(*args, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "dkm_tf.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["compress", "--help"],
                                  ["energy", "-h"], ["compress", "--n_clusters", "4", "--help"]])
def test_help_lists_every_flag_and_exits_0(args):
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    text = proc.stdout
    assert "Usage:" in text and "Exit status" in text
    expected = {"compress": ["model", "dataset", "method", "n_clusters", "unit", "granularity",
                             "init", "epochs", "finetune_epochs", "dkm_epochs", "lam", "seed",
                             "output_dir", "tflite", "plots", "plots_dir", "quiet"],
                "energy": ["model"]}
    commands = [args[0]] if args[0] in expected else list(expected)
    sections = text.split("Flags of `dkm-tf ")[1:]
    assert [sec.split("`")[0] for sec in sections] == commands
    for command, section in zip(commands, sections):
        lines = section.split("Common flags:")[0].splitlines()
        for name in expected[command]:  # one line each
            assert sum(line.startswith((f"  --{name} ", f"  --{name}:"))
                       for line in lines) == 1, (command, name)
    common = text.split("Common flags:")[1].split("Exit status")[0]  # --version was missing
    assert [line.split(":")[0].strip() for line in common.strip().splitlines()] == [
        "--verbose", "-h, --help", "--version"]


@pytest.mark.parametrize("args, flag, received", [
    (["compress", "--n_clusters", "0"], "--n_clusters", "0"),
    (["compress", "--n_clusters", "70000"], "--n_clusters", "70000"),
    (["compress", "--n_clusters", "x"], "--n_clusters", "x"),
    (["compress", "--unit", "filter"], "--unit", "filter"),
    (["compress", "--lam", "-1"], "--lam", "-1"),
    (["compress", "--lam", "nan"], "--lam", "nan"),
    (["compress", "--epochs", "0"], "--epochs", "0"),
    (["compress", "--finetune_epochs", "-2"], "--finetune_epochs", "-2"),
    (["compress", "--seed", "-1"], "--seed", "-1"),
    (["compress", "--dataset", "imagenet"], "--dataset", "imagenet"),
    (["compress", "--model", "missing.keras"], "--model", "missing.keras"),
    (["compress", "--model", "README.md"], "--model", "README.md"),
    (["compress", "--bogus", "1"], "bogus", "bogus"),
    (["compress", "--quiet=maybe"], "--quiet", "maybe"),
    (["compress", "--plots=2"], "--plots", "2"),
    (["compress", "--plots_dir", ""], "--plots_dir", "''"),
    (["compress", "--plots_dir", "README.md"], "--plots_dir", "README.md"),
    (["compress", "--no_plots", "--plots_dir", "p"], "--plots_dir", "'p'"),
    (["compress", "--refine", "hessian"], "--refine", "hessian"),
    (["compress", "--weighting", "l2"], "--weighting", "l2"),
    (["compress", "--refine", "gptq", "--method", "finetune"], "--refine", "'gptq'"),
    (["compress", "--weighting", "fisher", "--method", "dkm"], "--weighting", "'fisher'"),
    (["compress", "--refine", "gptq", "--calibration_samples", "0"], "--calibration_samples",
     "0"),
    # scaled kernel clustering lacks these: refused from the flags, before loading anything
    (["compress", "--unit", "kernel", "--codebook", "shared", "--refine", "gptq"], "--refine",
     "'gptq'"),
    (["compress", "--unit", "kernel", "--transforms", "2", "--granularity", "per_channel"],
     "--granularity", "'per_channel'"),
    (["energy"], "--model", "None"),
    (["energy", "--model", "nope.tflite"], "--model", "nope.tflite"),
    (["shrink"], "command", "shrink"),
    (["compress", "extra"], "arguments", "extra"),
])
def test_bad_command_line_is_one_line_exit_2_before_any_work(args, flag, received, tmp_path):
    # in this process (a fresh Python per case cost ~5 s each); the console script itself:
    # test_bad_command_line_in_a_fresh_process
    out = tmp_path / "out"
    proc = _in_process(*args, "--output_dir", out)
    rc, err = proc.returncode, proc.stderr
    assert rc == 2, (rc, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0] and received in lines[0], lines[0]
    assert not out.exists()  # nothing trained, nothing written


def test_bad_command_line_in_a_fresh_process(tmp_path):
    out = tmp_path / "out"
    proc = _cli("compress", "--n_clusters", "0", "--output_dir", str(out))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--n_clusters" in lines[0] and not out.exists()


def test_output_dir_that_is_a_file_is_refused_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    proc = _in_process("compress", "--output_dir", str(blocker))
    assert proc.returncode == 2 and "--output_dir" in proc.stderr
    assert "it exists and is a file" in proc.stderr
    assert blocker.read_text() == "keep me"


def test_method_that_trains_needs_a_dataset(tmp_path):
    path = tmp_path / "m.keras"
    small_cnn().save(path)
    with pytest.raises(CliUsageError, match="--method.*need --dataset.*'finetune'"):
        check_compress_args(str(path), method="finetune", output_dir=str(tmp_path / "o"))
    check_compress_args(str(path), method="wr", output_dir=str(tmp_path / "o"))  # fine


def test_calibration_needs_a_dataset_with_a_user_model(tmp_path):
    path = tmp_path / "m.keras"
    small_cnn().save(path)
    with pytest.raises(CliUsageError, match="--refine: expected none with --model and no "
                       "--dataset.*'gptq'"):
        check_compress_args(str(path), refine="gptq", output_dir=str(tmp_path / "o"))
    check_compress_args(str(path), dataset="digits", refine="gptq",
                        output_dir=str(tmp_path / "o"))  # fine


def _npz(path, n_train=96, n_test=40, shape=(8, 8, 1), classes=10, **changes):
    from dkm_tf import data

    (x_tr, y_tr), (x_te, y_te) = data.load_digits()
    arrays = {"x_train": x_tr[:n_train], "y_train": y_tr[:n_train] % classes,
              "x_test": x_te[:n_test], "y_test": y_te[:n_test] % classes, **changes}
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("changes, expected", [
    ({"y_test": np.zeros(3, int)}, "expected y_test of shape (40,): one label per sample"),
    ({"y_train": np.zeros(96)}, "expected integer class labels in y_train"),
    # values, not headers: found when the file loads, still before any work
    ({"y_test": -np.ones(40, int)}, "expected class labels in [0, 2**31 - 1] in y_test"),
    ({"x_test": np.full((40, 8, 8, 1), np.nan)}, "expected finite inputs in x_test"),
])
def test_bad_npz_dataset_is_one_line_exit_2_before_any_work(tmp_path, changes, expected):
    out = tmp_path / "out"
    proc = _in_process("compress", "--dataset", _npz(tmp_path / "d.npz", **changes),
                "--output_dir", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dataset" in lines[0] and expected in lines[0], lines
    assert "d.npz" in lines[0] and not out.exists()


def test_user_model_with_npz_data_calibrates_and_reports_accuracy(tmp_path, capsys):
    from dkm_tf import data, pipeline

    path = tmp_path / "m.keras"
    model = small_cnn()
    (x_tr, y_tr), _ = data.load_digits()
    pipeline.train_classifier(model, (x_tr[:96], y_tr[:96]), epochs=2)
    model.save(path)
    dataset = _npz(tmp_path / "mine.npz")
    check_compress_args(str(path), dataset=dataset, refine="gptq",
                        output_dir=str(tmp_path / "o"))
    result = cli.run_compress(str(path), dataset=dataset, n_clusters=4, refine="gptq",
                              calibration_samples=32, tflite=False, plots=False, quiet=True,
                              output_dir=str(tmp_path / "o"))
    assert "[data] " + dataset + ": 96 train / 40 test samples of shape (8, 8, 1) in [0, 1], " \
        "10 classes" in capsys.readouterr().out
    assert result.method == "wr (refine=gptq)"
    (_, _), (x_te, y_te) = data.load_npz(dataset)
    want = float(np.mean(np.argmax(model.predict(x_te, verbose=0), 1) == y_te))
    assert result.accuracy_before == pytest.approx(want)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["calibration"]["samples"] == 32


@pytest.mark.parametrize("args, flag, expected", [
    ([], "--dataset", "a labelled .npz (x_train, y_train, x_test, y_test) to train the built-in"),
    (["--model", "{model}", "--method", "finetune", "--refine", "none"], "--method",
     "wr with an unlabelled --dataset"),
])
def test_unlabelled_npz_only_calibrates_a_user_model(tmp_path, args, flag, expected):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    x = tmp_path / "x.npz"
    np.savez(x, x_train=np.zeros((4, 8, 8, 1), np.float32))
    out = tmp_path / "out"
    proc = _in_process("compress", "--dataset", str(x), "--refine", "gptq",
                *[a.format(model=model) for a in args], "--output_dir", str(out))
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert "\n" not in line and f"invalid {flag}: expected {expected}" in line, line
    assert not out.exists()


def test_run_compress_from_python_checks_arguments_like_the_command_line(tmp_path):
    x = tmp_path / "x.npz"
    np.savez(x, x_train=np.zeros((4, 8, 8, 1), np.float32))
    out = tmp_path / "out"
    with pytest.raises(CliUsageError, match="invalid --dataset: expected a labelled .npz"):
        cli.run_compress(None, dataset=str(x), refine="gptq", output_dir=str(out))
    with pytest.raises(CliUsageError, match="invalid --n_clusters"):
        cli.run_compress(None, n_clusters=0, output_dir=str(out))
    assert not out.exists()


def test_user_model_calibrates_on_unlabelled_npz(tmp_path, capsys):
    from dkm_tf import data

    path = tmp_path / "m.keras"
    small_cnn().save(path)
    (x_tr, _), _ = data.load_digits()
    dataset = str(tmp_path / "x.npz")
    np.savez(dataset, x_train=x_tr[:40])
    check_compress_args(str(path), dataset=dataset, refine="outputs",
                        output_dir=str(tmp_path / "o"))
    result = cli.run_compress(str(path), dataset=dataset, n_clusters=4, refine="outputs",
                              tflite=False, plots=False, quiet=True,
                              output_dir=str(tmp_path / "o"))
    assert "40 unlabelled samples of shape (8, 8, 1) in [0, 1] (calibration" in \
        capsys.readouterr().out
    assert result.method == "wr (refine=outputs)" and result.accuracy_before is None
    assert result.calibration == {"refine": "outputs", "samples": 40}
    assert "model output error" in " ".join(p.note for p in result.palettes)


def test_unlabelled_held_out_inputs_report_agreement_with_the_float_model(tmp_path, capsys):
    from dkm_tf import cli_tables, data, pipeline

    path = tmp_path / "m.keras"
    model = small_cnn()
    (x_tr, y_tr), (x_te, _) = data.load_digits()
    pipeline.train_classifier(model, (x_tr[:200], y_tr[:200]), epochs=2)
    model.save(path)
    dataset = str(tmp_path / "x.npz")
    np.savez(dataset, x_train=x_tr[:64], x_test=x_te[:50])
    result = cli.run_compress(str(path), dataset=dataset, n_clusters=2, refine="gptq",
                              plots=False, quiet=True, output_dir=str(tmp_path / "o"))
    out = capsys.readouterr().out
    assert "64 unlabelled samples and 50 held-out inputs of shape (8, 8, 1)" in out
    assert "agreement with the float model: 100.00% before" in out
    assert "acc % here: agreement with the float model" in out
    float_cls = np.argmax(model.predict(x_te[:50], verbose=0), 1)
    agree = np.mean(np.argmax(result.model.predict(x_te[:50], verbose=0), 1) == float_cls)
    assert result.metric == cli_tables.AGREEMENT and result.accuracy_before == 1.0
    assert result.accuracy_after == pytest.approx(agree)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["metric"] == "agreement with the float model"
    for label in ("float", "palettized"):  # the files agree with Keras (at most one flip)
        got = report["tflite"][label]["agreement_with_the_float_model"]
        assert abs(got - agree) <= 1 / 50 + 1e-9, (label, got, agree)


def test_builtin_model_takes_its_classes_from_the_npz_labels(tmp_path):
    result = cli.run_compress(None, dataset=_npz(tmp_path / "three.npz", classes=3), epochs=1,
                              method="wr", n_clusters=4, tflite=False, plots=False, quiet=True,
                              output_dir=str(tmp_path / "o"))
    assert result.model.output_shape == (None, 3)


def test_builtin_demo_with_refine_runs_calibrated_wr(tmp_path):
    result = cli.run_compress(None, epochs=1, n_clusters=4, refine="gptq", weighting="fisher",
                              calibration_samples=64, tflite=False, plots=False, quiet=True,
                              output_dir=str(tmp_path))
    assert result.method == "wr (weighting=fisher, refine=gptq)"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["calibration"] == {"weighting": "fisher", "refine": "gptq", "samples": 64}
    notes = " ".join(p.note for p in result.palettes)
    assert "model output error" in notes  # each palette says what its refit did
    for p in result.palettes:
        kernel = getattr(result.model.get_layer(p.layer_name), p.weight_name).numpy()
        np.testing.assert_array_equal(kernel, p.decode())
        assert np.unique(kernel).size <= 4


def test_failure_while_running_is_one_line_exit_1_and_verbose_adds_the_traceback(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = _in_process("energy", "--model", str(bad))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkm-tf: error: ") and "--verbose" in lines[0]
    verbose = _in_process("energy", "--model", str(bad), "--verbose")
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr


def test_entry_point_end_to_end(tmp_path):
    # TF_CPP_MIN_LOG_LEVEL unset: the entry point quiets TensorFlow itself
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "dkm_tf.cli", "compress", "--epochs", "1", "--method", "wr",
         "--n_clusters", "4", "--output_dir", str(tmp_path), "--no_plots"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "whole model" in proc.stdout
    assert (tmp_path / "clustered.keras").is_file()
    assert not list(tmp_path.glob("*.png")) and "[plot]" not in proc.stdout  # --no_plots
    # stderr (not a terminal here): one progress line per stage, no TF / LiteRT log noise,
    # no line twice
    lines = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and len(lines) == len(set(lines)), lines
    assert not [line for line in lines if "INFO" in line or "oneDNN" in line], lines
    stages = [line.split("]")[0] + "]" for line in lines]
    assert stages == ["[train]", "[k-means K=4]", "[export]", "[latency]",
                      "[accuracy (449 test samples)]"], lines
    assert lines[2].startswith("[export] 4/4 formats in ")
    bad = subprocess.run([sys.executable, "-m", "dkm_tf.cli", "compress", "--unit", "filter"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "filter" in bad.stderr


def test_run_energy_on_a_saved_model(tmp_path):
    path = tmp_path / "m.keras"
    small_cnn().save(path)
    text = cli.run_energy(str(path))
    assert "TOTAL" in text and "c1" in text
    with pytest.raises(FileNotFoundError):
        cli.run_energy(str(tmp_path / "missing.keras"))


def test_builtin_demo_defaults_to_finetuning(tmp_path):
    result = cli.run_compress(None, epochs=1, finetune_epochs=1, n_clusters=4, tflite=False,
                              output_dir=str(tmp_path))
    assert result.method == "finetune"
    for p in result.palettes:
        kernel = getattr(result.model.get_layer(p.layer_name), p.weight_name).numpy()
        assert np.unique(kernel).size <= 4


def test_progress_goes_to_its_stream_and_quiet_silences_it(tmp_path, capsys):
    import io

    from dkm_tf.progress import Progress

    buf = io.StringIO()
    cli.run_compress(None, epochs=1, finetune_epochs=1, n_clusters=4, tflite=False,
                     plots=False, output_dir=str(tmp_path / "a"),
                     progress=Progress(stream=buf, tty=False))
    stages = [line.split("]")[0] + "]" for line in buf.getvalue().splitlines()]
    assert stages == ["[train]", "[k-means K=4]", "[finetune]"]
    assert "[train] 43/43 batches in " in buf.getvalue()  # 1348 images, batch 32
    # quiet=True silences it: test_a_run_removes_an_earlier_runs_files_and_nothing_else (the
    # same run_compress call, checked there rather than run twice)


def test_missing_matplotlib_is_said_once(tmp_path, capsys, monkeypatch):
    from dkm_tf import plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    result = cli.run_compress(None, epochs=1, method="wr", n_clusters=4, tflite=False,
                              quiet=True, output_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("plots skipped: pip install matplotlib") == 1
    assert result.plots == [] and not list(tmp_path.glob("*.png"))
    # what was not done is in report.json too, not only on the screen (it was logged only)
    report = json.loads((tmp_path / "report.json").read_text())
    assert [n for n in report["notes"] if "pip install matplotlib" in n] == [
        plots.MISSING_MATPLOTLIB]


def test_why_a_tflite_file_has_no_accuracy_is_in_report_json(tmp_path, monkeypatch):
    from dkm_tf import pipeline

    real = pipeline.tflite_accuracy

    def without_int8(path, data, notes=None, **kw):  # as when a file cannot be scored
        if path.endswith(".int8.tflite"):
            notes.append(f"no accuracy of {path}: a reason")
            return None
        return real(path, data, notes=notes, **kw)

    monkeypatch.setattr(pipeline, "tflite_accuracy", without_int8)
    result = cli.run_compress(None, epochs=1, method="wr", n_clusters=4, plots=False,
                              quiet=True, output_dir=str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    why = [n for n in report["notes"] if n.startswith("no accuracy of ")]
    assert why == [f"no accuracy of {tmp_path / 'clustered.int8.tflite'}: a reason"]
    assert why[0] in result.notes and report["tflite"]["int8"]["test_accuracy"] is None
    assert report["tflite"]["float"]["test_accuracy"] > 0.5


def test_import_sets_no_environment_variable():
    code = ("import os, dkm_tf, dkm_tf.cli, dkm_tf.plots, dkm_tf.progress; "
            "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, timeout=120).stdout
    assert out.strip() == "None"


def test_data_line_shows_x_test_range_when_it_differs():
    from dkm_tf import cli_tables

    x = np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 8, 8, 1)
    y = np.array([0, 1])
    same = cli_tables.data_line("d.npz", (x, y), (x, y))
    assert "of shape (8, 8, 1) in [0, 1], 2 classes" in same and "x_test" not in same
    pixels = cli_tables.data_line("d.npz", (x, y), (x * 255, y))  # 0-255 test inputs show
    assert "of shape (8, 8, 1) in [0, 1] (x_test in [0, 255]), 2 classes" in pixels


def test_a_run_removes_an_earlier_runs_files_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    earlier = ["clustered.int8.tflite", "clustered.palettized.tflite", "formats.png",
               "report.json"]
    for name in earlier + ["mine.tflite", "notes.txt"]:
        (out / name).write_text("an earlier run")
    cli.run_compress(None, epochs=1, method="wr", n_clusters=4, tflite=False, plots=False,
                     output_dir=str(out), quiet=True)
    left = sorted(p.name for p in out.iterdir())
    assert left == ["clustered.keras", "clustered.palettes.json", "mine.tflite", "notes.txt",
                    "report.json"]
    assert json.loads((out / "report.json").read_text())["method"] == "wr"
    captured = capsys.readouterr()
    assert "[write] removed 4 file(s) of an earlier run: report.json, " in captured.out
    assert captured.err == ""  # quiet=True: no progress lines (test_progress_goes_to_its_...)


def test_energy_refuses_compress_flags_it_would_ignore(tmp_path):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    proc = _in_process("energy", "--model", str(model), "--n_clusters", "4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert "\n" not in line and "invalid --n_clusters: expected no compress flags with " \
        "dkm-tf energy" in line and "received '--n_clusters'" in line
    assert proc.stdout == ""


def test_stdout_closed_early_is_exit_141_without_an_error(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.keras"
    small_cnn().save(model)

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "run_energy", closed)
    assert cli.run(["dkm-tf", "energy", "--model", str(model)]) == 141
    assert "error" not in capsys.readouterr().err


def test_a_second_run_in_one_process_starts_from_the_default_flags(tmp_path, monkeypatch):
    model = tmp_path / "m.keras"
    small_cnn().save(model)
    seen = []
    monkeypatch.setattr(cli, "run_compress", lambda path, **kw: seen.append(kw["n_clusters"]))
    monkeypatch.setattr(cli, "run_energy", lambda path, **kw: seen.append(path))
    assert cli.run(["dkm-tf", "compress", "--model", str(model), "--n_clusters", "4"]) == 0
    assert cli.run(["dkm-tf", "compress", "--model", str(model)]) == 0
    assert cli.run(["dkm-tf", "energy", "--model", str(model)]) == 0  # no stale --n_clusters
    assert seen == [4, 16, str(model)]
