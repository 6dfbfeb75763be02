"""Concurrent use from threads of one process: the public API on different models at once,
and several writers of one target file or output folder.

The interleavings that broke are forced with events (not timing luck): two exports' stdout /
stderr redirections overlapping left the process silenced for good, and two threads'
``warnings.catch_warnings`` overlapping left an ``ignore`` filter behind (every later warning
hidden). See ``dkm_tf.core.std_fds``.
"""

import concurrent.futures
import contextlib
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from tests.testing import small_cnn, tf_backend_only

ROOT = pathlib.Path(__file__).resolve().parents[1]

WAIT = 20  # seconds an event may take before the test fails instead of hanging


def _fd_id(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _fds_kept():
    """Put fds 1 and 2 back whatever the code under test did to them (the old code left them
    on /dev/null: every later test's output would be lost)."""
    saved = [os.dup(1), os.dup(2)]
    try:
        yield [_fd_id(1), _fd_id(2)]
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _run_in_thread(fn):
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _hold(ctx, entered, leave):
    def fn():
        with ctx:
            entered.set()
            assert leave.wait(WAIT)
    return fn


def test_overlapping_quiet_blocks_give_the_fds_back():
    from dkm_tf.export.convert import quiet

    with _fds_kept() as before:
        a_in, a_out, b_in, b_out = (threading.Event() for _ in range(4))
        ta, box_a = _run_in_thread(_hold(quiet(), a_in, a_out))
        assert a_in.wait(WAIT)
        tb, box_b = _run_in_thread(_hold(quiet(), b_in, b_out))
        assert b_in.wait(WAIT)
        assert _fd_id(1) == _fd_id(2) != before[0]  # both silenced meanwhile
        a_out.set()  # A leaves first, B last: B used to restore A's /dev/null
        ta.join(WAIT)
        b_out.set()
        tb.join(WAIT)
        assert not ta.is_alive() and not tb.is_alive()
        assert "error" not in box_a and "error" not in box_b
        after = [_fd_id(1), _fd_id(2)]
    assert after == before, "stdout/stderr left redirected after two overlapping quiet blocks"


def test_capture_overlapping_a_quiet_block(tmp_path):
    from dkm_tf.export.convert import quiet

    with _fds_kept() as before, open(tmp_path / "log", "w+b") as log:
        a_in, a_out, b_in, b_out = (threading.Event() for _ in range(4))
        ta, _ = _run_in_thread(_hold(quiet(), a_in, a_out))
        assert a_in.wait(WAIT)

        def capture():
            with quiet(into=log):
                os.write(2, b"caught on fd 2\n")
                b_in.set()
                assert b_out.wait(WAIT)

        tb, box_b = _run_in_thread(capture)
        assert b_in.wait(WAIT)
        a_out.set()  # A's end waits for the capture now (it used to restore under it)
        ta.join(1.0)
        b_out.set()
        tb.join(WAIT)
        ta.join(WAIT)
        assert not ta.is_alive() and not tb.is_alive() and "error" not in box_b
        after = [_fd_id(1), _fd_id(2)]
        log.seek(0)
        assert b"caught on fd 2" in log.read()
    assert after == before


def test_overlapping_interpreter_warning_blocks_leave_no_filter():
    """``make_interpreter``'s ``simplefilter('ignore')`` left behind hid every warning."""
    from dkm_tf.core import std_fds

    filters = list(warnings.filters)
    a_in, a_out, b_in, b_out = (threading.Event() for _ in range(4))

    def block(entered, leave):
        def fn():
            with std_fds.catch_warnings():
                warnings.simplefilter("ignore")
                entered.set()
                leave.wait(WAIT)
        return fn

    ta, _ = _run_in_thread(block(a_in, a_out))
    assert a_in.wait(WAIT)
    tb, _ = _run_in_thread(block(b_in, b_out))
    assert not b_in.wait(0.3)  # B waits for A's block: the two never overlap
    a_out.set()
    assert b_in.wait(WAIT)
    b_out.set()
    ta.join(WAIT)
    tb.join(WAIT)
    assert warnings.filters == filters
    with pytest.warns(UserWarning, match="still shown"):
        warnings.warn("still shown", UserWarning, stacklevel=1)


@tf_backend_only()
def test_interpreter_filters_do_not_leak_under_threads(monkeypatch):
    """Two threads in ``make_interpreter`` (the tf.lite kind), the second one inside while
    the first leaves (old code): the process's warning filters are as before, and a later
    warning is still shown."""
    import tensorflow as tf

    from dkm_tf.core import interpreters
    from dkm_tf.export.convert import convert, input_specs

    model = small_cnn(seed=1)
    content = convert(model, input_specs(model), "none")
    filters = list(warnings.filters)
    real = tf.lite.Interpreter
    second_in, first_done, order, lock = threading.Event(), threading.Event(), [], threading.Lock()

    def held(*args, **kwargs):
        with lock:
            order.append(threading.current_thread())
            first = len(order) == 1
        if first:  # let the second thread in (old code) or time out (it waits for us)
            second_in.wait(1.0)
        else:
            second_in.set()
            first_done.wait(WAIT)  # leave after the first thread's block has ended
        return real(*args, **kwargs)

    def job():
        it = interpreters.make_interpreter("tflite", content)
        if order and order[0] is threading.current_thread():
            first_done.set()
        return it

    monkeypatch.setattr(tf.lite, "Interpreter", held)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(job) for _ in range(2)]:
            f.result(WAIT)
    monkeypatch.undo()
    assert warnings.filters == filters, "an 'ignore' filter was left behind"
    with pytest.warns(UserWarning, match="not hidden"):
        warnings.warn("not hidden", UserWarning, stacklevel=1)


@tf_backend_only()
def test_exports_from_threads_same_and_different_targets(tmp_path):
    """Four threads: two formats to their own files, then all four palettized to one path:
    each file right (byte-equal to the sequential export), the shared one exactly one
    writer's, no temp file left, stdout/stderr the process's own afterwards."""
    from dkm_tf import share_weights
    from dkm_tf.export import to_tflite

    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    shared = [share_weights(small_cnn(seed=i), 4, seed=i) for i in range(3)]

    def export(i, path, fmt="palettized"):
        kw = {"palettes": shared[i].palettes} if fmt == "palettized" else {}
        to_tflite(shared[i].model, path, fmt, sample_inputs=x, **kw)
        return path.read_bytes()

    with _fds_kept() as before:
        ref = [export(i, tmp_path / f"ref{i}.tflite") for i in range(3)]
        ref_int8 = export(0, tmp_path / "ref_int8.tflite", "int8")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            jobs = [pool.submit(export, i, tmp_path / f"t{i}.tflite") for i in range(3)]
            jobs.append(pool.submit(export, 0, tmp_path / "t_int8.tflite", "int8"))
            got = [j.result() for j in jobs]
            assert got == [*ref, ref_int8]
            same = [pool.submit(export, i % 3, tmp_path / "same.tflite") for i in range(4)]
            for j in same:
                j.result()
        after = [_fd_id(1), _fd_id(2)]
    assert after == before
    assert (tmp_path / "same.tflite").read_bytes() in ref
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_atomic_writers_same_target_from_threads(tmp_path):
    """Three threads inside ``atomic_path`` for one file at once (all temp files open): the
    file is one writer's whole content, no temp is left, none removed the other's temp."""
    from dkm_tf.core.files import atomic_path

    target = tmp_path / "out.json"
    barrier = threading.Barrier(3, timeout=WAIT)
    payload = [(str(i) * 5000).encode() for i in range(3)]

    def write(i):
        with atomic_path(target, suffix=".json") as tmp:
            with open(tmp, "wb") as f:
                f.write(payload[i][:100])
            barrier.wait()  # all three temps exist; each finishes its write after
            with open(tmp, "ab") as f:
                f.write(payload[i][100:])
        return tmp

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        temps = list(pool.map(write, range(3)))
    assert len(set(temps)) == 3
    assert target.read_bytes() in payload
    assert os.listdir(tmp_path) == ["out.json"]


def test_share_weights_threads_match_sequential():
    """Nested pools (each call's k-means pool) in 3 threads: palettes and kernels identical to
    the same calls one after another (plain, per-channel, GPTQ-refined, with verbose's
    heartbeat)."""
    from dkm_tf import share_weights

    x = np.random.default_rng(1).normal(size=(16, 8, 8, 1)).astype("float32")
    cases = [{"granularity": "per_channel"}, {"refine": "gptq", "data": x}, {"verbose": True}]
    models = [small_cnn(seed=i) for i in range(3)]

    def run(i):
        with contextlib.redirect_stdout(None):
            r = share_weights(models[i], 4, seed=7, **cases[i])
        return ([(p.layer_name, p.codebook.tobytes(), p.indices.tobytes()) for p in r.palettes],
                [w.tobytes() for w in r.model.get_weights()])

    sequential = [run(i) for i in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(run, range(3))) == sequential


def test_run_compress_two_threads_one_output_dir(tmp_path, monkeypatch):
    """The run lock holds between threads of one process: the second run fails before any
    work while the first holds the folder, and the folder is free again afterwards."""
    from dkm_tf import cli
    from dkm_tf.core.files import LOCK_NAME, FolderInUseError

    inside, release = threading.Event(), threading.Event()

    class Stop(Exception):
        pass

    def blocked_load(name):  # the first thing run_compress does after taking the lock
        inside.set()
        assert release.wait(WAIT)
        raise Stop

    monkeypatch.setattr(cli, "load_dataset", blocked_load)
    out = tmp_path / "out"
    kwargs = {"output_dir": str(out), "tflite": False, "plots": False, "quiet": True}
    first, box = _run_in_thread(lambda: cli.run_compress(None, **kwargs))
    assert inside.wait(WAIT)
    assert (out / LOCK_NAME).exists()
    with pytest.raises(FolderInUseError, match="in use by another run"):
        cli.run_compress(None, **kwargs)
    release.set()
    first.join(WAIT)
    assert isinstance(box.get("error"), Stop)
    assert not out.exists()  # made by the first run, empty, removed with its lock


def test_a_child_forked_during_a_conversion_can_export(tmp_path):
    # review of 0af4765: the lock held by another thread (a conversion) was copied into a
    # forked child held by a thread it does not have: the child's first export hung for ever
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent("""
        import os, sys, threading, time, warnings
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12)
        from dkm_tf.core import std_fds
        held = threading.Event()
        def hold():
            with std_fds.silenced(), std_fds.catch_warnings():
                held.set()
                time.sleep(3)
        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            with std_fds.silenced(), std_fds.catch_warnings():
                pass
            os.write(1, b"child ok")  # the real stdout, not the parent's /dev/null
            os._exit(0)
        t = time.time()
        while time.time() - t < 10:
            if os.waitpid(pid, os.WNOHANG)[0]:
                sys.exit(0)
            time.sleep(0.05)
        os.kill(pid, 9)
        sys.exit(3)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "child ok" in proc.stdout
