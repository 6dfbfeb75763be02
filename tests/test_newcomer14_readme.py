"""README.md as a newcomer reads it: what it says about installing the plots' dependency agrees
with setup.cfg, and the help forms of ``dkm-tf`` it names run (exit 0, no work done)."""

import configparser
import io
import pathlib
import re
import shlex

import pytest

from dkm_tf import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _install_requires():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [re.split(r"[<>=!~ ;\[]", line.strip())[0].lower()
            for line in cfg["options"]["install_requires"].splitlines() if line.strip()]


def test_readme_does_not_send_people_to_an_extra_for_a_requirement():
    # old: "--noplots skips the plots (matplotlib, in the `[plots]` extra)", while setup.cfg
    # installs matplotlib with the package: a newcomer installed an extra for nothing
    assert "matplotlib" in _install_requires()
    text = " ".join(README.split())
    for found in re.finditer(r"`\[plots\]`", text):
        around = text[max(0, found.start() - 120):found.end() + 160]
        if "matplotlib" in around:
            assert re.search(r"requirement of the package|installed\s+with the package",
                             around), around


def _section():
    start = README.index("## The `dkm-tf` command")
    return " ".join(README[start:README.index("\n## ", start + 5)].split())


def _help_forms():
    """The ``dkm-tf`` command lines in backticks that only print help or the version."""
    forms = set()
    for cmd in re.findall(r"`(dkm-tf [^`]*)`", _section()):
        words = shlex.split(cmd)
        if words[1:2] == ["help"] or "--help" in words or words[1:] == ["--version"]:
            forms.add(tuple(words))
    return sorted(forms)


def test_the_readme_names_the_help_forms():
    forms = _help_forms()
    assert ("dkm-tf", "help", "compress") in forms and ("dkm-tf", "--version") in forms, forms
    assert ("dkm-tf", "--help") in forms


@pytest.mark.parametrize("argv", _help_forms(), ids=" ".join)
def test_every_help_form_the_readme_names_runs(argv):
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(list(argv), stdout=out, stderr=err) == 0, err.getvalue()
    assert err.getvalue() == "" and out.getvalue().strip()
