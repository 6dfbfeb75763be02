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

from dkm_tf import cli
from dkm_tf.cli_args import check_command_flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
HELP_OR_TYPO = {("dkm-tf", "compres")}


def _examples(text):
    """The ``dkm-tf`` command lines of ``text``: backticked (across line breaks) and the lines
    of code blocks (after ``&&`` too); optional ``[--flag value]`` groups are kept as given,
    synopsis lines (``a|b`` alternatives) and placeholders (``...``, ``H,W,C``) left out."""
    found = re.findall(r"`(dkm-tf [^`]*)`", " ".join(text.split()))
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            found += [part.strip() for part in line.split("&&")
                      if part.strip().startswith("dkm-tf ")]
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
    """Exit status, stderr and the recorded call of ``words`` run through :func:`cli.run`."""
    calls = []
    monkeypatch.setattr(cli, "run_compress", lambda model, **kw: calls.append(
        ("compress", model, kw)))
    monkeypatch.setattr(cli, "run_energy", lambda model, **kw: calls.append(
        ("energy", model, kw)))
    # the file checks need the files; the flag checks stay
    monkeypatch.setattr(cli, "check_energy_args",
                        lambda model, given, shape: check_command_flags("energy", given))
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
    if "--model" in words:
        assert calls[0][1] == words[words.index("--model") + 1]


def test_the_check_fails_on_a_positional_file(monkeypatch):
    # the old README's form, and the extraction finds it
    assert ("dkm-tf", "energy", "clustered.keras") in _examples(
        "which `dkm-tf energy clustered.keras` reads")
    status, err, calls = _parse(("dkm-tf", "energy", "clustered.keras"), monkeypatch)
    assert status == 2 and "positional" in err and not calls
