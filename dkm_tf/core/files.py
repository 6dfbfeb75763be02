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

from dkm_tf.core.model_damage import hdf5_damage, zip_damage
from dkm_tf.core.write_errors import write_error

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
    folder (:func:`remove_stale_temps`). The result has mode 0644. A symlink to a file is
    written through (the link stays a link); bytes, an empty path, a folder, or a path under
    a ``~`` that is not expanded are refused before the block runs (:func:`check_target`).

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     pathlib.Path(tmp).write_text("{}")
    """
    path = check_target(path)
    if os.path.islink(path) and os.path.exists(path):  # write through it, as open() does:
        path = os.path.realpath(path)  # os.replace put a plain file in the link's place
    folder = os.path.realpath(os.path.dirname(path) or ".")  # "link/.." as the OS resolves it
    existed = os.path.isfile(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(folder)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=suffix,
                                   dir=folder)
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):  # first: the free space it held is told
            with contextlib.suppress(OSError):
                os.remove(tmp)
        clear = write_error(e, path, folder, existed, tmp)
        if clear is None:
            raise
        raise clear from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def str_path(path):
    """``path`` as a str when it is a str or an ``os.PathLike`` of str, else None (bytes,
    ``os.PathLike`` of bytes, other types): the one test of every path argument's type."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    return path if isinstance(path, str) else None


def is_home_tilde(path):
    """Whether str ``path`` is ``~`` or starts with ``~/`` (this user's home) or with
    ``~name/`` where ``name`` is a user and no folder ``~name`` is here (that user's home):
    what a shell would expand and Python leaves alone."""
    if path == "~" or any(s and path.startswith("~" + s) for s in (os.sep, os.altsep)):
        return True
    head = path.replace(os.altsep or os.sep, os.sep).split(os.sep, 1)[0]
    return (path.startswith("~") and head != path  # ~user/... (a bare ~name: a file name)
            and not os.path.exists(head)  # no such folder here
            and os.path.expanduser(head) != head)  # and a user of that name


def tilde_note(path):
    """``" ('~' is not expanded ...)"`` for a str path ``~`` or ``~/...`` that does not exist
    as written (Python, unlike a shell, leaves ``~`` alone), else ``""``."""
    path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if (not isinstance(path, str) or not is_home_tilde(path)
            or os.path.exists("~") or os.path.expanduser(path) == path):
        return ""
    return (f" ('~' is not expanded here: pass os.path.expanduser({path!r}) = "
            f"{os.path.expanduser(path)!r})")


def check_target(path, name="path"):
    """``path`` (a str or ``os.PathLike``) as a str, for a file about to be written: not
    bytes, not empty, not ending in a separator, not an existing folder, device, FIFO or
    socket (through a symlink too: a plain file replaced it), not under a ``~`` folder that is
    not there (it was made as a folder literally named ``~``). A ValueError/TypeError naming
    ``name``. A symlink to a file in a folder this user cannot write: a PermissionError
    naming both (the temp file goes beside the file it names)."""
    text = str_path(path)
    if text is None:
        raise TypeError(f"Invalid type for argument `{name}`. Expected a file path (str or "
                        f"os.PathLike of str). Received: {name}={path!r}")
    path = text
    why = ("an empty path" if not path else "an existing folder" if os.path.isdir(path)
           else "a folder path (it ends in a separator)" if path.endswith(
               tuple(s for s in (os.sep, os.altsep) if s))
           else "an existing file that is not a regular file (a device, FIFO or socket)"
           if os.path.exists(path) and not os.path.isfile(path)
           else "a path starting with a '~' folder that does not exist" + tilde_note(path)
           if tilde_note(path) else None)
    if why:
        raise ValueError(f"Invalid value for argument `{name}`. Expected a file path to "
                         f"write. Received {why}: {name}={path!r}")
    real_dir = os.path.dirname(os.path.realpath(path))
    if os.path.islink(path) and os.path.exists(path) and not os.access(
            real_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write {name}={path!r}: it is a symlink to "
                              f"{os.path.realpath(path)!r}, whose directory {real_dir!r} is "
                              "not writable (the file is replaced through a temp file there).")
    return path


def check_folder_arg(path, name):
    """None, or ``path`` (a str or ``os.PathLike`` of str) as a str, for a folder to create or
    use: not bytes, not empty, not an existing file, not under a ``~`` folder that is not
    there (``mkdir`` made a folder literally named ``~``). A ValueError/TypeError naming
    ``name``."""
    if path is None:
        return None
    text = str_path(path)
    if text is None:
        raise TypeError(f"Invalid type for argument `{name}`. Expected a folder path (str or "
                        f"os.PathLike of str). Received: {name}={path!r}")
    path = text
    why = ("an empty path" if not path else "an existing file" if os.path.exists(path)
           and not os.path.isdir(path) else "a path starting with a '~' folder that does not "
           "exist" + tilde_note(path) if tilde_note(path) else None)
    if why:
        raise ValueError(f"Invalid value for argument `{name}`. Expected a folder path. "
                         f"Received {why}: {name}={path!r}")
    return path


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


def check_model_file(path, name="path"):
    """Raise a clear error for a missing, unreadable or corrupted model file.

    Keras reports every unreadable ``.keras`` file as "File not found", even one that exists
    but is truncated or not a zip; this says which it is. The messages name the argument
    ``name`` (a caller's own: ``model_or_path``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an unreadable file, a ``.keras`` file that is not a Keras
            zip (truncated, or no ``config.json``), or a ``.h5`` file that is not HDF5
            (:func:`model_content_problem`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Invalid type for argument `{name}`. Expected a model file path (str "
                        f"or os.PathLike). Received: {name}={path!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Invalid value for argument `{name}`. Expected an existing "
                                f"model file. Received: {name}={path!r} (no such file)"
                                + tilde_note(path))
    if os.path.isdir(path):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a model file, not a "
                         f"folder. Received: {name}={path!r}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"Invalid value for argument `{name}`. Expected a readable file. "
                         f"Received: {name}={path!r} (permission denied)")
    found = model_content_problem(path)
    if found:
        expected, problem = found
        raise ValueError(f"Invalid value for argument `{name}`. Expected {expected}. Received: "
                         f"{name}={path!r}, {os.path.getsize(path):,} bytes, {problem}.")


def model_content_problem(path):
    """``(expected, problem)`` when an existing ``.keras`` / ``.h5`` / ``.hdf5`` file cannot be
    a Keras model of its kind (from its first bytes: a truncated or renamed file; a zip member
    failing its CRC, HDF5 metadata that does not read, a weights-only file:
    :mod:`dkm_tf.core.model_damage`), else None."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if path.lower().endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    return "a .keras model saved by Keras 3", "a zip without config.json"
                damage = zip_damage(archive)
            if damage:
                return "a .keras model saved by Keras 3", damage
        except zipfile.BadZipFile:
            return "a .keras model saved by Keras 3", (
                "an HDF5 file: rename it to .h5" if _is_hdf5(path, size) else
                "not a zip archive (truncated or not a .keras file)")
    elif path.lower().endswith((".h5", ".hdf5")) and not _is_hdf5(path, size):
        return "an HDF5 (.h5) Keras model", (
            "a .keras zip archive: rename it to .keras" if _has_config_json(path)
            else "a zip archive without config.json (not a Keras model)"
            if zipfile.is_zipfile(path)
            else "not an HDF5 file (truncated or not a Keras .h5 model)")
    elif path.lower().endswith((".h5", ".hdf5")):
        damage = hdf5_damage(path)
        return ("an HDF5 (.h5) Keras model", damage) if damage else None
    return None


def _has_config_json(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


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


class FolderInUseError(RuntimeError):
    """Another live run holds the output folder (:func:`folder_lock`)."""


def _created_folders(folder):
    """Create ``folder`` and its missing parents; return the ones created, deepest first."""
    made, probe = [], os.path.abspath(folder)
    while not os.path.isdir(probe):
        made.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(folder, exist_ok=True)
    return made


def _remove_empty(folders):
    for path in folders:  # deepest first; a folder with anything in it stays, and its parents
        try:
            os.rmdir(path)
        except OSError:
            return


def _holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode("utf-8", "replace").strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def folder_lock(folder, flag="output_dir"):
    """Hold ``folder`` for one run: an exclusive ``flock`` on ``<folder>/.dkm_tf-run.lock``
    (which names this process's pid, host and start time), released and the file removed on
    exit; the kernel releases it when the process dies, so a killed run's lock is no lock.

    Two runs writing into one folder each removed the other's files; the second now fails
    here, before any work. Folders this creates are removed again on exit if still empty.
    Without ``fcntl`` (Windows) nothing is locked.

    Raises:
        FolderInUseError: a live process (this one included) holds ``folder``.
    """
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: no lock
        yield None
        return
    folder = os.fspath(folder)
    made = _created_folders(folder)
    path = os.path.join(folder, LOCK_NAME)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:  # a read-only folder, a folder in the lock file's place
            _remove_empty(made)
            raise OSError(e.errno, f"--{flag} {folder!r}: cannot create its run lock {path} "
                                   f"({e.strerror}); give a folder this user can write") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if not isinstance(e, BlockingIOError):  # no lock support (ENOLCK on some NFS)
                os.close(fd)
                _remove_empty(made)
                raise OSError(e.errno, f"--{flag} {folder!r}: cannot lock {path} "
                                       f"({e.strerror}); give a local folder") from e
            holder = _holder(fd)  # held by a live run
            os.close(fd)
            _remove_empty(made)
            raise FolderInUseError(
                f"--{flag} {folder!r} is in use by another run ({holder}): two runs in one "
                f"folder would remove each other's files. Wait for it to finish or give "
                f"another --{flag}.") from None
        try:  # the holder before us may have removed the file we opened: lock the new one
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {stamp}"
                 .encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # before the unlock: a waiter re-checks the file it locked
        os.close(fd)
        _remove_empty(made)
