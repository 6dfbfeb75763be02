"""Model and layer names TensorFlow's converter cannot trace (a refusal before any work).

The converter traces the model with each layer's name as a TensorFlow name scope, and a scope
(and the op names under it) must match ``[A-Za-z0-9.][A-Za-z0-9_.>-]*`` (measured with
TensorFlow 2.21, format ``"float"``): a name with a space, ``:``, ``é`` or a CJK character
failed with Keras' "Exception encountered when calling Functional.call(): 'my conv' is not a
valid scope name"; one starting with ``_``, ``-`` or ``>`` with "SignatureDef signature_key
is None and model has 0 Signatures"; one with a backslash with "TFLite conversion ... failed
... operations that have no TFLite builtin kernel". None said which layer or what to do. The
names of input layers (not scopes) are free. Keras refuses ``/`` in names itself.
"""

import re

__all__ = ["check_scope_names", "SCOPE_NAME"]

SCOPE_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.>-]*")
_SCOPE_CHARS = re.compile(r"[A-Za-z0-9_.>-]+")  # a weightless layer or nested model may start
# with '_', '-' or '>' (measured: they convert); the model and layers with weights may not
_SHOWN = 5


def check_scope_names(model):
    """Raise ``ValueError`` naming the model / layers whose names TensorFlow cannot use as
    name scopes (:data:`SCOPE_NAME`), nested models' layers included."""
    import keras  # noqa: PLC0415

    layers = (model._flatten_layers(include_self=True, recursive=True)  # noqa: SLF001
              if hasattr(model, "_flatten_layers") else [model, *getattr(model, "layers", [])])
    bad = [layer.name for layer in layers
           if not isinstance(layer, keras.layers.InputLayer)
           and not (SCOPE_NAME if layer is model or (
               not isinstance(layer, keras.Model) and layer.weights) else _SCOPE_CHARS
                    ).fullmatch(str(layer.name))]
    if not bad:
        return
    bad = list(dict.fromkeys(bad))
    shown = ", ".join(repr(n) for n in bad[:_SHOWN]) + (
        f" and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else "")
    raise ValueError(
        f"Invalid value for argument `model`: TensorFlow's converter cannot trace layer or "
        f"model names {shown}. A name must match {SCOPE_NAME.pattern!r} (ASCII letters, "
        "digits, '.', '_', '-', '>'; the model and layers with weights not starting with '_', "
        "'-' or '>'; no spaces, ':', "
        "'\\\\' or non-ASCII letters). Rename them (a layer's `name` argument; "
        "`keras.models.clone_model(model, clone_function=...)` for a built model) and "
        "rename their palettes' `layer_name` to match.")
