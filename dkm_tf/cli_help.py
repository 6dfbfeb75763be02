"""Help for newcomers to the ``dkm-tf`` command (no Keras, no TensorFlow).

* ``dkm-tf help [command]`` prints that command's help (``dkm-tf <command> --help``), exit 0;
  an unknown command is one line naming the choices (and a close match), exit 2.
* ``dkm-tf`` alone prints the usage (the commands) and one error line, exit 2;
  ``dkm-tf --version`` the version, exit 0.
* a mistyped command (``dkm-tf compres``) gets a "did you mean" suggestion, and so does a
  mistyped flag that absl finds no match for (``--noplot``) or a wrong one (``--no-plots``).
* help written to a pipe closed early (``dkm-tf --help | head -3``) ends quietly (141, as
  every other output of the command), not with a ``BrokenPipeError`` traceback (exit 1).
"""

from __future__ import annotations

import difflib
import re

from dkm_tf.cli_args import COMMAND_FLAGS, COMMANDS, EXTRA_FLAGS, CliUsageError, help_text
from dkm_tf.cli_env import quiet_fd

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")
# flags that may come before `help` (both commands take them)
_LEADING = ("--verbose", "-v", "--noverbose", "--quiet", "--noquiet")


def suggestion(word, choices):
    """The closest of ``choices`` to ``word`` (case and ``-``/``_`` ignored), or None."""
    if not isinstance(word, str) or not word:
        return None
    norm = word.lower().replace("-", "_")
    if norm in choices:
        return norm
    close = difflib.get_close_matches(norm, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def command_error(received):
    """The :class:`CliUsageError` for a missing or unknown command, with a close match."""
    error = CliUsageError("command", f"one of {list(COMMANDS)} (example: dkm-tf compress; "
                          "dkm-tf help <command> lists its flags)", received)
    text = str(error)
    if received is None:
        text = text.replace("received None", "received no command")
    match = suggestion(received, COMMANDS)
    if match is not None and match != received:
        text += f"; did you mean {match!r}?"
    error.args = (text,)
    return error


def flag_message(message, command=None):
    """absl's unknown-flag message with a "did you mean" where absl gives none or a wrong one:
    ``--noplot`` -> ``--noplots``, ``--no-plots`` -> ``--noplots`` (absl: ``plots``), and,
    given the ``command``, only among its flags (absl suggested ``--n_clusters`` for
    ``dkm-tf energy --n_cluster``, a flag ``energy`` refuses): else a command of a few flags
    lists them."""
    found = re.match(r"Unknown command line flag '([^']+)'", message)
    if not found:
        return message
    word = found.group(1).lower().replace("-", "_")
    names = list(COMMAND_FLAGS.get(command) or sorted({n for f in COMMAND_FLAGS.values()
                                                       for n in f}))
    names += EXTRA_FLAGS.get(command, ())  # --custom_objects: a suggestion, not listed
    bools = tuple(n for n in ("tflite", "plots", "quiet") if n in names or n == "quiet")
    bools += ("verbose",)
    if word.startswith("no_") and suggestion(word[3:], bools):
        match = "no" + suggestion(word[3:], bools)
    else:
        match = suggestion(word, list(names) + ["verbose", "help"] + [f"no{n}" for n in bools])
    head = f"Unknown command line flag '{found.group(1)}'"
    if match is not None:
        return f"{head}. Did you mean: --{match} ?"
    if len(COMMAND_FLAGS.get(command, ())) <= 4 and command in COMMAND_FLAGS:  # energy: 2
        return f"{head}: dkm-tf {command} takes --" + ", --".join(COMMAND_FLAGS[command])
    return message


def model_flag_error(error, model_path):
    """A model file's ``ValueError`` (``check_model_file``'s, ``energy.estimate``'s) for
    ``--model model_path``: the flag the user typed instead of the function's argument
    (``path``, ``model_or_path``), the path once; None when it names no argument."""
    flag = f"Could not load --model {model_path!r}"
    text = re.sub(r"Invalid value for argument `(path|model_or_path)`", lambda _: flag,
                  str(error), count=1)
    if text == str(error):
        return None
    return ValueError(re.sub(r"Received: (path|model_or_path)=" + re.escape(repr(model_path))
                             + r"(, )?", lambda _: "Received: ", text, count=1))


def load_model_flag(model_path):
    """``keras.models.load_model(model_path, compile=False)`` after ``check_model_file``,
    every failure a ``ValueError`` naming ``--model`` and the file (and, for a custom class or
    function that is not known here, its name and ``--custom_objects``)."""
    import keras  # noqa: PLC0415

    from dkm_tf.core.files import check_model_file  # noqa: PLC0415

    try:
        check_model_file(model_path)
    except ValueError as e:  # a damaged or renamed file, named with its flag
        clear = model_flag_error(e, model_path)
        if clear is None:
            raise
        raise clear from e
    try:
        return keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError, TypeError) as e:  # say which file (a truncated .h5, ...)
        from dkm_tf.cli_custom import load_error  # noqa: PLC0415

        clear = load_error(e, model_path)  # a custom class or function not known here
        if clear is not None:
            raise clear from e
        raise ValueError(f"Could not load --model {model_path!r}: {type(e).__name__}: "
                         f"{e}") from e


def _usage():
    """The "Usage:" lines of the help text (the commands, one line each)."""
    lines = help_text().splitlines()
    start = lines.index("Usage:")
    return "\n".join(lines[start:start + 1 + len(COMMANDS)])


def _write(text, stream):
    """Print ``text``; 0, or 141 when the reader closed the pipe (no traceback)."""
    try:
        print(text, file=stream)
        stream.flush()
    except BrokenPipeError:
        quiet_fd(stream)  # the interpreter's exit flush would raise it again (a real stream)
        return 141
    return 0


def early_exit(argv, stdout, stderr):
    """Handle help requests and a bare ``dkm-tf`` before the flags are parsed; returns the
    exit status, or None when the command should run."""
    args = list(argv[1:])
    if not args:
        _write(_usage() + "\n", stderr)
        _write(f"dkm-tf: error: {command_error(None)} (see dkm-tf --help)", stderr)
        return 2
    rest = [a for a in args if a not in _LEADING]
    if rest and rest[0] == "help":
        topics = []  # the words right after help: one command (two: an error); flags ignored
        for word in rest[1:3]:
            if word.startswith("-"):
                break
            topics.append(word)
        if not topics or topics[0] == "help":
            return _write(help_text(None), stdout)
        if len(topics) > 1 or topics[0] not in COMMANDS:
            error = (command_error(topics[0]) if topics[0] not in COMMANDS else
                     CliUsageError("arguments", "one command after help (dkm-tf help "
                                   "compress)", " ".join(topics)))
            _write(f"dkm-tf: error: {error} (see dkm-tf --help)", stderr)
            return 2
        return _write(help_text(topics[0]), stdout)
    if "--version" in args:  # what people try first; absl would say "Unknown flag"
        from dkm_tf import __version__  # noqa: PLC0415 (lazy: loads neither Keras nor TF)

        return _write(f"dkm-tf {__version__}", stdout)
    if any(a in HELP_FLAGS for a in args):
        command = next((a for a in args if not a.startswith("-")), None)
        return _write(help_text(command if command in COMMANDS else None), stdout)
    return None
