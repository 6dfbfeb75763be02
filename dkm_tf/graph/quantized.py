"""Keras-quantized layers (``model.quantize("int8" | "int4" | "float8")``): finding and
refusing them. See :mod:`dkm_tf.graph.layer_features` for why every entry point refuses them.
Imports only Keras, so :mod:`dkm_tf.graph.clusterable` can use it.
"""

from __future__ import annotations

import keras

__all__ = ["QUANTIZE_ORDER", "among", "check_not_quantized", "layers_below", "quantization_mode",
           "quantized_layers"]

# The one order that works, said the same by every refusal (clustering a quantized layer,
# quantizing a clustered one): Keras quantizes leaf layers, so inside dkm_tf's wrappers too.
QUANTIZE_ORDER = ("Cluster the float model, strip it (dkm_tf.strip_clustering), then quantize "
                  "the stripped model.")


def quantization_mode(layer):
    """The Keras quantization mode of ``layer`` (``"int8"``, ``"int4"``, ``"float8"``, ...)
    or None."""
    return getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)


def layers_below(model):
    """Every layer below ``model`` (nested models, a MultiHeadAttention's projections and an
    RNN's cell included; not models), ``model`` itself if a layer, each once."""
    flat = getattr(model, "_flatten_layers", None)
    layers = flat(include_self=True, recursive=True) if flat is not None else [model]
    return [layer for layer in layers if not isinstance(layer, keras.Model)]


def quantized_layers(model):
    """``[(layer name, mode, policy name)]`` of the quantized layers of ``model``."""
    return [(layer.name, quantization_mode(layer), layer.dtype_policy.name)
            for layer in layers_below(model) if quantization_mode(layer)]


def among(model, layers, find):
    """``find`` over ``layers`` (each with its sublayers) if given, else over ``model``."""
    out = []
    for layer in [model] if layers is None else layers:
        out += [x for x in find(layer) if x not in out]
    return out


def check_not_quantized(model, what, layers=None, leave_float="overrides={name: None}"):
    """Raise ``ValueError`` naming the quantized layers of ``model`` (or only of ``layers``;
    ``what`` is the entry point, e.g. ``"share_weights"``): they hold no float kernel to
    cluster or export. ``leave_float`` says how the entry point leaves a layer float."""
    found = among(model, layers, quantized_layers)
    if not found:
        return
    shown = ", ".join(f"{name!r} ({mode}; dtype policy {policy!r})"
                      for name, mode, policy in found[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    raise ValueError(
        f"Invalid value for argument `model`. {what} needs float kernels. Received: "
        f"{'model' if isinstance(model, keras.Model) else 'layer'} "
        f"{getattr(model, 'name', model)!r} with {len(found)} quantized layer(s) "
        f"(model.quantize(...)): {shown}{more}. A quantized layer stores integer codes and "
        "scales (int8 / int4) or fake-quantizes with running scales (float8), and quantizes "
        "its inputs when called: there is no float kernel to cluster, and a dequantized float "
        f"copy would compute something else. {QUANTIZE_ORDER} Or leave these layers float "
        f"({leave_float}).")
