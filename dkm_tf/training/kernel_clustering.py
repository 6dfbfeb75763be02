"""Fine-tuning in the compressed state with scaled kernel units and shared codebooks.

Son, Nah, Lee (ECCV 2018), methods §2.4: every clustered k x k Conv2D computes its kernel as
``W[:, :, i, o] = s_io T_{t_io}(mu_{l_io})`` from a codebook ``mu`` (K, kh, kw) that is ONE
variable per codebook group (shared across layers), trainable per-kernel scales ``s`` (cin,
cout), and frozen centroid ids ``l`` and transform ids ``t``. The gradient of a centroid is
therefore the sum over every member kernel of every layer,
``dL/dmu_n = sum_{l_io = n} s_io T_t^-1(dL/dW_io)`` (autodiff through the gather), and
``dL/ds_io = <T_t(mu_l), dL/dW_io>``. Scales are rounded to their stored bits in the forward
pass (float16, or int8 times the layer's fixed step) with a straight-through gradient, so the
kernels are always exactly ``s_q T_t(mu_l)``.

The codebook lives in a :class:`KernelCodebook` layer that is *part of the functional graph*:
it is called on the conv's input (its value is ignored) and its output, the codebook, is an
input of every :class:`ClusterKernels` wrapper of its group. Keras therefore saves it once and
a ``.keras`` round trip keeps one variable for the whole group; both classes are registered, so
``dkm_tf.load_model`` (or ``keras.models.load_model`` after ``import dkm_tf.training``)
needs no custom objects. Sequential and flat Functional models are supported (a nested model
with k x k convs raises).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from dkm_tf.core import palette as palette_lib
from dkm_tf.core import units as units_lib
from dkm_tf.core.validate import check_seed
from dkm_tf.graph import bn_fate, clusterable, kernel_share
from dkm_tf.graph.copying import copy_layer, iter_layers, keep_dtype_policy, layers_only
from dkm_tf.training import wrapper_extras as extras

__all__ = ["ClusterKernels", "KernelCodebook", "cluster_kernel_model", "has_kernel_layers",
           "kernel_palettes", "routes_cluster", "routes_palettes", "routes_strip",
           "strip_kernel_model"]


@keras.saving.register_keras_serializable(package="dkm_tf")
class KernelCodebook(keras.layers.Layer):
    """Owns one shared kernel codebook (K, kh, kw); ``call(x)`` returns it (x is ignored).

    Args:
        n_clusters: K.
        kernel_size: (kh, kw).
        codebook_id: the group id (``"kernel:3x3"``, ``"kernel:group0"``, ...).
        **kwargs: base layer arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, n_clusters, kernel_size, codebook_id="", **kwargs):
        super().__init__(**kwargs)
        self.n_clusters = int(n_clusters)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.codebook_id = str(codebook_id)
        self.codebook = self.add_weight(name="codebook", shape=(self.n_clusters,
                                                                *self.kernel_size),
                                        initializer="zeros", trainable=True)

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs):
        return ops.convert_to_tensor(self.codebook)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((self.n_clusters, *self.kernel_size), dtype=self.codebook.dtype)

    def get_config(self):
        return {**super().get_config(), "n_clusters": self.n_clusters,
                "kernel_size": list(self.kernel_size), "codebook_id": self.codebook_id}


def _transform(x, t):
    """:func:`dkm_tf.core.kernel_codebook.apply_transform` with keras ops on (K, kh, kw)."""
    y = ops.flip(x, axis=2) if t & 1 else x
    y = ops.flip(y, axis=1) if t & 2 else y
    return ops.flip(ops.transpose(y, (0, 2, 1)), axis=1) if t & 4 else y


@keras.saving.register_keras_serializable(package="dkm_tf")
class ClusterKernels(extras.KeepsReplacedFrozen, keras.layers.Wrapper):
    """A Conv2D whose kernel is ``s T_t(codebook[l])`` with the codebook given as an input.

    Called as ``wrapper(x, codebook=cb)`` with ``cb`` the output of its group's
    :class:`KernelCodebook`. Variables: ``scales`` (cin, cout) trainable, ``indices`` and
    ``transform_ids`` (cin, cout) int32 frozen, ``scale_step`` (int8 step of
    ``scale_bits=8``) frozen. The wrapped conv's own kernel no longer feeds the output
    (non-trainable, also when the wrapper is unfrozen; its regularizer applies to the shared
    kernel); its bias and everything else train. No attribute of the wrapped layer is
    written: its own ``call`` runs in a :class:`keras.StatelessScope` mapping its kernel to
    the shared one (as :class:`dkm_tf.ClusterWeights` does).

    Args:
        layer: the k x k Conv2D to wrap (built at the wrapper's build if it is not).
        n_clusters: K, the entries of the group's codebook (default 16).
        transforms: T, transforms per kernel: 1, 2, 4 or 8 (flips; 8 adds 90-degree turns).
        scale_bits: a stored scale's bits: 16 (float16), 8 (int8 times ``scale_step``) or 32.
        codebook_id: the group id, that of the group's :class:`KernelCodebook`.
        **kwargs: base layer arguments (``name``: default ``"cluster_<layer name>"``).
    """

    def __init__(self, layer, n_clusters=16, transforms=1, scale_bits=16, codebook_id="",
                 **kwargs):
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        kernel_share.check_kernel_options(transforms, scale_bits)
        self.n_clusters = int(n_clusters)
        self.transforms = int(transforms)
        self.scale_bits = int(scale_bits)
        self.codebook_id = str(codebook_id)

    def build(self, inputs_shape=None, codebook_shape=None):
        if not self.layer.built:
            self.layer.build(inputs_shape)
        kh, kw, cin, cout = self.layer.kernel.shape
        self.scales = self.add_weight(name="scales", shape=(cin, cout), initializer="ones",
                                      trainable=True)
        self.indices = self.add_weight(name="indices", shape=(cin, cout), dtype="int32",
                                       initializer="zeros", trainable=False)
        self.transform_ids = self.add_weight(name="transform_ids", shape=(cin, cout),
                                             dtype="int32", initializer="zeros",
                                             trainable=False)
        self.scale_step = self.add_weight(name="scale_step", shape=(), initializer="ones",
                                          trainable=False)
        self.layer.kernel.trainable = False
        self.built = True

    def stored_scales(self):
        """The scales as stored (float16 / int8 step / float32), straight-through gradient."""
        s = ops.convert_to_tensor(self.scales)
        if self.scale_bits == 32:
            return s
        if self.scale_bits == 16:
            q = ops.cast(ops.cast(s, "float16"), s.dtype)
        else:
            step = ops.convert_to_tensor(self.scale_step)
            r = ops.clip(ops.round(s / step), -127.0, 127.0)
            r = ops.where(ops.logical_and(ops.equal(r, 0.0), ops.not_equal(s, 0.0)),
                          ops.sign(s), r)
            q = r * step
        return s + ops.stop_gradient(q - s)

    def shared_kernel(self, codebook):
        """The kernel (kh, kw, cin, cout) from ``codebook`` (K, kh, kw)."""
        cb = ops.convert_to_tensor(codebook)
        idx = ops.convert_to_tensor(self.indices)
        if self.transforms > 1:
            cb = ops.concatenate([_transform(cb, t) for t in range(self.transforms)], axis=0)
            idx = idx + self.n_clusters * ops.convert_to_tensor(self.transform_ids)
        k = ops.take(cb, idx, axis=0) * self.stored_scales()[:, :, None, None]
        return ops.transpose(k, (2, 3, 0, 1))

    def call(self, inputs, codebook=None, **kwargs):
        if codebook is None:
            raise ValueError(f"Layer {self.name!r} needs its shared codebook: call it as "
                             "layer(x, codebook=codebook_layer(x)).")
        kernel = self.shared_kernel(codebook)
        var = self.layer.kernel
        others = [(v, v.value) for v in self.layer.variables if v is not var]
        reg = extras.user_regularizer(var) if self.trainable else None
        if reg is not None:  # the replaced kernel is not trainable: Keras would skip it
            self.add_loss(reg(kernel))
        with keras.StatelessScope(state_mapping=[(var, kernel), *others]):
            return self.layer(inputs, **kwargs)

    def compute_output_spec(self, inputs, codebook=None, **kwargs):
        return self.layer.compute_output_spec(inputs)

    def get_config(self):
        return {**super().get_config(), "n_clusters": self.n_clusters,
                "transforms": self.transforms, "scale_bits": self.scale_bits,
                "codebook_id": self.codebook_id}

    def palette(self, codebook):
        """The :class:`~dkm_tf.core.palette.Palette` of the current state (numpy), with
        ``codebook`` (K, kh, kw): the value of the group's :class:`KernelCodebook`."""
        s = keras.ops.convert_to_numpy(self.stored_scales()).T.reshape(1, -1)
        idx = keras.ops.convert_to_numpy(self.indices).T.reshape(1, -1)
        t = keras.ops.convert_to_numpy(self.transform_ids).T.reshape(1, -1)
        cb = np.asarray(codebook, np.float32)
        lay = units_lib.layout_for(tuple(self.layer.kernel.shape), "conv", "kernel",
                                   "per_tensor")
        return palette_lib.Palette(
            self.layer.name, "kernel", cb.reshape(1, cb.shape[0], -1), idx, lay,
            requested_clusters=self.n_clusters, codebook_id=self.codebook_id,
            note=f"kernel codebook {self.codebook_id} (fine-tuned)", scales=s,
            transforms=t if self.transforms > 1 else None, n_transforms=self.transforms,
            scale_bits=self.scale_bits)


# ----------------------------------------------------------------------------- model level
def _functional(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(f"Model {model.name!r} is not built with an input shape.")
        one = len(model.inputs) == 1 and len(model.outputs) == 1
        return keras.Model(model.inputs[0] if one else model.inputs,
                           model.outputs[0] if one else model.outputs, name=model.name)
    if not isinstance(model, keras.Model) or not hasattr(model, "_operations"):
        raise TypeError(f"Invalid type for argument `model`. Expected a Sequential or "
                        f"Functional keras.Model. Received: {type(model).__name__}")
    return model


def cluster_kernel_model(model, n_clusters=16, *, codebook="shared", transforms=1,
                         scale_bits=16, init="kmeans++", seed=0, overrides=None):
    """``cluster_weights(model, unit="kernel", codebook=...)``: wrap every k x k Conv2D; returns
    ``(clustered model, clustered rows, skipped rows)``, rows as in
    :class:`dkm_tf.training.clustering.ClusteringReport`."""
    check_seed(seed)
    codebook = kernel_share.check_codebook(codebook)
    excluded = kernel_share._excluded(overrides)  # noqa: SLF001
    clusterable.check_overrides(model, overrides, {})  # a key naming no layer would be ignored
    fmodel = _functional(model)
    top = {id(lay) for lay in fmodel.layers}
    groups, skipped = kernel_share.kernel_groups(
        [lay for lay in _leaves(fmodel)], codebook, excluded)
    nested = [lay.name for g in groups for lay in g.layers if id(lay) not in top]
    if nested:
        raise TypeError(f"cluster_weights(unit='kernel', codebook=...) needs the k x k convs "
                        f"at the top level of a Sequential/Functional model; nested: {nested}")
    if not groups:
        raise ValueError(f"cluster_weights(unit='kernel') found no k x k Conv2D to cluster in "
                         f"model {model.name!r}: {skipped}")
    pals = kernel_share.cluster_groups(groups, n_clusters, transforms=transforms,
                                       scale_bits=scale_bits, init=init, seed=seed)
    group_of = {id(lay): g for g in groups for lay in g.layers}
    holders, made = {}, {}

    def clone_function(layer):
        g = group_of.get(id(layer))
        if g is None:
            return copy_layer(layer)
        p = pals[layer.name]
        extras.warn_kernel_clustering_constraint(layer)
        w = ClusterKernels(copy_layer(layer), n_clusters=p.n_clusters, transforms=transforms,
                           scale_bits=scale_bits, codebook_id=g.codebook_id,
                           trainable=layer.trainable, dtype=layer.dtype_policy)
        w.build(tuple(layer.get_build_config()["input_shape"]))
        kh, kw, cin, cout = p.layout.kernel_shape
        w.scales.assign(p.scales.reshape(cout, cin).T)
        w.indices.assign(p.indices.reshape(cout, cin).T.astype(np.int32))
        if p.transforms is not None:
            w.transform_ids.assign(p.transforms.reshape(cout, cin).T.astype(np.int32))
        step = _step(p)
        w.scale_step.assign(step)
        if g.codebook_id not in holders:
            h = KernelCodebook(p.n_clusters, g.kernel_size, g.codebook_id,  # the conv's
                               name="codebook_" + g.codebook_id.replace(":", "_"),  # policy,
                               dtype=layer.dtype_policy)  # not the global one
            h.codebook.assign(p.codebook[0].reshape(-1, *g.kernel_size))
            holders[g.codebook_id] = h
        made[id(w)] = holders[g.codebook_id]
        return w

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, ClusterKernels):
            return layer(args[0], codebook=made[id(layer)](args[0]), **kwargs)
        return layer(*args, **kwargs)

    out = keep_dtype_policy(model, keras.models.clone_model(  # mixed_float16: loss scaling
        fmodel, clone_function=layers_only(clone_function), call_function=call_function))
    clustered = [(lay.name, type(lay).__name__,
                  {"n_clusters": int(n_clusters), "unit": "kernel", "codebook": g.codebook_id,
                   "granularity": "per_tensor", "init": init, "transforms": transforms,
                   "scale_bits": scale_bits}) for g in groups for lay in g.layers]
    kinds = {lay.name: type(lay).__name__ for lay in _leaves(fmodel)}
    return out, clustered, [(n, kinds.get(n, ""), why) for n, why in skipped]


def _step(p):
    if p.scale_bits != 8:
        return 1.0
    s = np.abs(p.scales[p.scales != 0])
    return float(s.max() / 127.0) if s.size else 1.0


def _leaves(model):
    return iter_layers(model)


def has_kernel_layers(model):
    """True when ``model`` holds :class:`ClusterKernels` wrappers."""
    return isinstance(model, keras.Model) and any(
        isinstance(lay, ClusterKernels) for lay in model.layers)


def kernel_palettes(model):
    """The current palettes of every :class:`ClusterKernels` of ``model`` (layer order)."""
    books = {lay.codebook_id: keras.ops.convert_to_numpy(lay.codebook)
             for lay in model.layers if isinstance(lay, KernelCodebook)}
    return [lay.palette(books[lay.codebook_id]) for lay in model.layers
            if isinstance(lay, ClusterKernels)]


def strip_kernel_model(model, *, fold_bn=True):
    """Plain Keras layers with the decoded kernels, and the palettes (shared codebooks).

    Returns:
        ``(plain model, palettes)``: each kernel equals ``palette.decode()`` exactly; with
        ``fold_bn`` a following BatchNormalization is folded into the scales
        (:func:`dkm_tf.graph.kernel_share.fold_kernel_palettes`).
    """
    pals = {p.layer_name: p for p in kernel_palettes(model)}

    def clone_function(layer):
        if isinstance(layer, ClusterKernels):
            inner = layer.layer
            dec = pals[inner.name].decode()
            return copy_layer(inner, [dec.astype(v.dtype) if v is inner.kernel
                                      else keras.ops.convert_to_numpy(v)
                                      for v in inner.weights])
        return copy_layer(layer)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Conv2D) and "codebook" in kwargs:
            kwargs.pop("codebook")
        return layer(*args, **kwargs)

    plain = keep_dtype_policy(model, keras.models.clone_model(
        model, clone_function=layers_only(clone_function), call_function=call_function))
    palettes = list(pals.values())
    if fold_bn:
        plain, palettes = kernel_share.fold_kernel_palettes(plain, palettes)
    return plain, palettes


# ----------------------------------------------------------------------------- API routing
_KERNEL_DOC = """
    Kernel clustering (``codebook``, ``transforms``, ``scale_bits``; Son et al., ECCV 2018):
    :mod:`dkm_tf.training.kernel_clustering`.
"""
_NOT_WITH_KERNEL = (("granularity", "per_tensor"), ("latent", False),
                    ("preserve_sparsity", False), ("kmeans_options", None),
                    ("assignment", "hard"), ("temperature", None), ("weighting", None),
                    ("data", None), ("loss", None), ("on_unsupported", "skip"))


def routes_cluster(report_cls):
    """Decorator of ``cluster_weights``: adds ``codebook``, ``transforms``, ``scale_bits``."""
    import functools  # noqa: PLC0415
    import inspect  # noqa: PLC0415

    def deco(fn):
        @functools.wraps(fn)
        def cluster_weights(model, n_clusters=16, *, codebook="layer", transforms=1,
                            scale_bits=16, **kwargs):
            others = {k: (kwargs[k], d) for k, d in _NOT_WITH_KERNEL if k in kwargs}
            if not kernel_share.kernel_route(kwargs.get("unit", "scalar"), codebook,
                                             transforms, scale_bits, **others):
                return fn(model, n_clusters, **kwargs)
            from dkm_tf.core.validate import check_bool  # noqa: PLC0415

            report = check_bool("return_report", kwargs.get("return_report", False))
            out, clustered, skipped = cluster_kernel_model(
                model, n_clusters, codebook=codebook, transforms=transforms,
                scale_bits=scale_bits, init=kwargs.get("init", "kmeans++"),
                seed=kwargs.get("seed", 0), overrides=kwargs.get("overrides"))
            rows = bn_fate.split_rows(model, skipped)  # BatchNormalization folded at strip
            return (out, report_cls(tuple(clustered), *map(tuple, rows))) if report else out

        sig = inspect.signature(fn)
        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                 for n, d in (("codebook", "layer"), ("transforms", 1), ("scale_bits", 16))]
        cluster_weights.__signature__ = sig.replace(parameters=[*sig.parameters.values(),
                                                                *extra])
        cluster_weights.__doc__ = (fn.__doc__ or "") + _KERNEL_DOC
        return cluster_weights
    return deco


def routes_strip(fn):
    """Decorator of ``strip_clustering``: a model with :class:`ClusterKernels` goes to
    :func:`strip_kernel_model` (palettes of shared codebooks)."""
    import functools  # noqa: PLC0415

    @functools.wraps(fn)
    def strip_clustering(model, *, fold_bn=True):
        if has_kernel_layers(model):
            from dkm_tf.core.validate import check_bool  # noqa: PLC0415

            return strip_kernel_model(model, fold_bn=check_bool("fold_bn", fold_bn))
        return fn(model, fold_bn=fold_bn)
    return strip_clustering


def routes_palettes(fn):
    """Decorator of ``palettes_of``: adds the palettes of :class:`ClusterKernels` layers."""
    import functools  # noqa: PLC0415

    @functools.wraps(fn)
    def palettes_of(model, max_clusters=256):
        out = fn(model, max_clusters)
        if not has_kernel_layers(model):
            return out
        inner = {lay.layer.name for lay in model.layers if isinstance(lay, ClusterKernels)}
        return [p for p in out if p.layer_name not in inner] + kernel_palettes(model)
    return palettes_of
