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
needs no custom objects (both live in :mod:`dkm_tf.training.kernel_layers`). Sequential and
flat Functional models are supported (a nested model with k x k convs raises); a clustered
model used as a layer of another model is stripped with it, and its palettes listed.
"""

from __future__ import annotations

import keras
import numpy as np

from dkm_tf.core.validate import check_seed
from dkm_tf.graph import bn_fate, clusterable, kernel_share
from dkm_tf.graph.copying import copy_layer, iter_layers, keep_dtype_policy, layers_only
from dkm_tf.graph.optional_inputs import keep_optional_inputs
from dkm_tf.graph.result_objects import check_not_a_result
from dkm_tf.training import wrapper_extras as extras
from dkm_tf.training import wrapper_names
from dkm_tf.training.kernel_layers import ClusterKernels, KernelCodebook

__all__ = ["ClusterKernels", "KernelCodebook", "cluster_kernel_model", "has_kernel_layers",
           "kernel_palettes", "routes_cluster", "routes_palettes", "routes_strip",
           "strip_kernel_model"]


# ----------------------------------------------------------------------------- model level
def _functional(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ValueError(f"Model {model.name!r} is not built with an input shape.")
        one = len(model.inputs) == 1 and len(model.outputs) == 1
        return keras.Model(model.inputs[0] if one else model.inputs,
                           model.outputs[0] if one else model.outputs, name=model.name)
    if not isinstance(model, keras.Model) or not hasattr(model, "_operations"):
        check_not_a_result(model)  # a FoldResult, a (model, palettes) tuple
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
    _check_frozen_groups(groups, codebook)
    pals = kernel_share.cluster_groups(groups, n_clusters, transforms=transforms,
                                       scale_bits=scale_bits, init=init, seed=seed)
    group_of = {id(lay): g for g in groups for lay in g.layers}
    holders, made = {}, {}
    plan = wrapper_names.plan_names(fmodel, lambda lay: id(lay) in group_of)  # `cluster_c`
    taken = {op.name for op in fmodel.operations} | set(plan.values()) | {  # beside a float
        f"cluster_{lay.name}" for lay in _leaves(fmodel)}  # `c`: `cluster_c_1`; a layer
    # named `codebook_kernel_3x3`: the codebook layer `codebook_kernel_3x3_1`

    def clone_function(layer):
        g = group_of.get(id(layer))
        if g is None:
            return copy_layer(layer)
        p = pals[layer.name]
        extras.warn_kernel_clustering_constraint(layer)
        extras.warn_scale_loss(p)  # kernels whose float16 scale is 0: zero from the start
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
                               name=wrapper_names.free_name(  # policy,
                                   "codebook_" + g.codebook_id.replace(":", "_"), taken),
                               dtype=layer.dtype_policy,  # not the global one; frozen with
                               trainable=any(lay.trainable for lay in g.layers),  # its convs
                               frozen_with_users=not any(lay.trainable for lay in g.layers))
            h.codebook.assign(p.codebook[0].reshape(-1, *g.kernel_size))
            holders[g.codebook_id] = h
        made[id(w)] = holders[g.codebook_id]
        return w

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, ClusterKernels):
            return layer(args[0], codebook=made[id(layer)](args[0]), **kwargs)
        return layer(*args, **kwargs)

    named = wrapper_names.named(plan, clone_function)
    out = keep_dtype_policy(model, keras.models.clone_model(  # mixed_float16: loss scaling
        fmodel, clone_function=layers_only(named), call_function=call_function))
    keep_optional_inputs(model, out)
    clustered = [(lay.name, type(lay).__name__,
                  {"n_clusters": int(n_clusters), "unit": "kernel", "codebook": g.codebook_id,
                   "granularity": "per_tensor", "init": init, "transforms": transforms,
                   "scale_bits": scale_bits, "frozen": not lay.trainable})
                 for g in groups for lay in g.layers]
    kinds = {lay.name: type(lay).__name__ for lay in _leaves(fmodel)}
    return out, clustered, [(n, kinds.get(n, ""), why) for n, why in skipped]


def _check_frozen_groups(groups, codebook):
    """Refuse a codebook group that shares one trainable codebook between frozen
    (``trainable=False``) and trainable convs: training would move the frozen convs' kernels;
    and a trainable conv whose kernel variable alone is frozen (its kernel moved 0.080)."""
    alone = [lay.name for g in groups for lay in g.layers
             if lay.trainable and not lay.kernel.trainable]
    if alone:
        raise ValueError(
            f"Invalid value for argument `model`. Expected convs whose kernel is trainable "
            f"when the conv is (kernel clustering trains a conv's kernel through its scales "
            f"and its group's codebook). Received: convs {alone} with "
            f"layer.kernel.trainable=False in a trainable layer. Freeze the whole conv "
            f"(layer.trainable = False), leave it float with overrides={{{alone[0]!r}: None, "
            f"...}}, or make its kernel trainable.")
    split = [[lay.name for lay in g.layers if lay.trainable == t]
             for g in groups for t in (False, True)]
    split = [names for names in split if names]
    for g in groups:
        frozen = [lay.name for lay in g.layers if not lay.trainable]
        if frozen and len(frozen) < len(g.layers):
            live = [lay.name for lay in g.layers if lay.trainable]
            raise ValueError(
                f"Invalid value for argument `codebook`. Expected codebook groups whose convs "
                f"are all trainable or all frozen (one codebook is shared by its group, so "
                f"training the trainable convs would change the frozen convs' kernels). "
                f"Received: codebook={codebook!r}, whose group {g.codebook_id!r} holds frozen "
                f"{frozen} and trainable {live}. Give the frozen convs their own group, e.g. "
                f"codebook={split!r} (every group, split by trainable), leave them float with "
                f"overrides={{{frozen[0]!r}: None, ...}}, or unfreeze them.")


def _step(p):
    if p.scale_bits != 8:
        return 1.0
    s = np.abs(p.scales[p.scales != 0])
    return float(s.max() / 127.0) if s.size else 1.0


def _leaves(model):
    return iter_layers(model)


def _kernel_models(model, seen=None):
    """``model`` and every model nested in it that holds :class:`ClusterKernels` wrappers
    (a clustered model used as a layer of another: its wrappers are not in ``model.layers``)."""
    seen = set() if seen is None else seen
    if not isinstance(model, keras.Model) or id(model) in seen:
        return []
    seen.add(id(model))
    own = [model] if any(isinstance(lay, ClusterKernels) for lay in model.layers) else []
    return own + [m for lay in model.layers for m in _kernel_models(lay, seen)]


def has_kernel_layers(model):
    """True when ``model`` holds :class:`ClusterKernels` wrappers (also in nested models)."""
    return bool(_kernel_models(model))


def _own_palettes(model):
    """``{id(wrapper): palette}`` of the wrappers of ``model`` itself (its own codebooks)."""
    books = {lay.codebook_id: keras.ops.convert_to_numpy(lay.codebook)
             for lay in model.layers if isinstance(lay, KernelCodebook)}
    return {id(lay): lay.palette(books[lay.codebook_id]) for lay in model.layers
            if isinstance(lay, ClusterKernels)}


def kernel_palettes(model):
    """The current palettes of every :class:`ClusterKernels` of ``model`` (layer order; nested
    clustered models included, each with its own codebooks)."""
    pals = [p for m in _kernel_models(model) for p in _own_palettes(m).values()]
    names = [p.layer_name for p in pals]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:  # palettes are matched to layers by name: one would describe the other's kernel
        raise ValueError(f"Invalid value for argument `model`. Expected kernel-clustered convs "
                         f"with distinct names (palettes are matched to layers by name). "
                         f"Received: model {model.name!r} with several layers named {dup}")
    return pals


def strip_kernel_model(model, *, fold_bn=True):
    """Plain Keras layers with the decoded kernels, and the palettes (shared codebooks).

    Returns:
        ``(plain model, palettes)``: each kernel equals ``palette.decode()`` exactly; with
        ``fold_bn`` a following BatchNormalization is folded into the scales
        (:func:`dkm_tf.graph.kernel_share.fold_kernel_palettes`). Clustered models nested
        in ``model`` are stripped too.
    """
    palettes = kernel_palettes(model)  # checks the names
    plain = _strip(model)
    if fold_bn:
        plain, palettes = kernel_share.fold_kernel_palettes(plain, palettes)
    return plain, palettes


def _strip(model):
    pals = _own_palettes(model)

    def clone_function(layer):
        if isinstance(layer, ClusterKernels):
            inner = layer.layer
            dec = pals[id(layer)].decode()
            return copy_layer(inner, [dec.astype(v.dtype) if v is inner.kernel
                                      else keras.ops.convert_to_numpy(v)
                                      for v in inner.weights])
        if has_kernel_layers(layer):  # a nested clustered model: it was copied with its
            return _strip(layer)  # wrappers, and no palettes
        return copy_layer(layer)

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.Conv2D) and "codebook" in kwargs:
            kwargs.pop("codebook")
        return layer(*args, **kwargs)

    return keep_optional_inputs(model, keep_dtype_policy(model, keras.models.clone_model(
        model, clone_function=layers_only(clone_function),
        **({"call_function": call_function} if pals else {}))))


# ----------------------------------------------------------------------------- API routing
_KERNEL_DOC = """
    Kernel clustering (``codebook``, ``transforms``, ``scale_bits``; Son et al., ECCV 2018):
    :mod:`dkm_tf.training.kernel_clustering`. A codebook group's convs must be all trainable
    or all frozen (a ``ValueError`` otherwise: one shared codebook would move the frozen
    kernels); a frozen group's codebook layer is frozen too.
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
                with wrapper_names.overrides_scope(kwargs.get("overrides")):  # unique names
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


_VERBOSE_DOC = """
        verbose: (keyword, default False) True prints a heartbeat line every 15 s while
            palettes are computed (:mod:`dkm_tf.graph.heartbeat`), naming the wrapped layers
            still running: a soft (``assignment="soft"``) wrapper's snap to hard assignments
            takes 110 s for a 2048 x 2048 Dense at K = 256. Nothing is printed (and no
            thread started) without it."""


def _with_verbose(fn, wrapper):
    """``wrapper`` documented as ``fn`` plus its keyword ``verbose``."""
    import functools  # noqa: PLC0415
    import inspect  # noqa: PLC0415

    wrapper = functools.wraps(fn)(wrapper)
    sig = inspect.signature(fn)
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), inspect.Parameter(
        "verbose", inspect.Parameter.KEYWORD_ONLY, default=False)])
    doc = fn.__doc__ or ""  # the entry goes at the end of the Args section
    wrapper.__doc__ = (doc.replace("\n\n    Returns:", _VERBOSE_DOC + "\n\n    Returns:", 1)
                       if "\n\n    Returns:" in doc else doc + _VERBOSE_DOC)
    return wrapper


def _progress(model, verbose):
    """The heartbeat of ``strip_clustering`` / ``palettes_of`` (checked ``verbose``)."""
    from dkm_tf.core.validate import check_bool  # noqa: PLC0415
    from dkm_tf.graph.heartbeat import progress  # noqa: PLC0415
    from dkm_tf.training.wrapper import ClusterWeights  # noqa: PLC0415

    verbose = check_bool("verbose", verbose)
    layers = [model, *clusterable.walk_layers(model)] if verbose else []
    return progress(verbose, sum(isinstance(lay, ClusterWeights) for lay in layers),
                    "wrapper(s)", doing="palettes running")


def routes_strip(fn):
    """Decorator of ``strip_clustering``: a model with :class:`ClusterKernels` goes to
    :func:`strip_kernel_model` (palettes of shared codebooks); adds ``verbose``."""

    def strip_clustering(model, *, fold_bn=True, verbose=False):
        from dkm_tf.core.loss_kind import keep_source_loss  # noqa: PLC0415
        from dkm_tf.core.validate import check_bool  # noqa: PLC0415

        with _progress(model, verbose):
            plain, palettes = (strip_kernel_model(model, fold_bn=check_bool("fold_bn", fold_bn))
                               if has_kernel_layers(model) else fn(model, fold_bn=fold_bn))
        return keep_source_loss(model, plain), palettes  # the loss to_tflite's check reads
    return _with_verbose(fn, strip_clustering)


def routes_palettes(fn):
    """Decorator of ``palettes_of``: adds the palettes of :class:`ClusterKernels` layers, and
    ``verbose``."""

    def palettes_of(model, max_clusters=256, *, verbose=False):
        with _progress(model, verbose):
            out = fn(model, max_clusters)
        if not has_kernel_layers(model):
            return out
        inner = {lay.layer.name for m in _kernel_models(model) for lay in m.layers
                 if isinstance(lay, ClusterKernels)}
        return [p for p in out if p.layer_name not in inner] + kernel_palettes(model)
    return _with_verbose(fn, palettes_of)
