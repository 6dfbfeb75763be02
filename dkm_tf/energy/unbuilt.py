"""An unbuilt `keras.Sequential` estimated at an `input_shape` is built as a copy: building
the user's model would fix its input size for good (after an estimate at (7, 5), `predict` on
6 features failed with "Invalid input shape"; a call refused later built it too)."""

from __future__ import annotations

from dkm_tf.energy.keras_wrapped import has_inputs

__all__ = ["built_copy"]


def built_copy(model, input_shape):
    """`model` itself, or, for an unbuilt Sequential and an `input_shape`, a clone (same layer
    names and configs) built at `(None, *input_shape)`, with the weights of the layers that
    were built already. A layer that cannot be cloned (no `get_config`): the model is
    returned and built in place by the reader, as before."""
    import keras

    if input_shape is None or not isinstance(model, keras.Sequential) or has_inputs(model):
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
