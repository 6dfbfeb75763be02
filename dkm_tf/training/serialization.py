"""Loading models that contain dkm_tf layers or regularizers."""

from __future__ import annotations

import importlib
import os
import zipfile

__all__ = ["check_model_file", "load_model", "register_serializables"]

_SERIALIZABLE_MODULES = ("dkm_tf.training.wrapper", "dkm_tf.training.regularizer",
                         "dkm_tf.training.kernel_clustering",
                         "dkm_tf.training.distill", "dkm_tf.graph.factorised")


def register_serializables():
    """Import the modules whose classes are ``register_keras_serializable(package="dkm_tf")``.

    Afterwards ``keras.models.load_model`` restores ``ClusterWeights`` wrappers and
    ``SpectralKMeansRegularizer`` with no ``custom_objects``. Idempotent.
    """
    for module in _SERIALIZABLE_MODULES:
        importlib.import_module(module)


def load_model(path, **kwargs):
    """``keras.models.load_model`` with dkm_tf's classes registered first.

    Args:
        path: a ``.keras`` file (plain, wrapped by :func:`dkm_tf.cluster_weights`, or with
            k-means regularizers attached).
        **kwargs: passed to ``keras.models.load_model`` (e.g. ``compile=False``).

    Returns:
        The Keras model.
    """
    import keras  # noqa: PLC0415

    check_model_file(path)
    register_serializables()
    return keras.models.load_model(path, **kwargs)


def check_model_file(path):
    """Raise a clear error for a missing, unreadable or corrupted model file.

    Keras reports every unreadable ``.keras`` file as "File not found", even one that exists
    but is truncated or not a zip; this says which it is.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an unreadable file, or a ``.keras`` file that is not a Keras
            zip (truncated, or no ``config.json``).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("Invalid type for argument `path`. Expected a model file path (str or "
                        f"os.PathLike). Received: path={path!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Invalid value for argument `path`. Expected an existing "
                                f"model file. Received: path={path!r} (no such file)")
    if os.path.isdir(path):
        raise ValueError(f"Invalid value for argument `path`. Expected a model file, not a "
                         f"folder. Received: path={path!r}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"Invalid value for argument `path`. Expected a readable file. "
                         f"Received: path={path!r} (permission denied)")
    if path.endswith(".keras"):
        size = os.path.getsize(path)
        problem = None
        try:
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    problem = "a zip without config.json"
        except zipfile.BadZipFile:
            problem = "not a zip archive (truncated or not a .keras file)"
        if problem:
            raise ValueError(f"Invalid value for argument `path`. Expected a .keras model "
                             f"saved by Keras 3. Received: path={path!r}, {size:,} bytes, "
                             f"{problem}.")
