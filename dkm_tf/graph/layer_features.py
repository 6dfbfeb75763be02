"""Keras 3 layer features that change what a kernel *is*: LoRA and quantization.

* **LoRA** (``layer.enable_lora(rank)`` on Dense, EinsumDense, Conv*, Embedding): the layer
  computes with ``kernel + lora_kernel_a @ lora_kernel_b * (lora_alpha / rank)``;
  ``layer.kernel`` is that sum (a tensor), ``layer._kernel`` the frozen base variable.
  Measured before 2026-12-05: ``share_weights(n_clusters=2)`` returned the palette
  ``fc1/kernel K=2`` of the merged kernel but a copy that still had LoRA enabled and
  computed with 128 distinct kernel values (8 x 16 kernel): no variable received the
  clustered values. Keras has no public "merge" method, so :func:`merge_lora` makes one: a
  copy of the model in which each LoRA-enabled layer is a plain layer whose kernel is the
  merged one, cast to the kernel's dtype (what the layer computes with, up to that rounding).
  ``share_weights``, ``cluster_weights`` and ``compress`` cluster that copy and say so; the
  user's model is never modified. A layer whose LoRA sits in a sublayer (a
  ``MultiHeadAttention``'s ``query_dense``) is merged the same way.
* **Quantization** (``model.quantize("int8" | "int4" | "float8")``; Keras 3.15 quantizes
  Dense, EinsumDense and Embedding, not Conv): an int8 / int4 layer stores integer codes and
  scales and quantizes its inputs at call time; a float8 one fake-quantizes its inputs and
  kernel with running scales. None holds the float kernel it computes with, and a float copy
  (a dequantized kernel, float inputs) would compute something else, so every entry point
  refuses them eagerly (:func:`check_not_quantized`), naming the layer and the mode:
  cluster the float model, then quantize. Measured before: ``share_weights`` clustered the
  int8 codes (the palette's codebook held integers, not weights; outputs off by 1.32), left an
  int4 layer unchanged under a ``K=2`` palette (16 values), and failed on float8 inside Keras'
  ``clone_model``; ``cluster_weights`` fine-tuned int8 codes and ``attach_regularizer``
  regularized them (non-trainable int8 variables).
"""

from __future__ import annotations

import keras

from dkm_tf.graph import quantized
from dkm_tf.graph.quantized import among, layers_below, quantization_mode, quantized_layers

__all__ = ["check_not_quantized", "lora_layers", "lora_note", "lora_paths", "merge_lora",
           "quantized_layers", "quantization_mode", "refuse_lora"]

_LORA_VARS = ("lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b")
LORA_NOTE = ("LoRA merged: clustered the layer's effective kernel kernel + lora_kernel_a @ "
             "lora_kernel_b * (lora_alpha / rank), a plain kernel in the returned copy")


def check_not_quantized(model, what, layers=None, overrides=None, **kwargs):
    """:func:`dkm_tf.graph.quantized.check_not_quantized`, except for the layers that
    ``overrides`` leaves float (``{"q": None}``): a float backbone with an int8 head clusters
    the backbone."""
    if layers is None and isinstance(overrides, dict) and isinstance(model, keras.Model):
        from dkm_tf.graph.clusterable import skipped_by_overrides, walk_layers  # noqa: PLC0415

        layers = [layer for layer in walk_layers(model) if not isinstance(layer, keras.Model)
                  and not skipped_by_overrides(layer, overrides)]
    quantized.check_not_quantized(model, what, layers, **kwargs)


def lora_layers(model):
    """The layers of ``model`` (a model or a layer; sublayers included) with LoRA enabled."""
    return [layer for layer in layers_below(model) if getattr(layer, "lora_enabled", False)]


def refuse_lora(model, what, fix, layers=None):
    """Raise ``ValueError`` naming the LoRA-enabled layers of ``model`` (or only of ``layers``)
    for ``what`` (an entry point that cannot merge them itself); ``fix`` says what to do."""
    found = among(model, layers, lora_layers)
    if not found:
        return
    names = ", ".join(repr(layer.name) for layer in found[:8])
    raise ValueError(
        f"Invalid value for argument `model`. {what} cannot cluster LoRA-enabled layers. "
        f"Received: model {getattr(model, 'name', model)!r} with LoRA enabled on {names}: "
        "each computes with kernel + lora_kernel_a @ lora_kernel_b * (lora_alpha / rank), "
        f"which is no variable to cluster or regularize. {fix}: Keras has no public merge; "
        "merged, names = dkm_tf.graph.layer_features.merge_lora(model) returns a copy of the "
        "model with each LoRA merged into a plain kernel (share_weights, cluster_weights and "
        "compress do this themselves).")


def lora_paths(model):
    """``{(layer name, weight path)}`` of the clusterable weights of ``model`` that LoRA
    changes (a LoRA-enabled layer's kernel reads as a tensor, not a variable): a
    MultiHeadAttention with LoRA on its query projection has one, ``query_dense.kernel``."""
    from dkm_tf.graph import clusterable  # noqa: PLC0415

    layers = clusterable.walk_layers(model) if isinstance(model, keras.Model) else [model]
    return {(layer.name, path) for layer in layers
            if lora_layers(layer) and clusterable.is_clusterable(layer)
            for path, var, _ in clusterable.clusterable_weights(layer)
            if not isinstance(var, keras.Variable)}


def lora_note(palettes, paths):
    """``palettes`` with :data:`LORA_NOTE` added to the notes of the weights in ``paths``
    (:func:`lora_paths` of the model before the merge)."""
    import dataclasses  # noqa: PLC0415

    return [dataclasses.replace(p, note="; ".join(filter(None, (p.note, LORA_NOTE))))
            if (p.layer_name, p.weight_name) in paths else p for p in palettes]


def _merged_values(layer):
    """The weight values of ``layer`` with every LoRA of it (or of its sublayers) merged:
    each base kernel replaced by the effective one (cast to its dtype), the LoRA factors
    dropped; plain layers' weights keep ``layer.weights``' order."""
    import numpy as np  # noqa: PLC0415

    base, drop = {}, set()
    for sub in lora_layers(layer):
        attr = "embeddings" if hasattr(sub, "_embeddings") else "kernel"
        var = getattr(sub, "_" + attr)
        base[id(var)] = np.asarray(keras.ops.convert_to_numpy(
            keras.ops.cast(getattr(sub, attr), var.dtype)))
        drop |= {id(getattr(sub, n)) for n in _LORA_VARS if getattr(sub, n, None) is not None}
    return [base[id(v)] if id(v) in base else v.numpy()
            for v in layer.weights if id(v) not in drop]


def _plain_copy(layer):
    """A copy of ``layer`` with LoRA merged (see :func:`_merged_values`)."""
    from dkm_tf.graph.copying import build_like  # noqa: PLC0415
    from dkm_tf.graph.own_config import from_own_config  # noqa: PLC0415

    config = {k: v for k, v in layer.get_config().items() if k not in ("lora_rank", "lora_alpha")}
    new = from_own_config(layer, config)
    build_like(new, layer, _merged_values(layer))
    if lora_layers(new):  # pragma: no cover - a layer that re-enables LoRA from elsewhere
        raise TypeError(f"Layer {layer.name!r}: its copy without lora_rank still has LoRA "
                        "enabled; merge it by hand.")
    return new


def merge_lora(model):
    """A copy of ``model`` in which every LoRA-enabled layer is a plain layer holding its
    effective (merged) kernel; ``model`` itself is not modified.

    Args:
        model: a Sequential or Functional model (nested ones included), or a single layer.

    Returns:
        ``(copy, names)``: the copy (``model`` itself when no layer has LoRA enabled) and
        the names of the layers whose LoRA was merged, depth first.

    Raises:
        ValueError: a quantized layer with LoRA (QLoRA): its base kernel holds codes.
        TypeError: the model cannot be copied (subclassed: merge its layers yourself).
    """
    found = lora_layers(model)
    if not found:
        return model, []
    check_not_quantized(model, "Merging LoRA", found)  # QLoRA: a base kernel of codes
    from dkm_tf.graph.copying import _copy_model, copy_layer  # noqa: PLC0415

    if not isinstance(model, keras.Model):
        return _plain_copy(model), [layer.name for layer in found]
    owners = []

    def clone_function(layer):
        if lora_layers(layer):
            owners.append(layer.name)
            return _plain_copy(layer)
        return copy_layer(layer)

    return _copy_model(model, clone_function), owners


def merges_lora(what):
    """Decorator of an entry point ``fn(model, ...)`` that returns a new model (``what``
    names it): quantized layers are refused and LoRA merged (:func:`merge_lora`) in a copy
    before ``fn`` sees the model; ``fn``'s ``(model, report)`` result, if any, gets
    ``lora_merged`` set in the settings of the merged layers (a report's ``clustered``)."""
    import functools  # noqa: PLC0415

    def decorate(fn):
        @functools.wraps(fn)
        def run(model, *args, **kwargs):
            from dkm_tf.graph.copying import is_graph_model  # noqa: PLC0415

            merged = []
            if isinstance(model, keras.layers.Layer):
                check_not_quantized(model, what, overrides=kwargs.get("overrides"))
                if not isinstance(model, keras.Model) or is_graph_model(model):
                    model, merged = merge_lora(model)  # a subclassed model: fn says why not
            out = fn(model, *args, **kwargs)
            report = out[1] if isinstance(out, tuple) and len(out) == 2 else None
            for name, _, settings in getattr(report, "clustered", ()):
                if name in merged and isinstance(settings, dict):
                    settings["lora_merged"] = True
            return out
        return run
    return decorate
