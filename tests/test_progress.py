"""dkm_tf.progress: live bars on a terminal, one line per stage elsewhere, nothing when quiet."""

import io

import numpy as np
import pytest

from dkm_tf.progress import Progress


def _run_stage(progress, total=5):
    with progress.stage("work", total, "steps") as stage:
        for i in range(total):
            stage.update(1, f"step {i + 1}")


def test_not_a_terminal_gets_one_line_per_stage():
    buf = io.StringIO()
    progress = Progress(stream=buf, tty=False)
    _run_stage(progress)
    _run_stage(progress, total=3)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in buf.getvalue()
    assert lines[0].startswith("[work] 5/5 steps in ") and lines[0].endswith(": step 5")
    assert lines[1].startswith("[work] 3/3 steps in ")


def test_long_stage_on_a_log_prints_a_heartbeat_line_with_the_time_left():
    buf = io.StringIO()
    progress = Progress(stream=buf, tty=False, heartbeat_s=0.0)
    _run_stage(progress, total=3)
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 4  # one per update (heartbeat 0 s), then the stage's end
    assert lines[0].startswith("[work] 1/3 steps after ") and "left" in lines[0]
    assert lines[-1].startswith("[work] 3/3 steps in ")


def test_a_stage_without_updates_still_gets_heartbeat_lines():
    import time

    buf = io.StringIO()
    progress = Progress(stream=buf, tty=False, heartbeat_s=0.2)
    stage = progress.stage("k-means", 2, "tensors")
    time.sleep(1.5)
    stage.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 2 and lines[0].startswith("[k-means] 0/2 tensors after ")
    assert lines[-1].startswith("[k-means] 0/2 tensors in ")


def test_quiet_writes_nothing():
    buf = io.StringIO()
    progress = Progress(enabled=False, stream=buf, tty=True)
    _run_stage(progress)
    progress.line("hello")
    assert buf.getvalue() == ""


@pytest.mark.parametrize("use_tqdm", [True, False])
def test_terminal_gets_a_bar(use_tqdm):
    buf = io.StringIO()
    progress = Progress(stream=buf, tty=True, use_tqdm=use_tqdm)
    if use_tqdm and progress.tqdm is None:
        pytest.skip("tqdm not installed")
    _run_stage(progress)
    text = buf.getvalue()
    assert "\r" in text and "[work]" in text and "5/5" in text
    assert text.endswith("\n")  # the finished bar stays, the next output starts a new line


def test_finish_on_close_counts_work_done_elsewhere():
    buf = io.StringIO()
    progress = Progress(stream=buf, tty=False)
    stage = progress.stage("k-means", 4, "tensors")
    stage.finish_on_close = True
    progress.end_stage("a, b, c, d")
    assert buf.getvalue().startswith("[k-means] 4/4 tensors in ")
    assert buf.getvalue().rstrip().endswith(": a, b, c, d")


def test_keras_callback_counts_batches_and_shows_epoch_and_loss():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    buf = io.StringIO()
    progress = Progress(stream=buf, tty=False)
    progress.stage("before", 1, "x")  # a stage still open is closed by fit's bar
    x, y = np.zeros((20, 3), np.float32), np.zeros((20, 2), np.float32)
    model.fit(x, y, epochs=2, batch_size=5, verbose=0,
              callbacks=[progress.keras_callback("train")])
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[before] 0/1 x in ")
    assert lines[1].startswith("[train] 8/8 batches in ") and "epoch 2/2, loss " in lines[1]
    assert progress.current is None
