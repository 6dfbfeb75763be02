"""README.md as a newcomer copies it: every ``dkm-tf`` command line it shows (inline or in a
block, help forms and the deliberate typo aside) is accepted by the command's parser as
written, and reaches the command it names with the files it names. Nothing is trained: the
commands' work functions are replaced by recorders.

(old: "the codebooks and indices, which `dkm-tf energy clustered.keras` reads": exit 2,
"expected no positional arguments after the command")
"""

import io
import pathlib
import re
import shlex

import pytest

from dkm_tf import cli, cli_args, cli_overrides
from dkm_tf.cli_args import parse_input_shape

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HELP_OR_TYPO = {("dkm-tf", "compres")}


def _examples(text):
    """The ``dkm-tf`` command lines of ``text``: backticked (across line breaks) and the lines
    of code blocks (after ``&&`` too); optional ``[--flag value]`` groups are kept as given,
    synopsis lines (``a|b`` alternatives) and placeholders (``...``, ``H,W,C``) left out."""
    text = text.replace("python -m dkm_tf ", "dkm-tf ")
    found = re.findall(r"`(dkm-tf [^`]*)`", " ".join(text.split()))
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # continued lines joined
            parts = (p.strip().removeprefix("$ ").split(" | ")[0].strip()
                     for p in re.split(r"&&|;", line))
            found += [p for p in parts if p.startswith("dkm-tf ")]
    lines = set()
    for cmd in found:
        cmd = re.sub(r"\[(--[^\]|]+)\]", r"\1", cmd).replace("<output_dir>", "dkm_tf_out")
        if "|" in cmd or "..." in cmd or "H,W,C" in cmd or "[" in cmd:
            continue
        words = tuple(shlex.split(cmd))
        if ("help" in words or "--help" in words or "--version" in words
                or words in HELP_OR_TYPO or words == ("dkm-tf", "energy")):
            continue
        lines.add(words)
    return sorted(lines)


def _parse(words, monkeypatch):
    """Exit status, stderr and the recorded call of ``words`` run through :func:`cli.run`:
    every check runs but those that need the files (``--model``, ``--dataset``); the
    compress recorder runs the checks of how its flags combine first (review R3: a README
    line the real command refuses, e.g. ``--codebook shared`` without ``--unit kernel``,
    passed)."""
    calls = []
    monkeypatch.setattr(cli_args, "_model_file", lambda path, suffixes: None)
    monkeypatch.setattr(cli_args, "_dataset", lambda name: True)

    def compress(model, **kw):
        cli_overrides.check_compress_args(model, **kw)  # every check of run_compress's
        calls.append(("compress", model, kw))

    monkeypatch.setattr(cli, "run_compress", compress)
    monkeypatch.setattr(cli, "run_energy", lambda model, **kw: calls.append(
        ("energy", model, kw)))
    err = io.StringIO()
    status = cli.run(list(words), stdout=io.StringIO(), stderr=err)
    return status, err.getvalue(), calls


def test_the_readme_shows_the_commands_a_newcomer_copies():
    examples = _examples(README)
    assert ("dkm-tf", "compress") in examples
    assert any(w[:2] == ("dkm-tf", "energy") for w in examples), examples
    assert len(examples) >= 6, examples


@pytest.mark.parametrize("words", _examples(README), ids=" ".join)
def test_every_readme_command_line_parses_as_written(words, monkeypatch):
    status, err, calls = _parse(words, monkeypatch)
    assert status == 0 and not err, (" ".join(words), err)
    assert len(calls) == 1 and calls[0][0] == words[1], calls
    _check_reached(words, calls[0])


def _check_reached(words, call):
    """Every ``--flag value`` of ``words`` reached the recorded ``call`` with its value."""
    got = dict(call[2], model=call[1])
    for flag, value in _flag_values(words[2:]).items():
        assert flag in got, (flag, sorted(got))
        number = isinstance(got[flag], (int, float)) and not isinstance(got[flag], bool)
        shape = isinstance(got[flag], tuple) and got[flag] == parse_input_shape(value)
        assert str(got[flag]) == value or number and got[flag] == float(value) or shape, (
            flag, value, got[flag])


def _flag_values(words):
    """``{"name": "value"}`` of ``--name value`` / ``--name=value``; booleans "True"/"False"."""
    out, i = {}, 0
    while i < len(words):
        word = words[i]
        assert word.startswith("--"), words
        if "=" in word:
            name, value = word[2:].split("=", 1)
        elif i + 1 < len(words) and not words[i + 1].startswith("--"):
            name, value = word[2:], words[i + 1]
            i += 1
        elif word.startswith("--no"):
            name, value = word[4:], "False"
        else:
            name, value = word[2:], "True"
        out[name] = value
        i += 1
    return out


def test_a_readme_line_the_command_refuses_or_drops_fails(monkeypatch):
    # review R3: --codebook shared without --unit kernel exits 2 in the real command
    status, err, calls = _parse(("dkm-tf", "compress", "--codebook", "shared"), monkeypatch)
    assert status == 2 and "--codebook" in err and not calls
    words = ("dkm-tf", "compress", "--n_clusters", "4", "--refine", "gptq", "--noplots")
    status, err, calls = _parse(words, monkeypatch)
    assert status == 0 and not err
    _check_reached(words, calls[0])
    for dropped, wrong in (("refine", None), ("n_clusters", 16), ("plots", True)):
        call = (calls[0][0], calls[0][1], dict(calls[0][2], **{dropped: wrong}))
        with pytest.raises(AssertionError):  # a flag lost on the way is seen
            _check_reached(words, call)
    call = (calls[0][0], calls[0][1], {k: v for k, v in calls[0][2].items() if k != "refine"})
    with pytest.raises(AssertionError):
        _check_reached(words, call)
    # review R5: --custom_objects without --model exits 2 in the real command; an energy
    # line's --input_shape reaches the command
    status, err, calls = _parse(("dkm-tf", "compress", "--custom_objects", "my.py"), monkeypatch)
    assert status == 2 and "--custom_objects" in err and not calls
    words = ("dkm-tf", "energy", "--model", "m.keras", "--input_shape", "12,12,1")
    status, err, calls = _parse(words, monkeypatch)
    assert status == 0 and not err and calls[0][2]["input_shape"] == (12, 12, 1)
    _check_reached(words, calls[0])
    # the forms a README may show a command in are all found
    text = ("```\n$ dkm-tf compress --n_clusters 8\ncd x; dkm-tf compress --seed 1 | tee log\n"
            "dkm-tf compress \\\n  --epochs 2\n```\nor `python -m dkm_tf compress --lam 1`")
    assert _examples(text) == sorted([
        ("dkm-tf", "compress", "--n_clusters", "8"), ("dkm-tf", "compress", "--seed", "1"),
        ("dkm-tf", "compress", "--epochs", "2"), ("dkm-tf", "compress", "--lam", "1")])


def test_the_check_fails_on_a_positional_file(monkeypatch):
    # the old README's form, and the extraction finds it
    assert ("dkm-tf", "energy", "clustered.keras") in _examples(
        "which `dkm-tf energy clustered.keras` reads")
    status, err, calls = _parse(("dkm-tf", "energy", "clustered.keras"), monkeypatch)
    assert status == 2 and "positional" in err and not calls
