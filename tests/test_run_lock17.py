"""One ``dkm-tf compress`` run per output folder (``core.files.folder_lock``): a second run
into a folder a live run holds is refused before any work and removes nothing. Before, both
ran and each removed the other's files (KNOWN_LIMITATIONS: "not locked against each other")."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from dkm_tf import cli
from dkm_tf.core import files

ARGS = ("--notflite", "--noplots", "--quiet", "--n_clusters", "4")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="fc")])
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(path)
    return path


HOLD = ("import sys, time; from dkm_tf.core.files import folder_lock; "
        "lock = folder_lock(sys.argv[1]); lock.__enter__(); print('held', flush=True); "
        "time.sleep(120)")


@pytest.fixture
def holder():
    """Start a live run holding a folder; yields ``hold(folder) -> pid``."""
    procs = []

    def hold(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def _compress(model_file, out, capsys, *extra):
    rc = cli.run(["dkm-tf", "compress", "--model", str(model_file), "--output_dir", str(out),
                  *ARGS, *extra])
    return rc, capsys.readouterr().err


def test_second_run_into_a_held_folder_is_refused_and_removes_nothing(model_file, tmp_path,
                                                                     holder, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"earlier": true}')  # the live run's (or an earlier) files
    (out / "clustered.keras").write_bytes(b"earlier")
    proc = holder(out)
    rc, err = _compress(model_file, out, capsys)
    assert rc == 1 and "FolderInUseError" in err and f"pid {proc.pid} on host" in err, err
    assert "--output_dir" in err and "another run" in err, err
    assert (out / "report.json").read_text() == '{"earlier": true}'
    assert (out / "clustered.keras").read_bytes() == b"earlier"
    assert (out / files.LOCK_NAME).read_text().startswith(f"pid {proc.pid} ")  # still theirs


def test_a_held_plots_dir_is_refused_too(model_file, tmp_path, holder, capsys):
    # review: only --output_dir was held; a run into another --output_dir with the live run's
    # folder as --plots_dir removed its weights.png / formats.png / energy.png
    live = tmp_path / "live"
    live.mkdir()
    for name in ("weights.png", "formats.png", "energy.png"):
        (live / name).write_bytes(b"theirs")
    holder(live)
    rc = cli.run(["dkm-tf", "compress", "--model", str(model_file), "--output_dir",
                  str(tmp_path / "other"), "--plots_dir", str(live), "--notflite", "--quiet",
                  "--n_clusters", "4"])
    err = capsys.readouterr().err
    assert rc == 1 and "--plots_dir" in err and "another run" in err, err
    assert all((live / n).read_bytes() == b"theirs"
               for n in ("weights.png", "formats.png", "energy.png"))
    assert not (tmp_path / "other").exists()


def test_lock_of_a_killed_run_is_no_lock(model_file, tmp_path, holder, capsys):
    out = tmp_path / "out"
    proc = holder(out)
    proc.kill()  # SIGKILL: no cleanup, the lock file stays; the kernel drops its lock
    proc.wait()
    assert (out / files.LOCK_NAME).exists()
    rc, err = _compress(model_file, out, capsys)
    assert rc == 0, err
    assert (out / "report.json").is_file() and (out / "clustered.keras").is_file()
    assert not (out / files.LOCK_NAME).exists()


def test_same_process_twice_and_release(tmp_path):
    out = tmp_path / "new" / "out"
    with files.folder_lock(out) as path:
        assert Path(path).read_text().split()[1] == str(os.getpid())
        with pytest.raises(files.FolderInUseError, match=f"pid {os.getpid()} on host"):
            with files.folder_lock(out):
                pass
        assert os.path.exists(path)  # the refused inner call left the holder's lock alone
    assert not (tmp_path / "new").exists()  # created for the run, still empty: removed, parent too


def test_folder_the_run_wrote_into_is_kept(tmp_path):
    out = tmp_path / "out"
    with files.folder_lock(out):
        (out / "report.json").write_text("{}")
    assert (out / "report.json").is_file() and not (out / files.LOCK_NAME).exists()


def test_lock_is_taken_again_after_release_in_a_loop(tmp_path):
    out = tmp_path / "out"
    for _ in range(3):
        with files.folder_lock(out):
            pass
    assert not out.exists()


def test_failed_run_leaves_no_folder_it_created(tmp_path, capsys):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    out = tmp_path / "never" / "deeper"
    rc, err = _compress(bad, out, capsys)
    assert rc != 0 and not (tmp_path / "never").exists(), err


@pytest.mark.parametrize("what", ["shape", "labels"])
def test_dataset_that_does_not_fit_is_a_usage_error_naming_dataset(model_file, tmp_path,
                                                                   capsys, what):
    # was: exit 1, "ValueError: Invalid value for argument `train_data`" (compress's name)
    import numpy as np

    rng = np.random.default_rng(0)
    side = 5 if what == "shape" else 6
    y_high = 4 if what == "shape" else 9  # the model has 4 classes
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.random((16, side, side, 1), np.float32),
             y_train=rng.integers(0, y_high, 16), x_test=rng.random((8, side, side, 1),
                                                                  np.float32),
             y_test=rng.integers(0, 4, 8))
    out = tmp_path / "out"
    rc = cli.run(["dkm-tf", "compress", "--model", str(model_file), "--dataset", str(data),
                  "--output_dir", str(out), *ARGS])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("dkm-tf: error: invalid --dataset: expected data that fits --model")
    assert "training part (x_train, y_train)" in err and "`train_data`" not in err, err
    assert not out.exists()


def test_a_lock_that_cannot_be_created_is_a_clear_error(tmp_path):
    out = tmp_path / "out"
    (out / files.LOCK_NAME).mkdir(parents=True)  # a folder in the lock file's place
    with pytest.raises(OSError, match=r"--output_dir .*cannot create its run lock"):
        with files.folder_lock(out):
            pass
    assert (out / files.LOCK_NAME).is_dir()  # nothing removed
