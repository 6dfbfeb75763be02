"""A long stage on a log prints a heartbeat line every 15 s by default (was 60 s).

Found at scale: `dkm-tf compress --model mobilenetv2_224.keras` (stderr to a file) printed
nothing for 60 s while the float `.tflite` converted and verified; the library's other
heartbeat (`share_weights(verbose=True)`) is 15 s.
"""

import io
import time

from dkm_tf.progress import Progress


def test_default_heartbeat_is_15_s_and_a_silent_stage_gets_its_line(monkeypatch):
    buf = io.StringIO()
    progress = Progress(stream=buf, tty=False)
    assert progress.heartbeat_s == 15.0
    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    with progress.stage("export", total=4, unit="formats") as stage:
        clock[0] += 16.0  # 16 s later, no update yet
        stage._heartbeat()  # what the ticker thread calls every 0.5 s
        lines = [ln for ln in buf.getvalue().splitlines() if "after" in ln]
        assert lines and lines[-1].startswith("[export] 0/4 formats after 16 s")
