"""The layers :func:`dkm_tf.compress` left float, and why (moved out of ``pipeline``)."""

from __future__ import annotations

__all__ = ["skipped_layers", "skipped_lines"]


def skipped_layers(model, palettes, overrides, unit=None):
    """``[(layer name, why)]`` of every layer with weights of ``model`` that no palette
    covers: not a supported kernel layer, excluded by ``overrides``, no k x k Conv2D
    kernel with ``unit="kernel"``, or not clustered."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph import clusterable  # noqa: PLC0415
    from dkm_tf.graph.copying import iter_layers  # noqa: PLC0415

    done = {p.layer_name for p in palettes}
    out = []
    for layer in iter_layers(model):
        if layer.weights and layer.name not in done:
            kind = type(layer).__name__
            why = ("not a supported kernel layer" if not clusterable.is_clusterable(layer)
                   else "excluded by overrides"
                   if clusterable.skipped_by_overrides(layer, overrides)
                   else f"unit='kernel': {kind} has no k x k Conv2D kernel; left float"
                   if unit == "kernel" and not isinstance(layer, keras.layers.Conv2D)
                   else "not clustered")
            out.append((layer.name, why))
    return out


def skipped_lines(skipped):
    """``CompressionResult.summary``'s lines of ``skipped`` (``[(name, why)]``): the list of
    supported kernel layers once, after them, where several reasons carry it (mtcnn's ONet:
    five PReLU layers printed it five times)."""
    from dkm_tf.graph.clusterable import SUPPORTED_LAYERS  # noqa: PLC0415

    listed = f" (supported: {', '.join(SUPPORTED_LAYERS)})"
    once = sum(listed in reason for _, reason in skipped) > 1
    lines = [f"skipped {name}: {reason.replace(listed, '') if once else reason}"
             for name, reason in skipped]
    return lines + ([f"supported kernel layers: {', '.join(SUPPORTED_LAYERS)}"] if once else [])
