"""The ``dkm-tf`` process in the environments users run it in (no Keras, no TensorFlow).

:func:`guarded` wraps :func:`dkm_tf.cli.run` at the console-script entry:

* **closed standard streams** (``dkm-tf ... >&-``, ``2>&-``, a daemon): fds 0-2 are reopened
  on ``/dev/null`` first, so that no file the run opens (the output folder's lock, a model
  being written) gets fd 1 or 2 and receives the run's prints or TensorFlow's C++ logs, and
  ``print`` finds a stream (``dkm-tf --help >&-`` was an ``AttributeError`` traceback);
* **stderr that cannot be written** (``2>/dev/full``, a terminal gone after SIGHUP): the
  lines are dropped and the exit status stays the run's (a usage error was 1, with a
  traceback, instead of 2);
* **stdout that cannot be written** (``>/dev/full``): one line on stderr, exit 1 (``--help``
  and ``--version`` were a traceback); stdout closed early (``| head``), 141 as before, plus
  what the run left in its ``--output_dir`` when it had started writing there;
* **encodings** that cannot write a character (``PYTHONIOENCODING=ascii``, ``latin-1``, a C
  locale without coercion): ``\\xe9`` instead of a ``UnicodeEncodeError`` after the whole
  compression (a non-ASCII ``--output_dir`` failed at its legend, every file unwritten), and a
  file name that is not valid UTF-8 printed as its own bytes;
* **SIGTERM and SIGHUP** (``kill``, ``timeout``, a batch system, a closed terminal) take
  Ctrl-C's path: the output folder's lock and the temporary files are removed, the
  interrupted-run line says what the folder holds, and the exit status is 128 + the signal
  (143, 129) as a process killed by it. Before, the process died at once, leaving the lock
  file, temporary files and half a run without a word. A signal that is ignored (``nohup``)
  stays ignored;
* a **deleted current folder**: a failed run adds a line saying so (a relative path there
  was only ``FileNotFoundError: [Errno 2] No such file or directory``).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import sys
import threading

__all__ = ["ERRORS", "StderrGuard", "guarded", "reopen_closed_fds", "terminating_signals",
           "tolerant_encoding"]

ERRORS = "dkm_tf.replace"  # the error handler tolerant_encoding sets on a stream
TERMINATING = ("SIGTERM", "SIGHUP")


def _replace(error):
    """Encode errors: a lone surrogate from ``surrogateescape`` (a file name that is not
    valid in the locale's encoding) as the byte it stands for, anything else as ``\\x..``."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start:error.end]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(code - 0xDC00)
        else:
            out += char.encode("ascii", "backslashreplace")
    return bytes(out), error.end


def _register():
    try:
        codecs.lookup_error(ERRORS)
    except LookupError:
        codecs.register_error(ERRORS, _replace)


def tolerant_encoding(stream):
    """Set ``stream``'s encoding errors to :data:`ERRORS` where they were ``strict`` or
    ``surrogateescape`` (both raise on some character); returns the old setting to give back
    to ``stream.reconfigure(errors=...)``, or None when nothing changed."""
    old = getattr(stream, "errors", None)
    if old not in ("strict", "surrogateescape") or not hasattr(stream, "reconfigure"):
        return None
    _register()
    try:
        stream.reconfigure(errors=ERRORS)
    except (AttributeError, ValueError, OSError, TypeError):
        return None
    return old


def _unusable(fd):
    """True when ``fd`` is closed, or is stdout / stderr open read-only: a wrapper script's
    own file (a bash shim run with ``2>&-`` leaves its script there), where every write
    fails with EBADF."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return False
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    return fd in (1, 2) and mode == os.O_RDONLY


def reopen_closed_fds(fds=(0, 1, 2)):
    """Open ``/dev/null`` on each of ``fds`` that is closed (or, for 1 and 2, read-only);
    returns the fds reopened."""
    reopened = []
    for fd in fds:
        if _unusable(fd):
            new = os.open(os.devnull, os.O_RDWR)
            if new != fd:
                os.dup2(new, fd)
                os.close(new)
            reopened.append(fd)
    return reopened


class StderrGuard:
    """``stream`` whose failed writes and flushes are dropped (``lost`` set): the stream of
    last resort, where nothing else can report the failure, must not change the run's exit
    status or end it with a traceback."""

    def __init__(self, stream):
        self.stream, self.lost = stream, False

    def write(self, text):
        try:
            return self.stream.write(text)
        except (OSError, ValueError):  # ENOSPC, EIO (terminal gone), a closed file
            self.lost = True
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.lost = True

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def terminating_signals(handler=None):
    """SIGTERM and SIGHUP call ``handler(signum, frame)`` (default: raise
    ``KeyboardInterrupt``, Ctrl-C's path) for the block, once: a second one while the run
    cleans up is only recorded. Yields the list of signals received. Only in the main thread,
    and only for signals left at their default (an ignored one, as under ``nohup``, stays so)."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) > 1:  # a second one, or after the caller appended None (disarmed)
            return
        if handler is not None:
            handler(signum, frame)
        raise KeyboardInterrupt

    old = {}
    for name in TERMINATING:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, on_signal)
    try:
        yield received
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _cwd_missing():
    try:
        os.getcwd()
    except OSError:
        return True
    return False


def quiet_fd(fd):
    """Point ``fd`` (an int, or a stream whose ``fileno()`` it is) at /dev/null: the
    interpreter's exit flush of a stream that failed would fail again ("Exception ignored
    ..." and exit status 120). A stream without a real fd (``io.StringIO``) is left alone."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        fd = fd if isinstance(fd, int) else fd.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)


def _flush_stdout(status, stderr):
    """Flush stdout now, where a failure can still be reported; returns the exit status."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        quiet_fd(1)
        return status or 141
    except (OSError, ValueError) as e:
        quiet_fd(1)
        print(f"dkm-tf: error: could not write the output to stdout: {type(e).__name__}: {e}",
              file=stderr)
        return status or 1
    return status


def guarded(run, argv, *, on_signal=None, unfinished=None):
    """``run(argv)`` (:func:`dkm_tf.cli.run`) with the process's streams, encodings and
    terminating signals made safe (module docstring); returns the exit status.

    ``on_signal``: the handler SIGTERM / SIGHUP call (``dkm_tf.cli._on_sigint``: it records
    the signal, so that one Python swallows still stops the run); ``unfinished``: a function
    naming what the run left in its output folder (``dkm_tf.cli._unfinished``), said when
    stdout was closed early."""
    reopen_closed_fds()
    saved = (sys.stdout, sys.stderr)
    if sys.stdout is None:  # Python found fd 1 closed at start: it is /dev/null now
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - closed in finally
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    errors = [(s, tolerant_encoding(s)) for s in (sys.stdout, sys.stderr)]
    guard = sys.stderr = StderrGuard(sys.stderr)
    missing_cwd = _cwd_missing()
    try:
        with terminating_signals(on_signal) as received:
            try:
                status = run(argv)
            except KeyboardInterrupt:  # a signal before or after run()'s own handling
                print("dkm-tf: interrupted" + (f"; {unfinished()}" if unfinished is not None
                                               and unfinished() else ""), file=guard)
                status = 130
            except BrokenPipeError:
                quiet_fd(1)
                status = 141
            except OSError as e:  # writing the output failed where run() does not catch it
                print(f"dkm-tf: error: could not write the output: {type(e).__name__}: {e}",
                      file=guard)
                quiet_fd(1)
                status = 1
            received.append(None)  # disarmed: a signal from here on is only recorded
            status = _flush_stdout(status, guard)
        received = [r for r in received if r is not None]
        if received and status in (1, 130):  # 1: a library turned the interrupt into an
            if status == 1:  # error (TensorFlow's tracing: "TypeError: ... Flatten.call()")
                print(f"dkm-tf: the run was stopped by {signal.Signals(received[0]).name}; "
                      "the error above is how the code it interrupted reported it", file=guard)
            status = 128 + received[0]  # as a process the signal killed (143, 129)
        note = unfinished() if status == 141 and unfinished is not None else ""
        if note:
            print(f"dkm-tf: stdout was closed early; {note}", file=guard)
        if status not in (0, 141) and missing_cwd:
            print("dkm-tf: note: the current folder no longer exists (deleted or moved); "
                  "relative paths cannot be used: cd to a folder or give absolute paths",
                  file=guard)
        guard.flush()
    finally:
        for stream, old in errors:
            if old is not None:
                with contextlib.suppress(Exception):
                    stream.reconfigure(errors=old)
        if guard.lost:
            quiet_fd(2)
        for stream, old in zip((sys.stdout, guard.stream), saved):
            if old is None and stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
        sys.stdout, sys.stderr = saved
    return status
