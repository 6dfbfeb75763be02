"""A heartbeat for ``share_weights(verbose=True)``: long k-means is never silent.

k-means of one big tensor can run for minutes (a 4096 x 4096 Dense per channel at K=256:
77 s on two cores) and gives no updates while it runs. With ``verbose=True``,
:class:`Heartbeat` prints one line every :data:`HEARTBEAT_S` seconds while any k-means job
runs, naming the tensors still being clustered, how long each has run and how many are done::

      ... k-means running: dense/kernel (16,777,216 weights, 30 s); 2 of 3 tensor(s) done

Nothing is printed when ``verbose`` is off or when every job ends before the first beat.
:func:`progress` opens one for code that computes palettes several calls down
(``strip_clustering(verbose=True)``, ``palettes_of(verbose=True)``: a soft wrapper's snap to
hard assignments, 110 s for a 2048 x 2048 Dense at K = 256), which :func:`run_tracked` finds.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time

__all__ = ["HEARTBEAT_S", "Heartbeat", "progress", "run_tracked"]

HEARTBEAT_S = 15.0


def _fmt(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Heartbeat:
    """Context manager: while it is open, :meth:`track`-ed jobs that run get a line every
    ``every_s`` seconds (``enabled=False``: no thread, no output).

    Args:
        enabled: print at all (``share_weights``' ``verbose``).
        total: number of jobs, for "n of total done".
        every_s: seconds between lines; ``None``: :data:`HEARTBEAT_S` (read when opened).
        what: the jobs' name in "n of total <what> done".
        doing: what the jobs do, the line's head ("k-means running").
    """

    def __init__(self, enabled, total, every_s=None, what="tensor(s)",
                 doing="k-means running"):
        self.enabled, self.total, self.every_s = bool(enabled), int(total), every_s
        self.what, self.doing = what, doing
        self._running, self._done = {}, 0
        self._lock, self._stop, self._thread = threading.Lock(), threading.Event(), None

    def track(self, name, size, fn):
        """``fn`` (a job's ``run``) wrapped to mark ``name`` (``size`` weights) running."""
        if not self.enabled:
            return fn

        def run():
            with self._lock:
                self._running[name] = (time.perf_counter(), size)
            try:
                return fn()
            finally:
                with self._lock:
                    self._running.pop(name, None)
                    self._done += 1
        return run

    def __enter__(self):
        if self.enabled:
            every = HEARTBEAT_S if self.every_s is None else self.every_s
            self._thread = threading.Thread(target=self._beat, args=(every,), daemon=True,
                                            name="dkm_tf-heartbeat")
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def _beat(self, every):
        while not self._stop.wait(every):
            with self._lock:
                now = time.perf_counter()
                running = sorted(self._running.items(), key=lambda item: item[1][0])
                done = self._done
            if running:
                names = ", ".join(f"{name} ({size:,} weights, {_fmt(now - start)})"
                                  for name, (start, size) in running)
                print(f"  ... {self.doing}: {names}; {done} of {self.total} {self.what} done",
                      flush=True)


_OPEN = contextvars.ContextVar("dkm_tf_heartbeat", default=None)  # set by progress()


@contextlib.contextmanager
def progress(enabled, total, what, doing="k-means running"):
    """A :class:`Heartbeat` (``enabled=False``: none, no thread) that :func:`run_tracked`
    calls made inside this block report to."""
    with Heartbeat(enabled, total, what=what, doing=doing) as beat:
        token = _OPEN.set(beat) if beat.enabled else None
        try:
            yield beat
        finally:
            if token is not None:
                _OPEN.reset(token)


def run_tracked(name, size, fn):
    """``fn()``, marked running as ``name`` (``size`` weights) in the heartbeat that
    :func:`progress` opened around this call, if any."""
    beat = _OPEN.get()
    return (fn if beat is None else beat.track(name, size, fn))()
