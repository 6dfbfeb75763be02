"""Built-in datasets that work offline: sklearn digits and the MNIST idx files, and the user's
own data as a ``.npz`` file.

``keras.datasets`` needs the internet; :func:`load_dataset` offers it as ``"keras:<name>"`` but
the defaults never touch the network.
"""

from __future__ import annotations

import gzip
import numbers
import os
import pathlib

import numpy as np

from dkm_tf.core.validate import check_bool
from dkm_tf.data_files import NPZ_KEYS, DatasetFileError, check_npz, load_npz

__all__ = ["DATASETS", "DatasetFileError", "MNIST_FILES", "MNIST_MIRRORS", "NPZ_KEYS",
           "check_npz", "download_mnist", "load_dataset", "load_digits", "load_mnist",
           "load_npz", "mnist_cache_dir", "mnist_dir"]

DATASETS = ("digits", "mnist", "keras:mnist", "keras:fashion_mnist", "keras:cifar10")


def load_digits(test_fraction=0.25, seed=0):
    """sklearn's 8x8 digits (1,797 images, bundled with sklearn), scaled to [0, 1].

    Args:
        test_fraction: the fraction held out for testing, a number in (0, 1) (default 0.25).
        seed: an integer >= 0 drawing the permutation that splits them (default 0).

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` with x of shape (n, 8, 8, 1) float32 and y
        int32 labels, split by a fixed permutation.
    """
    from sklearn.datasets import load_digits as _load  # noqa: PLC0415

    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real)
            or not 0 < test_fraction < 1):  # numpy floats too (np.float32(0.25) was refused)
        raise ValueError("Invalid value for argument `test_fraction`. Expected a number in "
                         f"(0, 1). Received: test_fraction={test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError("Invalid value for argument `seed`. Expected an integer >= 0. "
                         f"Received: seed={seed!r}")
    d = _load()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return (x[tr], y[tr]), (x[te], y[te])


# The four MNIST IDX files (LeCun, Cortes & Burges): name -> (SHA-256 of the ``.gz`` file as
# the mirrors serve it, SHA-256 of the uncompressed IDX bytes, uncompressed size in bytes).
MNIST_FILES = {
    "train-images-idx3-ubyte": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47_040_016),
    "train-labels-idx1-ubyte": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60_008),
    "t10k-images-idx3-ubyte": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7_840_016),
    "t10k-labels-idx1-ubyte": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10_008),
}
# Public mirrors serving the four ``.gz`` files under these names (not contacted by tests).
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "https://storage.googleapis.com/cvdf-datasets/mnist/")


def mnist_cache_dir():
    """Where ``load_mnist(url=...)`` downloads to: ``$DKM_TF_CACHE_DIR/mnist``, else
    ``$XDG_CACHE_HOME/dkm_tf/mnist`` (``~/.cache/dkm_tf/mnist``)."""
    base = os.environ.get("DKM_TF_CACHE_DIR")
    if base:
        return pathlib.Path(base) / "mnist"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "dkm_tf" / "mnist"


def mnist_dir():
    """Where the MNIST IDX files are: ``$DKM_TF_MNIST_DIR``; else ``shared/data/mnist`` beside
    the repository; else :func:`mnist_cache_dir` when an earlier download left them there."""
    env = os.environ.get("DKM_TF_MNIST_DIR")
    if env:
        return pathlib.Path(env)
    here = pathlib.Path(__file__).resolve().parent
    for base in (here.parent.parent, here.parent, pathlib.Path.cwd().parent, pathlib.Path.cwd()):
        cand = base / "shared" / "data" / "mnist"
        if cand.is_dir():
            return cand
    cache = mnist_cache_dir()
    if all(_find(cache, stem) for stem in MNIST_FILES):
        return cache
    return here.parent.parent / "shared" / "data" / "mnist"


def _find(folder, stem):
    """The file for ``stem`` in ``folder``: ``stem.gz``, ``stem``, or the dotted variant
    (``train-images.idx3-ubyte``) some distributions use; None when absent."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def _where_to_get(folder, missing):
    table = "\n".join(f"  {stem}.gz  sha256 {gz}  (uncompressed {stem}: sha256 {raw})"
                      for stem, (gz, raw, _) in MNIST_FILES.items())
    return (f"MNIST IDX files not found in {folder} (missing: {', '.join(missing)}). "
            "Put the four files (gzip'd or not) in one folder and call "
            "load_mnist(path=<folder>) or set $DKM_TF_MNIST_DIR; or download and verify them "
            "with load_mnist(url=<mirror>), e.g. url=" + repr(MNIST_MIRRORS[0]) + " or "
            + repr(MNIST_MIRRORS[1]) + f" (cached in {mnist_cache_dir()}). "
            "The four files and their SHA-256 checksums:\n" + table)


def _sha256(data):
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(data).hexdigest()


def _read_verified(path, stem, verify):
    """The uncompressed IDX bytes of ``path``; checked against MNIST_FILES when ``verify``."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw = gzip.decompress(raw)
    if verify and _sha256(raw) != MNIST_FILES[stem][1]:
        raise ValueError(
            f"Checksum mismatch for {path}: the uncompressed {stem} should have SHA-256 "
            f"{MNIST_FILES[stem][1]} ({MNIST_FILES[stem][2]} bytes), found {_sha256(raw)} "
            f"({len(raw)} bytes). The file is corrupt or not the original MNIST; fetch it "
            f"again (the .gz has SHA-256 {MNIST_FILES[stem][0]}), or pass verify=False to "
            "load other IDX files with the same names (e.g. Fashion-MNIST).")
    return raw


def _parse_idx(raw, path, magic):
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: not an IDX file with magic {magic} (found {got}).")
    if magic == 2051:
        n, h, w = np.frombuffer(raw[4:16], dtype=">u4")
        return np.frombuffer(raw, np.uint8, offset=16).reshape(int(n), int(h), int(w))
    return np.frombuffer(raw, np.uint8, offset=8)


def download_mnist(url, cache_dir=None):
    """Download the four ``.gz`` IDX files from a mirror into ``cache_dir`` and verify them.

    Files already in ``cache_dir`` with the right SHA-256 are not fetched again. Each download
    is checked against :data:`MNIST_FILES` before it is written (atomically), so a bad mirror
    never leaves a file behind.

    Args:
        url: the mirror's folder URL (``http://``, ``https://`` or ``file://``); the files are
            fetched as ``url + "/train-images-idx3-ubyte.gz"`` etc.
        cache_dir: target folder. Default: :func:`mnist_cache_dir`.

    Returns:
        The cache folder (a ``pathlib.Path``).
    """
    import urllib.request  # noqa: PLC0415

    from dkm_tf.core.files import atomic_path, check_folder_arg  # noqa: PLC0415

    if not isinstance(url, str) or url.split("://")[0] not in ("http", "https", "file") \
            or "://" not in url:
        raise ValueError("Invalid value for argument `url`. Expected an http://, https:// or "
                         f"file:// URL of a folder holding the four MNIST .gz files. "
                         f"Received: url={url!r}")
    folder = pathlib.Path(check_folder_arg(cache_dir, "cache_dir") or mnist_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    for stem, (gz_sha, _, _) in MNIST_FILES.items():
        target = folder / (stem + ".gz")
        if target.is_file() and _sha256(target.read_bytes()) == gz_sha:
            continue
        src = url.rstrip("/") + "/" + stem + ".gz"
        try:
            with urllib.request.urlopen(src, timeout=60) as resp:  # noqa: S310 (scheme checked)
                data = resp.read()
        except OSError as e:
            raise OSError(f"Could not download {src}: {e}. "
                          + _where_to_get(folder, [stem + ".gz"])) from e
        if _sha256(data) != gz_sha:
            raise ValueError(f"Checksum mismatch for {src}: expected SHA-256 {gz_sha}, "
                             f"found {_sha256(data)} ({len(data)} bytes). Nothing was "
                             f"written to {folder}; try another mirror, e.g. "
                             f"{MNIST_MIRRORS[0]}.")
        with atomic_path(target) as tmp:
            pathlib.Path(tmp).write_bytes(data)
    return folder


def load_mnist(path=None, *, url=None, cache_dir=None, verify=True):
    """MNIST from the four IDX files: a local folder, or a mirror downloaded once and cached.

    Args:
        path: folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (gzip'd or not;
            ``train-images.idx3-ubyte`` spellings too). A string with ``://`` is taken as
            ``url``. Default: :func:`mnist_dir`.
        url: a mirror folder URL (see :data:`MNIST_MIRRORS`); the files are downloaded with
            urllib into ``cache_dir`` (:func:`download_mnist`) unless already there.
        cache_dir: where ``url`` downloads go. Default: :func:`mnist_cache_dir`.
        verify: check every file's SHA-256 (:data:`MNIST_FILES`; the uncompressed bytes, so
            a re-gzipped copy passes). ``False`` loads other IDX files with the same names.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: x (n, 28, 28, 1) float32 in [0, 1], y int32.

    Raises:
        FileNotFoundError: a file is missing; the message lists the four names, their
            SHA-256 checksums and where to get them.
        ValueError: a checksum does not match, or an argument is invalid.
    """
    verify = check_bool("verify", verify)  # "no" / 0 / None: a typo, not a choice
    if isinstance(path, str) and "://" in path:
        path, url = None, path if url is None else url
    if path is not None and url is not None:
        raise ValueError("Invalid value for argument `path`. Expected a local folder or a "
                         f"`url`, not both. Received: path={path!r}, url={url!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError("Invalid type for argument `path`. Expected a folder path (str or "
                        f"os.PathLike). Received: path={path!r} of type {type(path).__name__}")
    if url is not None:
        folder = download_mnist(url, cache_dir)
    else:
        folder = pathlib.Path(path) if path is not None else mnist_dir()
    if folder.exists() and not folder.is_dir():
        raise ValueError("Invalid value for argument `path`. Expected a folder holding the "
                         f"four MNIST IDX files. Received: path={str(folder)!r} (a file)")
    files = {stem: _find(folder, stem) for stem in MNIST_FILES}
    missing = [stem + ".gz" for stem, f in files.items() if f is None]
    if missing:
        raise FileNotFoundError(_where_to_get(folder, missing))
    xs = [_parse_idx(_read_verified(f, stem, verify), f, 2051 if "images" in stem else 2049)
          for stem, f in files.items()]
    x_tr = (xs[0].astype(np.float32) / 255.0)[..., None]
    x_te = (xs[2].astype(np.float32) / 255.0)[..., None]
    return (x_tr, xs[1].astype(np.int32)), (x_te, xs[3].astype(np.int32))


def load_dataset(name="digits"):
    """Load a dataset by name (offline, except ``"keras:<name>"``).

    Args:
        name: ``"digits"`` (default), ``"mnist"``, ``"keras:<name>"`` (see :data:`DATASETS`), or
            the path of a ``.npz`` file with the arrays of :data:`NPZ_KEYS` (:func:`load_npz`).
    """
    if isinstance(name, (str, os.PathLike)) and os.fspath(name).endswith(".npz"):
        try:
            return load_npz(name)
        except DatasetFileError as e:  # given here as `name`
            raise DatasetFileError(e.path, e.expected, e.received, arg="name") from None
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist()
    if name in DATASETS and name.startswith("keras:"):
        import keras  # noqa: PLC0415

        (x_tr, y_tr), (x_te, y_te) = getattr(keras.datasets, name[6:]).load_data()
        x_tr, x_te = x_tr.astype(np.float32) / 255.0, x_te.astype(np.float32) / 255.0
        if x_tr.ndim == 3:
            x_tr, x_te = x_tr[..., None], x_te[..., None]
        return (x_tr, y_tr.reshape(-1).astype(np.int32)), (x_te, y_te.reshape(-1).astype(np.int32))
    raise ValueError(f"Invalid value for argument `name`. Expected one of {list(DATASETS)} "
                     "or a .npz file path. "
                     f"Received: name={name!r}")
