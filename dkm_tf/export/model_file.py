"""What a model path given to the export command line holds, read before Keras loads it.

* A TensorFlow SavedModel folder (``model.export(path)``, ``tf.saved_model.save``) has lost
  its Keras layers: the exporters need the ``.keras`` / ``.h5`` file it was made from
  (:func:`savedmodel_problem`).
* A ``.keras`` / ``.h5`` file saved while clustering holds dkm_tf's training classes
  (``ClusterWeights``, ``ClusterKernels``, ``KernelCodebook``, ``SpectralKMeansRegularizer``).
  The export stage never imports the training code (the layering of the package), so Keras
  could not even rebuild the model; :func:`training_classes` names them from the file's
  config, so the error can say how to strip them.
"""

from __future__ import annotations

import json
import os
import zipfile

__all__ = ["TRAINING_CLASSES", "check_export_input", "savedmodel_problem",
           "training_classes"]

_SHOWN = 4
# dkm_tf's registered training classes (``"dkm_tf>ClusterWeights"`` in a legacy .h5 config,
# which has no "module" key)
TRAINING_CLASSES = ("ClusterWeights", "ClusterKernels", "KernelCodebook",
                    "SpectralKMeansRegularizer")


def savedmodel_problem(path):
    """A sentence saying ``path`` is a SavedModel folder and what to give instead, or None."""
    path = os.fspath(path)
    if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, "saved_model.pb"))):
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
    """``[(class name, layer name)]`` of the dkm_tf training objects in the model file
    ``path`` (a regularizer is named by the layer holding it); ``[]`` when none or unread."""
    config = _config(os.fspath(path))
    out = []

    def walk(node, layer):
        if isinstance(node, dict):
            inner = node.get("config")
            name = inner.get("name", layer) if isinstance(inner, dict) else layer
            cls = str(node.get("class_name", ""))
            if str(node.get("module", "")).startswith("dkm_tf.training."):
                out.append((cls, str(name)))
            elif cls.startswith("dkm_tf>") and cls[len("dkm_tf>"):] in TRAINING_CLASSES:
                out.append((cls[len("dkm_tf>"):], str(name)))  # a legacy .h5 names it so
            for value in node.values():
                walk(value, name)
        elif isinstance(node, list):
            for value in node:
                walk(value, layer)

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
    wrapped = any(cls != "SpectralKMeansRegularizer" for cls, _ in found)
    recipe = ("plain, palettes = dkm_tf.strip_clustering(dkm_tf.load_model(path)); "
              "plain.save('plain.keras'); json.dump([p.to_dict() for p in palettes], "
              "open('palettes.json', 'w')); then export --model plain.keras --palettes "
              "palettes.json" if wrapped else
              "m = dkm_tf.load_model(path); dkm_tf.detach_regularizer(m); "
              "m.save('plain.keras'); then export --model plain.keras")
    raise ValueError(
        "Invalid value for argument `model_path`. Expected a plain Keras model (the exporter "
        "reads stripped models; dkm_tf's training classes are not loaded here). Received: "
        f"model_path={os.fspath(path)!r}, saved with {len(found)} dkm_tf training "
        f"object(s): {shown}{more}. Strip it in Python first: {recipe}.")
