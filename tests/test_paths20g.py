"""Paths given to the writers and readers: str, pathlib.Path, os.PathLike, bytes, '~', a
folder in a file's place, a symlink, non-ASCII names, an empty or garbage input file. Each
works, or fails with an error naming the argument and the path, before any work, leaving the
files there as they were."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from dkm_tf import cli, energy
from dkm_tf.cli_args import CliUsageError
from dkm_tf.core.files import LOCK_NAME, TEMP_PREFIX, atomic_path, write_text_atomic
from dkm_tf.export import cli as export_cli
from dkm_tf.graph.copying import save_model_atomic
from dkm_tf.graph.share import share_weights
from dkm_tf.pipeline import save_palettes

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


class _PathLike:
    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return self.path


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(5, name="fc")])


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.keras"
    model.save(path)
    return path


def test_atomic_path_refuses_a_folder_bytes_and_an_unexpanded_tilde_before_the_block(
        tmp_path, monkeypatch):
    # was: a folder in the target's place was found by os.replace after the block had
    # written everything ("Is a directory: '.tmp-dkm_tf-...'"), and "~/x" made a folder
    # literally named "~" in the working directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.json").mkdir()
    ran = []
    cases = [("taken.json", ValueError, "existing folder"),
             (b"x.json", TypeError, "os.PathLike of str"),
             (_PathLike(b"x.json"), TypeError, "os.PathLike of str"),
             ("~/x.json", ValueError, "os.path.expanduser"),
             ("", ValueError, "empty path")]
    for path, error, words in cases:
        with pytest.raises(error, match="argument `path`") as info:
            with atomic_path(path):
                ran.append(path)
        assert words in str(info.value), info.value
    assert ran == [] and sorted(os.listdir(tmp_path)) == ["taken.json"]
    write_text_atomic("~plain.json", "{}")  # a name starting with ~ (no such user): a file
    assert (tmp_path / "~plain.json").read_text() == "{}"


def test_an_atomic_write_through_a_symlink_replaces_its_file_and_keeps_the_link(tmp_path):
    # was: os.replace put a plain file in the link's place; the file it named kept old bytes
    real = tmp_path / "store" / "v3.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(os.listdir(real.parent)) == ["v3.json"]  # no temp left
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "missing" / "x.json")
    write_text_atomic(dangling, "{}")  # a dangling link is replaced, no folder made
    assert not dangling.is_symlink() and not (tmp_path / "missing").exists()


def test_save_model_atomic_and_save_palettes_take_path_forms_and_non_ascii_names(
        model, tmp_path):
    keras.utils.set_random_seed(0)
    shared = share_weights(model, 4)
    for path in (tmp_path / "mödel ü 模型.keras", _PathLike(str(tmp_path / "b c.keras"))):
        written = save_model_atomic(shared.model, path)
        assert written == os.fspath(path)
        pal = save_palettes(shared.palettes, path)
        assert pal == os.fspath(path)[:-len(".keras")] + ".palettes.json"
        loaded = keras.models.load_model(written)
        np.testing.assert_array_equal(loaded.get_layer("fc").kernel.numpy(),
                                      shared.model.get_layer("fc").kernel.numpy())
        assert len(export_cli.load_palettes(pal)) == len(shared.palettes)
    (tmp_path / "taken.keras").mkdir()
    with pytest.raises(ValueError, match=r"argument `path`.*existing folder"):
        save_model_atomic(shared.model, tmp_path / "taken.keras")  # was: after the save
    with pytest.raises(TypeError, match="argument `path`"):
        save_model_atomic(shared.model, os.fsencode(tmp_path / "x.keras"))  # was: endswith
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TEMP_PREFIX)]


def test_to_tflite_refuses_a_keras_model_suffix_and_keeps_that_file(model, model_file,
                                                                    tmp_path):
    # was: the .tflite bytes replaced m.keras
    victim = tmp_path / "m.keras"
    victim.write_bytes(model_file.read_bytes())
    before = _digest(victim)
    for path in (victim, tmp_path / "new.h5"):
        with pytest.raises(ValueError, match=r"argument `path`.*\.tflite file path"):
            _export_float(model, path)
    assert _digest(victim) == before and sorted(os.listdir(tmp_path)) == ["m.keras"]


def _export_float(model, path):
    from dkm_tf.export import to_tflite  # noqa: PLC0415

    return to_tflite(model, path, format="float")


def test_run_to_tflite_says_which_input_file_is_bad_before_loading_the_model(
        model_file, tmp_path, monkeypatch):
    # was: a missing --palettes a FileNotFoundError after the model's load, an empty .npy an
    # EOFError traceback, a missing output folder a ValueError after load and k-means
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad file was found")

    monkeypatch.setattr(keras.models, "load_model", no_load)
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    out = str(tmp_path / "o.tflite")
    cases = [({"palettes_path": str(tmp_path / "nope.json")}, "nope.json"),
             ({"palettes_path": str(tmp_path / "list.json")}, "list.json"),
             ({"n_clusters": 4, "samples_path": str(tmp_path / "empty.npy")}, "empty.npy"),
             ({"n_clusters": 4, "output": str(tmp_path / "no" / "o.tflite")}, "no/o.tflite")]
    for kwargs, name in cases:
        output = kwargs.pop("output", out)
        with pytest.raises(ValueError, match=name):
            export_cli.run_to_tflite(str(model_file), output, **kwargs)
    assert sorted(os.listdir(tmp_path)) == ["empty.npy", "list.json"]


def test_run_compress_takes_pathlib_paths_and_refuses_bytes_and_tilde_by_flag(
        model_file, tmp_path, monkeypatch):
    # was: AttributeError "'PosixPath' object has no attribute 'lower'" (--model) or
    # "'endswith'" (--dataset); "~/out" made a folder literally named "~"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    data = tmp_path / "dätä 数据.npz"
    np.savez(data, x_train=rng.normal(size=(8, 6, 6, 1)).astype("float32"),
             x_test=rng.normal(size=(4, 6, 6, 1)).astype("float32"))
    out = tmp_path / "out ü 模"
    result = cli.run_compress(model_file, dataset=data, method="wr", n_clusters=4,
                              output_dir=out, tflite=False, plots=False, quiet=True)
    assert result.palettes
    assert sorted(os.listdir(out)) == ["clustered.keras", "clustered.palettes.json",
                                       "report.json"]
    for kwargs, flag, words in (({"output_dir": b"o2"}, "--output_dir", "os.PathLike"),
                                ({"output_dir": "~/o3"}, "--output_dir", "expanduser"),
                                ({"plots": True, "plots_dir": "~/p"}, "--plots_dir",
                                 "expanduser")):
        kwargs = {"output_dir": "o4", "tflite": False, "plots": False, **kwargs}
        with pytest.raises(CliUsageError, match=flag) as info:
            cli.run_compress(model_file, n_clusters=4, quiet=True, **kwargs)
        assert words in str(info.value)
    assert sorted(os.listdir(tmp_path)) == [data.name, out.name]  # no "~", no "o4"


def test_energy_of_a_symlinked_model_reads_the_palettes_beside_the_file_it_names(
        model, tmp_path, capsys):
    # was: "best.keras -> out/clustered.keras" charged palettes inferred from the kernels
    keras.utils.set_random_seed(0)
    shared = share_weights(model, 4)
    real = tmp_path / "out ü" / "clustered.keras"
    save_model_atomic(shared.model, real)
    save_palettes(shared.palettes, real)
    link = tmp_path / "best.keras"
    link.symlink_to(real)
    want, got = (energy.estimate(p, index_cost="entropy") for p in (real, link))
    assert got.notes == want.notes and not any("inferred" in n for n in got.notes)
    assert got.reduction.paper == want.reduction.paper
    assert got.reduction.hierarchy == want.reduction.hierarchy
    assert cli.run(["dkm-tf", "energy", "--model", str(link)]) == 0
    capsys.readouterr()


def test_a_ctrl_c_inside_the_model_save_leaves_no_temp_or_lock_and_a_rerun_works(
        model_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real_save = keras.Model.save

    def interrupted_save(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)  # the temp file is complete: then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted_save)
    args = ["dkm-tf", "compress", "--model", str(model_file), "--output_dir", str(out),
            "--notflite", "--noplots", "--quiet", "--n_clusters", "4"]
    assert cli.run(args) == 130  # the folder this run made: removed again, empty
    err = capsys.readouterr().err  # was: "... holds an unfinished run" for no folder at all
    assert f"nothing was written ({out}, made by this run, was removed again)" in err, err
    assert not out.exists()
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier run: removed before the save
    assert cli.run(args) == 130
    assert "holds an unfinished run" in capsys.readouterr().err
    assert os.listdir(out) == []  # no temp file, no run lock
    monkeypatch.setattr(keras.Model, "save", real_save)
    assert cli.run(args) == 0
    assert LOCK_NAME not in os.listdir(out) and (out / "report.json").is_file()
    capsys.readouterr()


def test_to_tflite_script_expands_a_tilde_after_an_equals_sign(model_file, tmp_path):
    # the shell leaves "--output=~/x" alone: was "Its directory does not exist" after the
    # model's load and k-means
    home = tmp_path / "hö me"
    home.mkdir()
    (home / "m.keras").write_bytes(model_file.read_bytes())
    proc = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_tflite.py"), "--model=~/m.keras",
         "--format=float", "--output=~/m ü.tflite"], capture_output=True, text=True,
        timeout=300, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
                                        "PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (home / "m ü.tflite").read_bytes()[4:8] == b"TFL3"
    assert sorted(os.listdir(tmp_path)) == [home.name]
