"""Folding BatchNormalization into the kernel and bias of the layer that feeds it.

In inference mode a BatchNormalization (Ioffe & Szegedy, ICML 2015, Algorithm 2) computes,
per channel c, ``y_c = gamma_c (x_c - mean_c) / sqrt(var_c + eps) + beta_c`` with its moving
statistics. When ``x = W * u + b`` comes from a convolution or dense layer with a linear
activation, the pair is one affine layer:

    s   = gamma / sqrt(var + eps)              (gamma = 1 when scale=False)
    W'  = W * s   over the output-channel axis  (W'[..., c] = W[..., c] s_c for Conv/Dense)
    b'  = (b - mean) * s + beta                 (b = 0 when use_bias=False; beta = 0 when
                                                 center=False)

The output-channel axis depends on the layer: the last kernel axis for Conv1D/2D/3D, Dense
and the pointwise kernel of SeparableConv1D/2D; the second-to-last for Conv*Transpose
(kernel ``(*k, out, in)``); both channel axes of a depthwise kernel ``(*k, in, multiplier)``,
whose output channel is ``c = i * multiplier + m``. Through ``TimeDistributed`` wrappers
the same fold applies to the wrapped layers (:mod:`dkm_tf.graph.bn_wrapped`).

The TFLite converter does this folding itself, so a palettized export has to find the folded
kernel, not the clustered one: :func:`fold_batch_norm` folds before clustering (what
:func:`~dkm_tf.graph.share.share_weights` does by default), and
:mod:`dkm_tf.graph.batchnorm_palettes` turns the palettes of an unfolded kernel into exact
palettes of the folded one (codebook of channel c = codebook * s_c), which is what
``strip_clustering`` and ``to_tflite`` use.
"""

from __future__ import annotations

import collections
import dataclasses

import keras
import numpy as np

from dkm_tf.graph.bn_kernel import FOLDABLE as _FOLDABLE
from dkm_tf.graph.bn_kernel import entry as _entry
from dkm_tf.graph.bn_wrapped import (
    axis_problem,
    folded_layer,
    kind,
    time_distributed,
    wrapper_problem,
)
from dkm_tf.graph.clusterable import walk_layers
from dkm_tf.graph.copying import (
    _named_inputs,
    _restore_model_flags,
    copy_layer,
    is_graph_model,
    layers_only,
)
from dkm_tf.graph.layer_names import wrapped_layer
from dkm_tf.graph.layer_paths import attr_path, layer_paths
from dkm_tf.graph.optional_inputs import keep_optional_inputs
from dkm_tf.graph.result_objects import check_not_a_result

__all__ = ["FOLDABLE_LAYERS", "FoldResult", "fold_batch_norm", "maybe_fold"]

_L = keras.layers
FOLDABLE_LAYERS = tuple(cls.__name__ for cls, _, _ in _FOLDABLE)
_DROPPED = object()  # what a folded BatchNormalization is "cloned" into: its call is skipped


@dataclasses.dataclass
class FoldResult:
    """What :func:`fold_batch_norm` returns; unpacks as ``model, folded, skipped``.

    Attributes:
        model: the new model, without the folded BatchNormalization layers.
        folded: ``(layer_name, bn_name)`` for every BatchNormalization folded into a layer.
        skipped: ``(bn_name, reason)`` for every BatchNormalization left in the model.
        scales: ``{"layer/kernel": multiplier}``: the float64 array (broadcastable to the
            kernel) that each folded kernel was multiplied by, s laid out on its channel axes;
            only for layers whose name no other layer of the model holding that weight has.
        paths: the same for every folded kernel, keyed by its layer's path through the nested
            models (``{"a/conv/kernel": multiplier}``): two nested blocks may each hold a
            ``conv`` (``layer_paths.layer_paths``).
        folded_paths: ``(layer path, bn path)`` for every folded BatchNormalization.
    """

    model: object
    folded: list
    skipped: list
    scales: dict = dataclasses.field(default_factory=dict)
    paths: dict = dataclasses.field(default_factory=dict)
    folded_paths: list = dataclasses.field(default_factory=list)

    def __iter__(self):  # allows ``model, folded, skipped = fold_batch_norm(...)``
        return iter((self.model, self.folded, self.skipped))

    def summary(self):
        lines = [f"folded {len(self.folded)} BatchNormalization layer(s), left "
                 f"{len(self.skipped)}"]
        lines += [f"  + {bn} -> {layer}" for layer, bn in self.folded]
        lines += [f"  - {bn}: {reason}" for bn, reason in self.skipped]
        return "\n".join(lines)


@dataclasses.dataclass
class _Plan:
    fold: dict = dataclasses.field(default_factory=dict)  # id(layer) -> bn (unwrapped)
    drop: set = dataclasses.field(default_factory=set)  # id(bn's graph layer)
    ops: list = dataclasses.field(default_factory=list)  # the graph layer of each folded bn
    folded: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)


def _graph_nodes(model):
    nodes = model._nodes_by_depth  # noqa: SLF001 (what keras.models.clone_model walks too)
    return [n for d in sorted(nodes, reverse=True) for n in nodes[d]
            if n.operation is not None and not n.is_input]


def _calls(model):
    """For each call in ``model``: (layer, the layer whose output is its single input or None,
    call kwargs, whether that output feeds this call only)."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        return [(layer, layers[i - 1] if i else None, {}, True)
                for i, layer in enumerate(layers)]
    nodes = _graph_nodes(model)
    consumers = collections.Counter(id(t) for n in nodes for t in n.input_tensors)
    consumers.update(id(t) for t in model.outputs)
    out = []
    for n in nodes:
        prev, sole = None, False
        if len(n.input_tensors) == 1:
            t = n.input_tensors[0]
            prev = t._keras_history.operation  # noqa: SLF001
            sole = consumers[id(t)] == 1
            if isinstance(prev, _L.InputLayer):
                prev = None
        out.append((n.operation, prev, dict(n.arguments.kwargs), sole))
    return out


def _check_statistics(bn):
    for name in ("moving_mean", "moving_variance", "gamma", "beta"):
        var = getattr(bn, name, None)
        if var is not None and not np.all(np.isfinite(keras.ops.convert_to_numpy(var))):
            raise ValueError(f"Invalid model: BatchNormalization {bn.name!r} has non-finite "
                             f"values (NaN or Inf) in its {name}; its inference output is not "
                             "defined, so it can be neither folded nor exported. Fix or retrain "
                             "that layer.")
    var = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
    if np.any(var + bn.epsilon <= 0):
        raise ValueError(f"Invalid model: BatchNormalization {bn.name!r} has moving_variance + "
                         f"epsilon <= 0 (min moving_variance {var.min():.3g}, epsilon "
                         f"{bn.epsilon:g}); 1 / sqrt(var + eps) is not defined.")


def _why_not(prev, op, sole, uses):
    """None when the batch norm of graph layer ``op`` (a BatchNormalization, or a
    TimeDistributed of one: :mod:`.bn_wrapped`), called on ``prev``'s output, folds into
    ``prev`` (a conv / dense layer or a TimeDistributed of one), else the reason."""
    bn, bn_wrappers = time_distributed(op)
    shared = max(uses[id(x)] for x in (op, *bn_wrappers, bn))
    if shared > 1:
        return f"the BatchNormalization is called {shared} times (shared layer)"
    if prev is None:
        return "its input is a model input (or several tensors), not one layer's output"
    inner, wrappers = time_distributed(prev)
    entry = _entry(inner)
    if entry is None:
        return (f"it follows {kind(prev)} {prev.name!r}, not a conv or dense layer "
                "it folds into (FOLDABLE_LAYERS)")
    cls = entry[0]
    if any(getattr(type(inner), m, None) is not getattr(cls, m, None)
           for m in ("call", "convolution_op")):
        return (f"{inner.name!r} ({type(inner).__name__}) overrides call(); folding could "
                "change what it computes")
    problem = wrapper_problem(wrappers + bn_wrappers)
    if problem:
        return problem
    for x in (prev, *wrappers[1:], inner):
        if uses[id(x)] > 1:
            return f"{x.name!r} is called {uses[id(x)]} times (shared layer)"
    if not sole:
        return f"the output of {prev.name!r} also feeds other layers or is a model output"
    act = inner.activation
    if act is not keras.activations.linear:
        name = getattr(act, "__name__", type(act).__name__)
        return f"{inner.name!r} applies activation {name!r} before the BatchNormalization"
    if getattr(getattr(inner, "dtype_policy", None), "quantization_mode", None):
        return f"{inner.name!r} is quantized ({inner.dtype_policy.name}; fold the float model)"
    if getattr(inner, "lora_enabled", False):
        return (f"{inner.name!r} has LoRA enabled (fold a merged copy: "
                "dkm_tf.graph.layer_features.merge_lora(model)[0]; share_weights merges itself)")
    if not (prev.built and inner.built):
        return f"{prev.name!r} is not built"
    return axis_problem(prev, inner, len(wrappers), op, bn)


def _analyse(model, plan, uses, seen, see_through=False):
    if id(model) in seen:
        return
    seen.add(id(model))
    for layer, prev, kwargs, sole in _calls(model):
        if isinstance(layer, keras.Model):
            if is_graph_model(layer):
                _analyse(layer, plan, uses, seen, see_through)
            else:
                plan.skipped += [(bn.name, f"inside subclassed model {layer.name!r}, which "
                                  "cannot be rebuilt") for bn in walk_layers(layer)
                                 if isinstance(time_distributed(bn)[0],
                                               _L.BatchNormalization)]
        bn = time_distributed(layer)[0]  # a TimeDistributed(BatchNormalization) too
        if not isinstance(bn, _L.BatchNormalization) or id(layer) in plan.drop:
            continue
        if kwargs.get("training") is True:
            raise ValueError(f"Invalid model: BatchNormalization {layer.name!r} is called with "
                             "training=True in the model graph, so even at inference it "
                             "normalizes with the statistics of each batch, not its moving "
                             "statistics: it cannot be folded, and Keras and an exported "
                             "model would disagree. Rebuild the model without training=True.")
        if not (layer.built and bn.built):
            plan.skipped.append((layer.name, "the BatchNormalization is not built"))
            continue
        _check_statistics(bn)
        if see_through and wrapped_layer(prev) is not None:  # a wrapper called twice: its
            inner = wrapped_layer(prev)  # stripped layer is too
            uses[id(inner)] = max(uses[id(inner)], uses[id(prev)])
            prev = inner
        reason = _why_not(prev, layer, sole, uses)
        if reason is None:
            plan.fold[id(prev)] = bn
            plan.drop.add(id(layer))
            plan.ops.append(layer)
            plan.folded.append((prev.name, layer.name))
        elif layer.name not in {n for n, _ in plan.skipped}:
            plan.skipped.append((layer.name, reason))


def _count_uses(model, uses, seen):
    if id(model) in seen:
        return
    seen.add(id(model))
    for layer, *_ in _calls(model):
        uses[id(layer)] += 1
        _wrapped_uses(layer, uses)
        if isinstance(layer, keras.Model) and is_graph_model(layer):
            _count_uses(layer, uses, seen)
        _pipeline_uses(layer, uses, seen)


def _wrapped_uses(layer, uses):
    """Counts a call of the layers inside ``TimeDistributed`` / clustering wrappers: ``d``
    called alone and as ``TimeDistributed(d)`` is called twice (folding into one changes
    both)."""
    while isinstance(layer, _L.TimeDistributed) or wrapped_layer(layer) is not None:
        layer = layer.layer
        uses[id(layer)] += 1


def _pipeline_uses(layer, uses, seen):
    """Counts a call of each layer inside `keras.layers.Pipeline` `layer` (not a graph node:
    before 2026-12-07 a conv called in a Pipeline and outside was folded into the batch norm
    after its outer call, a second conv in a palettized file where the converter computes
    the two calls once, as in the float file, and keeps the batch norm)."""
    for sub in getattr(layer, "layers", ()) if isinstance(layer, keras.layers.Pipeline) else ():
        uses[id(sub)] += 1
        _wrapped_uses(sub, uses)
        if isinstance(sub, keras.Model) and is_graph_model(sub):
            _count_uses(sub, uses, seen)
        _pipeline_uses(sub, uses, seen)


def _plan(model, see_through=False):
    """The fold plan; ``see_through``: a BatchNormalization after a clustering wrapper is
    judged against the layer it wraps, as ``strip_clustering`` folds it (``bn_fate``)."""
    if not isinstance(model, keras.Model):
        check_not_a_result(model)
        raise TypeError("Invalid type for argument `model`. Expected a keras.Model. "
                        f"Received: {type(model).__name__}")
    if not is_graph_model(model):
        raise TypeError(f"Cannot fold BatchNormalization in model {model.name!r} of type "
                        f"{type(model).__name__}: only Sequential and Functional models "
                        "(possibly nested) can be rebuilt. Build it as a Functional model.")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; build it first (call it on data "
                         "or give it an Input).")
    uses = collections.Counter()
    _count_uses(model, uses, set())
    plan = _Plan()
    _analyse(model, plan, uses, set(), see_through)
    return plan


def _rebuild(model, plan, memo, scales, path_of=None):
    path_of = path_of or {}

    def clone(layer):
        if id(layer) not in memo:
            if isinstance(layer, keras.Model) and is_graph_model(layer):
                memo[id(layer)] = _rebuild(layer, plan, memo, scales, path_of)
            elif id(layer) in plan.drop:
                memo[id(layer)] = _DROPPED
            elif id(layer) in plan.fold:
                memo[id(layer)] = folded_layer(layer, plan.fold[id(layer)], scales,
                                               path_of.get(id(layer)))
            else:
                memo[id(layer)] = copy_layer(layer)
        return memo[id(layer)]

    if isinstance(model, keras.Sequential):
        first = model._layers[0] if model._layers else None  # noqa: SLF001
        if not isinstance(first, _L.InputLayer):
            raise ValueError(f"Sequential model {model.name!r} has no input layer; build it "
                             "with keras.Input(...) first.")
        inp = keras.Input(batch_shape=first.batch_shape, dtype=first.dtype, name=first.name,
                          optional=first.optional)
        layers = [clone(layer) for layer in model.layers if id(layer) not in plan.drop]
        return keras.Sequential([inp, *layers], name=model.name, trainable=model.trainable)

    def call(op, *args, **kwargs):
        return args[0] if op is _DROPPED else op(*args, **kwargs)

    compiled = getattr(model, "compiled", False)
    if compiled:  # Keras would re-compile the copy from the compile config
        model.compiled = False
    try:
        return keep_optional_inputs(model, keras.models.clone_model(
            model, input_tensors=_named_inputs(model), clone_function=layers_only(clone),
            call_function=call))
    finally:
        if compiled:
            model.compiled = True


def fold_batch_norm(model):
    """Fold every BatchNormalization that directly follows a conv or dense layer into it.

    A new model is returned; ``model`` is never modified. A BatchNormalization is folded into
    the layer before it when that layer is a Conv1D/2D/3D, Conv1D/2D/3DTranspose,
    DepthwiseConv1D/2D, SeparableConv1D/2D (into its pointwise kernel) or Dense with a linear
    activation, called once, whose output feeds nothing else, and the BatchNormalization
    normalizes its channel axis. Either of them may be wrapped in ``TimeDistributed``
    (:mod:`dkm_tf.graph.bn_wrapped`: the fold of the wrapped layers, its kernel multiplier
    keyed ``"td/layer.kernel"``). With the inference statistics (module docstring):

        s = gamma / sqrt(moving_variance + epsilon),  W'[..., c] = W[..., c] s_c,
        b' = (b - moving_mean) s + beta

    (gamma = 1 for ``scale=False``, beta = 0 for ``center=False``; a bias is created when the
    layer had ``use_bias=False``). The folded model computes the same function up to float
    rounding (about 1e-6 relative). Every other BatchNormalization stays, and
    ``result.skipped`` says why. Nested Sequential/Functional models are rebuilt too.

    Args:
        model: a built Sequential or Functional Keras model.

    Returns:
        A :class:`FoldResult` ``(model, folded, skipped)`` (plus ``scales``, ``paths``,
        ``folded_paths``); the model is uncompiled.

    Raises:
        TypeError: ``model`` is not a Sequential or Functional model.
        ValueError: the model is not built; a BatchNormalization has non-finite statistics or
            ``moving_variance + epsilon <= 0``; or one is called with ``training=True`` in
            the graph (it would normalize by batch statistics even at inference).
    """
    plan = _plan(model)
    paths, by_path = layer_paths(model), {}
    path_of = {id(lay): path for path, lay in paths}
    new = _rebuild(model, plan, {}, by_path, path_of)
    # clone_model drops a nested Functional model's own flag (a frozen base reads trainable)
    _restore_model_flags(*([m, *(x for x in walk_layers(m) if isinstance(x, keras.Model))]
                           for m in (model, new)))
    return FoldResult(new, plan.folded, plan.skipped, _by_name(paths, by_path), by_path,
                      [(path_of.get(k, prev), path_of.get(id(bn), bn.name))
                       for (k, bn), (prev, _) in zip(plan.fold.items(), plan.folded)])


def _by_name(paths, by_path):
    """``FoldResult.scales``: ``by_path`` keyed ``layer/attr`` where the name is one layer's."""
    layer_at, out = dict(paths), {}
    for key, mult in by_path.items():
        path, _, attr = key.rpartition("/")
        name = layer_at[path].name
        if sum(lay.name == name and attr_path(lay, attr) is not None
               for _, lay in paths) == 1:
            out[f"{name}/{attr}"] = mult
    return out


def maybe_fold(model):
    """:func:`fold_batch_norm`, except that with nothing to fold ``model`` itself is returned
    (no copy) in the result; subclassed models are returned as they are, with no report."""
    if not (isinstance(model, keras.Model) and is_graph_model(model) and model.built):
        return FoldResult(model, [], [])
    plan = _plan(model)
    if not plan.folded:
        return FoldResult(model, [], plan.skipped)
    return fold_batch_norm(model)
