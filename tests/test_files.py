"""Atomic writes survive a killed writer: the next write in the folder removes its temp."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from dkm_tf.core.files import TEMP_PREFIX, atomic_path, remove_stale_temps

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_success_replaces_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    try:
        with atomic_path(target) as tmp:
            pathlib.Path(tmp).write_text("half")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp:
        pathlib.Path(tmp).write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_sigkill_inside_a_write_leaves_no_stale_temp_after_the_next_write(tmp_path):
    target = tmp_path / "model.tflite"
    target.write_text("previous release")
    code = ("import pathlib, sys, time; from dkm_tf.core.files import atomic_path\n"
            f"with atomic_path(r'{target}') as tmp:\n"
            "    pathlib.Path(tmp).write_text('half written')\n"
            "    print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    stale = [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]
    assert len(stale) == 1 and f"{TEMP_PREFIX}{proc.pid}-" in stale[0]
    assert target.read_text() == "previous release"  # the kill lost nothing
    with atomic_path(tmp_path / "other.json") as tmp:  # the next write in that folder
        pathlib.Path(tmp).write_text("{}")
    assert sorted(os.listdir(tmp_path)) == ["model.tflite", "other.json"]


def test_live_writers_and_foreign_files_are_left_alone(tmp_path):
    mine = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-abc.tmp"
    mine.write_text("in progress")
    legacy_new = tmp_path / f"{TEMP_PREFIX}xyz.tmp"  # no pid, recent
    legacy_new.write_text("x")
    legacy_old = tmp_path / f"{TEMP_PREFIX}old.tmp"
    legacy_old.write_text("x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(legacy_old, (day_ago, day_ago))
    other = tmp_path / ".tmp-someone-else"
    other.write_text("not ours")
    assert remove_stale_temps(tmp_path) == [legacy_old.name]
    assert mine.exists() and legacy_new.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "missing") == []


def test_write_text_atomic_writes_all_or_nothing(tmp_path):
    from dkm_tf.core.files import write_text_atomic

    path = tmp_path / "r.md"
    write_text_atomic(path, "first\n")
    assert path.read_text() == "first\n"
    with pytest.raises(TypeError):
        write_text_atomic(path, b"bytes are not text")  # fails inside: the old file stays
    assert path.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md"]
