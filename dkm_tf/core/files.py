"""Atomic file writes: a temp file in the target folder, then ``os.replace``."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A failure inside the ``with`` block removes the temporary file and leaves ``path``
    untouched, so a crash never leaves a half-written file. The result has mode 0644.

    Example:
        >>> with atomic_path("out.json") as tmp:  # doctest: +SKIP
        ...     pathlib.Path(tmp).write_text("{}")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-dkm_tf-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
