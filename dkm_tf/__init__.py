"""dkm_tf: k-means weight sharing for Keras 3, exported to TFLite with real size savings.

Importing ``dkm_tf`` has no side effects and does not import TensorFlow or Keras; the names
that need them are loaded on first use. The first use of any Keras-based name also registers
dkm_tf's Keras serializables (``ClusterWeights``, ``SpectralKMeansRegularizer``), so
``keras.models.load_model`` then restores saved models with no ``custom_objects``; in a fresh
process, :func:`load_model` does both in one call.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (loaded lazily)
_EXPORTS = {
    # numerical core (numpy only)
    "cluster_values": "dkm_tf.kmeans",
    "assignment_entropy": "dkm_tf.kmeans",
    "count_unique": "dkm_tf.kmeans",
    "UnitLayout": "dkm_tf.units",
    "layout_for": "dkm_tf.units",
    "to_units": "dkm_tf.units",
    "from_units": "dkm_tf.units",
    "Palette": "dkm_tf.palette",
    "SizeReport": "dkm_tf.palette",
    "cluster_tensor": "dkm_tf.palette",
    "size_report": "dkm_tf.palette",
    # Keras
    "clusterable_weights": "dkm_tf.clusterable",
    "is_clusterable": "dkm_tf.clusterable",
    "share_weights": "dkm_tf.posttrain",
    "ClusterWeights": "dkm_tf.layers",
    "ClusteringReport": "dkm_tf.clustering",
    "cluster_weights": "dkm_tf.clustering",
    "strip_clustering": "dkm_tf.clustering",
    "palettes_of": "dkm_tf.clustering",
    "finetune": "dkm_tf.clustering",
    "ReassignClusters": "dkm_tf.reassign",
    "compress": "dkm_tf.pipeline",
    "load_model": "dkm_tf.serialization",
    "SpectralKMeansRegularizer": "dkm_tf.regularizers",
    "kmeans_regularizers": "dkm_tf.regularizers",
    "refresh_regularizers": "dkm_tf.regularizers",
    "RefreshKMeans": "dkm_tf.callbacks",
    "attach_regularizer": "dkm_tf.retrain",
    "detach_regularizer": "dkm_tf.retrain",
    "dkm_retrain": "dkm_tf.retrain",
    "DistillationLoss": "dkm_tf.distill",
    "distillation_targets": "dkm_tf.distill",
    "CompressionResult": "dkm_tf.pipeline",
}
_SUBMODULES = ("energy", "export", "data", "models", "kmeans", "units", "palette")

__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])


_NUMPY_ONLY = ("dkm_tf.kmeans", "dkm_tf.units", "dkm_tf.palette")


def __getattr__(name):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        if module not in _NUMPY_ONLY:
            importlib.import_module("dkm_tf.serialization").register_serializables()
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"dkm_tf.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dkm_tf' has no attribute {name!r}")


def __dir__():
    return __all__
