"""Layers a ``Lambda`` calls that the model does not track.

``d = keras.layers.Dense(4); y = keras.layers.Lambda(lambda t: d(t))(x)``: the model calls
``d`` inside the Lambda's function, but ``d`` is no layer of the model's graph and no
attribute of any of its layers, so its variables are not among ``model.weights``. Before
2026-12-07:

* ``to_tflite`` failed on every format with the converter's "SignatureDef signature_key is
  None and model has 0 Signatures": the function it converts captured ``d``'s variables, the
  module it saved them in did not hold them, so the converter's temporary SavedModel was
  refused ("references an 'untracked' resource") and its fallback wrote a file without a
  signature;
* ``share_weights`` and ``cluster_weights`` left ``d`` float and did not list it among the
  skipped layers (``fit`` does not train it either: it is not among the trainable variables).

:func:`untracked_reads` finds such layers by one eager call of every ``Lambda`` and
user-defined layer on zeros shaped like its graph inputs (:func:`variables_read`, which
records each variable read and updates nothing; :mod:`.tied` makes the same call); the
export keeps the captured variables (the file computes what Keras computes), the clustering
entry points list each such layer as skipped (:func:`untracked_skipped`) and, where it is
the only layer with weights, say so (:func:`no_weights_reason`).
"""

from __future__ import annotations

__all__ = ["UNTRACKED", "UNTRACKED_WAY_OUT", "audited", "no_weights_reason", "param_count",
           "untracked_reads", "untracked_skipped", "variables_read"]

UNTRACKED = "not tracked by the model"

UNTRACKED_WAY_OUT = (
    "To cluster it, call the layer in the model's graph (y = d(x) instead of "
    "Lambda(lambda t: d(t))(x)), or hold it as an attribute of a custom layer that calls it.")


def audited(layer):
    """Layers whose call may read another layer's variable: Lambda and user-defined ones."""
    import keras  # noqa: PLC0415

    if isinstance(layer, keras.Model) or not layer.built:  # a call would build it
        return False
    if isinstance(layer, keras.layers.Lambda):
        return True
    module = type(layer).__module__ or ""
    return not module.startswith(("keras.", "dkm_tf.", "tf_keras."))  # keras_hub's: audited


def _zeros_like_node(node):
    """Concrete zeros shaped like a node's symbolic arguments (unknown dims: 1)."""
    import keras  # noqa: PLC0415
    from keras import tree  # noqa: PLC0415

    def concrete(t):
        if isinstance(t, keras.KerasTensor):
            if getattr(t, "sparse", False) or getattr(t, "ragged", False):
                raise TypeError("sparse / ragged input")
            return keras.ops.zeros([1 if d is None else d for d in t.shape], dtype=t.dtype)
        return t

    args = tree.map_structure(concrete, node.arguments.args)
    kwargs = tree.map_structure(concrete, node.arguments.kwargs)
    return args, kwargs


def variables_read(layer, node):
    """``{id: variable}`` of the variables ``layer`` reads when called like ``node`` (one eager
    call on zeros in a scope that records each read and updates nothing); ``{}`` if it
    cannot run on them (the static checks still run)."""
    import keras  # noqa: PLC0415

    class _Recorder(keras.StatelessScope):
        def __init__(self):
            super().__init__(collect_losses=True)
            self.read = {}

        def get_current_value(self, variable):
            self.read.setdefault(id(variable), variable)
            return super().get_current_value(variable)

    try:
        args, kwargs = _zeros_like_node(node)
        with _Recorder() as scope:
            layer(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an input it cannot take
        return {}
    return scope.read


def _walk(model):
    """Every layer below ``model`` by the public ``layers``, each once (as
    ``clusterable.walk_layers``, which imports this module)."""
    seen, out = set(), []

    def walk(layer):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                walk(sub)

    walk(model)
    return out


def _closure_layers(function, keras):
    """Keras layers a Python function reaches through its closure and the globals it names
    (with their sublayers): the candidates for the owner of an untracked variable."""
    code = getattr(function, "__code__", None)
    cells = [c.cell_contents for c in getattr(function, "__closure__", None) or ()
             if c.cell_contents is not None] if code is not None else []
    names = getattr(code, "co_names", ())
    found = cells + [getattr(function, "__globals__", {}).get(n) for n in names]
    out = []
    for obj in found:
        if isinstance(obj, keras.layers.Layer):
            out.extend(obj._flatten_layers(include_self=True))  # noqa: SLF001
    return out


def _owner(var, candidates):
    """``(name, kind)`` of the layer among ``candidates`` holding ``var``, else its variable
    path and ``"variable"``."""
    for layer in candidates:
        if any(w is var for w in layer.weights):
            return layer.name, type(layer).__name__
    return getattr(var, "path", None) or getattr(var, "name", "?"), "variable"


def untracked_reads(model):
    """Layers called inside a ``Lambda`` (or a user-defined layer) that ``model`` does not
    track.

    Args:
        model: a built ``keras.Model``.

    Returns:
        A list of ``(reader_name, owner_name, owner_kind, variables)``, one per reader and
        owner: ``owner_name`` / ``owner_kind`` are the untracked layer's name and class where
        the Lambda's function reaches it (closure or globals), else the variable's path and
        ``"variable"``; ``variables`` are the Keras variables of it the reader reads, none of
        them among ``model.weights``.
    """
    import keras  # noqa: PLC0415

    tracked = {id(v) for v in model.weights}
    found = {}
    for layer in _walk(model):
        if not audited(layer):
            continue
        candidates = _closure_layers(getattr(layer, "function", None), keras)
        for node in getattr(layer, "_inbound_nodes", None) or []:
            for var in variables_read(layer, node).values():
                if id(var) in tracked:
                    continue
                key = (layer.name, *_owner(var, candidates))
                held = found.setdefault(key, [])
                if not any(v is var for v in held):
                    held.append(var)
    return [(reader, owner, kind, tuple(vs)) for (reader, owner, kind), vs in found.items()]


def untracked_skipped(model):
    """``(owner_name, owner_kind, reason)`` for each layer with trainable weights that a
    ``Lambda`` (or user-defined layer) of ``model`` calls and ``model`` does not track: the
    clustering entry points list it as skipped (it stays float) instead of saying nothing.

    Args:
        model: a built ``keras.Model``.
    """
    return [(owner, kind, f"{UNTRACKED}: called inside layer {reader!r} (a Lambda's "
             "function), its weights are not among model.weights (nor in the .keras file "
             "model.save writes), so it is left float (and fit does not train it). "
             f"{UNTRACKED_WAY_OUT}")
            for reader, owner, kind, variables in untracked_reads(model)
            if any(getattr(v, "trainable", False) for v in variables)]


def param_count(model):
    """``model.count_params()`` plus the size of every variable of a layer a ``Lambda`` calls
    that ``model`` does not track (each once): the parameters its ``.tflite`` file stores
    (left out, a Dense(4) in a Lambda after a Dense(16) counted 144 of 212).

    Args:
        model: a built ``keras.Model``.
    """
    import numpy as np  # noqa: PLC0415

    held = {id(v): v for *_, vs in untracked_reads(model) for v in vs}  # read twice: once
    return int(model.count_params()) + sum(int(np.prod(v.shape)) for v in held.values())


def no_weights_reason(model):
    """What the clustering entry points say of a model with no layer with weights: "it has no
    layer with weights.", naming a layer a ``Lambda`` calls that ``model`` does not track
    where there is one (it said only that; the weights are there, out of reach).

    Args:
        model: a built ``keras.Model``.
    """
    found = [(reader, owner) for reader, owner, _, vs in untracked_reads(model)
             if any(getattr(v, "trainable", False) for v in vs)]
    if not found:
        return "it has no layer with weights."
    names = ", ".join(f"{owner!r} called inside {reader!r}" for reader, owner in found)
    return (f"it has no layer with weights of its own: {names}, {UNTRACKED} (its weights are "
            f"not among model.weights). {UNTRACKED_WAY_OUT}")
