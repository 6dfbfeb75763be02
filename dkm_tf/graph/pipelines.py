"""Copying what ``keras.models.clone_model`` treats as one layer: a ``keras.layers.Pipeline``
(its layers copied one by one) and a layer reached twice (one shared copy)."""

__all__ = ["map_pipeline", "once_per_layer"]


def map_pipeline(layer, fn, build=None):
    """A ``keras.layers.Pipeline`` of ``fn`` applied to each of ``layer``'s layers (a
    clone function for what ``clone_model`` treats as one layer), or None for other layers.

    ``build(sub)`` builds each new wrapper (a layer with ``.layer``) ``fn`` left unbuilt, other
    layers are built from their original's build config; the Pipeline is then marked built:
    Keras cannot trace a Pipeline to build it (the clone would warn, and build its layers
    inside a symbolic pass)."""
    import keras  # noqa: PLC0415

    if not isinstance(layer, keras.layers.Pipeline):
        return None
    subs = [fn(sub) for sub in layer.layers]
    for old, sub in zip(layer.layers, subs):
        if sub.built:
            continue
        if hasattr(sub, "layer") and build is not None:  # a ClusterWeights: clusters now
            build(sub)
        elif old.built and old.get_build_config():  # Rescaling, RandomFlip, ...
            sub.build_from_config(old.get_build_config())
    new = keras.layers.Pipeline(subs, name=layer.name)
    new.built = layer.built and all(sub.built for sub in subs)
    return new


def once_per_layer(fn):
    """``fn`` called once per layer (a layer inside two Pipelines stays one shared copy)."""
    copies = {}

    def call(layer):
        if id(layer) not in copies:
            copies[id(layer)] = fn(layer)
        return copies[id(layer)]

    return call
