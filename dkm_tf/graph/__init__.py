"""Keras models as graphs of layers: walking, copying, rebuilding; no training.

* :mod:`~dkm_tf.graph.clusterable`: which layers and weights can be clustered (and the
  ``get_clusterable_weights`` hook for custom layers), walking nested models;
* :mod:`~dkm_tf.graph.copying`: independent copies of layers and models, built from given
  weight values, and atomic ``.keras`` saves;
* :mod:`~dkm_tf.graph.share`: post-training weight sharing, a model copy whose kernels hold
  their k-means reconstruction.

Imports :mod:`dkm_tf.core` only (and Keras).
"""
