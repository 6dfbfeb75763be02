"""k-means deferred from a traced build of :class:`~dkm_tf.training.wrapper.ClusterWeights`.

Keras builds a layer held by a custom layer inside a Functional model (or a subclassed
model's layers) in a traced pass, where the kernel has no value: the wrapper then adds zero
codebooks and runs k-means at its first eager call (:class:`DeferredKMeans`), or at a load
(the loaded variables are the clusters), or when saved (see
:class:`~dkm_tf.training.wrapper_extras.SavesDeferredClusters`).

Not inside a :class:`keras.StatelessScope` (``model.stateless_call``, a JAX-style loop): the
clusters assigned there stay in the scope (the codebook is a trainable variable, given to
``stateless_call`` as an input, so the returned state drops them too) while the deferred flag
would be cleared, so the real codebooks stayed zero (outputs 1.86 off at the next eager call,
zero codebooks saved). It raises there instead.
"""

from __future__ import annotations

from dkm_tf.training import wrapper_extras as extras

__all__ = ["NO_VALUE_YET", "DeferredKMeans", "in_stateless_scope", "in_symbolic_scope"]

NO_VALUE_YET = object()  # a kernel built in a symbolic pass: k-means waits for its values
try:  # Keras' shape-only pass (compute_output_spec), where variables have no values
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope
except ImportError:  # pragma: no cover - a Keras without it: every call is a real one
    def in_symbolic_scope():
        return False
try:  # model.stateless_call / a JAX-style loop: assignments stay in the scope
    from keras.src.backend.common.stateless_scope import in_stateless_scope
except ImportError:  # pragma: no cover
    def in_stateless_scope():
        return False


class DeferredKMeans:
    """Mixin of :class:`~dkm_tf.training.wrapper.ClusterWeights`: its ``_deferred`` slots."""

    def _run_deferred_kmeans(self):
        """k-means of the slots a symbolic build left without clusters (first eager call)."""
        stateless = in_stateless_scope()  # values there are the scope's, not the variables'
        if not stateless:
            self._deferred[:] = [s for s in self._deferred
                                 if not extras.assigned_since_build(s)]
        for slot in list(self._deferred):
            clusters = (NO_VALUE_YET if stateless else
                        self._initial_clusters(slot.attr, slot.variable, slot.layout))
            if clusters is NO_VALUE_YET:
                raise RuntimeError(
                    f"ClusterWeights {self.name!r} was built in a traced call, so k-means of "
                    f"its {slot.attr!r} has not run yet (it needs the kernel's values, outside "
                    "any keras.StatelessScope: model.stateless_call cannot keep the clusters "
                    "it would assign). Call the model once eagerly on a batch, e.g. "
                    "model(x[:1]), before fit, predict or stateless_call.")
            self._assign_clusters(slot, clusters)
            self._deferred.remove(slot)

    def load_own_variables(self, store):
        # Unbuilt with saved variables: a subclassed model saved without a build config, as
        # dkm_tf before 8cde247 (2026-12-04) wrote them. Keras then visits the layer again by
        # another path with an empty store and forgets the failure, so the model would load
        # with no weights and re-cluster fresh ones at its first call: refuse both visits.
        saved = len(store.keys()) if store is not None else 0
        if not self.built and (saved or getattr(self, "_unloaded", 0)):
            self._unloaded = max(saved, getattr(self, "_unloaded", 0))
            raise ValueError(
                f"ClusterWeights {self.name!r} was not built when weights were loaded into "
                f"it, so its {self._unloaded} saved variables cannot be restored (the model "
                "would silently start from fresh weights). Either the model was built with "
                "model.build(shape), which does not build a subclassed model's wrappers: call "
                "it once on a batch, then load; or the file is a subclassed model saved "
                "without a build config (dkm_tf before 2026-12-04 saved some of its "
                "variables twice): it cannot be restored exactly; load weights saved from a "
                "working copy, or re-run the clustering.")
        super().load_own_variables(store)
        self._deferred.clear()  # the loaded codebooks and indices are the clusters
