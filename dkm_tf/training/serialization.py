"""Loading models that contain dkm_tf layers or regularizers."""

from __future__ import annotations

import importlib
import os
import warnings

from dkm_tf.core.custom_code import unknown_code_error
from dkm_tf.core.files import check_model_file, is_savedmodel_dir

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
        **kwargs: passed to ``keras.models.load_model`` (e.g. ``compile=False``,
            ``custom_objects={"MyDense": MyDense}`` for a model with custom classes or
            functions that are not ``register_keras_serializable``: a load that fails for
            an unknown one names it).

    Returns:
        The Keras model. A SavedModel folder (``model.export``, ``tf.saved_model.save``) is
        refused with a ``ValueError`` saying so: it keeps a traced graph, not Keras layers
        (``keras.layers.TFSMLayer(path)`` runs it for inference). A file whose compile config
        names an optimizer of another Keras backend (saved with ``KERAS_BACKEND=torch``:
        ``keras.src.backend.torch.optimizers``, which other backends cannot import) loads
        uncompiled, with a ``UserWarning`` that says so (the weights and layers are
        backend-neutral); compile it again before ``fit``. A ``share_weights`` /
        ``strip_clustering`` copy saved uncompiled to a ``.keras`` file gets back the loss,
        ``loss_weights`` and metrics of the model it was copied from (unless
        ``compile=False``): the notes, ``weighting="fisher"`` and the training methods read
        them as before the save (``keras.models.load_model`` loads the same model without
        them; a custom loss or metric that is not registered is not saved). Only a
        ``.keras`` file keeps them: a copy saved to ``.h5`` loads back as a plain uncompiled
        model (read as a classifier of logits, trained with the default cross-entropy).
    """
    import keras  # noqa: PLC0415

    _refuse_savedmodel(path)
    check_model_file(path)
    register_serializables()
    try:
        model = keras.models.load_model(path, **kwargs)
    except (TypeError, ValueError) as e:
        compiled = kwargs.get("compile", True) is not False
        if not (isinstance(e, TypeError) and compiled and "backend." in str(e)):
            clear = unknown_code_error(  # a custom class or function not known here
                e, path, f"Could not load {os.fspath(path)!r}", "Pass custom_objects={'name': "
                "class_or_function, ...} to load_model, or import the module that registers "
                "them (@keras.saving.register_keras_serializable) before loading"
                + ("; compile=False loads without the loss and metrics" if compiled else ""),
                compiled=compiled, kind=TypeError if isinstance(e, TypeError) else ValueError,
                custom_objects=kwargs.get("custom_objects"))
            if clear is not None:
                raise clear from e
            raise
        warnings.warn(f"{path}: its compile config comes from another Keras backend and "
                      f"cannot be restored on {keras.backend.backend()!r} "
                      f"({' '.join(str(e).split())[:160]}); loaded without compile: call "
                      "model.compile(...) before fit", UserWarning, stacklevel=2)
        return keras.models.load_model(path, **{**kwargs, "compile": False})
    if kwargs.get("compile", True) is not False:
        _restore_source_loss(model, path, kwargs.get("custom_objects"))
    return model


def _restore_source_loss(model, path, custom_objects):
    """The loss a saved uncompiled ``share_weights`` / ``strip_clustering`` copy carries from
    the model it was copied from, back on ``model`` (``core.loss_kind.restore_source_loss``);
    a ``UserWarning`` when it cannot be restored (an unregistered custom loss), or when a
    carried metric is not known here (left out: it was left out with no word)."""
    from dkm_tf.core.loss_kind import FILE_KEY, restore_source_loss  # noqa: PLC0415
    from dkm_tf.core.model_configs import read_configs  # noqa: PLC0415

    dropped = []
    why = restore_source_loss(model, read_configs(path)[0], custom_objects, dropped)
    if dropped:
        warnings.warn(f"{path}: the metric(s) {', '.join(dropped)} of the model it was copied "
                      "from are not known here; it trains and reports without them: pass "
                      "custom_objects, or import the module that registers them", UserWarning,
                      stacklevel=3)
    if why is not None:
        warnings.warn(f"{path}: the loss of the model it was copied from ({FILE_KEY} in its "
                      f"config.json) could not be restored ({why}); it is read and trained as "
                      "an uncompiled model: pass custom_objects, or compile it", UserWarning,
                      stacklevel=3)


def _refuse_savedmodel(path):
    """A SavedModel folder: say what it is (``check_model_file`` only says "not a folder")."""
    if not is_savedmodel_dir(path):
        return
    raise ValueError(
        "Invalid value for argument `path`. Expected a .keras (or .h5) model file. Received: "
        f"path={os.fspath(path)!r}, a TensorFlow SavedModel folder (model.export(...) or "
        "tf.saved_model.save wrote it): it keeps a traced graph, not the Keras layers (nor "
        "dkm_tf's wrappers, palettes or regularizer state), so it cannot load as a Keras "
        "model. Load the .keras file it was exported from, or run the folder for inference "
        "with keras.layers.TFSMLayer(path, call_endpoint='serve').")
