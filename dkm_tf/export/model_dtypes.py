"""The float dtype checks of :func:`dkm_tf.export.to_tflite` (through
:func:`dkm_tf.export.model_check.check_built_model`, which re-exports these names).

Every layer must compute in float32: the exporters trace the model's float graph, and a layer
built under a mixed (``"mixed_float16"``, ``"mixed_bfloat16"``) or half policy casts to
float16 / bfloat16 around each op, which the converter and the palettized rewrite do not
handle; TFLite has no float64 kernel for the op of a float64 layer (:func:`float64_layers`).
The same weights in float32 layers export; see :func:`check_float_model` for how.
"""

from __future__ import annotations

__all__ = ["HALF_DTYPES", "SHOWN", "all_layers", "check_float_model", "float64_layers",
           "half_precision_layers"]

HALF_DTYPES = ("float16", "bfloat16")
SHOWN = 5  # layers named in a message


def all_layers(model):
    """Every layer below ``model`` (nested models' too), ``model`` itself first."""
    return (model._flatten_layers(include_self=True, recursive=True)  # noqa: SLF001
            if hasattr(model, "_flatten_layers") else [model, *getattr(model, "layers", [])])


def half_precision_layers(model):
    """``[(layer name, policy name)]`` of the layers of ``model`` (nested ones and a
    subclassed model itself included; not input layers or Functional / Sequential graphs)
    whose compute dtype is float16 or bfloat16."""
    out = []
    for layer in all_layers(model):
        if _no_compute(layer):
            continue
        if str(getattr(layer, "compute_dtype", "float32")) in HALF_DTYPES:
            policy = getattr(layer, "dtype_policy", None)
            out.append((layer.name, getattr(policy, "name", str(policy))))
    return out


# float64 layers that convert (TF 2.21; Random*: below): no-ops, normalizations; Lambda: unjudged
_CONVERTS = ("Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Reshape", "Flatten",
             "Identity", "ActivityRegularization", "Lambda", "LayerNormalization",
             "GroupNormalization", "Discretization")


def float64_layers(model):
    """``[(layer name, class name)]`` of the Keras layers below ``model`` that compute in
    float64 and run an op (the converter failed on all 14 probed: Dense, Conv2D, Add, ReLU, ...);
    not those that convert (``_CONVERTS``), nor a user's ``Layer`` (the converter judges it)."""
    out = []
    for layer in all_layers(model):
        if _no_compute(layer) or str(getattr(layer, "compute_dtype", "")) != "float64":
            continue
        keras_cls = next((k for k in type(layer).__mro__ if k.__module__[:6] == "keras."), None)
        names = {k.__name__ for k in (keras_cls.__mro__ if keras_cls else ())}
        linear = getattr(getattr(layer, "activation", None), "__name__", "") == "linear"
        if (not names or keras_cls.__name__ in ("Layer", "Model") or names & set(_CONVERTS)
                or any(n[:6] == "Random" for n in names) or linear and "Activation" in names):
            continue
        out.append((layer.name, type(layer).__name__))
    return out


def _no_compute(layer):
    """Input layers and Functional / Sequential graphs: no op of their own (they do not cast
    their inputs), so their policy (the global one at build time) does not matter."""
    import keras  # noqa: PLC0415

    if isinstance(layer, (keras.layers.InputLayer, keras.Sequential)):
        return True
    try:  # keras.Model(inputs, outputs) builds this class
        from keras.src.models.functional import Functional  # noqa: PLC0415
    except ImportError:  # pragma: no cover - then Functional models are checked like any layer
        return False
    return type(layer) is Functional


def check_float_model(model):
    """Raise ``ValueError`` naming the layers of ``model`` that compute in half precision, or
    else in float64 (:func:`float64_layers`). The fix is to rebuild the model with float32
    layers and copy the weights (``set_weights`` casts them), e.g. for a Functional model::

        m32 = keras.models.clone_model(model, clone_function=lambda layer:
            layer.__class__.from_config({**layer.get_config(), "dtype": "float32"}))
        m32.set_weights(model.get_weights())
    """
    bad, kind = half_precision_layers(model), "half precision"
    if not bad:  # "float64 (a, b)" as the converter's failure said (layer_refusals)
        bad = [(n, f"float64 {c}") for n, c in float64_layers(model)]
        kind = f"float64 ({', '.join(n for n, _ in bad[:SHOWN])})"
    if not bad:
        return
    shown = ", ".join(f"{name!r} ({policy})" for name, policy in bad[:SHOWN])
    more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    half = kind == "half precision"
    raise ValueError(
        "Invalid value for argument `model`. Expected a model whose layers compute in float32 "
        + ("(TFLite export traces the float graph; float16 / bfloat16 compute is not "
           "supported). " if half else "(TFLite has no float64 kernel for their ops: the "
           "converter fails with 'operations that have no TFLite builtin kernel'). ")
        + f"Received: model {model.name!r} with {len(bad)} layer(s) computing in {kind}: "
        f"{shown}{more}. Rebuild the model with float32 layers and copy the weights "
        f"(set_weights casts {'bfloat16 / float16' if half else 'float64'} variables), e.g. "
        "for a Functional or Sequential model m32 = keras.models.clone_model(model, "
        "clone_function=lambda layer: "
        "layer.__class__.from_config({**layer.get_config(), 'dtype': 'float32'})); "
        "m32.set_weights(model.get_weights()); then export m32"
        + (" (build models to export after keras.mixed_precision.set_global_policy('float32'))."
           if half else "."))
