"""What a model path given to the export command line holds, read before Keras loads it.

* A TensorFlow SavedModel folder (``model.export(path)``, ``tf.saved_model.save``) has lost
  its Keras layers: the exporters need the ``.keras`` / ``.h5`` file it was made from
  (:func:`savedmodel_problem`).
* A ``.keras`` / ``.h5`` file saved while clustering holds dkm_tf's training layers
  (``ClusterWeights``, ``ClusterKernels``, ``KernelCodebook``). The export stage never imports
  the training code (the layering of the package), so Keras could not even rebuild the model;
  :func:`training_classes` names them from the file's config, so the error can say how to
  strip them. The file's ``compile_config`` is not read (the export loads with
  ``compile=False``): a stripped model compiled with ``DistillationLoss`` was refused.
* A ``SpectralKMeansRegularizer`` does not change the forward pass: the file loads with a
  stand-in that adds no penalty (:func:`export_custom_objects`) and exports.
"""

from __future__ import annotations

import json
import os
import zipfile

from dkm_tf.core.files import is_savedmodel_dir

__all__ = ["TRAINING_CLASSES", "check_export_input", "export_custom_objects",
           "savedmodel_problem", "training_classes"]

_SHOWN = 4
# dkm_tf's registered training classes (``"dkm_tf>ClusterWeights"`` in a legacy .h5 config,
# which has no "module" key)
TRAINING_CLASSES = ("ClusterWeights", "ClusterKernels", "KernelCodebook")
_REGULARIZER = "SpectralKMeansRegularizer"  # loaded as a stand-in (export_custom_objects)
_STAND_IN = []


def savedmodel_problem(path):
    """A sentence saying ``path`` is a SavedModel folder and what to give instead, or None."""
    if not is_savedmodel_dir(path):
        return None
    return ("a TensorFlow SavedModel folder (model.export(...) or tf.saved_model.save wrote "
            "it): it keeps a traced graph, not the Keras layers the export rebuilds, checks "
            "against its palettes and verifies with. Give the .keras (or .h5) file you "
            "exported it from (model.save('m.keras')).")


def _config(path):
    """The model config (a dict) stored in a ``.keras`` zip or a ``.h5`` file, or None."""
    lower = path.lower()
    try:
        if lower.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        if lower.endswith((".h5", ".hdf5")):
            import h5py  # noqa: PLC0415 (a Keras dependency)

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
            if raw is None:
                return None
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # Keras' own load (or check_model_file) says what is wrong
    return None


def training_classes(path):
    """``[(class name, layer name)]`` of the dkm_tf training layers (and any other
    ``dkm_tf.training`` object but ``SpectralKMeansRegularizer``) in the model file ``path``'s
    model config (not its ``compile_config``); ``[]`` when none or unread."""
    config = _config(os.fspath(path))
    out = []

    def walk(node, layer):
        if isinstance(node, dict):
            inner = node.get("config")
            name = inner.get("name", layer) if isinstance(inner, dict) else layer
            cls = str(node.get("class_name", ""))
            if cls == _REGULARIZER or cls == "dkm_tf>" + _REGULARIZER:
                pass  # the forward pass does not use it: loaded as a stand-in
            elif str(node.get("module", "")).startswith("dkm_tf.training."):
                out.append((cls, str(name)))
            elif cls.startswith("dkm_tf>") and cls[len("dkm_tf>"):] in TRAINING_CLASSES:
                out.append((cls[len("dkm_tf>"):], str(name)))  # a legacy .h5 names it so
            for value in node.values():
                walk(value, name)
        elif isinstance(node, list):
            for value in node:
                walk(value, layer)

    if isinstance(config, dict):  # the export loads with compile=False: a saved loss or
        config = {k: v for k, v in config.items() if k != "compile_config"}  # metric is unread
    walk(config, None)
    return list(dict.fromkeys(out))


def check_export_input(path):
    """Raise ``ValueError`` (before Keras loads anything) when ``path`` is a SavedModel folder
    or a model file holding dkm_tf training classes, saying what to give instead."""
    problem = savedmodel_problem(path)
    if problem:
        raise ValueError("Invalid value for argument `model_path`. Expected a .keras or .h5 "
                         f"Keras model file. Received: model_path={os.fspath(path)!r}, "
                         f"{problem}")
    found = training_classes(path) if os.path.isfile(os.fspath(path)) else []
    if not found:
        return
    shown = ", ".join(f"{cls} {name!r}" for cls, name in found[:_SHOWN])
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    recipe = ("plain, palettes = dkm_tf.strip_clustering(dkm_tf.load_model(path)); "
              "plain.save('plain.keras'); json.dump([p.to_dict() for p in palettes], "
              "open('palettes.json', 'w')); then export --model plain.keras --palettes "
              "palettes.json")
    raise ValueError(
        "Invalid value for argument `model_path`. Expected a plain Keras model (the exporter "
        "reads stripped models; dkm_tf's training classes are not loaded here). Received: "
        f"model_path={os.fspath(path)!r}, saved with {len(found)} dkm_tf training "
        f"object(s): {shown}{more}. Strip it in Python first: {recipe}.")


def export_custom_objects():
    """``custom_objects`` for loading a model file to export: ``SpectralKMeansRegularizer``
    (a training penalty; the forward pass never reads it) as a regularizer that adds none
    and takes any config, so a file saved with one loads without the training code."""
    if not _STAND_IN:
        import keras  # noqa: PLC0415

        class SpectralKMeansRegularizer(keras.regularizers.Regularizer):
            """Export-time stand-in: no penalty; keeps the config it was given."""

            def __init__(self, **config):
                self.config = config

            def __call__(self, x):
                return keras.ops.zeros((), dtype="float32")

            def get_config(self):
                return dict(self.config)

        _STAND_IN.append(SpectralKMeansRegularizer)
    return {"dkm_tf>" + _REGULARIZER: _STAND_IN[0], _REGULARIZER: _STAND_IN[0]}
