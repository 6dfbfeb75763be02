"""An unbuilt `keras.Sequential` estimated at an `input_shape` is built as a copy: building
the user's model would fix its input size for good (after an estimate at (7, 5), `predict` on
6 features failed with "Invalid input shape"; a call refused later built it too). Only a
model of Keras's own layers is copied: a custom layer whose `get_config` misses an argument
clones into another layer (a `units` left out: 16 MACs counted for 64)."""

from __future__ import annotations

from dkm_tf.energy.keras_wrapped import has_inputs

__all__ = ["built_copy"]


def built_copy(model, input_shape):
    """`model` itself, or, for an unbuilt Sequential of Keras's own classes only (the model
    and every layer, nested ones too) and an `input_shape`, a clone (same layer names and
    configs) built at `(None, *input_shape)`, with the weights of the layers that were built
    already. A custom class anywhere (its config may not rebuild it), or a layer that cannot
    be cloned: the model is returned and built in place by the reader, as before."""
    import keras

    if input_shape is None or not isinstance(model, keras.Sequential) or has_inputs(model):
        return model
    if not _keras_only(model):
        return model
    try:
        copy = keras.models.clone_model(model)
    except Exception:  # noqa: BLE001 (a custom layer without a config: any error of Keras)
        return model
    copy.build((None, *tuple(input_shape)))
    for layer, twin in zip(model.layers, copy.layers):
        if layer.built and layer.weights:  # built on its own before; shapes must agree
            twin.set_weights(layer.get_weights())
    return copy


def _keras_only(layer, depth=0):
    """Whether `layer` and every layer inside it are classes of Keras itself."""
    if not type(layer).__module__.startswith("keras") or depth > 50:
        return False
    return all(_keras_only(sub, depth + 1) for sub in getattr(layer, "layers", None) or ())
