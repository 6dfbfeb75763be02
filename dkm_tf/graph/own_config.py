"""Rebuilding a layer from its own config without Keras' name lookups changing it.

A layer's config names the functions it holds (an activation) by their name only, and a
custom regularizer / initializer / constraint by its class name. Keras resolves those names
among registered objects, then among its own built-ins, and raises otherwise. Measured before
2026-12-05 on every copy dkm_tf makes (``cluster_weights``, ``share_weights``,
``strip_clustering``, BatchNormalization folding):

* a user's unregistered ``def relu(x)`` came back as Keras' ``relu``: a silently different
  model (a Dense(3) with it, clustered losslessly at K=12, differed from the float model by
  1.23);
* so did a ``Lambda(relu)`` of such a function;
* an unregistered ``def my_act(x)``, an unregistered ``Regularizer`` / ``Initializer`` /
  ``Constraint`` subclass, and an unregistered custom layer inside a wrapper (a
  ``ClusterWeights`` being re-clustered, a ``TimeDistributed``) made the copy raise.

:func:`from_own_config` resolves the names to the layer's own objects and puts back a
function that a built-in's name replaced.
"""

from __future__ import annotations

import types

import keras

__all__ = ["from_own_config", "held_functions"]

_CUSTOM_BASES = (keras.regularizers.Regularizer, keras.initializers.Initializer,
                 keras.constraints.Constraint)


def _held(layer, path="", seen=None):
    """``[(owner, attribute, path, value)]`` of the instance attributes of ``layer`` and of
    its public sublayers (``"cell.activation"``, ``"cells.1.activation"``), each layer once."""
    seen = set() if seen is None else seen
    seen.add(id(layer))
    out = []
    for attr, value in vars(layer).items():
        out.append((layer, attr, path + attr, value))
        if attr.startswith("_"):
            continue
        subs = value if isinstance(value, (list, tuple)) else [value]
        for i, sub in enumerate(subs):
            if isinstance(sub, keras.layers.Layer) and id(sub) not in seen:
                where = f"{attr}.{i}" if sub is not value else attr
                out += _held(sub, f"{path}{where}.", seen)
    return out


def held_functions(layer):
    """``{path: function}`` of the plain functions ``layer`` and its public sublayers hold as
    public instance attributes (``"activation"``, ``"cell.activation"``), methods excluded."""
    return {path: value for owner, attr, path, value in _held(layer)
            if isinstance(value, types.FunctionType) and not attr.startswith("_")
            and getattr(type(owner), attr, None) is None}


def _scope(layer, functions):
    """Custom objects resolving the layer's names to its own functions (a name two different
    functions share is left out) and to the classes of its custom regularizers, initializers,
    constraints and sublayers (a wrapped layer, an RNN cell) that are not Keras' own."""
    by_name = {}
    for fn in functions.values():
        by_name.setdefault(fn.__name__, []).append(fn)
    scope = {name: fns[0] for name, fns in by_name.items() if all(f is fns[0] for f in fns)}
    for _, _, _, value in _held(layer):
        cls = type(value)
        if isinstance(value, (*_CUSTOM_BASES, keras.layers.Layer)) and \
                not cls.__module__.startswith("keras."):
            scope.setdefault(cls.__name__, cls)
    return scope


def from_own_config(layer, config=None):
    """``layer.__class__.from_config(layer.get_config())`` holding the layer's own functions
    (``config``, if given, in place of ``layer.get_config()``).

    A plain ``keras.layers.Lambda`` is built as ``Lambda(**config)`` with its live
    ``function``, ``arguments``, ``output_shape`` and ``mask`` put back: nothing is decoded
    (``from_config`` would refuse a Python lambda's bytecode in safe mode, and leaves a
    callable ``mask`` as its config), the user's own in-memory objects are reused.
    """
    if type(layer) is keras.layers.Lambda:
        config = layer.get_config()
        config.update(function=layer.function, arguments=dict(layer.arguments),
                      output_shape=layer._output_shape, mask=layer.mask)  # noqa: SLF001
        return keras.layers.Lambda(**config)
    held = held_functions(layer)
    with keras.saving.custom_object_scope(_scope(layer, held)):
        new = layer.__class__.from_config(layer.get_config() if config is None else config)
    got = held_functions(new)
    for path, fn in held.items():  # only a built-in's name resolved to Keras' own function:
        # a function the layer's __init__ makes anew (a closure) stays the copy's
        if _keras_function(got.get(path)) and not _keras_function(fn):
            setattr(_owner(new, path), path.rpartition(".")[2], fn)  # the fresh copy, unbuilt
    return new


def _keras_function(fn):
    return getattr(fn, "__module__", None) is not None and fn.__module__.startswith("keras.")


def _owner(layer, path):
    """The object holding the attribute at ``path`` (``"cell.activation"``) of ``layer``."""
    obj = layer
    for part in path.split(".")[:-1]:
        obj = obj[int(part)] if part.isdigit() and isinstance(obj, (list, tuple)) \
            else getattr(obj, part, None)
        if obj is None:
            return None
    return obj
