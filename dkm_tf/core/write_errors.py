"""The clear error of a failed file write (a full disk, a quota, too many open files, a
folder removed mid-write): the file it was for, and what is left there."""

from __future__ import annotations

import contextlib
import errno
import os

__all__ = ["WRITE_ERRNOS", "write_error"]


# errors of the file system, not of the data written: named with the file (the bare
# "[Errno 28] No space left on device" of a write named no file)
WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EFBIG: "file too large", errno.EIO: "input/output error",
                 errno.EROFS: "read-only file system", errno.EMFILE: "too many open files "
                 "in this process (raise `ulimit -n`)", errno.ENFILE: "too many open files "
                 "in the system"}


def write_error(error, path, folder, existed, tmp=None):
    """A clear ``OSError`` (same errno) for ``error``, raised while writing ``path`` through a
    temp file ``tmp`` (None: not created) in ``folder`` (a full disk, a quota, too many open
    files, a folder removed mid-write), saying what is left there; None for any other
    error."""
    code = error.errno
    if code is None and "No space left on device" in str(error):  # h5py's OSError has none
        code = errno.ENOSPC
    state = (f"the earlier file at {path!r} is unchanged" if existed and os.path.isfile(path)
             else f"nothing was written at {path!r}") + (
        f" and its temp file {tmp!r} could not be removed" if tmp and os.path.exists(tmp)
        else " and no temp file was left")
    if code == errno.ENOENT and not os.path.isdir(folder):
        return FileNotFoundError(code, f"Could not write {path!r}: its folder {folder!r} was "
                                       f"removed while it was written; {state}")
    if code not in WRITE_ERRNOS:
        return None
    why = WRITE_ERRNOS[code]
    other = getattr(error, "filename", None)  # a writer's own temp elsewhere (TMPDIR)
    if isinstance(other, str) and os.path.dirname(os.path.realpath(other)) != folder:
        folder = os.path.dirname(os.path.realpath(other))
        why += f" at {other!r}"
    if code in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            st = os.statvfs(folder)
            why += f" ({st.f_bavail * st.f_frsize:,} bytes free in {folder!r})"
    return OSError(code, f"Could not write {path!r}: {why}; {state}. Free space or give "
                         "another path" if code in (errno.ENOSPC, errno.EDQUOT) else
                   f"Could not write {path!r}: {why}; {state}")
