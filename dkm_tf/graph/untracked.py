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
records each variable read and updates nothing; :mod:`.tied` makes the same call) and, where
such a call fails (an assertion on its input), by the variables one trace of the model
captures. Each untracked layer is listed once (frozen too), naming every layer that calls
it; a ``keras.random.SeedGenerator``'s state is no parameter. The export keeps the captured
variables (the file computes what Keras computes) and its report counts those
(:func:`record_captured`); the clustering entry points list each such layer as skipped
(:func:`untracked_skipped`; ``cluster_weights(..., on_unsupported="error")`` refuses it)
and, where it is the only layer with weights, say so (:func:`no_weights_reason`).
"""

from __future__ import annotations

import weakref

from dkm_tf.graph.layer_walk import walk_layers

__all__ = ["UNTRACKED", "UNTRACKED_WAY_OUT", "audited", "no_weights_reason", "param_count",
           "record_captured", "untracked_reads", "untracked_skipped", "variables_read"]

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


def _reads(layer, node):
    """``{id: variable}`` read by one eager call of ``layer`` like ``node`` on zeros (a scope
    that records each read and updates nothing); None if it cannot run on them."""
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
        return None
    return scope.read


def variables_read(layer, node):
    """``{id: variable}`` of the variables ``layer`` reads when called like ``node`` (one eager
    call on zeros in a scope that records each read and updates nothing); ``{}`` if it
    cannot run on them (the static checks still run)."""
    return _reads(layer, node) or {}


def _closure_layers(function, keras):
    """Keras layers a Python function reaches through its closure and the globals it names
    (with their sublayers): the candidates for the owner of an untracked variable."""
    code = getattr(function, "__code__", None)
    cells = []
    for cell in (getattr(function, "__closure__", None) or ()) if code is not None else ():
        try:  # a name assigned in one branch of the builder only: an empty cell
            cells.append(cell.cell_contents)
        except ValueError:
            continue
    names = getattr(code, "co_names", ())
    found = cells + [getattr(function, "__globals__", {}).get(n) for n in names]
    out = []
    for obj in found:
        if isinstance(obj, keras.layers.Layer):
            out.extend(obj._flatten_layers(include_self=True))  # noqa: SLF001
    return out


def _is_state(var):
    """A ``keras.random.SeedGenerator``'s state (an RNG counter, no parameter)."""
    name = str(getattr(var, "path", None) or getattr(var, "name", "")).split(":")[0]
    return name.rsplit("/", 1)[-1] == "seed_generator_state"


def _under(var):
    """The ``tf.Variable`` under a Keras variable (``var`` itself if it is none)."""
    import keras  # noqa: PLC0415

    return var.value if isinstance(var, keras.Variable) else var


def _owner(var, candidates):
    """``(name, kind)`` of the layer among ``candidates`` holding ``var`` (a Keras variable or
    the ``tf.Variable`` under one), else its variable path's parent and ``"variable"``."""
    for layer in candidates:
        if any(w is var or _under(w) is var for w in layer.weights):
            return layer.name, type(layer).__name__
    path = str(getattr(var, "path", None) or getattr(var, "name", "?")).split(":")[0]
    return path.rsplit("/", 1)[0], "variable"


def _tracked_ids(model):
    """ids of ``model.variables`` (seed state too) and ``model.weights``, of the
    ``tf.Variable`` under each, and of every variable TF tracking reaches from ``model`` (a
    raw ``tf.Variable`` a tracked layer holds as an attribute: the model's own, no layer a
    Lambda calls; it was blamed on an unrelated reader failing on zeros)."""
    out = set()
    for v in [*model.variables, *model.weights]:
        out.update({id(v), id(_under(v))})
    try:
        import tensorflow as tf  # noqa: PLC0415

        out.update(id(o) for o in tf.train.TrackableView(model).descendants()
                   if isinstance(o, tf.Variable))
    except Exception:  # noqa: BLE001 - an object graph it cannot walk: the ids above
        pass
    return out


def _traced(model):
    """The variables a ``tf.function`` of ``model`` captures (what ``to_tflite`` converts):
    those :func:`record_captured` kept of its last conversion, else one trace of the model on
    its ``model.inputs`` (a Sequential too: it has no ``_inputs_struct``, the trace never ran
    and a layer its failing Lambda calls was hidden); [] if it cannot be traced."""
    if model in _CAPTURED:
        return list(_CAPTURED[model])
    try:
        import tensorflow as tf  # noqa: PLC0415
        from keras import tree  # noqa: PLC0415

        specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
        struct = getattr(model, "_inputs_struct", None)

        def call(*xs):
            xs = (tree.pack_sequence_as(struct, list(xs)) if struct is not None
                  else xs[0] if len(xs) == 1 else list(xs))
            return model(xs, training=False)

        function = tf.function(call, autograph=False)
        return list(function.get_concrete_function(*specs).variables)
    except Exception:  # noqa: BLE001 - a subclassed model, an input it cannot trace
        return []


_CAPTURED = weakref.WeakKeyDictionary()


def record_captured(model, variables):
    """Keep the untracked variables ``to_tflite``'s traced function of ``model`` captured (the
    file stores them): :func:`param_count` counts these, not the ones the call on zeros saw.

    Args:
        model: the Keras model converted.
        variables: the captured ``tf.Variable`` objects not among ``model.variables``.
    """
    _CAPTURED[model] = [v for v in variables if not _is_state(v)]


def untracked_reads(model):
    """Layers called inside a ``Lambda`` (or a user-defined layer) that ``model`` does not
    track.

    Args:
        model: a built ``keras.Model``.

    Returns:
        A list of ``(readers, owner_name, owner_kind, variables, how)``, one per owner:
        ``readers`` the names of the layers that call it (each once); ``owner_name`` /
        ``owner_kind`` the untracked layer's name and class where a reader's function reaches
        it (closure or globals), else its variables' path parent and ``"variable"``;
        ``variables`` the ones read, none of them among ``model.variables`` (a seed
        generator's state left out: no parameter); ``how``: ``"Lambda"`` (every reader is a
        Lambda), ``"call"`` (a user-defined layer's call), ``"traced"`` (the call on zeros
        of ``readers`` failed; found among the variables a trace of the model captures, each
        credited to the failed readers whose function reaches its layer) or ``"one of"``
        (as ``"traced"``, no failed reader's function reaches it: one of ``readers`` reads
        it). A variable TF tracking reaches from ``model`` (a raw ``tf.Variable`` a layer
        holds) is the model's own: none.
    """
    import keras  # noqa: PLC0415

    tracked, found, failed, candidates, reach = _tracked_ids(model), {}, [], [], {}

    def add(owner, reader, how, var):
        entry = found.setdefault(owner, ([], [], set()))
        entry[0].extend([reader] if reader not in entry[0] else [])
        entry[2].add(how)
        if not any(_under(v) is _under(var) for v in entry[1]):
            entry[1].append(var)

    for layer in walk_layers(model):
        if not audited(layer):
            continue
        near = _closure_layers(getattr(layer, "function", None), keras)
        candidates += near
        reach[layer.name] = near
        how = "Lambda" if isinstance(layer, keras.layers.Lambda) else "call"
        for node in getattr(layer, "_inbound_nodes", None) or []:
            read = _reads(layer, node)
            failed += [layer.name] if read is None and layer.name not in failed else []
            for var in (read or {}).values():
                if id(var) not in tracked and not _is_state(var):
                    add(_owner(var, near), layer.name, how, var)
    if failed:  # a reader that fails on zeros: what the trace captures names the rest
        seen = {id(_under(v)) for e in found.values() for v in e[1]}
        for var in _traced(model):
            if id(var) not in tracked and id(var) not in seen and not _is_state(var):
                owner = _owner(var, candidates)  # credited to the readers reaching it
                near = [r for r in failed if owner[1] != "variable" and owner[0] in
                        {c.name for c in reach[r]}]
                for reader in near or failed:
                    add(owner, reader, "traced" if near or len(failed) == 1 else "one of", var)
    return [(tuple(r), owner, kind, tuple(vs), "one of" if "one of" in hows else
             "traced" if "traced" in hows else "Lambda" if hows == {"Lambda"} else "call")
            for (owner, kind), (r, vs, hows) in found.items()]


_WHERE = {"Lambda": "a Lambda's function", "call": "a custom layer's call, not an attribute",
          "traced": "its call on zeros failed; the function to_tflite converts reads it",
          "one of": "their calls on zeros failed; the function to_tflite converts reads it"}


def _one_of(how):
    return "one of " if how == "one of" else ""


def untracked_skipped(model, on_unsupported="skip"):
    """``(owner_name, owner_kind, reason)`` for each layer with weights (frozen too) that a
    ``Lambda`` (or user-defined layer) of ``model`` calls and ``model`` does not track: the
    clustering entry points list it as skipped (it stays float) instead of saying nothing.

    Args:
        model: a built ``keras.Model``.
        on_unsupported: ``"skip"`` (list it) or ``"error"`` (raise ``ValueError`` naming it,
            as ``cluster_weights(..., on_unsupported="error")`` does for a layer it cannot
            cluster).
    """
    found = untracked_reads(model)
    if on_unsupported == "error" and found:
        names = ", ".join(f"{owner!r} ({kind}) called inside {_one_of(how)}"
                          f"{', '.join(map(repr, r))}" for r, owner, kind, _, how in found)
        raise ValueError(f"cluster_weights(on_unsupported='error') cannot cluster {names}: "
                         f"{UNTRACKED} (its weights are not among model.weights). "
                         f"{UNTRACKED_WAY_OUT}")
    return [(owner, kind, f"{UNTRACKED}: called inside "
             f"{_one_of(how)}layer{'s' * (how == 'one of')} "
             f"{', '.join(map(repr, r))} "
             f"({_WHERE[how]}), its weights are not among model.weights (nor in the .keras "
             "file model.save writes), so it is left float (and fit does not train it). "
             f"{UNTRACKED_WAY_OUT}") for r, owner, kind, _, how in found]


def param_count(model):
    """``model.count_params()`` plus the size of every variable of a layer a ``Lambda`` calls
    that ``model`` does not track (each once; a seed generator's state left out): those the
    last ``to_tflite`` conversion of ``model`` captured (the file stores them:
    :func:`record_captured`), else those :func:`untracked_reads` finds (left out, a Dense(4)
    in a Lambda after a Dense(16) counted 144 of 212).

    Args:
        model: a built ``keras.Model``.
    """
    import numpy as np  # noqa: PLC0415

    held = _CAPTURED.get(model)
    if held is not None:  # a layer tracked since (Sequential.add): counted once
        tracked = _tracked_ids(model)
        held = [v for v in held if id(v) not in tracked and id(_under(v)) not in tracked]
    else:
        held = [v for *_, vs, _ in untracked_reads(model) for v in vs]
    held = {id(_under(v)): v for v in held}  # read twice: once
    return int(model.count_params()) + sum(int(np.prod(v.shape)) for v in held.values())


def no_weights_reason(model):
    """What the clustering entry points say of a model with no layer with weights: "it has no
    layer with weights.", naming a layer a ``Lambda`` calls that ``model`` does not track
    where there is one (frozen too; it said only that: the weights are there, out of reach).

    Args:
        model: a built ``keras.Model``.
    """
    found = untracked_reads(model)
    if not found:
        return "it has no layer with weights."
    names = ", ".join(f"{owner!r} called inside {_one_of(how)}{', '.join(map(repr, r))}"
                      for r, owner, _, _, how in found)
    return (f"it has no layer with weights of its own: {names}, {UNTRACKED} (its weights are "
            f"not among model.weights). {UNTRACKED_WAY_OUT}")
