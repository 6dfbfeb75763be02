"""The configs a model file holds (`.keras` zip: `config.json`; `.h5`: its `model_config` /
`training_config` attributes), read without loading the model, and what they name: the
objects of modules outside Keras, and every string (`dkm_tf.core.custom_code`)."""

from __future__ import annotations

import json
import os
import re
import zipfile

__all__ = ["config_names", "config_objects", "file_objects", "read_configs"]

_OWN_MODULES = ("keras", "builtins", "dkm_tf", "tensorflow", "numpy")


def config_names(path):
    """``{name: {"class" | "activation" | "function"}}`` of the objects the model file's
    configs name: class names (``class_name``, ``registered_name``), activations, and other
    functions (losses, metrics given by name; ``{"class_name": "function"}`` nodes). None
    when no config can be read."""
    configs = [c for c in read_configs(path) if c is not None]
    if not configs:
        return None
    out = {}

    def add(name, kind):
        if isinstance(name, str):
            out.setdefault(name.split(">")[-1], set()).add(kind)

    def walk(node, key=""):
        if isinstance(node, dict):
            if node.get("class_name") == "function":
                add(node.get("config"), "function")
            else:
                add(node.get("class_name"), "class")
                add(node.get("registered_name"), "class")
            for k, value in node.items():
                walk(value, k)
        elif isinstance(node, list):
            for value in node:
                walk(value, key)
        elif isinstance(node, str) and key.endswith("activation"):
            add(node, "activation")
        elif isinstance(node, str) and key in ("loss", "losses", "metrics", "weighted_metrics"):
            add(node, "function")
    for config in configs:
        walk(config)
    return out


def file_objects(path):
    found = []
    for config in read_configs(path):
        config_objects(config, found)
    return found


def config_objects(node, found):
    """Collect the serialized objects of non-Keras modules in a config (dicts and lists)."""
    if isinstance(node, dict):
        module, cls = node.get("module"), node.get("class_name")
        own = isinstance(module, str) and module.split(".")[0] in _OWN_MODULES
        if cls == "function" and isinstance(node.get("config"), str) and (
                module == "builtins" or not own):
            found.append((node["config"], None))  # a function: "userpkg>my_act" or "my_act"
        elif isinstance(module, str) and isinstance(cls, str) and not own:
            found.append((node.get("registered_name") or cls, module))
        elif "module" in node and module is None and isinstance(cls, str):
            found.append((node.get("registered_name") or cls, "__main__"))  # Keras writes None
        elif isinstance(cls, str) and ">" in cls and not cls.startswith("keras"):
            found.append((cls, None))  # an .h5 file's registered class "userpkg>MyDense"
        for value in node.values():
            config_objects(value, found)
    elif isinstance(node, list):
        for value in node:
            config_objects(value, found)
    elif isinstance(node, str) and ">" in node and re.fullmatch(r"[\w.]+>\w+", node) and (
            not node.startswith(("keras", "dkm_tf"))):
        found.append((node, None))  # an .h5 training config's loss "userpkg>my_loss"


def read_configs(path):
    """The model's config and its compile config (dicts or None) from a .keras / .h5 file."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
            return config, config.get("compile_config") if isinstance(config, dict) else None
        import h5py  # noqa: PLC0415 (a Keras dependency)

        with h5py.File(path, "r") as f:
            texts = [f.attrs.get(k) for k in ("model_config", "training_config")]
        return tuple(json.loads(t) if isinstance(t, (str, bytes)) else None for t in texts)
    except (OSError, KeyError, ValueError, RuntimeError, ImportError):
        return None, None
