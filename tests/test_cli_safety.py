"""File safety of the command line: an input is never destroyed by an output, a run that stops
half-way says what it left, and an ordinary mistake (a renamed or truncated file, unpacked
MNIST files) gets a clear answer."""

import hashlib
import os
import pathlib
import subprocess
import sys

import keras
import pytest

from dkm_tf import cli, pipeline
from dkm_tf.cli_args import CliUsageError, check_compress_args, help_text
from dkm_tf.data import MNIST_FILES
from dkm_tf.export import cli as export_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(path)
    return path


def _run(*args):
    return cli.run(["dkm-tf", *args])


def test_model_that_a_run_would_replace_is_refused_and_kept(model_file, tmp_path, capsys):
    out = tmp_path / "dkm_tf_out"
    out.mkdir()
    victim = out / "clustered.keras"  # `dkm-tf compress --model dkm_tf_out/clustered.keras`
    victim.write_bytes(model_file.read_bytes())
    (out / "clustered.palettes.json").write_text("[]")
    link = tmp_path / "link.keras"
    link.symlink_to(victim)
    before = _digest(victim)
    for model, output_dir in ((victim, out), (victim, f"{out}/../{out.name}/"), (link, out)):
        rc = _run("compress", "--model", str(model), "--output_dir", str(output_dir),
                  "--notflite", "--noplots", "--quiet")
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "invalid --output_dir" in err and "input model would be lost" in err, err
    assert _digest(victim) == before and (out / "clustered.palettes.json").read_text() == "[]"
    with pytest.raises(CliUsageError, match="clustered.keras"):
        check_compress_args(str(victim), output_dir=str(out))
    check_compress_args(str(victim), output_dir=str(tmp_path / "elsewhere"))  # accepted


def test_to_tflite_output_that_is_its_own_input_is_refused(model_file, tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(model_file.read_bytes())
    before = _digest(model)
    with pytest.raises(ValueError, match="`model_path`"):
        export_cli.run_to_tflite(str(model), str(model), n_clusters=4)
    samples = tmp_path / "x.npy"
    samples.write_bytes(b"not touched")
    with pytest.raises(ValueError, match="`samples_path`"):
        export_cli.run_to_tflite(str(model), f"{tmp_path}/./x.npy", n_clusters=4,
                                 samples_path=str(samples))
    assert _digest(model) == before and samples.read_bytes() == b"not touched"
    proc = subprocess.run(  # the script too, with --overwrite: exit 2, before any work
        [sys.executable, str(ROOT / "export" / "to_tflite.py"), f"--model={model}",
         "--n_clusters=4", f"--output={model}", "--overwrite"], capture_output=True,
        text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                                     "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Expected a path other than --model" in proc.stderr
    assert _digest(model) == before


def test_inspect_script_bad_file_is_one_line_exit_1(tmp_path):
    bad = tmp_path / "m.tflite"
    bad.write_bytes(b"\x14\x00\x00\x00 not a flatbuffer at all")
    proc = subprocess.run([sys.executable, str(ROOT / "export" / "inspect_tflite.py"),
                           f"--tflite={bad}"], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if "inspect_tflite.py" in ln]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and "TFL3" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_files_gzipped_or_not_are_accepted(tmp_path, monkeypatch, gz):
    for stem in MNIST_FILES:  # existence is what the flag check reads
        (tmp_path / (stem + (".gz" if gz else ""))).write_bytes(b"")
    monkeypatch.setenv("DKM_TF_MNIST_DIR", str(tmp_path))
    check_compress_args(dataset="mnist", output_dir=str(tmp_path / "out"))
    os.remove(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    with pytest.raises(CliUsageError, match="missing train-images-idx3-ubyte"):
        check_compress_args(dataset="mnist", output_dir=str(tmp_path / "out"))


def test_interrupted_before_writing_says_the_folder_is_as_it_was(model_file, tmp_path,
                                                                 monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier, complete run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "compress", interrupted)
    rc = _run("compress", "--model", str(model_file), "--output_dir", str(out), "--notflite",
              "--noplots", "--quiet")
    err = capsys.readouterr().err
    assert rc == 130 and "nothing was written or removed" in err, err
    assert "unfinished" not in err and (out / "report.json").read_text() == "{}"


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_stopped_after_writing_says_the_folder_holds_an_unfinished_run(
        model_file, tmp_path, monkeypatch, capsys, error):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier, complete run: removed first

    def fails(*args, **kwargs):
        raise error("disk on fire")

    monkeypatch.setattr(pipeline, "save_palettes", fails)  # after clustered.keras
    rc = _run("compress", "--model", str(model_file), "--output_dir", str(out), "--notflite",
              "--noplots", "--quiet", "--n_clusters", "4")
    err = capsys.readouterr().err
    assert rc == (130 if error is KeyboardInterrupt else 1), err
    assert f"{out} holds an unfinished run: no report.json" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (out / "report.json").exists() and (out / "clustered.keras").is_file()
    rc = _run("compress", "--model", str(model_file), "--output_dir", str(tmp_path / "o2"),
              "--notflite", "--noplots", "--quiet", "--n_clusters", "4", "--lam", "-1")
    assert rc == 2 and "unfinished" not in capsys.readouterr().err  # a later run: reset


def test_help_states_the_default_of_every_on_off_flag():
    lines = {ln.split(":")[0].strip(): ln for ln in help_text("compress").splitlines()
             if ln.startswith("  --")}
    assert lines["--tflite"].endswith("[on; --notflite turns it off]")
    assert lines["--plots"].endswith("[on; --noplots turns it off]")
    assert lines["--quiet"].endswith("[off; --quiet turns it on]")
    assert "removes an earlier run's files" in lines["--output_dir STRING"]


@pytest.mark.parametrize("name, content, expected", [
    ("m.h5", None, "a .keras zip archive: rename it to .keras"),
    ("m.keras", HDF5_SIGNATURE + bytes(64), "an HDF5 file: rename it to .h5"),
    ("m.h5", b"junk" * 20, "not an HDF5 file"),
])
def test_renamed_or_broken_model_file_says_what_it_is(model_file, tmp_path, capsys, name,
                                                      content, expected):
    path = tmp_path / name
    path.write_bytes(model_file.read_bytes() if content is None else content)
    for command in (["compress", "--notflite", "--noplots", "--output_dir",
                     str(tmp_path / "out")], ["energy"]):
        rc = _run(*command, "--model", str(path))
        err = capsys.readouterr().err
        assert rc == 1 and expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_model_keras_cannot_load_names_the_flag(tmp_path, capsys):
    path = tmp_path / "m.h5"  # an HDF5 signature, then nothing a model needs
    path.write_bytes(HDF5_SIGNATURE + bytes(200))
    rc = _run("compress", "--model", str(path), "--notflite", "--noplots",
              "--output_dir", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 1 and f"Could not load --model '{path}'" in err, err
    assert not (tmp_path / "out").exists()


class _Size:
    def summary(self):
        return "size"


def test_accuracy_change_is_the_difference_of_the_printed_figures():
    result = pipeline.CompressionResult(None, [], [], _Size(), "wr",
                                        accuracy_before=0.9844097995545658,
                                        accuracy_after=0.9799554565701559)
    assert "98.44% before, 98.00% after (-0.44 pt)" in result.summary()
    same = pipeline.CompressionResult(None, [], [], _Size(), "wr", accuracy_before=0.98,
                                      accuracy_after=0.9799999999999999)
    assert "(+0.00 pt)" in same.summary()


def test_kernel_unit_says_why_a_dense_layer_is_left_float(model_file):
    model = keras.models.load_model(model_file, compile=False)
    skipped = dict(pipeline._skipped_layers(model, [], None, "kernel"))
    assert set(skipped) == {"conv", "fc"}
    assert "Dense has no k x k Conv2D kernel" in skipped["fc"]
    assert skipped["conv"] == "not clustered"


@pytest.mark.parametrize("script, args, expected", [
    ("to_tflite.py", ["--model=m.keras", "--fromat=int8"], "Unknown command line flag 'fromat'"),
    ("to_tflite.py", ["--model=m.keras", "--format=int9"], "value should be one of"),
    ("to_tflite.py", [], "Flag --model must have a value"),
    ("to_tflite.py", ["--model=m.keras", "extra"], "positional argument(s) 'extra'"),
    ("inspect_tflite.py", [], "Flag --tflite must have a value"),
])
def test_script_usage_error_is_one_line_exit_2(script, args, expected):
    proc = subprocess.run([sys.executable, str(ROOT / "export" / script), *args],
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                               "PATH": "/usr/bin:/bin"})
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith(script)]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(ours) == 1 and expected in ours[0] and "--help" in ours[0], proc.stderr[-2000:]


def test_an_output_name_taken_by_a_folder_is_refused_before_any_work(model_file, tmp_path):
    out, plots = tmp_path / "out", tmp_path / "plots"
    (out / "report.json").mkdir(parents=True)  # would fail at the very end, after all work
    with pytest.raises(CliUsageError, match="invalid --output_dir: .*report.json is a folder"):
        check_compress_args(str(model_file), output_dir=str(out))
    (plots / "energy.png").mkdir(parents=True)
    with pytest.raises(CliUsageError, match="invalid --plots_dir: .*energy.png is a folder"):
        check_compress_args(str(model_file), output_dir=str(tmp_path), plots_dir=str(plots))


def test_a_ctrl_c_that_python_swallowed_still_stops_the_run_before_any_file(
        model_file, tmp_path, monkeypatch, capsys, request):
    """A KeyboardInterrupt raised inside a gc callback or __del__ (JAX's, imported by
    TensorFlow) is printed as "Exception ignored" and lost: the run went on and replaced the
    earlier run's files."""
    import signal  # noqa: PLC0415

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier, complete run
    real = pipeline.compress

    def swallowed_then_compress(*args, **kwargs):
        try:  # as in a gc callback: the interrupt is raised, and dropped
            signal.raise_signal(signal.SIGINT)
            for _ in range(10_000):
                pass
        except KeyboardInterrupt:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compress", swallowed_then_compress)
    # as in a terminal (a job started in the background of a script ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    rc = _run("compress", "--model", str(model_file), "--output_dir", str(out), "--notflite",
              "--noplots", "--quiet", "--n_clusters", "4")
    err = capsys.readouterr().err
    assert rc == 130 and "nothing was written or removed" in err, err
    assert sorted(os.listdir(out)) == ["report.json"] and (out / "report.json").read_text() == "{}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    cli.run_compress(str(model_file), n_clusters=4, output_dir=str(tmp_path / "later"),
                     tflite=False, plots=False, quiet=True)  # a later call: not interrupted
    assert (tmp_path / "later" / "report.json").is_file()


def test_a_tilde_after_an_equals_sign_is_the_home_folder(model_file, tmp_path, monkeypatch):
    # the shell expands ~ only at the start of a word: "--output_dir=~/out" arrived as is and
    # made a folder literally named "~" in the working directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    rc = _run("compress", f"--model={model_file}", "--output_dir=~/out", "--notflite",
              "--noplots", "--quiet", "--n_clusters", "4")
    assert rc == 0
    assert (tmp_path / "home" / "out" / "report.json").is_file()
    assert not (tmp_path / "~").exists()


def test_interrupted_after_the_report_says_the_run_had_finished(model_file, tmp_path,
                                                                 monkeypatch, capsys):
    # was: "nothing was written or removed (the output folder is as it was)"
    real_log = cli._log

    def log(msg):
        real_log(msg)
        if msg.startswith("[write]") and msg.endswith("report.json"):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_log", log)
    out = tmp_path / "out"
    rc = _run("compress", "--model", str(model_file), "--output_dir", str(out), "--notflite",
              "--noplots", "--quiet", "--n_clusters", "4")
    err = capsys.readouterr().err
    assert rc == 130 and f"the run had finished: {out} holds its complete results" in err, err
    assert (out / "report.json").is_file()
