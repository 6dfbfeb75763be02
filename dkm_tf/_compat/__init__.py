"""Module paths from before the core / graph / training layout, kept as aliases.

``dkm_tf/__init__.py`` puts this folder on the package's ``__path__``, so ``import
dkm_tf.layers`` finds ``_compat/layers.py``, which makes ``dkm_tf.layers`` the module's new
home (:mod:`dkm_tf.training.wrapper`); ``from dkm_tf.layers import ClusterWeights`` and saved
configs that name the old module keep working. A module that was split becomes the union of
its parts. New code imports from ``dkm_tf`` itself or the new paths (README "Architecture").
"""

from __future__ import annotations

import importlib
import sys

# old path -> new module(s); a module that was split is rebuilt from the parts
MOVED = {
    "dkm_tf.kmeans": ("dkm_tf.core.kmeans",),
    "dkm_tf.units": ("dkm_tf.core.units",),
    "dkm_tf.palette": ("dkm_tf.core.palette",),
    "dkm_tf.clusterable": ("dkm_tf.graph.clusterable",),
    "dkm_tf.posttrain": ("dkm_tf.graph.share", "dkm_tf.graph.copying"),
    "dkm_tf.layers": ("dkm_tf.training.wrapper",),
    "dkm_tf.clustering": ("dkm_tf.training.clustering", "dkm_tf.training.finetune"),
    "dkm_tf.regularizers": ("dkm_tf.training.regularizer", "dkm_tf.training.attach"),
    "dkm_tf.retrain": ("dkm_tf.training.retrain", "dkm_tf.training.attach"),
    "dkm_tf.callbacks": ("dkm_tf.training.callbacks",),
    "dkm_tf.reassign": ("dkm_tf.training.reassign",),
    "dkm_tf.distill": ("dkm_tf.training.distill",),
    "dkm_tf.serialization": ("dkm_tf.training.serialization",),
}


def alias(module_name):
    """Make ``sys.modules[module_name]`` the module's new home (or the union of its parts).

    ``module_name`` is ``dkm_tf.layers`` when imported by its old path. When a tool imports
    this folder's file by its own name (``dkm_tf._compat.layers``, as ``pytest
    --doctest-modules`` does), that module keeps its identity and gets the names copied in.
    """
    short = module_name.rsplit(".", 1)[-1]
    homes = [importlib.import_module(name) for name in MOVED["dkm_tf." + short]]
    if len(homes) == 1 and not module_name.startswith(__name__ + "."):
        sys.modules[module_name] = homes[0]
        return
    module = sys.modules[module_name]  # a split module, or a direct import: fill it in
    for home in reversed(homes):  # the first part wins a name both define
        module.__dict__.update({k: v for k, v in vars(home).items() if not k.startswith("__")})
    module.__all__ = sorted({n for home in homes for n in home.__all__})
