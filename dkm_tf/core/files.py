"""Atomic file writes (a temp file in the target folder, then ``os.replace``), and the check
that a model file exists and is readable before Keras is asked to load it."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
import zipfile

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


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through :func:`atomic_path` (all of it, or nothing)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def is_savedmodel_dir(path):
    """Whether ``path`` (a str or ``os.PathLike``) is a TensorFlow SavedModel folder
    (``model.export(...)``, ``tf.saved_model.save``): a folder holding ``saved_model.pb``."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(
        os.path.join(os.fspath(path), "saved_model.pb"))


def same_file(a, b):
    """Whether paths ``a`` and ``b`` name one file: the same real path (symlinks, ``..``) or
    a hard link of it. False when either does not exist and the real paths differ."""
    if os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_model_file(path):
    """Raise a clear error for a missing, unreadable or corrupted model file.

    Keras reports every unreadable ``.keras`` file as "File not found", even one that exists
    but is truncated or not a zip; this says which it is.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an unreadable file, a ``.keras`` file that is not a Keras
            zip (truncated, or no ``config.json``), or a ``.h5`` file that is not HDF5
            (:func:`model_content_problem`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("Invalid type for argument `path`. Expected a model file path (str or "
                        f"os.PathLike). Received: path={path!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Invalid value for argument `path`. Expected an existing "
                                f"model file. Received: path={path!r} (no such file)")
    if os.path.isdir(path):
        raise ValueError(f"Invalid value for argument `path`. Expected a model file, not a "
                         f"folder. Received: path={path!r}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"Invalid value for argument `path`. Expected a readable file. "
                         f"Received: path={path!r} (permission denied)")
    found = model_content_problem(path)
    if found:
        expected, problem = found
        raise ValueError(f"Invalid value for argument `path`. Expected {expected}. Received: "
                         f"path={path!r}, {os.path.getsize(path):,} bytes, {problem}.")


def model_content_problem(path):
    """``(expected, problem)`` when an existing ``.keras`` / ``.h5`` / ``.hdf5`` file cannot be
    a Keras model of its kind (from its first bytes: a truncated or renamed file), else None."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if path.lower().endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    return "a .keras model saved by Keras 3", "a zip without config.json"
        except zipfile.BadZipFile:
            return "a .keras model saved by Keras 3", (
                "an HDF5 file: rename it to .h5" if _is_hdf5(path, size) else
                "not a zip archive (truncated or not a .keras file)")
    elif path.lower().endswith((".h5", ".hdf5")) and not _is_hdf5(path, size):
        return "an HDF5 (.h5) Keras model", (
            "a .keras zip archive: rename it to .keras" if zipfile.is_zipfile(path)
            else "not an HDF5 file (truncated or not a Keras .h5 model)")
    return None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path, size):
    """The HDF5 signature at byte 0, 512, 1024, 2048, ... (after a user block)."""
    offsets = [0] + [512 * 2**i for i in range(20) if 512 * 2**i + 8 <= size]
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            if f.read(8) == _HDF5_SIGNATURE:
                return True
    return False


LOCK_NAME = ".dkm_tf-run.lock"
_EMPTY_LOCK_GRACE_S = 10.0  # a lock file being written (created, pid not yet in it)


class FolderInUseError(RuntimeError):
    """Another live run holds the output folder (:func:`folder_lock`)."""


def _lock_holder(path):
    """``(pid, host, started)`` from a lock file; ``None`` when it is empty or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            pid, host, started = f.read().strip().split(" ", 2)
        return int(pid), host, started
    except (OSError, ValueError):
        return None


def _stale(path):
    """A lock whose process is gone (same host), or an empty one past its grace period. A
    lock of another host is never stale: its process cannot be checked from here."""
    holder = _lock_holder(path)
    if holder is None:
        try:
            return time.time() - os.stat(path).st_mtime > _EMPTY_LOCK_GRACE_S
        except OSError:
            return True  # gone meanwhile
    pid, host, _ = holder
    return host == socket.gethostname() and not _alive(pid)


@contextlib.contextmanager
def folder_lock(folder, flag="output_dir"):
    """Hold ``folder`` for one run: ``<folder>/.dkm_tf-run.lock`` is created exclusively
    (``O_CREAT | O_EXCL``) with this process's pid, host and start time, and removed on exit.

    Two runs writing into one folder each removed the other's files; the second now fails
    here, before any work. A lock left by a killed run (its pid gone, same host) is taken
    over. A folder this creates is removed again on exit if it is still empty.

    Raises:
        FolderInUseError: a live process (this one included) holds ``folder``.
    """
    folder = os.fspath(folder)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    fd = None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if not _stale(path):
                break
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    if fd is None:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        pid, host, started = _lock_holder(path) or ("?", "?", "?")
        raise FolderInUseError(
            f"--{flag} {folder!r} is in use by another run (pid {pid} on host {host}, started "
            f"{started}): two runs in one folder would remove each other's files. Wait for it "
            f"to finish or give another --{flag}. If no run uses the folder (a run killed on "
            f"another machine), remove {path}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {socket.gethostname()} {stamp}\n")
    try:
        yield path
    finally:
        holder = _lock_holder(path)
        if holder is not None and holder[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.remove(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty: a run that wrote nothing leaves nothing
