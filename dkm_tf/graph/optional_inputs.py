"""Optional inputs (``keras.Input(optional=True)``) kept by a copy: ``keras.models.clone_model``
makes each new ``Input`` without ``optional``, so a copy (``share_weights``,
``cluster_weights``, ``strip_clustering``, ``compress``, ``fold_batch_norm``, kernel
clustering) refused the None its original took ("The input ... is not optional")."""

from __future__ import annotations

__all__ = ["keep_optional_inputs"]


def _input_layers(model):
    try:
        return [t._keras_history.operation for t in model.inputs or ()]  # noqa: SLF001
    except (AttributeError, TypeError, ValueError):  # subclassed: declares none
        return []


def keep_optional_inputs(original, clone):
    """Mark the inputs of ``clone`` (and of its nested models, matched by name) optional where
    ``original``'s are; returns ``clone``."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    def models(m):
        return [m] + [s for s in walk_layers(m) if isinstance(s, keras.Model)]

    by_name = {m.name: m for m in models(original)}
    for new in models(clone):
        old = by_name.get(new.name)
        pairs = zip(_input_layers(old), _input_layers(new)) if old is not None else ()
        for a, b in pairs:
            if getattr(a, "optional", False) and hasattr(b, "optional"):
                b.optional = True
    return clone
