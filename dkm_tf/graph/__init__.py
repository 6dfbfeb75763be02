"""Keras models as graphs of layers: walking, copying, rebuilding; no training.

* :mod:`~dkm_tf.graph.clusterable`: which layers and weights can be clustered (and the
  ``get_clusterable_weights`` hook for custom layers), walking nested models;
* :mod:`~dkm_tf.graph.copying`: independent copies of layers and models, built from given
  weight values, and atomic ``.keras`` saves;
* :mod:`~dkm_tf.graph.share`: post-training weight sharing, a model copy whose kernels hold
  their k-means reconstruction;
* :mod:`~dkm_tf.graph.refine`: the output-aware codebook update after k-means
  (``share_weights(refine="outputs" | "gptq")``), with :mod:`~dkm_tf.graph.gptq` (GPTQ's
  assignment) and :mod:`~dkm_tf.graph.calibration` (running a model on calibration inputs);
* :mod:`~dkm_tf.graph.batchnorm`: folding BatchNormalization into the preceding kernel and
  bias (``fold_batch_norm``), and :mod:`~dkm_tf.graph.batchnorm_palettes`: the same fold
  applied to palettes (codebooks rescaled per channel) for strip and export;
* :mod:`~dkm_tf.graph.factorised`: ``FactorisedConv2D``, a conv with codebook-shared kernels
  run conv-then-add (Son et al. §2.6), and :mod:`~dkm_tf.graph.factorise`:
  ``factorise_convs``, a model copy with chosen Conv2D layers replaced where cheaper;
* :mod:`~dkm_tf.graph.layer_features`: LoRA-enabled layers (``merge_lora``: a copy with each
  LoRA merged into a plain kernel, what ``share_weights`` / ``cluster_weights`` / ``compress``
  cluster) and :mod:`~dkm_tf.graph.quantized`: Keras-quantized layers, refused everywhere.

Imports :mod:`dkm_tf.core` only (and Keras).
"""
