"""The wrapped layer's own weight settings while :class:`ClusterWeights` shares its kernels.

A replaced kernel variable (``latent=False``, hard assignment) no longer feeds the output and
is non-trainable, so Keras would neither apply its regularizer (Keras collects weight penalties
over trainable weights only) nor its constraint (the optimizer constrains the variables it
updates: the codebook). Here:

* **regularizers**: the variable's regularizer is applied to the shared kernel the wrapper
  computes (:func:`shared_kernel_losses`), so ``wrapper.losses`` holds the same penalty as
  the plain layer holding that kernel. A k-means penalty (:func:`dkm_tf.attach_regularizer`)
  is not applied (the kernel is clustered already); its ``base`` regularizer is.
* **constraints**: an element-wise constraint (:data:`ELEMENTWISE_CONSTRAINTS`: a function
  of each value alone) goes to the codebook, so every shared value, and with it the kernel,
  satisfies it (:func:`codebook_constraint`). A norm constraint (MaxNorm, MinMaxNorm,
  UnitNorm) or an unknown one is not enforced while clustered: a shared codebook cannot keep
  it, and :func:`dkm_tf.cluster_weights` warns (:func:`warn_unenforced_constraints`).
* **trainable**: a replaced variable stays non-trainable whatever the wrapper's flag
  (:func:`keep_replaced_frozen`, run by the wrapper's ``trainable`` setter), else unfreezing a
  wrapper or a base model holding wrappers would hand the optimizer a variable with no gradient.

Also :func:`build_now` and :func:`unwrap`, which :mod:`dkm_tf.training.clustering` uses to
cluster a wrapper at once and to turn it back into a plain layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings

import keras
import numpy as np
from keras import ops

from dkm_tf.core import units as units_lib
from dkm_tf.graph.clusterable import clusterable_weights
from dkm_tf.graph.copying import copy_layer
from dkm_tf.graph.kernel_share import scale_loss_parts
from dkm_tf.graph.quantized import QUANTIZE_ORDER, layers_below, quantization_mode
from dkm_tf.training.regularizer import SpectralKMeansRegularizer
from dkm_tf.training.wrapper_kmeans import nearest_indices

__all__ = ["ELEMENTWISE_CONSTRAINTS", "FROZEN_NOTE", "KeepsReplacedFrozen", "Reassigns",
           "SavesDeferredClusters", "assigned_since_build", "build_now", "check_not_quantized",
           "codebook_constraint", "collecting_scale_notes", "frozen_variable",
           "keep_frozen_variables", "keep_replaced_frozen", "replaces_variables",
           "scale_loss_collected",
           "shared_kernel_losses", "unwrap", "user_regularizer", "user_stacklevel",
           "warn_kernel_clustering_constraint", "warn_scale_loss",
           "warn_unenforced_constraints"]

# Constraints that act on each value alone: a codebook that satisfies them gives a kernel that
# does. Exact classes only (a subclass may redefine __call__).
ELEMENTWISE_CONSTRAINTS = (keras.constraints.NonNeg,)
FROZEN_NOTE = "frozen (trainable=False): codebook fixed during fit until unfrozen"


def plain_weights(layer):
    """``clusterable_weights(layer)``, refusing a weight that is no variable (LoRA enabled)."""
    weights = clusterable_weights(layer)
    for attr, var, _ in weights:
        if not isinstance(var, keras.Variable):
            why = ("LoRA is enabled. dkm_tf.cluster_weights(model) merges it in its copy; or "
                   "dkm_tf.graph.layer_features.merge_lora(model) first."
                   if getattr(layer, "lora_enabled", False) else
                   "get_clusterable_weights() must return the layer's keras.Variable objects.")
            raise ValueError(f"Layer {layer.name!r}: weight {attr!r} is not a plain variable "
                             f"(got {type(var).__name__}): {why}")
    return weights


def replaces_variables(wrapper):
    """Whether the wrapper's shared kernels replace the layer's variables (which then neither
    train nor feed the output): hard assignment without a latent kernel."""
    return not wrapper.latent and wrapper.assignment == "hard"


def user_regularizer(variable):
    """The regularizer of ``variable`` to apply to its shared kernel (a k-means penalty's
    ``base``: the penalty itself is pointless on a clustered kernel), or None."""
    reg = getattr(variable, "regularizer", None)
    if isinstance(reg, SpectralKMeansRegularizer):
        reg = reg.base
    return reg


def shared_kernel_losses(wrapper, pairs):
    """The regularization losses of the shared kernels of ``pairs`` (``(variable, kernel)``)
    whose variable they replace; none for a frozen wrapper (as Keras: trainable weights only)."""
    if not replaces_variables(wrapper) or not wrapper.trainable:
        return []
    losses = []
    for variable, kernel in pairs:
        reg = user_regularizer(variable)
        if reg is not None:
            losses.append(reg(ops.cast(kernel, variable.dtype)))
    return losses


def codebook_constraint(variable):
    """The constraint of ``variable`` if element-wise (the codebook can hold it), else None."""
    constraint = getattr(variable, "constraint", None)
    return constraint if type(constraint) in ELEMENTWISE_CONSTRAINTS else None


def frozen_variable(wrapper, variable):
    """Whether ``variable`` was frozen by itself (``layer.kernel.trainable = False`` in a
    trainable layer): its codebook is then built non-trainable, as the plain layer keeps that
    kernel fixed (it moved 0.40 in a short fit before). As in Keras, setting the wrapper's
    ``trainable`` later sets it on every variable, the codebook's too."""
    return not variable.trainable and wrapper.layer.trainable and wrapper.trainable


def keep_frozen_variables(layer, copy):
    """Give ``copy`` (of ``layer``, from its config) the non-trainable flag of each variable
    that ``layer`` froze by itself (a config does not hold it)."""
    if not layer.trainable:
        return copy
    for original, var in zip(layer.weights, copy.weights):
        if not original.trainable:
            var.trainable = False
    return copy


def keep_replaced_frozen(wrapper):
    """Mark the variables the wrapper's shared kernels replace non-trainable again (a
    :class:`ClusterWeights`' replaced slots; a built ``ClusterKernels``' conv kernel)."""
    if hasattr(wrapper, "latent"):
        if replaces_variables(wrapper):
            for slot in getattr(wrapper, "_slots", ()):
                slot.variable.trainable = False
    elif getattr(wrapper, "built", False):
        wrapper.layer.kernel.trainable = False


def warn_kernel_clustering_constraint(layer):
    """Warn if ``layer``'s kernel has a constraint: a kernel ``s T(codebook[l])`` of shared
    centroids and scales (``unit="kernel"``) keeps none of them while clustered. Within
    :func:`scale_loss_collected` the text goes to its list instead (a ``compress`` note)."""
    constraint = getattr(getattr(layer, "kernel", None), "constraint", None)
    if constraint is not None and (notes := _SCALE_NOTES.get()) is not None:
        notes.append(f"kernel constraint of {layer.name!r} ({type(constraint).__name__}) not "
                     "enforced while fine-tuned with unit='kernel' (scaled shared centroids)")
    elif constraint is not None:
        warnings.warn(
            f"cluster_weights: layer {layer.name!r} has a kernel constraint "
            f"({type(constraint).__name__}) that is not enforced while it is clustered with "
            "unit='kernel' (scaled shared centroids).", UserWarning,
            stacklevel=user_stacklevel())


_SCALE_NOTES = contextvars.ContextVar("dkm_tf_scale_notes", default=None)


@contextlib.contextmanager
def scale_loss_collected():
    """Within it, :func:`warn_scale_loss` and :func:`warn_kernel_clustering_constraint`
    append their text to the yielded list instead of warning: ``compress(method="finetune")``
    turns it into a result note (a UserWarning
    saying ``cluster_weights:`` reached a user who called ``compress``, and aborted it where
    warnings are errors)."""
    notes = []
    token = _SCALE_NOTES.set(notes)
    try:
        yield notes
    finally:
        _SCALE_NOTES.reset(token)


def collecting_scale_notes():
    """Whether a :func:`scale_loss_collected` is open (``compress`` around ``finetune``)."""
    return _SCALE_NOTES.get() is not None


def user_stacklevel():
    """The ``stacklevel`` of a warning issued here that points at the first frame outside
    dkm_tf, Keras and TensorFlow (the user's call; a fixed level pointed inside Keras'
    ``clone_model`` for warnings of a ``clone_function``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # dkm_tf/
    inside = (package + os.sep,) + tuple(os.path.dirname(m.__file__) + os.sep for m in (
        keras, sys.modules.get("tensorflow")) if getattr(m, "__file__", None))
    frame, level = sys._getframe(1), 1  # noqa: SLF001 (the caller of user_stacklevel)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def warn_scale_loss(palette):
    """Warn if the stored scales of ``palette`` (``cluster_weights(unit="kernel")``'s first
    k-means) zero kernels, round them coarsely or raise them to one int8 step: the wrapper
    starts from them, and ``cluster_weights`` returns no palettes whose note would say so
    (``share_weights``' palettes do; :func:`dkm_tf.graph.kernel_share.scale_loss_note`).
    Within :func:`scale_loss_collected` the text goes to its list instead."""
    lost = scale_loss_parts(palette.note)
    if not lost:
        return
    notes = _SCALE_NOTES.get()
    if notes is not None:
        notes.append(f"kernel scales of {palette.layer_name!r} at the start of fine-tuning: "
                     f"{'; '.join(lost)}; scale_bits=32 keeps them")
        return
    warnings.warn(f"cluster_weights: layer {palette.layer_name!r}: {'; '.join(lost)}; "
                  "scale_bits=32 keeps them.", UserWarning, stacklevel=user_stacklevel())


class KeepsReplacedFrozen:
    """Mixin of :class:`ClusterWeights`: Keras' ``trainable`` setter (the flag, the wrapper's
    own variables and every sublayer's), then the replaced variables non-trainable again; and
    ``from_config`` that leaves its ``config`` as it is."""

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras' Wrapper.from_config pops "layer" from the caller's dict: a second
        # from_config of one config raised KeyError: 'layer'
        return super().from_config(dict(config), custom_objects=custom_objects)

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        keras.layers.Layer.trainable.fset(self, value)
        keep_replaced_frozen(self)


def warn_unenforced_constraints(layer, weights):
    """Warn once for ``layer`` if a clustered weight (``(attr, variable, kind)`` of
    ``weights``) has a constraint that the shared kernel cannot keep while clustered."""
    found = [f"{attr}: {type(var.constraint).__name__}" for attr, var, _ in weights
             if getattr(var, "constraint", None) is not None
             and type(var.constraint) not in ELEMENTWISE_CONSTRAINTS]
    if found:
        warnings.warn(
            f"cluster_weights: layer {layer.name!r} has constraints ({', '.join(found)}) that are "
            "not enforced while it is clustered: its kernel is shared codebook values, which a "
            "norm or custom constraint cannot be applied to. Only element-wise constraints "
            "(NonNeg) are kept, through the codebook.", UserWarning, stacklevel=2)


def check_not_quantized(wrapper):
    """Refuse a wrapper whose wrapped layer, or a layer inside it (a MultiHeadAttention's
    projections), was quantized after clustering (``model.quantize(...)`` quantizes the leaf
    layers, so those inside the wrapper): it then computes with its own quantized kernel, made
    from the pre-clustering float weights, not with the shared kernel, and its outputs would
    be silently wrong."""
    found = [(lay.name, quantization_mode(lay)) for lay in layers_below(wrapper.layer)
             if quantization_mode(lay) is not None]
    if found:
        mode = found[0][1]
        which = ", ".join(f"{name!r} ({m})" for name, m in found)
        raise ValueError(
            f"Layer {wrapper.name!r}: the layer it wraps, {wrapper.layer.name!r}, or a layer "
            f"inside it was quantized after clustering (quantized: {which}; e.g. by "
            "model.quantize); it would compute with its own quantized copy of the "
            "pre-clustering float kernel instead of the shared kernel. "
            f"{QUANTIZE_ORDER} Here: plain, _ = dkm_tf.strip_clustering(model); "
            f"plain.quantize({mode!r}). This model's quantized layers cannot be undone: "
            "reload or re-cluster it first.")


def assigned_since_build(slot):
    """Whether a slot's codebook or indices (zeros when built) hold values: assigned since the
    build by ``model.set_weights`` or ``variable.assign``, so k-means deferred from a traced
    build must not overwrite them (they are the clusters)."""
    try:
        return any(np.any(keras.ops.convert_to_numpy(v)) for v in (slot.codebook, slot.indices))
    except Exception:  # noqa: BLE001 - a traced call: no values (the caller then says so)
        return False


def build_now(wrapper):
    """Build (and so cluster) a wrapper whose inner layer is built, with that layer's shape."""
    if not wrapper.layer.built:
        raise ValueError(f"Layer {wrapper.name!r} is not built and neither is the layer it "
                         "wraps, so it has no codebooks yet: call it on data first.")
    wrapper.build((wrapper.layer.get_build_config() or {}).get("input_shape"))


def unwrap(wrapper, palettes):
    """A plain copy of the wrapped layer whose clustered kernels hold the decoded values."""
    if not wrapper.built:
        build_now(wrapper)
    check_not_quantized(wrapper)
    pals = wrapper.palettes()
    palettes.extend(pals)
    decoded = {p.weight_name: p.decode() for p in pals}
    by_id = {id(s.variable): decoded[s.attr] for s in wrapper._slots}
    return copy_layer(wrapper.layer, [by_id[id(v)] if id(v) in by_id
                                      else keras.ops.convert_to_numpy(v)
                                      for v in wrapper.layer.weights])


class SavesDeferredClusters:
    """Mixin of :class:`ClusterWeights`: a wrapper first built in a traced pass (a custom layer
    holding it, inside a Functional model) runs k-means at its first eager call; saved before
    that call (``.keras``, ``save_weights``), it runs k-means now, not writing the zero
    codebooks it holds until then (the loaded model computed zero kernels, silently)."""

    def save_own_variables(self, store):
        if self._deferred:
            self._run_deferred_kmeans()
        super().save_own_variables(store)


class Reassigns:
    """:meth:`reassign_indices` of :class:`~dkm_tf.training.wrapper.ClusterWeights`, split in
    a plan (computed, checked, nothing assigned) and its assignment, so that
    :class:`~dkm_tf.training.reassign.ReassignClusters` plans every layer before it assigns
    any: a NaN in a later layer then changes no index at all."""

    def reassign_indices(self):
        """Move each unit to the centroid nearest to its latent weight (``latent=True`` only).

        Returns:
            The number of units whose index changed.

        Raises:
            ValueError: the wrapper has no latent kernel, or a latent weight or centroid is
                NaN / Inf (a diverged fit; no index is changed).
        """
        return self.assign_reassign_plan(self.reassign_plan())

    def reassign_plan(self):
        """``[(slot, new indices, old indices)]``; raises (see :meth:`reassign_indices`)."""
        if not self.latent:
            raise ValueError(
                f"Layer {self.name!r} has no latent kernel to re-assign from (every weight "
                "already equals its centroid). Create it with latent=True, e.g. "
                "dkm_tf.cluster_weights(model, ..., latent=True).")
        plan = []
        for s in self._slots:
            old = keras.ops.convert_to_numpy(s.indices).astype(np.int64)
            new = nearest_indices(  # raises on NaN / Inf
                units_lib.to_units(keras.ops.convert_to_numpy(s.variable), s.layout),
                keras.ops.convert_to_numpy(s.codebook), old, self.preserve_sparsity,
                f"Layer {self.name!r}: the latent {s.attr!r}")
            plan.append((s, new, old))
        return plan

    @staticmethod
    def assign_reassign_plan(plan):
        """Assign ``plan``, a :meth:`reassign_plan`; returns the number of changed indices."""
        for s, new, _ in plan:
            s.indices.assign(new.astype(s.indices.dtype))
        return sum(int(np.count_nonzero(new != old)) for _, new, old in plan)
