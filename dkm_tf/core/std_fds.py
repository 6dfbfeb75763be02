"""Redirecting the process's stdout/stderr file descriptors (1 and 2) safely across threads.

The converter and the interpreters print from C++, so silencing or catching them means
``os.dup2`` on fds 1 and 2, which every thread of the process shares. Each block used to save
the fds it found and put them back on exit: two threads' blocks overlapping (two exports in a
``ThreadPoolExecutor``) let the later one save the first one's ``/dev/null`` and restore it
after the first had restored the real fds, so the process's stdout and stderr stayed silenced
for good (every later ``print`` and traceback lost). Here:

* :func:`silenced` (``/dev/null``) is counted: the first block in the process saves the real
  fds and redirects, the last one to leave restores them; blocks of other threads overlap.
* :func:`captured` (into a file the caller reads) holds a process-wide lock for its whole
  block: one capture at a time, and no silenced block starts or ends meanwhile, so what it
  saves is what it restores. The same thread may nest either kind inside either.

While any block runs, output of every thread of the process goes where fds 1 and 2 point:
nothing at the file-descriptor level can tell threads apart.

Python's ``warnings.catch_warnings`` has the same flaw (before 3.14 it swaps the
module-global filter list and ``showwarning``): two threads' blocks overlapping left the
later one's filters in place for good; the interpreter's ``simplefilter("ignore")`` then hid
every later warning of the process (a layer left unclustered among them).
:func:`catch_warnings` holds the same lock for its block, so the library's own blocks never
overlap (a user's ``catch_warnings`` in another thread still can).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings

__all__ = ["captured", "catch_warnings", "silenced"]

_LOCK = threading.RLock()
_SILENT = {"depth": 0, "saved": None}


def _after_fork_in_child():
    """A child forked while another thread held the lock (a conversion) got it held by a
    thread it does not have: its first export hung. A fresh lock, and the real fds back."""
    global _LOCK  # noqa: PLW0603
    _LOCK = threading.RLock()
    saved, _SILENT["saved"], _SILENT["depth"] = _SILENT["saved"], None, 0
    if saved is not None:
        with contextlib.suppress(OSError):
            _restore(*saved)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _restore(saved, fds):
    _flush()
    for fd, old in zip(fds, saved):
        os.dup2(old, fd)
    for old in saved:
        os.close(old)


@contextlib.contextmanager
def silenced(fds=(1, 2)):
    """Send ``fds`` (default stdout and stderr) to ``/dev/null`` for the block; thread-safe
    (see the module docstring). The same ``fds`` are expected by every caller."""
    fds = tuple(fds)
    with _LOCK:
        if _SILENT["depth"] == 0:
            _flush()
            saved = [os.dup(fd) for fd in fds]
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                for fd in fds:
                    os.dup2(null, fd)
            finally:
                os.close(null)
            _SILENT["saved"] = (saved, fds)
        _SILENT["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _SILENT["depth"] -= 1
            if _SILENT["depth"] == 0:
                saved, _SILENT["saved"] = _SILENT["saved"], None
                _restore(*saved)


@contextlib.contextmanager
def captured(into, fds=(1, 2)):
    """Send ``fds`` to the open file ``into`` (its ``fileno()``) for the block, one capture
    in the process at a time (see the module docstring)."""
    fds = tuple(fds)
    with _LOCK:
        _flush()
        saved = [os.dup(fd) for fd in fds]
        for fd in fds:
            os.dup2(into.fileno(), fd)
        try:
            yield saved  # the fds found (the real ones, unless a block around it moved them)
        finally:
            _restore(saved, fds)


@contextlib.contextmanager
def catch_warnings(record=False):
    """``warnings.catch_warnings(record=record)`` under the process-wide lock: one such block
    at a time (same thread: nested ones too), so none restores another's filters."""
    with _LOCK, warnings.catch_warnings(record=record) as caught:
        yield caught
