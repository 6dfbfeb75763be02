"""Post-training weight sharing: k-means on every clusterable kernel, no re-training.

This is the paper's "Deep k-Means WR" baseline (Wu et al., ICML 2018, §4: "without
re-training"): each kernel is replaced by its k-means reconstruction ``codebook[indices]``.
The model given is never modified; a copy is returned with the Palettes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np

from dkm_tf import palette as palette_lib
from dkm_tf._io import atomic_path
from dkm_tf._validate import check_choice, check_n_clusters
from dkm_tf.kmeans import INITS
from dkm_tf.units import GRANULARITIES, UNIT_CHOICES, resolve_unit

__all__ = ["ShareResult", "copy_model", "iter_layers", "save_model_atomic", "share_weights"]


@dataclasses.dataclass
class ShareResult:
    """What :func:`share_weights` returns.

    Attributes:
        model: a copy of the input model whose clustered kernels hold ``codebook[indices]``.
        palettes: list of :class:`~dkm_tf.palette.Palette`, one per clustered tensor.
        skipped: list of ``(layer_name, reason)`` for layers with weights left unclustered.
    """

    model: object
    palettes: list
    skipped: list

    def __iter__(self):  # allows ``model, palettes, skipped = share_weights(...)``
        return iter((self.model, self.palettes, self.skipped))


def iter_layers(model):
    """The leaf layers of a model, depth first through nested models; shared layers once."""
    from dkm_tf.clusterable import walk_layers  # noqa: PLC0415 (imports keras)

    return [layer for layer in walk_layers(model) if not getattr(layer, "layers", None)]


def build_like(new, layer, values=None):
    """Build ``new`` with ``layer``'s input shape and, if given, the weight ``values``.

    With ``values`` (``layer.get_weights()`` order) every weight is created directly from its
    value: no random initialiser, no second copy through ``set_weights`` (on VGG16 this is
    most of the cost of a copy). If the layer creates its weights in another order or through
    sublayers, the values are assigned with ``set_weights`` afterwards. Either way the fresh
    layer's random initialisers are swapped for zeros during ``build`` and put back.
    """
    import keras  # noqa: PLC0415

    build_config = layer.get_build_config()
    if build_config is None:
        raise ValueError(f"Layer {layer.name!r} is built but records no input shape "
                         "(get_build_config() is None); cannot copy it.")
    saved = {k: v for k, v in vars(new).items()
             if k.endswith("_initializer") and isinstance(v, keras.initializers.Initializer)}
    for k in saved:
        object.__setattr__(new, k, keras.initializers.Zeros())
    created = []
    if values is not None:
        object.__setattr__(new, "add_weight", _value_add_weight(new.add_weight, values, created))
    try:
        new.build_from_config(build_config)
    finally:
        new.__dict__.pop("add_weight", None)
        for k, v in saved.items():
            object.__setattr__(new, k, v)
    if values is not None and [id(v) for v in new.weights] != [id(v) for v in created]:
        new.set_weights(values)


def _value_add_weight(add_weight, values, created):
    """``add_weight`` that initialises the i-th weight created with ``values[i]``.

    The weights are not created in that order when ``created`` ends up differing from the
    layer's ``weights``: :func:`build_like` then falls back to ``set_weights``.
    """
    def patched(*args, **kwargs):
        i = len(created)
        shape = args[0] if args else kwargs.get("shape")
        if i < len(values) and shape is not None and tuple(shape) == values[i].shape:
            def init(shape, dtype=None, value=values[i]):
                return value
            if len(args) >= 2:
                args = (args[0], init, *args[2:])
            else:
                kwargs["initializer"] = init
        else:  # out of step: leave every later value to set_weights
            created.append(None)
        var = add_weight(*args, **kwargs)
        created.append(var)
        return var
    return patched


def copy_layer(layer, values=None):
    """A new layer with the same config and the same weight values (never shares state).

    ``values`` (``layer.get_weights()`` order) replace the layer's own weight values.
    """
    try:
        new = layer.__class__.from_config(layer.get_config())
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TypeError(f"Layer {layer.name!r} ({type(layer).__name__}) cannot be copied from "
                        "its config (it needs get_config()/from_config()).") from e
    if layer.built and layer.weights:
        build_like(new, layer, layer.get_weights() if values is None else values)
    return new


def is_graph_model(model):
    """True for Sequential and Functional models (what ``keras.models.clone_model`` copies)."""
    import keras  # noqa: PLC0415

    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def clone_uncompiled(model, clone_function):
    """``keras.models.clone_model(model, clone_function, recursive=True)``, never compiled.

    Keras re-compiles a cloned Sequential from its serialized compile config, which fails for
    a custom loss or metric that is not registered for serialization (a plain function in the
    user's script). Every caller here compiles its copy itself (with the original model's loss
    object), so the models are marked uncompiled while they are cloned.
    """
    import keras  # noqa: PLC0415

    from dkm_tf.clusterable import walk_layers  # noqa: PLC0415

    models = [model] + [m for m in walk_layers(model) if isinstance(m, keras.Model)]
    compiled = [m for m in models if getattr(m, "compiled", False)]
    for m in compiled:
        m.compiled = False
    try:
        return keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    finally:
        for m in compiled:
            m.compiled = True


def copy_model(model):
    """An independent, uncompiled copy of a Sequential or Functional model, same weights.

    Raises:
        TypeError: for subclassed models, which Keras cannot clone (the message says what to
            do instead), or when Keras fails to clone a Sequential/Functional model (the
            message gives Keras' reason).
    """
    return _copy_model(model, copy_layer)


class _NotACopyError(Exception):
    """Carries an error of a clone function's own work (its ``__cause__``) through
    :func:`_copy_model`, which would otherwise report it as a failure to copy."""


def _copy_model(model, clone_function):
    """``clone_uncompiled`` with Keras' failures turned into a TypeError that says what to do."""
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: {type(model).__name__}")
    try:  # layer copies built from their values: no random init of big kernels
        clone = clone_uncompiled(model, clone_function)
    except _NotACopyError as e:
        raise e.__cause__  # noqa: B904 - the original error, with its own traceback
    except Exception as e:  # subclassed models raise various errors here
        if is_graph_model(model):
            raise TypeError(f"Cannot copy model {model.name!r} ({type(model).__name__}): "
                            f"keras.models.clone_model failed: {e}") from e
        raise TypeError(
            f"Cannot copy model {model.name!r} of type {type(model).__name__}: only Sequential "
            "and Functional models (possibly nested) can be copied. For a subclassed model, "
            "build it as a Functional model, cluster its layers individually, or (post-"
            "training) call share_weights(model, ..., inplace=True)."
        ) from e
    return clone


@dataclasses.dataclass
class _ShareJob:
    """k-means of one weight for :func:`share_weights` (pure numpy: runs in any thread)."""

    layer_name: str
    attr: str
    var: object
    kernel: np.ndarray
    kind: str
    unit: str
    cfg: dict
    seed: int

    def run(self):
        return palette_lib.cluster_tensor(
            self.kernel, kind=self.kind, n_clusters=int(self.cfg["n_clusters"]), unit=self.unit,
            granularity=self.cfg["granularity"], init=self.cfg["init"], seed=self.seed,
            layer_name=self.layer_name, weight_name=self.attr,
            sparsity=float(self.cfg["sparsity"]))


def _share_plan(model, defaults, overrides, seed):
    """The weights :func:`share_weights` clusters (layer order) and the layers it skips."""
    from dkm_tf import clusterable  # noqa: PLC0415 (imports keras)

    jobs, skipped = [], []
    for i, layer in enumerate(iter_layers(model)):
        if not layer.weights:
            continue
        if not clusterable.is_clusterable(layer):
            skipped.append((layer.name, f"{type(layer).__name__} is not a supported kernel layer "
                                        f"(supported: {', '.join(clusterable.SUPPORTED_LAYERS)})"))
            continue
        cfg = clusterable.resolve_layer_config(layer, defaults, overrides)
        if cfg is None:
            skipped.append((layer.name, "excluded by overrides"))
            continue
        for attr, var, kind in clusterable.clusterable_weights(layer):
            kernel = np.asarray(var.numpy())
            jobs.append(_ShareJob(layer.name, attr, var, kernel, kind,
                                  resolve_unit(cfg["unit"], kind, kernel.shape), cfg, seed + i))
    return jobs, skipped


def share_weights(model, n_clusters=16, *, unit="scalar", granularity="per_tensor",
                  init="kmeans++", seed=0, overrides=None, sparsity=0.0, verbose=False,
                  inplace=False):
    """Cluster every supported kernel of a model with k-means (no re-training).

    Args:
        model: a built Sequential or Functional Keras model (not modified unless
            ``inplace``), or with ``inplace=True`` any built Keras model, subclassed ones
            included.
        n_clusters: K, centroids per codebook.
        unit: ``"scalar"``, ``"row"``, ``"kernel"`` (see :mod:`dkm_tf.units`) or ``"auto"``
            (the paper's choice: ``row`` for k x k convs, ``scalar`` for 1x1 convs and dense).
        granularity: ``"per_tensor"`` or ``"per_channel"``.
        init: k-means init, one of ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        seed: random seed (layer i uses ``seed + i``).
        overrides: dict keyed by layer name or class name with settings to change
            (``{"fc2": {"n_clusters": 64}}``) or ``None`` to leave a layer unclustered.
        sparsity: fraction of units per tensor fixed to an all-zero centroid (Deep k-Means'
            sparsity-promoting variant, §4.1.4); the rest share K - 1 centroids.
        verbose: print one line per clustered tensor.
        inplace: write the clustered values into ``model`` itself instead of a copy (needed
            for subclassed models, which Keras cannot clone; also saves the copy's memory).

    Returns:
        A :class:`ShareResult` ``(model, palettes, skipped)``; ``model`` is the input itself
        when ``inplace``.

    Raises:
        ValueError: invalid settings, or NaN/Inf in a kernel (the message names the layer).
        TypeError: the model cannot be copied (subclassed) and ``inplace`` is False.
    """
    check_n_clusters(n_clusters)
    check_choice("unit", unit, UNIT_CHOICES)
    check_choice("granularity", granularity, GRANULARITIES)
    check_choice("init", init, INITS)
    if not isinstance(inplace, bool):
        raise TypeError(f"Invalid type for argument `inplace`. Expected a bool. "
                        f"Received: inplace={inplace!r}")
    import keras  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: {type(model).__name__}")
    defaults = {"n_clusters": n_clusters, "unit": unit, "granularity": granularity,
                "init": init, "sparsity": sparsity}
    jobs, skipped = _share_plan(model, defaults, overrides, seed)
    if inplace:
        palettes = []
        for job in jobs:
            palettes.append(job.run())
            job.var.assign(palettes[-1].decode().astype(job.kernel.dtype))
        clone = model
    else:  # k-means in a thread pool while Keras copies the model; each copied layer is
        # built directly with its clustered values (no copy of the old kernel, no assign)
        from dkm_tf.clustering import KMEANS_THREADS  # noqa: PLC0415

        workers = min(KMEANS_THREADS, os.cpu_count() or 1)
        with concurrent.futures.ThreadPoolExecutor(workers, "dkm_tf-kmeans") as pool:
            futures = {id(j.var): pool.submit(j.run)
                       for j in sorted(jobs, key=lambda j: -j.kernel.size)}

            def clone_function(layer):
                if not any(id(v) in futures for v in layer.weights):
                    return copy_layer(layer)
                try:  # k-means errors (NaN weights, ...) are not copy failures
                    values = [futures[id(v)].result().decode().astype(v.dtype)
                              if id(v) in futures else v.numpy() for v in layer.weights]
                except Exception as e:
                    raise _NotACopyError from e
                return copy_layer(layer, values)

            try:
                clone = _copy_model(model, clone_function)
            finally:
                for f in futures.values():
                    f.cancel()
            palettes = [futures[id(j.var)].result() for j in jobs]
    if verbose:
        for job, pal in zip(jobs, palettes):
            print(f"  clustered {pal.name}: {job.kernel.size:,} weights -> K={pal.n_clusters} "
                  f"({job.unit}, d={pal.unit_dim}, {job.cfg['granularity']})", flush=True)
    return ShareResult(clone, palettes, skipped)


def save_model_atomic(model, path):
    """Save a Keras model to ``path`` (``.keras``) through a temp file and a rename."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Invalid value for argument `path`. Expected a file name ending in "
                         f"'.keras'. Received: path={path!r}")
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path
