"""Training with clustering: the wrapper, the regularizer and the loops that fit them.

* :mod:`~dkm_tf.training.wrapper`: ``ClusterWeights``, hard weight sharing in the forward pass;
* :mod:`~dkm_tf.training.clustering`: ``cluster_weights`` / ``strip_clustering`` /
  ``palettes_of`` on whole models; :mod:`~dkm_tf.training.finetune`: all three in one call;
* :mod:`~dkm_tf.training.regularizer`: the Deep k-Means penalty;
  :mod:`~dkm_tf.training.attach`: putting it on a model's kernels and refreshing it;
  :mod:`~dkm_tf.training.retrain`: the whole re-training loop;
* :mod:`~dkm_tf.training.callbacks`, :mod:`~dkm_tf.training.reassign`,
  :mod:`~dkm_tf.training.distill`: Keras callbacks and the distillation loss;
* :mod:`~dkm_tf.training.serialization`: ``load_model`` with dkm_tf's classes registered.

Imports :mod:`dkm_tf.core` and :mod:`dkm_tf.graph`; export and energy never import it.
"""
