"""Progress of long stages (training, clustering, export) for ``dkm-tf compress``.

A :class:`Progress` writes to one stream (stderr by default) and adapts to it:

* a terminal gets a live bar per stage (``tqdm`` when installed, else a one-line ``\\r`` bar),
  with the elapsed time ticking even while a stage gives no updates (k-means);
* anything else (a log file, a pipe, CI, a terminal with ``TERM=dumb``: Emacs' shell, some
  CI runners, which show each redraw as a line) gets one line when a stage ends, plus one
  line every ``heartbeat_s`` seconds while a long stage runs, so a log is never silent for
  long and never fills with bar redraws;
* ``Progress(enabled=False)`` (``--quiet``) writes nothing.

No Keras or TensorFlow at import; :meth:`Progress.keras_callback` builds its callback lazily.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time

__all__ = ["Progress", "Stage"]


def _tqdm():
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        return None
    return tqdm


def _columns(stream):
    """The width of the terminal ``stream`` writes to (as ``tqdm``: the terminal's own size,
    else ``COLUMNS``, else 80): the plain bar must fit one line, or each redraw wraps and the
    ``\r`` only returns to the start of its last line (a narrow terminal filled with copies)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns  # 0: a pty given no size
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        columns = 0
    if columns > 0:
        return max(columns, 10)
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    return max(columns, 10) if columns > 0 else 80


def _fmt_time(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Stage:
    """One stage's bar (or its log lines). Use through :meth:`Progress.stage`."""

    def __init__(self, progress, name, total, unit):
        self.progress, self.name, self.total, self.unit = progress, name, total, unit
        self.n, self.note = 0, ""
        self.finish_on_close = False  # count every unit done at close (work done elsewhere)
        self.start = self._last_line = time.perf_counter()
        self.closed = False
        self._bar = self._ticker = None
        self._stop = threading.Event()
        if progress.enabled and progress.tty and progress.tqdm is not None:
            self._bar = progress.tqdm(total=total, desc=f"[{name}]", unit=unit,
                                      file=progress.stream, leave=True, dynamic_ncols=True,
                                      mininterval=0.2)
        if progress.enabled:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def _tick(self):
        """Keep a stage that gives no updates (k-means, conversion) visibly alive: the
        elapsed time moves on a terminal; a log gets its heartbeat line."""
        while not self._stop.wait(0.5):
            if self.progress.tty:
                self._draw()
            else:
                self._heartbeat()

    def _heartbeat(self):
        p, now = self.progress, time.perf_counter()
        with p.lock:
            if self.closed or now - self._last_line < p.heartbeat_s:
                return
            self._last_line = now
            p.line(f"[{self.name}] {self._counts()} after {_fmt_time(now - self.start)}"
                   + self._eta(now) + (f" ({self.note})" if self.note else ""))

    def _draw(self):
        with self.progress.lock:
            if self.closed:
                return
            if self._bar is not None:
                self._bar.refresh()
                return
            total = f"/{self.total}" if self.total else ""
            pct = f" {100 * self.n / self.total:3.0f}%" if self.total else ""
            text = (f"\r[{self.name}] {self.n}{total} {self.unit}{pct}  "
                    f"{_fmt_time(time.perf_counter() - self.start)}  {self.note}")
            width = _columns(self.progress.stream) - 1  # the last column would wrap
            self.progress.stream.write(text[:width + 1].ljust(width + 1))
            self.progress.stream.flush()

    def update(self, n=1, note=None):
        """Advance by ``n`` units; ``note`` (e.g. ``"loss 0.12"``) is shown beside the bar."""
        if self.closed:
            return
        self.n += n
        if note is not None:
            self.note = note
        p = self.progress
        if not p.enabled:
            return
        if p.tty:
            if self._bar is not None:
                with p.lock:
                    if note is not None:
                        self._bar.set_postfix_str(note, refresh=False)
                    self._bar.update(n)
            return
        self._heartbeat()  # a long stage on a log: one line now and then

    def set_total(self, total):
        """Change the number of units (e.g. once Keras knows the steps per epoch)."""
        self.total = total
        if self._bar is not None:
            with self.progress.lock:
                self._bar.total = total
                self._bar.refresh()

    def _counts(self):
        if self.total:
            return f"{self.n}/{self.total} {self.unit}"
        return f"{self.n} {self.unit}" if self.unit else "done"

    def _eta(self, now):
        if not self.total or not self.n:
            return ""
        left = (now - self.start) * (self.total - self.n) / self.n
        return f", about {_fmt_time(left)} left"

    def close(self, summary=None):
        """End the stage: the bar stays on screen; a non-terminal gets one summary line."""
        if self.closed:
            return
        p = self.progress
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with p.lock:
            self.closed = True
            if self.finish_on_close and self.total:
                self.n = self.total
            seconds = time.perf_counter() - self.start
            if not p.enabled:
                return
            text = summary or self.note
            if self._bar is not None:
                if self.total and self._bar.n < self.total and self.n >= self.total:
                    self._bar.update(self.total - self._bar.n)
                if text:
                    self._bar.set_postfix_str(text, refresh=False)
                self._bar.close()
                return
            line = f"[{self.name}] {self._counts()} in {_fmt_time(seconds)}" + (
                f": {text}" if text else "")
            if p.tty:  # blank the bar's line, then the summary (which may wrap: it stays)
                p.stream.write("\r" + " " * (_columns(p.stream) - 1) + "\r")
            p.stream.write(line + "\n")
            p.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Progress:
    """Progress reporting to ``stream`` (default ``sys.stderr``).

    Args:
        enabled: False writes nothing (``--quiet``).
        stream: text stream for the bars and lines.
        tty: draw live bars; default ``stream.isatty()``, unless ``TERM`` is ``dumb``.
        heartbeat_s: seconds between the lines of a long stage on a non-terminal stream (15,
            as `share_weights(verbose=True)`'s heartbeat; was 60: `dkm-tf compress` on a
            224x224 MobileNetV2 logged nothing for 60 s while its float file converted).
        use_tqdm: use ``tqdm`` for the bars when it is installed.
    """

    def __init__(self, enabled=True, stream=None, tty=None, heartbeat_s=15.0, use_tqdm=True):
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
        self.tty = tty
        self.heartbeat_s = float(heartbeat_s)
        self.tqdm = _tqdm() if use_tqdm else None
        self.lock = threading.RLock()
        self.current = None

    def line(self, text):
        """One line of progress text (nothing when disabled)."""
        if self.enabled:
            with self.lock:
                self.stream.write(text + "\n")
                self.stream.flush()

    def stage(self, name, total=None, unit="it"):
        """Start a stage of ``total`` units (None: unknown); closes the previous one."""
        self.end_stage()
        self.current = Stage(self, name, total, unit)
        return self.current

    def end_stage(self, summary=None):
        """Close the current stage, if any."""
        if self.current is not None:
            self.current.close(summary)
            self.current = None

    def keras_callback(self, name):
        """A Keras callback that shows ``fit`` as stage ``name``: one unit per batch, the
        epoch and the latest loss / accuracy beside the bar. Opening it closes the stage
        that was open (e.g. the clustering that ran before ``fit``)."""
        import keras  # noqa: PLC0415

        progress = self

        class _ProgressCallback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                epochs, steps = self.params.get("epochs"), self.params.get("steps")
                self.epochs, self.epoch = epochs or 0, 0
                total = epochs * steps if epochs and steps else epochs
                self.stage = progress.stage(name, total, "batches" if steps else "epochs")
                self.per_batch = bool(steps)

            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch + 1

            def _note(self, logs):
                parts = [f"epoch {self.epoch}/{self.epochs}"]
                for key in ("loss", "accuracy"):
                    if logs and key in logs:
                        parts.append(f"{key} {float(logs[key]):.4f}")
                return ", ".join(parts)

            def on_train_batch_end(self, batch, logs=None):
                if self.per_batch:
                    self.stage.update(1, self._note(logs))

            def on_epoch_end(self, epoch, logs=None):
                self.stage.note = self._note(logs)
                if not self.per_batch:
                    self.stage.update(1, self.stage.note)

            def on_train_end(self, logs=None):
                if progress.current is self.stage:
                    progress.end_stage()

        return _ProgressCallback()
