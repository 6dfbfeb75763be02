"""The numerical core: numpy only, no Keras and no TensorFlow (a test checks it).

* :mod:`~dkm_tf.core.kmeans` (with :mod:`~dkm_tf.core._kmeans1d`): the k-means engines,
  scalar (near-optimal 1-D) and vector (chunked Lloyd, faiss when installed);
* :mod:`~dkm_tf.core.units`: cutting a kernel into clustering units and back, the one place
  for layout permutations;
* :mod:`~dkm_tf.core.palette`: the Palette record (codebook + indices + layout) and the size
  accounting every other stage reads;
* :mod:`~dkm_tf.core.codebook`: codebook bookkeeping (nearest centroids, compaction) and
  ``preserve_sparsity``'s fixed zero entry;
* :mod:`~dkm_tf.core.validate` and :mod:`~dkm_tf.core.files`: argument checks and atomic
  file writes shared by every stage.

Everything above this package (graph, training, export, energy) imports from it; it imports
nothing of theirs.
"""
