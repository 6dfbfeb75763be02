"""Conversion failures that are not the model's: the converter out of disk space or file
descriptors (its temporary SavedModel), said as an ``OSError`` with that errno instead of
"the model probably uses operations that have no TFLite builtin kernel"."""

from __future__ import annotations

import errno

from dkm_tf.core.write_errors import WRITE_ERRNOS

__all__ = ["check_signature", "system_failure"]


# the converter's own text of each failure (the phrases are the atomic writers')
_SYSTEM_FAILURES = (("No space left on device", errno.ENOSPC),
                    ("Disk quota exceeded", errno.EDQUOT),
                    ("Too many open files", errno.EMFILE))


def system_failure(error):
    """``(errno, phrase)`` when the converter failed for want of disk space or file
    descriptors (its text says so), else None."""
    text = str(error)
    return next(((code, WRITE_ERRNOS[code]) for key, code in _SYSTEM_FAILURES if key in text),
                None)


def check_signature(model, content):
    """Refuse a file without a signature written while the temp folder is (nearly) full: the
    converter could not save its temporary SavedModel there and fell back to a path that
    drops the signature (verification then failed with "model has 0 Signatures")."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from dkm_tf.export.rewrite import schema  # noqa: PLC0415

    if schema().Model.GetRootAs(content, 0).SignatureDefsLength():
        return
    folder = tempfile.gettempdir()
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < 64 << 20:
        raise OSError(errno.ENOSPC, f"TFLite conversion of model "
                      f"{getattr(model, 'name', '?')!r} failed: no space left on device "
                      f"for the converter's temporary SavedModel in {folder!r} ({free:,} "
                      "bytes free; TMPDIR moves it): the file it made has no signature")
