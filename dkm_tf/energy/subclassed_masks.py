"""The mask a subclassed Keras model returns when it runs, where no graph says it.

A subclassed model (`keras.Model` with its own `call`) has no graph to follow a mask through,
and its `supports_masking` is False; but when it runs, the layers its `call` calls pass the
mask its input carries (`Layer.__call__` reads the input's), so the tensor it returns carries
it: `Pipeline([Sub(), GlobalAveragePooling1D()])`, `Sub` calling one Dense(8), on an
Embedding(20, 8, mask_zero=True) of 6 tokens, runs the pooling masked. Before session 31 the
reader took it as unmasked (no mask SUM: Keras / float file hierarchy 0.9697, paper 0.9936).
Here its `call` is traced on symbolic backend tensors (`backend.compute_output_spec`: no
weights written, no nodes added to its layers) with a mask set on the input, and the mask on
the traced output is compared with it. The trace runs the model's Python `call` again, its
side effects too (weights, the layers' nodes and the seed generator's state are unchanged): a
model counting its calls, built by 3 of them, counted 6 after `estimate` on TensorFlow (4
before session 31) and 5 on JAX (3 before).
"""

import warnings


def traced_mask(model, shape, keras):
    """`"same"` where the subclassed `model`'s `call` on an input of `shape` that carries a
    mask returns a tensor carrying that mask, `"new"` where it carries another (of its shape:
    `(kind, shape)`), else None (no mask; an error in the trace: None too, no mask known)."""
    from keras.src import backend
    from keras.src.backend.common.masking import get_keras_mask, set_keras_mask

    if shape is None or len(shape) < 2:
        return None
    seen = []

    def probe(x, mask):
        set_keras_mask(x, mask)
        out = model.call(x)
        flat = keras.tree.flatten(out)
        got = get_keras_mask(flat[0]) if len(flat) == 1 else None
        seen.append(None if got is None else "same" if got is mask else (
            "new", tuple(getattr(got, "shape", ()))))
        return out

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' own, about the traced layers' masks
            backend.compute_output_spec(probe, keras.KerasTensor(tuple(shape)),
                                        keras.KerasTensor(tuple(shape)[:-1], dtype="bool"))
    except Exception:  # noqa: BLE001 - any layer's own error: no mask known
        return None
    return seen[-1] if seen and all(s == seen[-1] for s in seen) else None
