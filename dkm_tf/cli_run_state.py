"""What one ``dkm-tf`` run has done to its output folder, and the Ctrl-C it received: the
state behind the last words of an interrupted or failed run (:func:`unfinished`).

:mod:`dkm_tf.cli` holds these under its own names (``cli._TOUCHED``, ``cli._on_sigint``,
``cli._unfinished``, ...): the lists are the same objects, changed in place only.
"""

from __future__ import annotations

import os

TOUCHED = []  # the --output_dir this process's run has started to change (for the error line)
REMOVED = []  # an earlier run's files that this run removed (an interrupted run names them)
INTERRUPTS = []  # Ctrl-C received during run(), even one that Python swallowed


def on_sigint(signum, frame):
    """The SIGINT handler of :func:`dkm_tf.cli.run` (and SIGTERM / SIGHUP's, through
    :func:`dkm_tf.cli_env.guarded`): remember the signal, then raise KeyboardInterrupt."""
    del frame
    INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def check_interrupted():
    """Raise the Ctrl-C that Python swallowed: a KeyboardInterrupt raised inside a garbage
    collector callback or a ``__del__`` (JAX's, which TensorFlow imports, ...) is printed as
    "Exception ignored" and the run went on, replacing the earlier run's files."""
    if INTERRUPTS:
        raise KeyboardInterrupt


def unfinished():
    """What a failed or interrupted run left in its --output_dir ('' when it wrote nothing)."""
    if not TOUCHED:
        return ""
    if TOUCHED[1:] == ["complete"]:
        return f"the run had finished: {TOUCHED[0]} holds its complete results"
    removed = (f"; an earlier run's {len(REMOVED)} file(s) were removed: "
               + ", ".join(REMOVED) if REMOVED else "")  # e.g. the PNGs in a --plots_dir
    if not os.path.isdir(TOUCHED[0]):  # a folder the run made, removed again while empty
        return (f"nothing was written ({TOUCHED[0]}, made by this run, was removed again)"
                + removed)
    return (f"{TOUCHED[0]} holds an unfinished run: no report.json (written last); the files "
            "there are complete, none half-written, but not all of them were written" + removed)
