"""Built-in datasets that work offline: sklearn digits and the MNIST idx files.

``keras.datasets`` needs the internet; :func:`load_dataset` offers it as ``"keras:<name>"`` but
the defaults never touch the network.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

__all__ = ["DATASETS", "load_dataset", "load_digits", "load_mnist", "mnist_dir"]

DATASETS = ("digits", "mnist", "keras:mnist", "keras:fashion_mnist", "keras:cifar10")


def load_digits(test_fraction=0.25, seed=0):
    """sklearn's 8x8 digits (1,797 images, bundled with sklearn), scaled to [0, 1].

    Returns:
        ``(x_train, y_train), (x_test, y_test)`` with x of shape (n, 8, 8, 1) float32 and y
        int32 labels, split by a fixed permutation.
    """
    from sklearn.datasets import load_digits as _load  # noqa: PLC0415

    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
            or not 0 < test_fraction < 1):
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


def mnist_dir():
    """Where the MNIST idx files are: $DKM_TF_MNIST_DIR, else shared/data/mnist beside the repo."""
    env = os.environ.get("DKM_TF_MNIST_DIR")
    if env:
        return pathlib.Path(env)
    here = pathlib.Path(__file__).resolve().parent
    for base in (here.parent.parent, here.parent, pathlib.Path.cwd().parent, pathlib.Path.cwd()):
        cand = base / "shared" / "data" / "mnist"
        if cand.is_dir():
            return cand
    return here.parent.parent / "shared" / "data" / "mnist"


def _read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: not an IDX file with magic {magic} (found {got}).")
    if magic == 2051:
        n, h, w = np.frombuffer(raw[4:16], dtype=">u4")
        return np.frombuffer(raw, np.uint8, offset=16).reshape(int(n), int(h), int(w))
    return np.frombuffer(raw, np.uint8, offset=8)


def load_mnist(path=None):
    """MNIST from the four gzip'd IDX files (no network).

    Args:
        path: folder holding ``train-images-idx3-ubyte.gz`` etc. Default: :func:`mnist_dir`.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: x (n, 28, 28, 1) float32 in [0, 1], y int32.

    Raises:
        FileNotFoundError: the files are missing (the message says where it looked).
    """
    folder = pathlib.Path(path) if path else mnist_dir()
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"MNIST files {missing} not found in {folder}. Set "
                                "DKM_TF_MNIST_DIR or pass path=.")
    xs = [_read_idx(folder / n, 2051 if "images" in n else 2049) for n in names]
    x_tr = (xs[0].astype(np.float32) / 255.0)[..., None]
    x_te = (xs[2].astype(np.float32) / 255.0)[..., None]
    return (x_tr, xs[1].astype(np.int32)), (x_te, xs[3].astype(np.int32))


def load_dataset(name="digits"):
    """Load a dataset by name: ``"digits"`` (default), ``"mnist"`` or ``"keras:<name>"``."""
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
    raise ValueError(f"Invalid value for argument `name`. Expected one of {list(DATASETS)}. "
                     f"Received: name={name!r}")
