"""The samples of ``weighting="fisher"``: ``x``, ``(x, y)`` or ``(x, y, sample_weight)``.

``data`` is read as Keras' ``fit`` reads it: a tuple ``(x, y)`` or ``(x, y, sample_weight)``
of arrays, or a ``tf.data.Dataset`` of such batches (materialised here, once, as arrays: the
Fisher runs one sample at a time anyway). For a Functional model of n > 1 inputs, ``data``
may also be its n input arrays alone; for a subclassed model (no ``model.inputs`` to count), a
sequence of 3 whose third item is 1-D (or None), or whose first is a list / tuple / dict of
inputs, is ``(x, y, sample_weight)``, otherwise its three inputs (pass 1-D inputs, or weights
of shape ``(N, 1)``, as ``(list_of_inputs, y, sample_weight)``). Sample weights
(``None``: unweighted) are checked before any forward pass: shape ``(N,)`` or ``(N, 1)`` (as
Keras' ``fit`` takes them; a subclassed model's loose ``(x, y, w)`` needs ``(N,)`` or ``x`` as a
list ``([x], y, w)``, see above) matching ``x``, finite, ``>= 0``, not all zero.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.core.endless import repeats_forever
from dkm_tf.core.validate import invalid

__all__ = ["check_sample_weight", "dataset_arrays", "is_dataset", "n_samples", "short",
           "split"]


def short(value):
    """``value`` for a message: its type for an array, else itself."""
    return f"<{type(value).__name__}>" if hasattr(value, "shape") else value


def is_dataset(data):
    """Whether ``data`` is a ``tf.data.Dataset`` (without importing TensorFlow)."""
    return (type(data).__module__.startswith("tensorflow")
            and hasattr(data, "element_spec") and hasattr(data, "as_numpy_iterator"))


def dataset_arrays(ds):
    """``(x, y, sample_weight)`` (``y`` / ``sample_weight`` None when absent) of a finite
    ``tf.data.Dataset`` of batches ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``,
    each part concatenated over the batches."""
    import keras  # noqa: PLC0415

    if int(ds.cardinality()) == -1:  # tf.data.INFINITE_CARDINALITY
        raise invalid("data", "a finite tf.data.Dataset of batches (x, y, sample_weight) for "
                      "weighting='fisher' (every sample is used)", "an infinite dataset "
                      "(repeat() without a count)")
    if repeats_forever(ds):
        raise invalid("data", "a finite tf.data.Dataset of batches (x, y, sample_weight) for "
                      "weighting='fisher' (every sample is used)", "a dataset of unknown "
                      "length built on an endless one (e.g. repeat() then filter(); end it "
                      "with take(n))")
    batches = [b if isinstance(b, tuple) and 1 <= len(b) <= 3 else (b,)
               for b in ds.as_numpy_iterator()]
    if not batches:
        raise invalid("data", "a tf.data.Dataset with samples", "an empty dataset")
    if len({len(b) for b in batches}) != 1:
        raise invalid("data", "a dataset whose batches all have the same structure",
                      f"batches of {sorted({len(b) for b in batches})} parts")
    if any(np.ndim(a) == 0 for b in batches for a in keras.tree.flatten(b)):
        raise invalid("data", "a batched tf.data.Dataset (ds.batch(n), as Keras' fit takes "
                      "it): every part with a leading sample axis", "a 0-d part: an "
                      "unbatched dataset")
    try:
        parts = [keras.tree.map_structure(lambda *a: np.concatenate(a, axis=0),
                                          *[b[i] for b in batches])
                 for i in range(len(batches[0]))]
    except ValueError as e:
        raise invalid("data", "a tf.data.Dataset of batches that concatenate along the "
                      "sample axis (a batched dataset)", f"{type(e).__name__}: {e}") from e
    return tuple(parts) + (None,) * (3 - len(parts))


def split(model, data):
    """``(x, y, sample_weight)`` of ``data`` (``y`` / ``sample_weight`` None when absent):
    ``x``, ``(x, y)``, ``(x, y, sample_weight)``, a dataset of those, or for a model of n > 1
    inputs also the n input arrays alone (``[x1, x2]`` was read as ``(x1, y=x2)``)."""
    if is_dataset(data):
        return dataset_arrays(data)
    n_in = len(getattr(model, "inputs", None) or ())
    if (n_in > 1 and isinstance(data, (tuple, list)) and len(data) == n_in
            and all(hasattr(a, "shape") for a in data)):
        return data, None, None
    if n_in > 1 and isinstance(data, (tuple, list)) and len(data) != n_in and all(
            hasattr(a, "shape") for a in data):  # (x1, x2, y): x=x1, y=x2, sample_weight=y
        raise invalid("data", f"for a model of {n_in} inputs: ([x1, ..., x{n_in}], y, "
                      f"sample_weight), ([x1, ..., x{n_in}], y) or the {n_in} input arrays "
                      f"alone", f"a sequence of {len(data)} arrays, the first of shape "
                      f"{tuple(data[0].shape)}")
    if isinstance(data, (tuple, list)) and len(data) == 3 and (
            n_in or data[2] is None or np.ndim(data[2]) == 1
            or isinstance(data[0], (tuple, list, dict))):  # ([x], y, w): x is the list
        return tuple(data)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1], None
    return data, None, None


def triple_hint(model, data):
    """A sentence for a refusal of ``data`` when :func:`split` read a subclassed model's loose
    ``(x, y, w)`` with ``w`` of shape ``(N, 1)`` as three inputs (a 3-input model could take
    that triple too), else ``""``."""
    if (getattr(model, "inputs", None) or not isinstance(data, (tuple, list)) or len(data) != 3
            or not all(hasattr(a, "shape") for a in data) or np.ndim(data[2]) != 2
            or np.shape(data[2])[1:] != (1,)):
        return ""
    return (" (a subclassed model's (x, y, w) with w of shape (N, 1) is read as three inputs: "
            "pass w of shape (N,), or x as a list: ([x], y, w))")


def check_sample_weight(sample_weight, n):
    """``sample_weight`` (shape ``(n,)`` or ``(n, 1)``) as a float64 array of shape ``(n,)``,
    divided by its largest weight (None stays None); raise unless it is finite, ``>= 0`` and
    not all zero."""
    if sample_weight is None:
        return None
    what = "the sample weights of data=(x, y, sample_weight) for weighting='fisher'"
    try:
        w = np.asarray(sample_weight)
    except (TypeError, ValueError) as e:  # ragged
        raise invalid("data", f"{what}: real numbers", f"{short(sample_weight)} ({e})") from e
    if w.dtype.kind not in "biuf":  # strings, objects (a dict), complex numbers
        raise invalid("data", f"{what}: real numbers", f"sample_weight of dtype {w.dtype}")
    w = w.astype(np.float64)
    if w.shape == (n, 1):  # Keras' fit takes (N, 1) too: one weight per sample
        w = w[:, 0]
    if w.shape != (n,):
        raise invalid("data", f"{what}: one per sample of x, shape ({n},) or ({n}, 1)",
                      f"sample_weight of shape {w.shape}")
    bad = int(np.count_nonzero(~np.isfinite(w)))
    if bad:
        raise invalid("data", f"{what}: finite numbers", f"{bad} NaN or infinite weights")
    if (w < 0).any():
        raise invalid("data", f"{what}: numbers >= 0", f"{int((w < 0).sum())} negative "
                      f"weights (min {w.min():.6g})")
    if not w.any():
        raise invalid("data", f"{what}: at least one weight > 0 (F is their weighted mean)",
                      f"all {n} weights 0")
    return w / w.max()  # the same weighted mean; 1e300-sized weights would sum to inf


def n_samples(x, name):
    """The number of samples (axis 0) of every array of the structure ``x``; raise unless it
    is one number for all (an optional input's None counts none)."""
    import keras  # noqa: PLC0415

    leaves = [a for a in keras.tree.flatten(x) if a is not None]
    if not leaves or any(getattr(a, "shape", None) is None or len(a.shape) == 0 for a in leaves):
        raise invalid(name, "(x, y) made of arrays with a leading sample axis", short(x))
    lengths = [int(a.shape[0]) for a in leaves]
    if len(set(lengths)) != 1:  # several inputs (or outputs): one sample count for all
        raise invalid(name, "arrays with the same number of samples along axis 0",
                      f"lengths {lengths} (shapes {[tuple(a.shape) for a in leaves]})")
    return lengths[0]
