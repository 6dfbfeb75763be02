"""``dkm-tf`` in the environments users run it in (:mod:`dkm_tf.cli_env`, :mod:`dkm_tf.progress`,
``python -m dkm_tf``): closed or full standard streams, encodings that cannot write a
character, SIGTERM / SIGHUP, a deleted current folder, dumb and narrow terminals.

The tests call :func:`dkm_tf.cli_env.guarded` around the real :func:`dkm_tf.cli.run` (its
``main`` replaced by a fake where a run must be in progress); the two ``wired`` tests run the
console script's :func:`dkm_tf.cli.entry_point` (which calls ``guarded``: a removed wiring fails
them).
"""

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dkm_tf import cli, cli_env
from dkm_tf.core.files import LOCK_NAME, folder_lock
from dkm_tf.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(autouse=True)
def _std_fds_kept():
    """Give this process its fds 0-2 (and pytest's capture files) back after each test: on a
    broken pipe the command points its stdout at /dev/null for its exit; in the test process
    that silenced pytest's capture file of the tests after these (tests/test_concurrency20j.py
    saw fd 1 on /dev/null)."""
    fds = {0, 1, 2}
    for stream in (sys.stdout, sys.stderr):  # pytest's capture files: cli.run quiets the
        try:  # fd of sys.stdout on a broken pipe (fd 1 in the real command)
            fds.add(stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    saved = {fd: os.dup(fd) for fd in sorted(fds)}
    try:
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _guarded(argv):
    return cli_env.guarded(cli.run, argv, on_signal=cli._on_sigint, unfinished=cli._unfinished)


def _fake_main(monkeypatch, body):
    """cli.run runs ``body(rest)`` as its command (no TensorFlow import)."""
    monkeypatch.setattr(cli, "import_tensorflow_quietly", lambda: None)
    monkeypatch.setattr(cli, "main", body)


class _Full(io.TextIOBase):
    """A stream on a full disk (``>/dev/full``)."""

    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


# ---- encodings ---------------------------------------------------------------------------

def test_an_ascii_stdout_gets_escapes_not_a_unicode_error_after_the_work(monkeypatch, tmp_path):
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict", line_buffering=True)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    folder = str(tmp_path / "sortie_\u00e9")

    def body(rest):  # what run_compress prints after the compression: the folder's name
        cli._log(f"[write] {folder}/report.json (3 \u00d7 smaller)")
        return 0

    _fake_main(monkeypatch, body)
    assert _guarded(["dkm-tf", "energy"]) == 0
    out.flush()
    assert out.buffer.getvalue().decode("ascii").endswith(
        "sortie_\\xe9/report.json (3 \\xd7 smaller)\n")
    assert out.errors == "strict"  # given back
    assert err.getvalue() == ""


def test_a_file_name_that_is_not_valid_utf8_prints_as_its_own_bytes():
    for errors in ("strict", "surrogateescape"):
        out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors)
        assert cli_env.tolerant_encoding(out) == errors
        name = os.fsdecode(b"lat\xe9.keras")  # argv decodes it with a surrogate
        out.write(f"Energy estimate: {name} \u00d7\n")
        out.flush()
        assert out.buffer.getvalue() == b"Energy estimate: lat\xe9.keras \xc3\x97\n"


# ---- closed and full streams -------------------------------------------------------------

def test_a_usage_error_keeps_status_2_when_stderr_cannot_be_written(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Full())
    assert _guarded(["dkm-tf", "compres"]) == 2  # was an OSError out of run(): status 1


def test_help_to_a_full_stdout_is_one_line_status_1(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", _Full())
    monkeypatch.setattr(sys, "stderr", err)
    assert _guarded(["dkm-tf", "--help"]) == 1  # was a traceback of cli_help._write
    assert err.getvalue().count("\n") == 1
    assert "No space left on device" in err.getvalue()


def _python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_ENV,
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_closed_stdout_and_stderr_are_reopened_before_any_file_is_opened(tmp_path):
    done = _python(f"""
        import os, sys
        os.close(1); os.close(2); sys.stdout = sys.stderr = None  # as `>&- 2>&-` at start
        from dkm_tf import cli, cli_env
        def main(rest):
            fd = os.open({str(tmp_path / 'f')!r}, os.O_CREAT | os.O_WRONLY)
            os.write(fd, str(fd).encode())  # a file opened by the run: fd 1 before
            print("table")  # went to that file
            return 0
        cli.main, cli.import_tensorflow_quietly = main, lambda: None
        code = cli_env.guarded(cli.run, ["dkm-tf", "energy"])
        os._exit(code)""")
    assert done.returncode == 0, done
    assert int((tmp_path / "f").read_text()) > 2


def test_help_with_stdout_closed_is_status_0_not_a_traceback():
    done = _python("""
        import os, sys
        os.close(1); sys.stdout = None
        from dkm_tf import cli, cli_env
        sys.exit(cli_env.guarded(cli.run, ["dkm-tf", "--help"]))""")
    assert (done.returncode, done.stderr) == (0, "")


def test_stdout_closed_early_says_what_the_run_left_in_its_folder(monkeypatch, tmp_path):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    out = str(tmp_path / "out")

    def body(rest):
        os.makedirs(out)
        cli._TOUCHED[:] = [out]
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")  # `dkm-tf compress | head -30`

    _fake_main(monkeypatch, body)
    assert _guarded(["dkm-tf", "compress"]) == 141
    assert f"stdout was closed early; {out} holds an unfinished run" in err.getvalue()


# ---- signals -----------------------------------------------------------------------------

def _send(signum):
    """Send ``signum`` to this process, unless it would kill pytest (no handler: the old
    entry point): then an AssertionError."""
    assert signal.getsignal(signum) not in (signal.SIG_DFL, None), "the signal would kill"
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_terminating_signal_takes_ctrl_c_path(monkeypatch, tmp_path, sig):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    out = str(tmp_path / "out")
    signum = getattr(signal, sig)

    def body(rest):
        with folder_lock(out):
            cli._TOUCHED[:] = [out]
            (tmp_path / "out" / "clustered.keras").write_text("x")
            _send(signum)
            time.sleep(5)  # the handler raises here
        return 0

    _fake_main(monkeypatch, body)
    before = signal.getsignal(signum)
    assert _guarded(["dkm-tf", "compress"]) == 128 + signum
    assert signal.getsignal(signum) == before
    assert sorted(os.listdir(out)) == ["clustered.keras"]  # the lock removed
    assert f"dkm-tf: interrupted; {out} holds an unfinished run" in err.getvalue()


def test_a_signal_a_library_turned_into_an_error_is_still_the_signal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)

    def body(rest):
        try:
            _send(signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:  # as TensorFlow's tracing does
            raise TypeError("Failed to convert elements of (None, 512) to Tensor") from None
        return 0

    _fake_main(monkeypatch, body)
    assert _guarded(["dkm-tf", "compress"]) == 143
    assert "stopped by SIGTERM" in err.getvalue()


_SLOW_RUN = """
    import os, sys, time
    from dkm_tf import cli, cli_env
    from dkm_tf.core.files import folder_lock
    out = {out!r}
    def main(rest):
        with folder_lock(out):
            cli._TOUCHED[:] = [out]
            open(os.path.join(out, "clustered.keras"), "w").close()
            print("ready", flush=True)
            time.sleep(30)
        return 0
    cli.main, cli.import_tensorflow_quietly = main, lambda: None
    sys.argv = ["dkm-tf", "compress"]
    {call}
"""


def _kill_when_ready(code, sig, **kwargs):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=_ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_sigterm_in_a_real_process_removes_the_lock_and_says_so(tmp_path):
    out = str(tmp_path / "out")
    call = "sys.exit(cli_env.guarded(cli.run, sys.argv, on_signal=cli._on_sigint, " \
           "unfinished=cli._unfinished))"
    code, err = _kill_when_ready(_SLOW_RUN.format(out=out, call=call), signal.SIGTERM)
    assert code == 143, err
    assert "holds an unfinished run" in err
    assert LOCK_NAME not in os.listdir(out)


def test_an_ignored_sighup_stays_ignored(tmp_path):
    out = str(tmp_path / "out")
    call = "signal.signal(signal.SIGHUP, signal.SIG_IGN); " \
           "sys.exit(cli_env.guarded(cli.run, sys.argv))"
    proc = subprocess.Popen([sys.executable, "-c", "import signal\n" + textwrap.dedent(
        _SLOW_RUN.format(out=out, call=call))], env=_ENV, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGHUP)  # as under nohup
    time.sleep(0.5)
    assert proc.poll() is None
    proc.terminate()
    proc.communicate(timeout=30)
    assert proc.returncode == 143


def test_wired_entry_point_sigterm_removes_the_lock_and_exits_143(tmp_path):
    out = str(tmp_path / "out")
    code, err = _kill_when_ready(_SLOW_RUN.format(out=out, call="cli.entry_point()"),
                                 signal.SIGTERM)
    assert code == 143, err
    assert f"dkm-tf: interrupted; {out} holds an unfinished run" in err
    assert os.listdir(out) == ["clustered.keras"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_wired_entry_point_help_to_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "dkm_tf", "--help"], env=_ENV, text=True,
                              stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("dkm-tf: error: could not write the output: OSError: [Errno "
                                  "28]"), done.stderr
    assert done.stderr.count("\n") == 1


# ---- the environment ---------------------------------------------------------------------

def test_a_failed_run_in_a_deleted_current_folder_says_so(monkeypatch, tmp_path):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert _guarded(["dkm-tf", "compress", "--epochs", "0"]) == 2
    assert "the current folder no longer exists" in err.getvalue()


def test_python_dash_m_dkm_tf_is_the_command():
    done = subprocess.run([sys.executable, "-m", "dkm_tf", "--version"], env=_ENV,
                          capture_output=True, text=True, timeout=60)
    from dkm_tf import __version__

    assert (done.returncode, done.stdout, done.stderr) == (0, f"dkm-tf {__version__}\n", "")


# ---- progress on terminals ---------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_term_dumb_gets_log_lines_not_bar_redraws(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    stream = _Tty()
    progress = Progress(stream=stream, use_tqdm=False)
    with progress.stage("train", 3, "batches") as stage:
        stage.update(3)
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().startswith("[train] 3/3 batches in 0 s")


def test_the_plain_bar_fits_a_narrow_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.delenv("TERM", raising=False)
    stream = _Tty()
    progress = Progress(stream=stream, use_tqdm=False)
    stage = progress.stage("k-means K=16", 4, "tensors")
    stage.update(1, "conv1/kernel")
    stage._draw()
    stage.close()
    drawn = stream.getvalue()
    pieces = drawn.replace("\n", "\r").split("\r")
    assert max(len(p) for p in pieces[:-2]) <= 19, drawn  # each redraw within one line
    assert pieces[-2].startswith("[k-means K=16] 1/4 tensors in 0 s")


def test_the_export_bars_keep_the_guarded_stderr_and_its_encoding(monkeypatch):
    from dkm_tf.cli_tables import native_stderr_filtered

    raw = io.TextIOWrapper(open(os.dup(2), "wb"), encoding="ascii", errors="strict")
    cli_env.tolerant_encoding(raw)
    guard = cli_env.StderrGuard(raw)
    monkeypatch.setattr(sys, "stderr", guard)
    progress = Progress(use_tqdm=False)
    try:
        with native_stderr_filtered(progress):  # the exporter's block: bars on a dup of fd 2
            assert isinstance(progress.stream, cli_env.StderrGuard)
            assert (progress.stream.encoding, progress.stream.errors) == ("ascii",
                                                                          cli_env.ERRORS)
            progress.stream.write("[export] sortie_\u00e9\n")  # was locale's, strict
        assert progress.stream is guard
    finally:
        raw.close()


def test_a_read_only_stderr_left_by_a_wrapper_script_is_reopened(tmp_path):
    script = tmp_path / "shim.sh"
    script.write_text("#!/bin/sh\n")
    done = _python(f"""
        import os
        fd = os.open({str(script)!r}, os.O_RDONLY)  # a bash shim run with 2>&-
        os.dup2(fd, 2)
        os.close(fd)
        from dkm_tf import cli, cli_env
        code = cli_env.guarded(cli.run, ["dkm-tf", "compres"])
        os._exit(code)""")
    assert done.returncode == 2, done  # was 1: the usage line's EBADF ended the run
    assert script.read_text() == "#!/bin/sh\n"


def test_the_export_block_survives_a_stderr_that_cannot_be_written(monkeypatch):
    from dkm_tf.cli_tables import native_stderr_filtered

    raw = io.TextIOWrapper(open(os.dup(2), "wb"), encoding="utf-8")
    monkeypatch.setattr(sys, "stderr", raw)
    progress = Progress(use_tqdm=False)
    try:
        with native_stderr_filtered(progress):
            progress.stream.write("[export] 1/4")  # buffered: flushed at the block's end
            os.close(progress.stream.fileno())  # EBADF then (was raised out of the export)
        assert progress.stream is raw
    finally:
        raw.close()
