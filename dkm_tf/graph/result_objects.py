"""What to say when a function's result is passed where a model is expected.

``share_weights`` returns a ``ShareResult``, ``fold_batch_norm`` a ``FoldResult``,
``compress`` a ``CompressionResult``, ``strip_clustering`` and ``finetune`` a tuple: in a
notebook the whole result often goes on to the next call (``cluster_weights(fold_batch_norm(m))``).
``cluster_weights`` and ``strip_clustering`` then blamed a subclassed model ("rebuild Sequential
and Functional models only. For a subclassed model, ..."), the others said only the type. The
message names the argument and how to get the model out of the result.
"""

from __future__ import annotations

__all__ = ["check_not_a_result", "not_a_model", "result_hint"]

_ORIGIN = {"ShareResult": "share_weights", "FoldResult": "fold_batch_norm",
           "CompressionResult": "compress"}


def _is_layer(obj):
    import keras  # noqa: PLC0415

    return isinstance(obj, keras.layers.Layer)


def result_hint(obj):
    """A phrase saying which result ``obj`` is and how to get its model, or "" when ``obj``
    holds no Keras model (``.model`` attribute, or an item of a tuple / list)."""
    kind = type(obj).__name__
    inner = getattr(obj, "model", None)
    if not _is_layer(obj) and _is_layer(inner):
        origin = _ORIGIN.get(kind)
        what = f" (what dkm_tf.{origin} returns)" if origin else ""
        unpack = {"ShareResult": "model, palettes, skipped = dkm_tf.share_weights(...)",
                  "FoldResult": "model, folded, skipped = dkm_tf.fold_batch_norm(...)"}
        how = f", or unpack it: `{unpack[kind]}`" if kind in unpack else ""
        return (f"a {kind}{what}, not a model: pass its `.model` (model "
                f"{inner.name!r}){how}")
    if isinstance(obj, (tuple, list)):
        at = [i for i, item in enumerate(obj) if _is_layer(item)]
        if at:
            items = f"{len(obj)} item{'s' * (len(obj) != 1)}"
            return (f"a {kind} of {items} holding model {obj[at[0]].name!r} at "
                    f"position {at[0]}, not a model: unpack it first (`plain, palettes = "
                    "dkm_tf.strip_clustering(...)`; finetune returns `(model, palettes, "
                    "history)`, cluster_weights with return_report=True `(model, report)`)")
    return ""


def check_not_a_result(model, name="model"):
    """Raises a TypeError naming argument ``name`` if ``model`` is a result holding a model."""
    hint = result_hint(model)
    if hint:
        raise TypeError(f"Invalid type for argument `{name}`. Expected a Keras model. "
                        f"Received: {hint}")


def not_a_model(model, why):
    """The TypeError for ``model``, not a model this function takes: a result holding one
    (:func:`result_hint`), else ``Model <name> (<type>): <why>``."""
    hint = result_hint(model)
    if hint:
        return TypeError(f"Invalid type for argument `model`. Expected a Keras model. "
                         f"Received: {hint}")
    return TypeError(f"Model {getattr(model, 'name', model)!r} ({type(model).__name__}): {why}")
