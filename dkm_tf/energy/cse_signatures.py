"""The parts of a call's key in the common subexpression merge (`keras_cse`): a layer's class
and config, a digest of its weights, the non-tensor arguments of its call (moved from
`keras_cse` on 2026-12-07, which keys a `keras.layers.Pipeline`'s calls too)."""

import hashlib

import numpy as np

_DROPPED = ("name", "trainable", "seed")


def signature(op, state):
    """`(class, config)` of `op`, or None where its config cannot be read."""
    sigs = state["sigs"]
    if id(op) not in sigs:
        try:
            config = _canon(op.get_config())
        except (NotImplementedError, TypeError, ValueError, AttributeError):
            config = None
        sigs[id(op)] = None if config is None else (
            f"{type(op).__module__}.{type(op).__qualname__}", config, op)
    sig = sigs[id(op)]
    return None if sig is None else sig[:2]


def digest(op, state):
    """A digest of the weights of `op` (computed once an op)."""
    digests = state.setdefault("digests", {})
    if id(op) not in digests:
        digest = hashlib.sha1()
        for w in getattr(op, "weights", []):
            digest.update(_array_key(np.asarray(w)).encode())
        digests[id(op)] = (digest.hexdigest(), op)
    return digests[id(op)][0]


def arguments(call_or_node, keras):
    """The non-tensor arguments of the call (its node's), tensors as "T"; None if unknown."""
    try:
        producer, index, _ = call_or_node[1][0]._keras_history
        arguments = producer._inbound_nodes[index].arguments
        parts = (arguments.args, arguments.kwargs)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return _canon(keras.tree.map_structure(  # with the outputs' dtypes (review R9: a type
        lambda x: "T" if isinstance(x, keras.KerasTensor) else x, parts)) + tuple(  # per
        str(t.dtype) for t in call_or_node[1])  # scalar split `x + 1`, `x + 1.0` of a float x)


def _canon(x):
    """A hashable, exact stand-in of a config / argument structure: arrays by digest (scalars
    by value: `arguments` adds the call's output dtypes, so `ops.add(x, 1)` and
    `ops.add(x, 1.0)` of an int `x`, an int32 and a float32 ADD, are told apart)."""
    if isinstance(x, dict):
        return tuple(sorted((str(k), _canon(v)) for k, v in x.items()
                            if k not in _DROPPED and not str(k).endswith(
                                ("_initializer", "_regularizer", "_constraint"))))
    if isinstance(x, (list, tuple)):
        return tuple(_canon(v) for v in x)
    if isinstance(x, (str, int, float, bool, type(None))):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return _array_key(np.asarray(x))
    return repr(x)


def _array_key(a):
    return f"{a.dtype}{a.shape}:{hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()}"
