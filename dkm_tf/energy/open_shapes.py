"""Functional models whose recorded shapes are open though their input size is fixed.

Keras records an `EinsumDense(..., output_shape=(None, 7))` output (the usual way to keep a
sequence axis) as `(None, None, 7)` whatever the length of its input, and every layer after
it then reads an open shape: the walk of the Keras graph skipped them all ("unknown
dimension", measured: `Input((5, 6))`, that EinsumDense and a `Dense(3)` read 0 MACs, their
`.tflite` 315). A model with one fixed-size input is then read by tracing it at that size
(`graph_reader`, as a subclassed model is), and `skipped` says so, where the trace names every
conv and dense record after a layer of the model (one inside a nested model could be named
`outer_1/layer_1`: palettes then name no record, and the walk's reading is kept).
"""

_OPEN = "unknown dimension"


def retraced(model, shapes, skipped):
    """`(shapes, skipped)` of `model`, traced at its input size where the Keras walk met
    open shapes (see the module docstring); the walk's own where it did not, or where the
    model has several inputs, or tracing fails, meets open shapes too or names a conv or
    dense record after no layer of the model."""
    from dkm_tf.energy.traced_wrappers import _flat, read_traced

    open_names = [name for name, why in skipped if str(why).startswith(_OPEN)]
    if not open_names or len(model.inputs) != 1:
        return shapes, skipped
    input_shape = tuple(model.inputs[0].shape)[1:]
    try:
        traced, traced_skipped = read_traced(model, input_shape)
    except (ValueError, TypeError, RuntimeError):  # not the TensorFlow backend, untraceable
        return shapes, skipped
    names = {x.name for x in _flat(model)}
    if any(str(why).startswith(_OPEN) for _, why in traced_skipped) or any(
            r.kind in ("conv", "dense") and r.layer not in names for r in traced):
        return shapes, skipped
    note = ("shapes", f"Keras recorded open shapes after the fixed input size {input_shape} "
            f"({', '.join(open_names)}): read by tracing the model at that size")
    return tuple(traced), (note,) + tuple(traced_skipped)
