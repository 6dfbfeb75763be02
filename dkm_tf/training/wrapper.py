"""Hard weight sharing during fine-tuning: the :class:`ClusterWeights` wrapper.

The wrapped layer's clusterable kernels are replaced, in the forward pass only, by
``codebook[indices]``: every weight of a cluster is the same trainable centroid, so the gradient
of a centroid is the sum of the gradients of its member weights (Deep Compression, Han et al.,
ICLR 2016, §3.3; Deep k-Means, Wu et al., ICML 2018, §2.3).

How the kernel is substituted: the wrapper computes the shared kernel and runs the wrapped
layer's own ``call`` inside a :class:`keras.StatelessScope` that maps the kernel variable to the
shared tensor. No attribute of the wrapped layer is written (no ``setattr``, no
monkey-patching; the only change is that a replaced kernel variable is marked non-trainable,
since it no longer feeds the output), the layer's exact op runs (padding, strides, dilation,
groups, causal padding, mixed precision), and any layer that reads its kernel variable in
``call`` can be clustered, including your own layers through the ``get_clusterable_weights()``
protocol (see :mod:`dkm_tf.graph.clusterable`): the layer must read the variable (not a tensor
cached outside ``call``), and variable updates it makes inside ``call`` are written back.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core import kmeans as kmeans_lib
from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import (
    check_choice,
    check_kmeans_options,
    check_n_clusters,
    check_seed,
    invalid,
    is_bool,
)
from dkm_tf.graph import clusterable as clusterable_lib
from dkm_tf.graph import heartbeat
from dkm_tf.training import soft as soft_lib
from dkm_tf.training import wrapper_extras as extras
from dkm_tf.training import wrapper_names
from dkm_tf.training.distribute import collective_safe_dtype
from dkm_tf.training.soft import gather_codebook
from dkm_tf.training.wrapper_deferred import NO_VALUE_YET, DeferredKMeans, in_symbolic_scope
from dkm_tf.training.wrapper_kmeans import (
    check_padded_codebook,
    index_dtype,
    kmeans_codebook,
    kmeans_layout,
)

__all__ = ["ClusterWeights", "gather_codebook", "index_dtype", "kmeans_codebook", "kmeans_layout",
           "validate_settings"]


def validate_settings(n_clusters=16, unit="scalar", granularity="per_tensor", init="kmeans++",
                      latent=False, preserve_sparsity=False):
    """Check clustering settings; raise ``ValueError`` in Keras' message pattern if one is bad
    (``TypeError`` for a non-integer ``n_clusters``)."""
    check_n_clusters(n_clusters)
    check_choice("unit", unit, units_lib.UNIT_CHOICES)
    check_choice("granularity", granularity, units_lib.GRANULARITIES)
    check_choice("init", init, kmeans_lib.INITS)
    for arg, value in (("latent", latent), ("preserve_sparsity", preserve_sparsity)):
        if not is_bool(value):  # numpy bools too; 1 / "yes" refused
            raise invalid(arg, "a bool", value)


@dataclasses.dataclass
class _Slot:
    """One clustered weight of the wrapped layer and the wrapper's variables for it."""

    attr: str
    variable: keras.Variable
    layout: units_lib.UnitLayout
    codebook: keras.Variable  # (G, K, d), trainable
    indices: keras.Variable  # (G, M), non-trainable integers in [0, K)

    @property
    def t_shape(self):
        return tuple(self.layout.kernel_shape[a] for a in self.layout.perm)

    @property
    def inv_perm(self):
        return tuple(int(a) for a in np.argsort(self.layout.perm))


@keras.saving.register_keras_serializable(package="dkm_tf")
class ClusterWeights(extras.KeepsReplacedFrozen, extras.Reassigns, extras.SavesDeferredClusters,
                     DeferredKMeans, keras.layers.Wrapper):
    """Wraps a layer so that its kernels are ``codebook[indices]`` while it trains.

    On ``build`` each clusterable weight of the wrapped layer (see
    :func:`dkm_tf.graph.clusterable.clusterable_weights`) is clustered with k-means into a codebook
    of ``n_clusters`` centroids per group (a trainable weight of shape (G, K, d)) and the index
    of each unit (a non-trainable integer weight of shape (G, M), uint8 when K <= 256). In the
    forward pass the kernel is gathered from the codebook and the wrapped layer's own op runs
    with it, so the outputs equal those of the plain layer holding the decoded kernel. Biases
    and other weights of the wrapped layer are untouched and keep training.

    With ``latent=False`` (default) the wrapped layer's float kernel no longer feeds the output
    and stays non-trainable (its regularizer and a NonNeg constraint act on the shared kernel:
    :mod:`dkm_tf.training.wrapper_extras`); it only records the pre-clustering weights. With
    ``latent=True`` it stays trainable and receives each weight's own gradient through the
    identity ``codebook[indices] + (w - stop_gradient(w))`` (the forward value is exactly the
    shared kernel); :class:`dkm_tf.ReassignClusters` then moves units to the centroid nearest to
    their latent weight every few epochs. Without a latent kernel re-assignment would be a
    no-op (every weight already sits on its centroid), so that callback requires it.

    With ``preserve_sparsity=True`` the weight's exact zeros (a pruned layer's) stay exactly
    zero: entry 0 of each codebook is a fixed zero that never trains (the gradient does not
    reach it) and is not one of the K centroids, so the codebook has K + 1 entries; k-means
    runs on the non-zero units only (see :mod:`dkm_tf.core.codebook`).

    The wrapper clusters when it is built: at its first call, or at once when it comes from
    :func:`dkm_tf.cluster_weights` given a built layer.

    Args:
        layer: the layer to wrap: Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose,
            DepthwiseConv1D/2D, SeparableConv1D/2D (both kernels), Embedding, EinsumDense,
            MultiHeadAttention (its four projections; wrap it built), SimpleRNN/LSTM/GRU/RNN
            and Bidirectional (input and recurrent kernels of every cell: the cell reads the
            shared kernel at every step of its loop), TimeDistributed of any of these (the
            wrapped layer's kernels, read at every step), or any layer implementing
            ``get_clusterable_weights()``. The wrapper owns it from then on.
        n_clusters: K, centroids per codebook (>= 1).
        unit: ``"scalar"``, ``"row"``, ``"kernel"`` or ``"auto"`` (row for k x k convs,
            scalar otherwise; see :mod:`dkm_tf.core.units`).
        granularity: ``"per_tensor"`` or ``"per_channel"``.
        init: k-means initialisation (see :data:`dkm_tf.core.kmeans.INITS`).
        seed: k-means seed.
        latent: keep the float kernel as a trainable latent (see above).
        kmeans_options: extra keyword arguments of :func:`dkm_tf.cluster_values` (e.g.
            ``{"refine": False}`` for plain Lloyd, several times faster on large kernels).
        preserve_sparsity: keep exact zeros with a fixed zero entry (see above).
        assignment: ``"hard"`` (default) or ``"soft"``: differentiable k-means (DKM, Cho et
            al., ICLR 2022; see :mod:`dkm_tf.training.soft`), snapped to hard at strip.
        temperature: DKM's softmax temperature tau (> 0), with ``assignment="soft"`` only.
        **kwargs: base layer arguments (``name``, ``trainable``, ...). ``name`` defaults to
            ``cluster_<layer name>``; :func:`cluster_weights` takes ``cluster_<layer>_1`` where
            a layer it leaves has that name (:mod:`dkm_tf.training.wrapper_names`).

    Input shape / Output shape: those of the wrapped layer.

    Example:
        >>> import keras, dkm_tf
        >>> layer = dkm_tf.ClusterWeights(keras.layers.Dense(8), n_clusters=4)
        >>> y = layer(keras.ops.ones((2, 3)))
        >>> len(set(keras.ops.convert_to_numpy(layer.shared_kernels()["kernel"]).ravel())) <= 4
        True
    """

    def __init__(self, layer, n_clusters=16, unit="scalar", granularity="per_tensor",
                 init="kmeans++", seed=0, latent=False, kmeans_options=None,
                 preserve_sparsity=False, assignment="hard", temperature=None, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError("Invalid type for argument `layer`. Expected a keras.layers.Layer. "
                            f"Received: layer={layer!r} of type {type(layer).__name__}")
        if not clusterable_lib.is_clusterable(layer) or layer.built:
            extras.plain_weights(layer)  # a TypeError listing support; quantized, LoRA: eagerly
        validate_settings(n_clusters, unit, granularity, init, latent, preserve_sparsity)
        check_seed(seed)
        kmeans_options = check_kmeans_options(kmeans_options)
        temperature = soft_lib.check_soft_settings(assignment, temperature, latent=latent,
                                                   preserve_sparsity=preserve_sparsity)
        kwargs.setdefault("name", wrapper_names.default_name(layer))  # unique in its model
        if getattr(layer.dtype_policy, "quantization_mode", None) is None:
            # the wrapped layer's policy, not the global one at wrapping time: a float32
            # layer stays float32 under a later set_global_policy("mixed_float16")
            kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.n_clusters = int(n_clusters)
        self.unit = unit
        self.granularity = granularity
        self.init = init
        self.seed = int(seed)
        self.latent = bool(latent)  # a numpy bool would not serialise to JSON
        self.kmeans_options = dict(kmeans_options or {})
        self.preserve_sparsity = bool(preserve_sparsity)
        self.assignment, self.temperature = assignment, temperature
        self.supports_masking = getattr(layer, "supports_masking", False)
        self._slots = []
        self._skip_kmeans = False
        self._pending = {}  # attr -> Future of kmeans_codebook (set by cluster_weights)
        self._deferred = []  # slots built symbolically, k-means still to run

    # ------------------------------------------------------------------ build
    def build_from_config(self, config):
        # Only called when a saved model is loaded: the weights are restored right after, so
        # k-means on the freshly initialised kernel would be wasted work.
        self._skip_kmeans = True
        try:
            super().build_from_config(config)
        finally:
            self._skip_kmeans = False

    def build(self, input_shape=None):
        if not self.layer.built:
            try:
                self.layer.build(input_shape)
            except TypeError as e:  # a build that takes several shapes (MultiHeadAttention)
                raise ValueError(
                    f"Layer {self.layer.name!r} ({type(self.layer).__name__}) cannot be built "
                    f"from the wrapper's input shape {input_shape} ({e}). Build it first "
                    "(call it on data, e.g. layer(query, value)), then wrap it.") from e
        k = self.n_clusters + self.preserve_sparsity  # + the fixed zero entry 0
        plans = []
        for attr, var, kind in extras.plain_weights(self.layer):
            layout = kmeans_layout(var.shape, kind, self.unit, self.granularity)
            check_padded_codebook(layout, self.n_clusters, self.preserve_sparsity,
                                  f"{self.layer.name}/{attr}")  # before any k-means or weight
            plans.append((attr, var, layout,
                          None if self._skip_kmeans else self._initial_clusters(attr, var, layout)))
        # Every k-means has run (or waits for the kernel's value: Keras builds a subclassed
        # model by a symbolic pass first, before any variable has a value); only now are the
        # wrapper's weights added, so a build that fails leaves no orphan variables.
        for attr in (a for a, *_ in plans):
            self._pending.pop(attr, None)
        for attr, var, layout, clusters in plans:
            g, m, d = layout.n_groups, layout.n_units, layout.unit_dim
            stem = attr.replace(".", "_")  # "cell.kernel": torch refuses dots in names
            codebook = self.add_weight(name=f"{stem}_codebook", shape=(g, k, d),
                                       initializer="zeros", dtype=var.dtype,
                                       trainable=(self.assignment == "hard"
                                                  and not extras.frozen_variable(self, var)),
                                       constraint=extras.codebook_constraint(var))
            indices = self.add_weight(name=f"{stem}_indices", shape=(g, m), initializer="zeros",
                                      trainable=False, dtype=collective_safe_dtype(index_dtype(k)))
            slot = _Slot(attr, var, layout, codebook, indices)
            # attributes too: tf.saved_model.save cannot reach into _Slot ("untracked resource")
            setattr(self, f"_{stem}_codebook_var", codebook)
            setattr(self, f"_{stem}_indices_var", indices)
            if clusters is NO_VALUE_YET:  # k-means at the first eager call (or the load)
                self._deferred.append(slot)
            elif clusters is not None:
                self._assign_clusters(slot, clusters)
            if not self.latent and self.assignment == "hard":
                var.trainable = False  # it no longer feeds the output
            self._slots.append(slot)
        if self.assignment == "soft":  # DKM's tau: a variable, so schedules need no retrace
            self.temperature_variable = self.add_weight(
                name="temperature", shape=(), trainable=False,
                initializer=keras.initializers.Constant(self.temperature))
        self.built = True

    def _initial_clusters(self, attr, var, layout):
        """``(codebook, indices)`` of ``var``: from cluster_weights' thread pool, else k-means;
        :data:`NO_VALUE_YET` in a symbolic pass, where the kernel has no value."""
        pending = self._pending.get(attr)
        if pending is not None:  # k-means already running in cluster_weights' thread pool
            return pending.result()
        try:
            values = keras.ops.convert_to_numpy(var)
        except Exception:  # noqa: BLE001 - symbolic tensor / tracer: no value in this pass
            return NO_VALUE_YET
        return kmeans_codebook(
            values, layout, self.n_clusters, init=self.init,
            seed=self.seed, name=f"{self.layer.name}/{attr}", kmeans_options=self.kmeans_options,
            preserve_sparsity=self.preserve_sparsity)

    @staticmethod
    def _assign_clusters(slot, clusters):
        slot.codebook.assign(clusters[0])
        slot.indices.assign(clusters[1].astype(slot.indices.dtype))

    # ------------------------------------------------------------------ forward
    def _shared(self, slot):
        g, k, d = slot.codebook.shape
        idx = ops.cast(slot.indices, "int32")  # (G, M)
        if g > 1:
            idx = idx + np.arange(0, g * k, k, dtype=np.int32)[:, None]
        if d > 1:  # position of each value of each unit in the flattened codebook
            idx = idx[..., None] * d + np.arange(d, dtype=np.int32)
        with soft_lib._AutocastScope(None):  # noqa: SLF001 - the float32 codebook, not a
            # float16 copy (mixed precision): the centroid gradients, sums of many weights'
            # gradients, overflowed float16 under loss scaling (steps skipped, NaN mirrored)
            cb = ops.cast(self._codebook(slot), slot.codebook.dtype)
        values = gather_codebook(ops.reshape(cb, (g * k * d,)), idx)
        kernel = ops.reshape(values, slot.t_shape)
        if slot.inv_perm != tuple(range(len(slot.inv_perm))):
            kernel = ops.transpose(kernel, slot.inv_perm)
        return kernel

    def _codebook(self, slot):
        """The codebook with entry 0 held at zero (``preserve_sparsity``): no gradient to it."""
        if not self.preserve_sparsity:
            return slot.codebook
        return slot.codebook * (np.arange(slot.codebook.shape[1]) > 0).astype(
            slot.codebook.dtype)[:, None]

    def call(self, inputs, *args, training=None, **kwargs):
        # ``training`` reaches the wrapped layer through Keras' call context; here it only
        # says whether a soft kernel may move its warm start (never at inference, so two
        # identical predictions are identical on every backend, nor when frozen: as BN)
        extras.check_not_quantized(self)  # model.quantize reaches the wrapped layer
        if self._deferred and not in_symbolic_scope():  # a shape-only pass needs no values
            self._run_deferred_kmeans()
        mapping, ours = [], set()
        for slot in self._slots:
            kernel = (self._shared(slot) if self.assignment == "hard"
                      else soft_lib.soft_kernel(self, slot, bool(training and self.trainable)))
            if self.latent:
                with soft_lib._AutocastScope(None):  # noqa: SLF001 - as the codebook
                    w = ops.cast(slot.variable, kernel.dtype)
                kernel = kernel + (w - ops.stop_gradient(w))
            mapping.append((slot.variable, kernel))
            ours.add(id(slot.variable))
        # Map the layer's other variables to their current values (resolves an enclosing
        # stateless scope, as JAX training uses) and write back any update the layer makes.
        others = [(v, v.value) for v in self.layer.variables if id(v) not in ours]
        with keras.StatelessScope(state_mapping=mapping + others, collect_losses=True) as scope:
            before = dict(scope.state_mapping)
            outputs = self.layer(inputs, *args, **kwargs)
        for v, _ in others:
            if scope.get_current_value(v) is not before[id(v)]:
                v.assign(scope.get_current_value(v))
        for loss in [*scope.losses, *extras.shared_kernel_losses(self, mapping)]:
            self.add_loss(loss)
        return outputs

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    # ------------------------------------------------------------------ state
    @property
    def clustered_weights(self):
        """Names of the wrapped layer's weights that are clustered (e.g. ``["kernel"]``)."""
        return [s.attr for s in self._slots]

    def shared_kernels(self):
        """The current shared kernels, ``{attribute: tensor}`` in the layer's kernel layout."""
        return {s.attr: self._shared(s) if self.assignment == "hard"
                else soft_lib.soft_kernel(self, s) for s in self._slots}

    def palettes(self):
        """The current :class:`~dkm_tf.core.palette.Palette` of each clustered weight.

        Codebook entries that no unit uses are dropped, so K may be below ``n_clusters``.
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built, so it has no codebooks yet "
                             "(k-means runs at build): call it on data or build it first.")
        out, z = [], self.preserve_sparsity
        snapped = heartbeat.run_tracked(  # strip_clustering(verbose=True): a soft snap is long
            self.layer.name, sum(int(np.prod(s.variable.shape)) for s in self._slots),
            lambda: soft_lib.snap(self) if self.assignment == "soft"  # DKM inference: nearest
            else [(keras.ops.convert_to_numpy(self._codebook(s)),
                   keras.ops.convert_to_numpy(s.indices)) for s in self._slots])
        for s, (codebook, indices) in zip(self._slots, snapped):
            cb, idx = codebook_lib.compact(codebook, indices, keep=int(z))
            note = (f"{cb.shape[1] - z} of {self.n_clusters} centroids in use"
                    if cb.shape[1] - z < self.n_clusters else "")
            out.append(palette_lib.Palette(self.layer.name, s.attr, cb, idx, s.layout,
                                           requested_clusters=self.n_clusters, note=note,
                                           preserve_sparsity=z))
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"n_clusters": self.n_clusters, "unit": self.unit,
                       "granularity": self.granularity, "init": self.init, "seed": self.seed,
                       "latent": self.latent, "kmeans_options": dict(self.kmeans_options)})
        # ^ a copy: an edit of the config (to build a variant) changed this wrapper's k-means
        if self.preserve_sparsity:  # written only when set: loads in dkm_tf before 2026-12-03
            config.update(preserve_sparsity=True)
        if self.assignment == "soft":
            config.update(assignment="soft", temperature=self.temperature)
        return config
