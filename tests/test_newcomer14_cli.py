"""The ``dkm-tf`` command as a first-time user meets it: ``dkm-tf help [command]``, a bare
``dkm-tf``, mistyped commands and flags (close matches), help piped into ``head``, and the
legend under the default run's summary (``pt``, the energy line)."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from dkm_tf import cli, cli_tables
from dkm_tf.cli_args import help_text


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", *args], stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("args, command", [(["help", "compress"], "compress"),
                                           (["help", "energy"], "energy"),
                                           (["help"], None), (["help", "help"], None),
                                           (["--verbose", "help", "energy"], "energy"),
                                           (["--quiet", "help", "compress"], "compress"),
                                           (["help", "compress", "--n_clusters", "4"],
                                            "compress")])
def test_help_subcommand_prints_that_commands_help_and_exits_0(args, command):
    # old: exit 2, "invalid command: ... received 'help'"
    rc, out, err = _run(*args)
    assert (rc, err) == (0, ""), err
    assert out == help_text(command) + "\n"
    if command is not None:
        assert f"Flags of `dkm-tf {command}`:" in out
        other = ({"compress", "energy"} - {command}).pop()
        assert f"Flags of `dkm-tf {other}`:" not in out
    assert "dkm-tf help <command>" in out  # the help text names the new form


@pytest.mark.parametrize("args, received, match", [
    (["help", "compres"], "'compres'", "did you mean 'compress'?"),
    (["help", "shrink"], "'shrink'", None),
    (["help", "compress", "energy"], "'compress energy'", None),
])
def test_help_of_an_unknown_command_is_one_line_exit_2(args, received, match):
    rc, out, err = _run(*args)
    assert rc == 2 and out == "", (rc, out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dkm-tf: error: "), err
    assert received in lines[0], lines[0]
    if args[1:] != ["compress", "energy"]:
        assert "['compress', 'energy']" in lines[0]  # the choices
    else:
        assert "one command after help" in lines[0]
    if match:
        assert lines[0].count("did you mean") == 1 and match in lines[0], lines[0]
    else:
        assert "did you mean" not in lines[0]


@pytest.mark.parametrize("typo, meant", [("compres", "compress"), ("Compress", "compress"),
                                         ("enrgy", "energy"), ("energie", "energy")])
def test_a_mistyped_command_gets_a_close_match(typo, meant):
    rc, out, err = _run(typo)  # old: no suggestion
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert f"received {typo!r}; did you mean {meant!r}?" in err, err


def test_bare_command_prints_the_usage_and_no_none():
    rc, out, err = _run()  # old: one line "... received None"
    assert rc == 2 and out == ""
    assert "Usage:" in err and "dkm-tf compress" in err and "dkm-tf energy" in err
    assert "None" not in err and "received no command" in err, err
    assert err.strip().splitlines()[-1].startswith("dkm-tf: error: invalid command")


@pytest.mark.parametrize("args, expected", [
    (["compress", "--noplot"], "Did you mean: --noplots ?"),  # old: no suggestion
    (["compress", "--no-plots"], "Did you mean: --noplots ?"),  # old: "plots" (not a fix)
    (["compress", "--no-tflite"], "Did you mean: --notflite ?"),
    (["compress", "--n_cluster", "4"], "Did you mean: --n_clusters ?"),
    (["energy", "--modle", "m.keras"], "Did you mean: --model ?"),
])
def test_a_mistyped_flag_gets_the_right_spelling(args, expected, tmp_path):
    rc, out, err = _run(*args, "--output_dir", str(tmp_path / "o"))
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    # the help of the command at hand (old: always "see dkm-tf --help")
    assert lines[0].endswith(f"(see dkm-tf {args[0]} --help)"), lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["energy", "--n_cluster", "4"], ["energy", "--noplot"]])
def test_flag_suggestions_come_from_the_commands_own_flags(args):
    # old: "Did you mean: --n_clusters ?" / "--noplots", flags dkm-tf energy refuses
    rc, out, err = _run(*args)
    assert rc == 2 and out == "" and "mean" not in err
    assert f"Unknown command line flag '{args[1][2:]}': dkm-tf energy takes --model, " \
           "--input_shape (see dkm-tf energy --help)" in err


def test_unknown_flag_without_close_match_is_unchanged():
    rc, _, err = _run("compress", "--xyz")
    assert rc == 2 and "Unknown command line flag 'xyz' (see" in err and "mean" not in err


@pytest.mark.parametrize("args", [["--help"], ["help", "compress"], ["energy", "-h"]])
def test_help_into_a_closed_pipe_has_no_traceback(args):
    # old: `dkm-tf --help | head -1` printed a BrokenPipeError traceback, exit status 1
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "dkm_tf.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the help is written
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and err == "", err


def test_size_legend_explains_pt_and_the_energy_line():
    text = cli_tables.size_legend(os.path.join("runs", "a"))
    lines = text.splitlines()
    pt = [ln for ln in lines if ln.split()[:1] == ["pt"]]
    assert len(pt) == 1 and "percentage points" in pt[0] and "after minus its before" in pt[0]
    start = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["energy"])
    energy = " ".join(" ".join(lines[start:]).split())
    assert "16-bit weights and activations" in energy and "entropy" in energy
    assert "paper's metric" in energy and "memory-hierarchy" in energy
    assert f"dkm-tf energy --model {os.path.join('runs', 'a', 'clustered.keras')}" in energy
    assert "{" not in text  # no template left


def test_the_run_prints_the_energy_legend_under_its_summary(tmp_path, capsys):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "out"
    result = cli.run_compress(str(path), n_clusters=4, output_dir=str(out), tflite=False,
                              plots=False, quiet=True)
    text = capsys.readouterr().out
    assert result.energy is not None and "energy (16-bit, entropy-coded indices)" in text
    assert text.index("energy (16-bit") < text.index("        energy      estimated energy")
    assert f"dkm-tf energy --model {out / 'clustered.keras'}" in " ".join(text.split())
    assert result.accuracy_before is None and "pt " not in text  # no accuracy line: no pt
    assert np.isfinite(result.energy.hierarchy_total)


def test_the_keras_line_says_why_the_file_is_not_small(tmp_path, capsys):
    # old: "[write] out/clustered.keras (183,166 bytes)" above a 25 KB palettized file: the
    # "compressed" model looked larger than the float .tflite, with no word why
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="c"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="d")])
    path = tmp_path / "m.keras"
    model.save(path)
    out = tmp_path / "out"
    cli.run_compress(str(path), n_clusters=4, output_dir=str(out), tflite=False, plots=False,
                     quiet=True)
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith(f"[write] {out / 'clustered.keras'} "))
    size = (out / "clustered.keras").stat().st_size
    assert f"({size:,} bytes: a Keras model" in line and "decoded as float32" in line, line
    assert "without --notflite" in line  # this run wrote no .tflite: says how to get them
    assert "palettized .tflite files below" in cli_tables.keras_line(str(path), True)
