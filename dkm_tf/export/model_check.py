"""The model checks of :func:`dkm_tf.export.to_tflite` (and ``export_all``) before any work.

A model must be built, and every layer must compute in float32: the exporters trace the
model's float graph, and a layer built under a mixed (``"mixed_float16"``,
``"mixed_bfloat16"``) or half policy casts to float16 / bfloat16 around each op, which the
converter and the palettized rewrite do not handle; TFLite has no float64 kernel for the op of
a float64 layer (:func:`float64_layers`). The same weights in float32 layers export; see
:func:`check_float_model` for how (these dtype checks live in
:mod:`dkm_tf.export.model_dtypes`, re-exported here).

Palettes name their layers (``"fc/kernel"``), so the layers they name must be told apart by
name: :func:`palette_layers` refuses two layers of one name (two nested models each with an
``"fc"``) instead of checking and writing a palette against the wrong one.

A model that still holds dkm_tf's training layers (``ClusterWeights``, ``ClusterKernels``)
is refused by :func:`check_stripped_model`: export reads the weights a deployed model keeps,
which :func:`dkm_tf.strip_clustering` produces (see there for what an unstripped export did);
but a hard ``ClusterWeights`` inside a subclassed model, which ``strip_clustering`` cannot
copy, exports as it is (its figures count the wrapped layer's weights, and palettes are
checked against the kernels the wrapper computes: :func:`palette_layers`).
"""

from __future__ import annotations

from dkm_tf.export.model_dtypes import (
    HALF_DTYPES,
    check_float_model,
    float64_layers,
    half_precision_layers,
)
from dkm_tf.export.model_dtypes import SHOWN as _SHOWN
from dkm_tf.export.model_dtypes import all_layers as _all_layers
from dkm_tf.export.scope_names import check_scope_names

__all__ = ["HALF_DTYPES", "check_built_model", "check_float_model", "check_full_int8",
           "check_keras_quantized", "check_numeric_inputs", "check_stripped_model",
           "deployed_param_count", "float64_layers", "half_precision_layers", "palette_layers",
           "recurrent_loops", "training_class", "training_layers", "training_weights"]


def check_built_model(model):
    """Raise ``ValueError`` unless ``model`` is built, computes in float32,
    holds no dkm_tf training layer (:func:`check_stripped_model`) and takes no string input
    (:func:`check_numeric_inputs`)."""
    if not model.built:
        raise ValueError("Invalid value for argument `model`. Expected a built Keras model. "
                         f"Received: model {model.name!r}, which is not built (or has no "
                         "layers): call it on data or give it an Input first.")
    check_scope_names(model)  # names TensorFlow's converter cannot trace
    check_float_model(model)
    check_stripped_model(model)
    check_keras_quantized(model)
    check_numeric_inputs(model)


_STRING_LAYERS = ("StringLookup", "TextVectorization", "Hashing")


def check_numeric_inputs(model):
    """Raise ``ValueError`` naming the string inputs of ``model`` and the layers that read
    strings (``StringLookup``, ``TextVectorization``, ``Hashing``): a ``.tflite`` built from
    builtin ops takes numbers only (the converter failed deep inside, or with
    ``sample_inputs=None`` synthesis raised "Unsupported object type float")."""
    try:
        inputs = list(model.inputs or ())
    except (AttributeError, TypeError, ValueError):  # subclassed: no symbolic inputs
        return
    names = [getattr(t, "name", "?") for t in inputs if "string" in str(t.dtype)]
    if not names:
        return
    found = [layer for layer in _all_layers(model) if type(layer).__name__ in _STRING_LAYERS]
    inner = {id(sub) for layer in found  # a TextVectorization's own StringLookup
             for sub in layer._flatten_layers(include_self=False)}  # noqa: SLF001
    readers = [f"{type(layer).__name__} {layer.name!r}" for layer in found
               if id(layer) not in inner]
    raise ValueError(
        "Invalid value for argument `model`. Expected a model with numeric inputs (a .tflite "
        "of builtin ops takes tensors of numbers, no strings). Received: model "
        f"{model.name!r} with string input(s) {names}"
        + (f", read by {', '.join(readers[:_SHOWN])}" if readers else "") + ". Apply "
        + (", ".join(readers[:_SHOWN]) if readers else "the string preprocessing")
        + " in the input pipeline (e.g. dataset.map(layer)) and export the model that starts "
        "at its output (token ids or vectors).")


def recurrent_loops(model):
    """Names of the layers of ``model`` that run a recurrent loop: every ``keras.layers.RNN``
    (LSTM, GRU, SimpleRNN, ...) without ``unroll=True``, a ``Bidirectional`` by its own name."""
    import keras  # noqa: PLC0415

    layers = _all_layers(model)
    pairs = {id(b): (b.forward_layer, b.backward_layer) for b in layers
             if isinstance(b, keras.layers.Bidirectional)}
    inside = {id(r) for pair in pairs.values() for r in pair}
    out = []
    for layer in layers:
        if id(layer) in pairs and any(not getattr(r, "unroll", False) for r in pairs[id(layer)]):
            out.append(layer.name)
        elif (isinstance(layer, keras.layers.RNN) and id(layer) not in inside
              and not layer.unroll):
            out.append(layer.name)
    return out


def check_full_int8(model):
    """Raise ``ValueError`` for full-integer int8 of a model with a recurrent loop
    (:func:`recurrent_loops`): TensorFlow 2.21's calibrator (``calibrator._feed_tensors``)
    killed the Python process with a segmentation fault on every LSTM / GRU / SimpleRNN /
    Bidirectional model probed (masked or not, at batch 1 too); unrolled ones calibrate."""
    loops = recurrent_loops(model)
    if loops:
        raise ValueError(
            "Invalid value for argument `int8_mode`. Expected int8_mode='dynamic' for a model "
            "with a recurrent layer (full-integer calibration of its loop crashes TensorFlow's "
            f"calibrator with a segmentation fault). Received: int8_mode='full' for model "
            f"{model.name!r} with recurrent layer(s) {loops[:_SHOWN]}. Use "
            "int8_mode='dynamic' (int8 weights, float activations), or build the layers with "
            "unroll=True (a fixed sequence length) for full int8.")


def check_keras_quantized(model):
    """Raise ``ValueError`` naming the int8 / float8 layers of ``model`` (Keras'
    ``model.quantize``): TF 2.21's converter fails on both, with a message about MLIR types
    (measured: int8 Dense "'tfl.fully_connected' op operand #0 must be tensor of 32-bit float
    or QI8 type", float8 "Failed to convert element type 'f8E4M3FN'"). An int4 layer
    converts (its kernel is unpacked and dequantized in the graph) and is let through."""
    from dkm_tf.graph.quantized import quantized_layers  # noqa: PLC0415 (keras)

    bad = [(n, mode, p) for n, mode, p in quantized_layers(model) if mode in ("int8", "float8")]
    if not bad:
        return
    shown = ", ".join(f"{n!r} ({mode}; dtype policy {p!r})" for n, mode, p in bad[:_SHOWN])
    raise ValueError(
        "Invalid value for argument `model`. Expected a model without Keras int8 / float8 "
        "layers (the TFLite converter cannot convert them). Received: model "
        f"{model.name!r} with {len(bad)} such layer(s) (model.quantize(...)): {shown}. Export "
        "the float model instead, with format='int8' for int8 weights in the file (TFLite's "
        "own quantization; with palettes it keeps each clustered tensor's <= K values).")


def training_class(layer):
    """The dkm_tf training class ``layer`` is an instance of (``ClusterWeights``,
    ``ClusterKernels``, ``KernelCodebook``; a user's subclass counts as one), or None. Read by
    module, so this module does not import the training code."""
    return next((k for k in type(layer).__mro__ if k.__module__.startswith("dkm_tf.training.")),
                None)


def training_layers(model, *, exportable=False):
    """``[(layer name, description)]`` of the dkm_tf training layers below ``model`` (nested
    models included): ``ClusterWeights`` (``"ClusterWeights, soft assignment"`` for DKM's soft
    one), ``ClusterKernels`` and their ``KernelCodebook``. Read by class, so this module does
    not import the training code. With ``exportable``, hard ``ClusterWeights`` inside a
    subclassed model are left out (see :func:`check_stripped_model`)."""
    out = []
    inside = _inside_subclassed(model) if exportable else set()
    for layer in _all_layers(model):
        ours = training_class(layer)
        if ours is None:
            continue
        soft = getattr(layer, "assignment", "hard") == "soft"
        if id(layer) in inside and ours.__name__ == "ClusterWeights" and not soft:
            continue
        out.append((layer.name, ours.__name__ + (", soft assignment" if soft else "")))
    return out


def _inside_subclassed(model):
    """ids of the layers below a subclassed model (``model`` itself or a nested one), which
    ``strip_clustering`` cannot copy (it rebuilds Sequential and Functional models only)."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph.copying import is_graph_model  # noqa: PLC0415

    inside, stack = set(), [(model, False)]
    seen = set()
    while stack:
        layer, under = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if under:
            inside.add(id(layer))
        under = under or (isinstance(layer, keras.Model) and not is_graph_model(layer))
        subs = (layer._flatten_layers(include_self=False, recursive=False)  # noqa: SLF001
                if hasattr(layer, "_flatten_layers") else [])
        stack += [(sub, under) for sub in subs]
    return inside


def training_weights(model):
    """The variables (by id) that dkm_tf training layers below ``model`` hold themselves (a
    hard ``ClusterWeights``' codebook and index variables), not as weights of the layer they
    wrap: a deployed model has none of them. ``{}`` for a stripped model."""
    out = {}
    for layer in _all_layers(model):
        if training_class(layer) is None:
            continue
        inner = {id(v) for sub in layer._flatten_layers(include_self=False)  # noqa: SLF001
                 for v in sub.weights}
        out.update({id(v): v for v in layer.weights if id(v) not in inner})
    return out


def deployed_param_count(model):
    """``model.count_params()`` less the variables of :func:`training_weights` (a hard
    ``ClusterWeights`` model counted its codebook and indices: 2,468 for 1,236 weights), plus
    those of a layer a ``Lambda`` calls that the model does not track (the file stores them:
    :func:`dkm_tf.graph.untracked.param_count`)."""
    import numpy as np  # noqa: PLC0415

    from dkm_tf.graph.untracked import param_count  # noqa: PLC0415

    extra = sum(int(np.prod(v.shape)) for v in training_weights(model).values())
    return param_count(model) - extra


def check_stripped_model(model):
    """Raise ``ValueError`` naming the dkm_tf training layers ``model`` still holds.

    Exporting them was wrong three ways (measured on a 2-conv + dense net, K = 4): a
    soft-assignment wrapper's file stored its unclustered weights and ran the DKM iteration on
    every invoke (30,512 bytes, 640 distinct values in a tensor, vs 7,088 bytes and 4 once
    stripped), and verification passed, since Keras computes the same; a hard wrapper's report
    counted the codebook and index variables as weights (analytic 9,996 bytes for a
    7,168-byte file, 22.95 instead of 45.25 bits per weight); and ``palettes_of(model)``
    failed with "palette 'c1/kernel' names no weight" (the layers are named ``cluster_c1``).

    A hard ``ClusterWeights`` inside a subclassed model is accepted: ``strip_clustering``
    cannot copy such a model (the README builds subclassed models from ``ClusterWeights``
    layers), the traced kernel is the codebook gathered by the indices (<= K values), and the
    report counts the wrapped layer's weights only (:func:`deployed_param_count`).
    """
    found = training_layers(model, exportable=True)
    if not found:
        return
    shown = ", ".join(f"{name!r} ({kind})" for name, kind in found[:_SHOWN])
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    soft = any("soft" in kind for _, kind in found)
    raise ValueError(
        "Invalid value for argument `model`. Expected a stripped model (plain Keras layers "
        "holding the clustered weights: the export stores what a deployed model keeps). "
        f"Received: model {model.name!r} with {len(found)} dkm_tf training layer(s): "
        f"{shown}{more}. "
        + ("A soft-assignment wrapper computes its kernel by the DKM iteration over "
           "unclustered weights, so its file would hold no clusters. " if soft else "")
        + "Strip it first: plain, palettes = dkm_tf.strip_clustering(model)"
        + (" (soft assignment snaps to the nearest centroids there)" if soft else "")
        + ", then export plain with palettes=palettes."
        + (" In a subclassed model (strip_clustering copies Sequential and Functional models "
           "only), export accepts hard-assignment ClusterWeights as they are, not soft ones "
           "or ClusterKernels." if _inside_subclassed(model)
           else ""))


def palette_layers(model, palettes):
    """``{name: layer}`` of every layer below ``model`` (nested models included); a layer a
    hard ``ClusterWeights`` wraps (exported as it is in a subclassed model) is given as a view
    whose clustered weights are the kernels the wrapper computes (its variables hold the
    latent values: a palette of the wrapper never matched them).

    Raises:
        ValueError: two distinct layers (a shared layer counts once) carry a name a palette
            refers to: palettes are matched to layers by name, so one of them would be checked
            and exported with the other's palette.
    """
    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415 (imports keras)

    layers, where, parents = {}, {}, [model]
    for layer in parents:
        for sub in getattr(layer, "layers", None) or []:
            where.setdefault(id(sub), layer.name)
            if getattr(sub, "layers", None) and sub not in parents:
                parents.append(sub)
    for layer in walk_layers(model):
        layers.setdefault(layer.name, []).append(layer)
    for layer in _all_layers(model):  # a hard ClusterWeights exported as it is (a subclassed
        # model's): its layer's clustered weights are what the wrapper computes, not the
        # latent values the wrapped variables hold
        if hasattr(layer, "shared_kernels") and hasattr(layer, "layer") and training_class(
                layer) is not None:
            layers.setdefault(layer.layer.name, []).append(_SharedKernels(layer))
    for name in dict.fromkeys(p.layer_name for p in palettes):
        same = layers.get(name, [])
        if len(same) > 1:
            count = "two" if len(same) == 2 else str(len(same))
            inside = ", ".join(repr(where.get(id(layer), model.name)) for layer in same)
            named = sorted({p.name for p in palettes if p.layer_name == name})
            raise ValueError(
                f"Palettes do not match the model: model {model.name!r} has {count} layers "
                f"named {name!r} (inside {inside}), and palettes are matched to layers by name "
                f"(palettes {named}), so one layer would be checked and exported with the "
                "other's palette. Rename them (a distinct name=... for each nested model's "
                "layer) and cluster again.")
    return {name: same[0] for name, same in layers.items()}


class _SharedKernels:
    """The layer a dkm_tf wrapper wraps, as :func:`palette_layers` gives it to the palette
    checks: a clustered weight (``"kernel"``, ``"cell.kernel"``) reads as the wrapper's
    ``shared_kernels()`` (the codebook gathered by the indices, what the traced graph and so
    the file hold), any other as the wrapped layer's own."""

    def __init__(self, wrapper, prefix=""):
        self._wrapper, self._prefix = wrapper, prefix
        self.name = wrapper.layer.name

    def __getattr__(self, attr):
        import keras  # noqa: PLC0415

        from dkm_tf.graph.clusterable import get_weight  # noqa: PLC0415

        path = self._prefix + attr
        kernels = self._wrapper.shared_kernels()
        if path in kernels:
            return keras.ops.convert_to_numpy(kernels[path])
        if any(k.startswith(path + ".") for k in kernels):
            return _SharedKernels(self._wrapper, path + ".")
        return get_weight(self._wrapper.layer, path)
