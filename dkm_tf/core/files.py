"""Atomic file writes: a temp file in the target folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time

TEMP_PREFIX = ".tmp-dkm_tf-"
_TEMP_RE = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")
_LEGACY_MAX_AGE_S = 24 * 3600  # temps of older releases carry no pid: removed after a day


def _alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder):
    """Delete temp files that a killed writer left in ``folder``; return their names.

    A temp file is named ``.tmp-dkm_tf-<pid>-...``: it is stale when that process no longer
    exists (a SIGKILL or power cut inside :func:`atomic_path`). A live writer's temp is never
    touched. Temps without a pid (earlier versions) go once they are a day old.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        match = _TEMP_RE.match(entry.name)
        try:
            stale = (not _alive(int(match.group(1))) if match else
                     now - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_MAX_AGE_S)
            if stale:
                os.remove(entry.path)
                removed.append(entry.name)
        except OSError:  # raced with its owner or another cleaner: leave it
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A failure inside the ``with`` block removes the temporary file and leaves ``path``
    untouched, so a crash never leaves a half-written file. A process killed inside the block
    cannot clean up; its temp file is removed by the next :func:`atomic_path` in the same
    folder (:func:`remove_stale_temps`). The result has mode 0644.

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     pathlib.Path(tmp).write_text("{}")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
