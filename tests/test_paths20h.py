"""Paths, second round (review of fbb7857): a symlink to a Keras model, a device or FIFO, or a
file in a read-only folder as a write target; '~user' names; a trailing separator; a palettes
file beside a symlinked model; what an interrupted run removed. Each is refused before any
work, or works, and the files there stay as they were."""

import hashlib
import json
import os
import pathlib
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import keras
import pytest

from dkm_tf import cli, data, energy
from dkm_tf.core.files import atomic_path, write_text_atomic
from dkm_tf.energy.stored import palettes_beside
from dkm_tf.export.tflite import to_tflite
from dkm_tf.graph.copying import save_model_atomic
from dkm_tf.graph.share import share_weights
from dkm_tf.pipeline import save_palettes

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _digest(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(5, name="fc")])


def test_to_tflite_refuses_a_symlink_that_names_a_keras_model(model, tmp_path):
    # was: "latest.tflite -> model.keras" passed the suffix check (the link's name) and the
    # write through the link replaced the Keras model with .tflite bytes
    model.save(tmp_path / "model.keras")
    before = _digest(tmp_path / "model.keras")
    link = tmp_path / "latest.tflite"
    link.symlink_to("model.keras")
    with pytest.raises(ValueError, match=r"argument `path`.*Keras model's suffix.*symlink"):
        to_tflite(model, link, "float")
    assert link.is_symlink() and _digest(tmp_path / "model.keras") == before


def test_a_fifo_as_target_directly_or_through_a_symlink_is_refused_and_kept(model, tmp_path):
    # was: os.replace put a plain file in the FIFO's place (as root, a link to /dev/null
    # replaced /dev/null)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "out.json").symlink_to("pipe")
    ran = []
    for target in (fifo, tmp_path / "out.json"):
        with pytest.raises(ValueError, match=r"argument `path`.*not a regular file \(a device"):
            with atomic_path(target):
                ran.append(target)
    with pytest.raises(ValueError, match="not a regular file"):
        to_tflite(model, tmp_path / "out.json", "float")  # before the conversion
    assert ran == [] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["out.json", "pipe"]


def test_a_trailing_separator_is_refused_before_the_block(model, tmp_path, monkeypatch):
    # was: the block ran (and to_tflite converted and verified), then os.replace failed
    monkeypatch.chdir(tmp_path)
    ran = []
    with pytest.raises(ValueError, match=r"argument `path`.*ends in a separator"):
        with atomic_path("newdir/"):
            ran.append(1)
    with pytest.raises(ValueError, match="ends in a separator"):
        to_tflite(model, "newdir/", "float")
    assert ran == [] and os.listdir(tmp_path) == []


def test_a_symlink_into_a_read_only_folder_fails_before_any_work(model, tmp_path, monkeypatch):
    # was: a PermissionError on the temp file; to_tflite only after conversion and verification
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "latest.tflite").write_bytes(b"OLD")
    (tmp_path / "latest.tflite").symlink_to("shared/latest.tflite")
    (tmp_path / "latest.json").symlink_to("shared/latest.tflite")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(
        shared) and mode & os.W_OK else real_access(p, mode, **kw))  # root ignores modes
    ran = []
    with pytest.raises(PermissionError, match=r"latest.json.*symlink.*shared.*not writable"):
        with atomic_path(tmp_path / "latest.json"):
            ran.append(1)
    with pytest.raises(PermissionError, match=r"symlink.*shared.*not writable"):
        to_tflite(model, tmp_path / "latest.tflite", "float")
    assert ran == [] and (shared / "latest.tflite").read_bytes() == b"OLD"


_CHILD = """
import os, sys
from dkm_tf.core.files import atomic_path
try:
    with atomic_path(sys.argv[1]) as tmp:
        open(tmp, "w").write("NEW")
except PermissionError as e:
    print("refused:", e)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a child as uid 65534")
def test_a_symlink_into_a_read_only_folder_as_an_unprivileged_user():
    base = tempfile.mkdtemp(prefix="dkm_tf-perm-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        os.makedirs(f"{base}/shared")
        os.makedirs(f"{base}/links")
        pathlib.Path(f"{base}/shared/latest.json").write_text("OLD")
        os.chmod(f"{base}/shared/latest.json", 0o666)
        os.chmod(f"{base}/shared", 0o555)
        os.symlink("../shared/latest.json", f"{base}/links/latest.json")
        os.chown(f"{base}/links", 65534, 65534)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", _CHILD, f"{base}/links/latest.json"], capture_output=True, text=True,
            timeout=60, env={"PYTHONPATH": str(ROOT), "HOME": base, "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        # was: "[Errno 13] Permission denied: '.../shared/.tmp-dkm_tf-...'", the link unnamed
        assert f"{base}/links/latest.json': it is a symlink to" in proc.stdout, proc.stdout
        assert f"directory '{base}/shared' is not writable" in proc.stdout, proc.stdout
        assert pathlib.Path(f"{base}/shared/latest.json").read_text() == "OLD"
        assert os.path.islink(f"{base}/links/latest.json")
    finally:
        os.chmod(f"{base}/shared", 0o755)
        shutil.rmtree(base)


def test_a_tilde_user_name_is_that_users_home_unless_a_folder_of_that_name_is_here(
        tmp_path, monkeypatch):
    # d6f774c made "~<user>/x" a literal folder always (then "--output_dir=~root/out" made
    # ./~root/out); before it, "~backup/m.keras" was refused as /var/backups even with a
    # ./~backup folder here. Now: a folder of that name here is used, else it is the home
    user = pwd.getpwuid(os.getuid()).pw_name
    home_of_user = os.path.expanduser(f"~{user}")
    assert home_of_user != f"~{user}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match="os.path.expanduser"):  # no ./~user: a home, refused
        write_text_atomic(f"~{user}/x.json", "{}")
    assert os.listdir(tmp_path) == []
    (tmp_path / f"~{user}").mkdir()
    write_text_atomic(f"~{user}/x.json", "{}")  # a folder of that name here: written there
    assert (tmp_path / f"~{user}" / "x.json").read_text() == "{}"
    with pytest.raises(ValueError, match="os.path.expanduser"):  # this user's home: refused
        write_text_atomic("~/x.json", "{}")
    (tmp_path / f"~{user}" / "x.json").unlink()
    (tmp_path / f"~{user}").rmdir()
    seen = {}
    monkeypatch.setattr(cli, "run_compress", lambda model, **kw: seen.update(kw, model=model))
    assert cli.run(["dkm-tf", "compress", f"--output_dir=~{user}/out", "--plots_dir=~/p",
                    "--model=~/m.keras", "--quiet"]) == 0
    assert seen["output_dir"] == os.path.join(home_of_user, "out")  # as the shell would
    assert (seen["plots_dir"], seen["model"]) == (str(tmp_path / "home" / "p"),
                                                  str(tmp_path / "home" / "m.keras"))


def test_download_mnist_refuses_an_unexpanded_tilde_cache_dir_before_making_it(
        tmp_path, monkeypatch):
    # was: made a folder literally named "~" in the working directory, then tried the mirror
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match=r"argument `cache_dir`.*os.path.expanduser"):
        data.download_mnist("file:///nonexistent", cache_dir="~/c")
    with pytest.raises(TypeError, match="argument `cache_dir`"):
        data.download_mnist("file:///nonexistent", cache_dir=b"c")
    assert os.listdir(tmp_path) == []


def _files(base, files, links):
    for f in files:
        (base / f).parent.mkdir(parents=True, exist_ok=True)
        (base / f).write_text("[]")
    for target, link in links:
        (base / link).parent.mkdir(parents=True, exist_ok=True)
        (base / link).symlink_to(target)


@pytest.mark.parametrize(("files", "links", "query", "want"), [
    (["run/m.keras", "run/m.palettes.json", "l/palettes.json"],  # was: l/palettes.json
     [("../run/m.keras", "l/best.keras")], "l/best.keras", "run/m.palettes.json"),
    (["run/m.keras", "k/b.palettes.json"],  # was: None (a middle link was not searched)
     [("../run/m.keras", "k/b.keras"), ("../k/b.keras", "l/a.keras")], "l/a.keras",
     "k/b.palettes.json"),
    (["run/m.keras", "run/m.palettes.json", "l/best.palettes.json"],
     [("../run/m.keras", "l/best.keras")], "l/best.keras", "l/best.palettes.json"),
    (["run/m.keras", "run/palettes.json"], [("../run/m.keras", "l/best.keras")],
     "l/best.keras", "run/palettes.json"),
])
def test_palettes_beside_a_symlink_prefers_each_stem_file_to_a_generic_one(
        tmp_path, files, links, query, want):
    _files(tmp_path, files, links)
    assert os.path.samefile(palettes_beside(tmp_path / query), tmp_path / want)


def test_energy_of_a_link_beside_another_models_palettes_json_reads_its_own(model, tmp_path):
    # was: links/palettes.json (K=8 of another model) won over run/model.palettes.json (K=4):
    # every palette rejected, the weights charged from their kernels
    keras.utils.set_random_seed(0)
    s4, s8 = share_weights(model, 4), share_weights(model, 8)
    real = tmp_path / "run" / "model.keras"
    save_model_atomic(s4.model, real)
    save_palettes(s4.palettes, real)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "palettes.json").write_text(
        json.dumps([p.to_dict() for p in s8.palettes]))
    (tmp_path / "links" / "best.keras").symlink_to("../run/model.keras")
    want, got = (energy.estimate(p, index_cost="entropy")
                 for p in (real, tmp_path / "links" / "best.keras"))
    assert got.notes == want.notes and "rejected" not in " ".join(got.notes)
    assert got.reduction.paper == want.reduction.paper


def test_a_ctrl_c_names_the_earlier_runs_plots_it_removed(model, tmp_path, monkeypatch,
                                                          capsys):
    # was: "nothing was written (out, made by this run, was removed again)", while the
    # earlier run's PNGs in --plots_dir were gone
    model.save(tmp_path / "m.keras")
    plots = tmp_path / "plots"
    plots.mkdir()
    for name in ("weights.png", "formats.png"):
        (plots / name).write_text("old")
    real_save = keras.Model.save

    def interrupted_save(self, path, *args, **kwargs):
        real_save(self, path, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted_save)
    out = tmp_path / "out"
    assert cli.run(["dkm-tf", "compress", "--model", str(tmp_path / "m.keras"),
                    "--output_dir", str(out), "--plots_dir", str(plots), "--notflite",
                    "--quiet", "--n_clusters", "4"]) == 130
    err = capsys.readouterr().err
    assert "nothing was written" in err and "an earlier run's 2 file(s) were removed: " in err
    assert str(plots / "weights.png") in err and str(plots / "formats.png") in err
    assert not out.exists() and os.listdir(plots) == []


def test_overrides_file_under_a_tilde_user_folder_is_read_as_named(tmp_path, monkeypatch):
    # "~backup/o.json" was expanded to /var/backups/o.json (another user's home) for
    # --overrides, while every other path flag reads it as a folder named "~backup"
    from dkm_tf import cli_overrides

    monkeypatch.chdir(tmp_path)
    (tmp_path / "~backup").mkdir()
    (tmp_path / "~backup" / "o.json").write_text('{"fc": {"n_clusters": 4}}')
    text, where = cli_overrides._read("~backup/o.json")
    assert '"n_clusters": 4' in text and "~backup" in where


def test_a_bare_tilde_name_is_a_file_name(tmp_path, monkeypatch):
    # 63087c1 made a bare "~<user>" that user's home too: check_target refused a file named
    # "~root" here and dkm-tf turned --output_dir=~root into /root
    from dkm_tf.core.files import check_target, is_home_tilde

    user = pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.chdir(tmp_path)
    assert not is_home_tilde(f"~{user}") and is_home_tilde(f"~{user}/x")
    assert check_target(f"~{user}") == f"~{user}"
