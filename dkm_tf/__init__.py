"""dkm_tf: k-means weight sharing for Keras 3, exported to TFLite with real size savings.

Importing ``dkm_tf`` has no side effects and does not import TensorFlow or Keras; the names
that need them are loaded on first use. The first use of any Keras-based name also registers
dkm_tf's Keras serializables (``ClusterWeights``, ``SpectralKMeansRegularizer``), so
``keras.models.load_model`` then restores saved models with no ``custom_objects``; in a fresh
process, :func:`load_model` does both in one call.
"""

import importlib
import os

# Old flat module paths (dkm_tf.layers, dkm_tf.posttrain, ...) live on as aliases in _compat/;
# extending this package's own search path is the whole cost (no import, no global state).
__path__.append(os.path.join(os.path.dirname(__file__), "_compat"))  # noqa: F821

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily)
_EXPORTS = {
    # numerical core (numpy only)
    "cluster_values": "dkm_tf.core.kmeans",
    "assignment_entropy": "dkm_tf.core.kmeans",
    "count_unique": "dkm_tf.core.kmeans",
    "UnitLayout": "dkm_tf.core.units",
    "layout_for": "dkm_tf.core.units",
    "to_units": "dkm_tf.core.units",
    "from_units": "dkm_tf.core.units",
    "Palette": "dkm_tf.core.palette",
    "SizeReport": "dkm_tf.core.palette",
    "cluster_tensor": "dkm_tf.core.palette",
    "size_report": "dkm_tf.core.palette",
    "kernel_flops": "dkm_tf.core.kernel_flops",
    "cluster_kernels": "dkm_tf.core.kernel_codebook",
    "kernel_factors": "dkm_tf.core.kernel_codebook",
    "kernel_bits": "dkm_tf.core.kernel_codebook",
    # Keras
    "clusterable_weights": "dkm_tf.graph.clusterable",
    "is_clusterable": "dkm_tf.graph.clusterable",
    "share_weights": "dkm_tf.graph.share",
    "fold_batch_norm": "dkm_tf.graph.batchnorm",
    "FactorisedConv2D": "dkm_tf.graph.factorised",
    "factorise_convs": "dkm_tf.graph.factorise",
    "ClusterWeights": "dkm_tf.training.wrapper",
    "ClusterKernels": "dkm_tf.training.kernel_clustering",
    "KernelCodebook": "dkm_tf.training.kernel_clustering",
    "ClusteringReport": "dkm_tf.training.clustering",
    "cluster_weights": "dkm_tf.training.clustering",
    "strip_clustering": "dkm_tf.training.clustering",
    "palettes_of": "dkm_tf.training.clustering",
    "finetune": "dkm_tf.training.finetune",
    "ReassignClusters": "dkm_tf.training.reassign",
    "compress": "dkm_tf.pipeline",
    "load_model": "dkm_tf.training.serialization",
    "SpectralKMeansRegularizer": "dkm_tf.training.regularizer",
    "kmeans_regularizers": "dkm_tf.training.attach",
    "refresh_regularizers": "dkm_tf.training.attach",
    "RefreshKMeans": "dkm_tf.training.callbacks",
    "TemperatureSchedule": "dkm_tf.training.soft",
    "fisher_importance": "dkm_tf.graph.sensitivity",
    "attach_regularizer": "dkm_tf.training.attach",
    "detach_regularizer": "dkm_tf.training.attach",
    "dkm_retrain": "dkm_tf.training.retrain",
    "DistillationLoss": "dkm_tf.training.distill",
    "DistillationAccuracy": "dkm_tf.training.distill",
    "distillation_targets": "dkm_tf.training.distill",
    "CompressionResult": "dkm_tf.pipeline",
}
# public submodules: the stage packages, the top-level modules, and the numpy core's three
# modules under their pre-0.2 names (``dkm_tf.kmeans`` is ``dkm_tf.core.kmeans``)
_SUBMODULES = {
    "core": "dkm_tf.core", "graph": "dkm_tf.graph", "training": "dkm_tf.training",
    "energy": "dkm_tf.energy", "export": "dkm_tf.export", "data": "dkm_tf.data",
    "models": "dkm_tf.models",
    "kmeans": "dkm_tf.core.kmeans", "units": "dkm_tf.core.units", "palette": "dkm_tf.core.palette",
}

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


# the Keras versions setup.cfg's install_requires allows (pip refuses others; this check catches
# an install that bypassed it: --no-deps, or a Keras 2 / older Keras 3 pinned by another package)
_KERAS_REQUIRED = ((3, 10), (4, 0))


def _installed_keras():
    """The installed Keras' version, read from its metadata (Keras is not imported), or None."""
    from importlib import metadata  # noqa: PLC0415

    try:
        return metadata.version("keras")
    except metadata.PackageNotFoundError:
        return None  # the import that needs it will say so


def _check_keras_version(version):
    """Raise ``ImportError`` naming ``version`` and the required range unless Keras fits it."""
    if version is None:
        return
    try:
        found = tuple(int(p) for p in str(version).split(".")[:2])
    except ValueError:
        return  # a development build: not ours to judge
    (lo_major, lo_minor), (hi_major, _) = _KERAS_REQUIRED
    if not (lo_major, lo_minor) <= found < (hi_major, 0):
        raise ImportError(f"dkm_tf needs Keras >= {lo_major}.{lo_minor}, < {hi_major} (Keras 3); "
                          f"found Keras {version}: pip install 'keras>={lo_major}.{lo_minor},"
                          f"<{hi_major}'")


def __getattr__(name):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        if not module.startswith("dkm_tf.core."):  # numpy-only names never load Keras
            _check_keras_version(_installed_keras())
            importlib.import_module("dkm_tf.training.serialization").register_serializables()
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        if not _SUBMODULES[name].startswith("dkm_tf.core"):
            _check_keras_version(_installed_keras())
        module = importlib.import_module(_SUBMODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dkm_tf' has no attribute {name!r}")


def __dir__():
    return __all__
