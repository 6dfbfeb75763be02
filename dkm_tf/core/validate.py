"""Argument checks with Keras' message pattern, shared by every module.

"Invalid value for argument `x`. Expected ... Received: x=..." (style.md, practice 10).
"""

from __future__ import annotations

# The default number of training samples ``weighting`` / ``refine`` calibrate on: of
# compress(), dkm-tf compress (its --calibration_samples) and their refusal of another value
# without weighting / refine (it would be unused; review R2). One value, read by all four.
CALIBRATION_SAMPLES = 256


def invalid(name, expected, value):
    """The ``ValueError`` for argument ``name``: what was expected and what was received
    (arrays by shape and dtype)."""
    shown = _short(value) if hasattr(value, "shape") else repr(value)
    return ValueError(f"Invalid value for argument `{name}`. Expected {expected}. "
                      f"Received: {name}={shown}")


def check_choice(name, value, allowed):
    """Return ``value`` if it is in ``allowed``, else raise listing the allowed values."""
    if value not in allowed:
        raise invalid(name, f"one of {list(allowed)}", value)
    return value


def check_n_clusters(n_clusters, name="n_clusters"):
    """Return K as an int: ``TypeError`` unless an integer (bools refused), ``ValueError`` if < 1.

    The one K check of k-means, the wrapper and the regularizer.
    """
    if not is_int(n_clusters):
        raise TypeError(f"Invalid type for argument `{name}`. Expected an integer >= 1. "
                        f"Received: {name}={n_clusters!r} of type {type(n_clusters).__name__}")
    if not 1 <= n_clusters <= 2**31 - 1:
        raise invalid(name, "an integer >= 1" if n_clusters < 1 else
                      "an integer <= 2,147,483,647 (2**31 - 1)", n_clusters)
    return int(n_clusters)


def invalid_type(name, expected, value):
    """The ``TypeError`` for argument ``name`` of the wrong type (Keras' message pattern)."""
    return TypeError(f"Invalid type for argument `{name}`. Expected {expected}. "
                     f"Received: {name}={_short(value)} of type {type(value).__name__}")


def _short(value):
    """``repr`` of a value for a message; arrays by shape and dtype, long text cut."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and len(shape) and not isinstance(value, str):
        return f"<array of shape {tuple(shape)} and dtype {dtype}>"
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def check_bool(name, value):
    """Return ``value`` if it is a bool (``True``/``False``, numpy bools too), else ``TypeError``.

    Truthy stand-ins ("yes", 1) are refused: they hide typos such as ``inplace="no"``.
    """
    if not is_bool(value):
        raise invalid_type(name, "a bool (True or False)", value)
    return bool(value)


def is_bool(value):
    """A bool: ``True``/``False`` or a numpy bool (``np.True_``), not 1 / 0 or "yes"."""
    import numpy as np  # noqa: PLC0415

    return isinstance(value, (bool, np.bool_))


def check_finite_positive(name, value, expected):
    """Return ``value`` as a float if it is a finite real number > 0 (numpy scalars too), else
    ``ValueError`` naming ``expected`` (bools, strings, NaN and inf refused)."""
    try:
        return check_number(name, value, expected, low=0, low_open=True)
    except TypeError:  # a ValueError here, as learning rates always raised
        raise invalid(name, expected, value) from None


def is_int(value):
    """An integer (Python or numpy), not a bool (True == 1 would pass as one)."""
    import numbers  # noqa: PLC0415

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name, value, minimum=0, maximum=None):
    """Return ``value`` as an int: ``TypeError`` unless an integer (bools refused),
    ``ValueError`` outside ``[minimum, maximum]``."""
    if not is_int(value):
        raise invalid_type(name, f"an integer >= {minimum}", value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"an integer >= {minimum}" if maximum is None else \
            f"an integer in [{minimum}, {maximum}]"
        raise invalid(name, bound, value)
    return int(value)


def check_input_shape(input_shape, name="input_shape", allow_none=True):
    """Return ``input_shape`` (an input size without the batch axis) as a tuple of ints, or
    None (where ``allow_none``): a list, tuple, 1-D NumPy array, TensorShape or 1-D integer
    tensor of positive integers. A string was read digit by digit (``"883"`` as
    ``(8, 8, 3)``), a float dim truncated (8.7 as 8) and a set taken in its own order
    (``{7, 5}`` as ``(5, 7)``); an open (None) size cannot be charged."""
    if input_shape is None and allow_none:
        return None
    value = input_shape.numpy() if _is_tensor(input_shape) else input_shape
    ok_type = isinstance(value, (list, tuple)) or getattr(value, "ndim", None) == 1 or (
        type(value).__name__ == "TensorShape" and value.rank is not None)
    dims = tuple(value) if ok_type else ()
    if not dims or not all(is_int(d) and d >= 1 for d in dims):
        shown = value.tolist() if hasattr(value, "tolist") and getattr(
            value, "size", 99) <= 8 else input_shape
        none = " (an open None size cannot be charged: give every size)" if any(
            d is None for d in dims) else ""
        raise invalid(name, ("None or " if allow_none else "") + "a list / tuple of positive "
                      "integers without the batch axis, e.g. (32, 32, 3)" + none, shown)
    return tuple(int(d) for d in dims)


def _is_tensor(value):
    """A backend tensor (``tf.shape(x)[1:]``): read through ``.numpy()``."""
    return hasattr(value, "numpy") and hasattr(value, "dtype") and hasattr(value, "shape")


def check_axis(name, axis, ndim):
    """Return ``axis`` of an array of ``ndim`` dimensions as an int in ``[-ndim, ndim)``:
    ``TypeError`` unless an integer (bools refused), ``ValueError`` outside the range."""
    expected = f"an integer in [-{ndim}, {ndim}) (an axis of an array of {ndim} dimensions)"
    if not is_int(axis):
        raise invalid_type(name, expected, axis)
    if not -ndim <= axis < ndim:
        raise invalid(name, expected, axis)
    return int(axis)


def check_hw(name, value):
    """``(height, width)`` from a positive integer or a pair of them (a conv's kernel size,
    strides, input size); ``ValueError`` otherwise (bools refused)."""
    import numbers  # noqa: PLC0415

    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if len(items) not in (1, 2) or any(isinstance(v, bool) or not isinstance(
            v, numbers.Integral) or v < 1 for v in items):
        raise invalid(name, "a positive integer or a pair (height, width) of them", value)
    return int(items[0]), int(items[-1])


def check_seed(seed, name="seed"):
    """Return a random seed as an int: a non-negative integer (what numpy's generators take).

    ``TypeError`` for floats, strings, bools and None; ``ValueError`` for negative integers.
    """
    return check_int(name, seed, minimum=0)


def check_number(name, value, expected, *, low=None, high=None, low_open=False,
                 high_open=False):
    """Return ``value`` as a float if it is a finite real number within the bounds.

    ``TypeError`` unless a real number (bools and strings refused); ``ValueError`` for NaN, Inf
    or a value outside ``low``/``high`` (open ends with ``low_open``/``high_open``);
    ``expected`` describes the allowed values in the message.
    """
    import math  # noqa: PLC0415
    import numbers  # noqa: PLC0415

    if is_bool(value) or not isinstance(value, numbers.Real):
        raise invalid_type(name, expected, value)
    try:
        v = float(value)
    except OverflowError:  # an int beyond float's range (10**400): not finite either
        v = math.inf
    if (not math.isfinite(v) or (low is not None and (v < low or (low_open and v == low)))
            or (high is not None and (v > high or (high_open and v == high)))):
        raise invalid(name, expected, value)
    return v


def check_real_array(name, x):
    """``x`` as a numpy array of real numbers (bools, integers or floats).

    ``TypeError`` for strings, objects (None entries) and complex numbers, whose imaginary
    part would otherwise be dropped without a word; ``ValueError`` for ragged nested lists.
    """
    import numpy as np  # noqa: PLC0415

    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged lists
        raise invalid(name, "an array of real numbers (a rectangular, non-ragged array)",
                      x) from e
    if arr.dtype.kind not in "biuf" and arr.dtype.name != "bfloat16":
        what = "complex numbers (the imaginary part would be lost)" if arr.dtype.kind == "c" \
            else f"dtype {arr.dtype}"
        raise TypeError(f"Invalid type for argument `{name}`. Expected an array of real "
                        f"numbers. Received: {name} holding {what}, shape {arr.shape}")
    return arr


# keyword options of the engines: name -> (engines, check)
KMEANS_OPTIONS = {
    "max_iter": (("scalar", "vector"), lambda v: check_int("max_iter", v, minimum=1)),
    "refine": (("scalar",), lambda v: check_bool("refine", v)),
    "tol": (("vector",), lambda v: check_number("tol", v, "a number >= 0", low=0)),
    "chunk": (("vector",), lambda v: check_int("chunk", v, minimum=1)),
    "use_faiss": (("vector",), lambda v: v is None or check_bool("use_faiss", v)),
}


def check_kmeans_options(options, engine=None, name="kmeans_options"):
    """Check extra k-means keyword arguments (``cluster_values(**kwargs)``, ``kmeans_options``).

    Names must be among :data:`KMEANS_OPTIONS` with valid values; with ``engine``
    (``"scalar"`` or ``"vector"``) they must also apply to that engine.

    Returns:
        The options as a new dict.
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"Invalid type for argument `{name}`. Expected a dict of k-means "
                        f"options among {sorted(KMEANS_OPTIONS)}. Received: {options!r}")
    for key, value in options.items():
        if key not in KMEANS_OPTIONS:
            raise TypeError(f"Invalid k-means option {key!r} in `{name}`. Expected names among "
                            f"{sorted(KMEANS_OPTIONS)}. Received: {key}={value!r}")
        engines, check = KMEANS_OPTIONS[key]
        check(value)
        if engine is not None and engine not in engines:
            usable = sorted(k for k, (e, _) in KMEANS_OPTIONS.items() if engine in e)
            raise TypeError(f"Invalid k-means option {key!r} in `{name}`: it applies to "
                            f"{' and '.join(engines)} units, and these are {engine} units "
                            f"(options: {usable}). Received: {key}={value!r}")
    return dict(options)


def check_finite_samples(name, x, purpose):
    """Raise :func:`invalid` when a float array of ``x`` (an array or a list / tuple of them,
    one per model input, nested as the model's inputs are) holds NaN or inf: a NaN input
    gives NaN outputs and losses that later checks misread (a layer "not linear", a codebook
    of NaN)."""
    import numpy as np  # noqa: PLC0415

    if isinstance(x, (list, tuple, dict)):
        import keras  # noqa: PLC0415

        leaves = [a for a in keras.tree.flatten(x) if a is not None]
        if not any(np.ndim(a) for a in leaves):  # a list of numbers: as before, by row
            leaves = list(x.values()) if isinstance(x, dict) else x
    else:
        leaves = [x]
    for a in leaves:
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ValueError(f"Invalid value for argument `{name}`. Expected finite samples "
                             f"{purpose}. Received: {int(np.count_nonzero(~np.isfinite(a))):,} "
                             f"NaN or infinite values among {a.size:,}")
