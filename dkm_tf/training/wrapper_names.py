"""Unique wrapper names: ``cluster_<layer>``, or ``cluster_<layer>_<i>`` where that is taken.

A wrapper is named ``cluster_<layer name>`` by default. In a model that also holds a layer of
that very name which stays as it is (``fc`` clustered beside ``cluster_fc`` left float), Keras
refused the clustered model ("The name "cluster_fc" is used 2 times in the model"). Each
model (the top one and each nested one: Keras wants unique names per model) is planned before
it is copied: a wrapper whose default name is taken by a layer that stays gets the first free
``cluster_<layer>_1``, ``_2``, ... (free of every name of that model and of every other
wrapper's name), so a model without a clash keeps every name it had. The stripped model has
the original names again (:func:`dkm_tf.strip_clustering` copies each wrapped layer).
"""

from __future__ import annotations

import contextlib
import contextvars

__all__ = ["default_name", "free_name", "named", "overrides_scope", "plan_names", "unique_names"]

_NAME = contextvars.ContextVar("dkm_tf_wrapper_name", default=None)  # the wrapper made now
_OVERRIDES = contextvars.ContextVar("dkm_tf_cluster_overrides", default=None)


def default_name(layer):
    """The name of a wrapper of ``layer`` made now: the planned one, else ``cluster_<name>``."""
    return _NAME.get() or f"cluster_{layer.name}"


@contextlib.contextmanager
def overrides_scope(overrides):
    """``cluster_weights``' ``overrides`` while it copies the model (layers they leave float
    keep their names: a wrapper must not take one)."""
    token = _OVERRIDES.set({"overrides": overrides})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def _operations(model):
    graph = getattr(model, "_functional", None) or model  # a Sequential's graph
    return list(getattr(graph, "operations", None) or model.layers)


def free_name(base, taken):
    """``base``, or the first ``base_1``, ``base_2``, ... not in ``taken`` (which it joins)."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def plan_names(model, wrapped):
    """``{id(layer): name}`` for each layer that ``wrapped(layer)`` says becomes a wrapper and
    whose ``cluster_<name>`` a kept operation of the same model already has."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    out = {}
    for m in [model, *(s for s in walk_layers(model) if isinstance(s, keras.Model))]:
        ops = _operations(m)
        new = [op for op in ops if isinstance(op, keras.layers.Layer) and wrapped(op)]
        kept = {op.name for op in ops} - {op.name for op in new}
        taken = kept | {op.name for op in new} | {f"cluster_{op.name}" for op in new}
        for op in new:
            if f"cluster_{op.name}" in kept:
                out[id(op)] = free_name(f"cluster_{op.name}", taken)
    return out


def unique_names(model, clone_function, keeps=()):
    """``clone_function`` naming each new wrapper as :func:`plan_names` plans, inside
    ``cluster_weights`` (:func:`overrides_scope`); ``clone_function`` itself elsewhere.

    A layer becomes a wrapper when it is clusterable, not an instance of ``keeps`` (existing
    wrappers, nested models, Pipelines) and not left float by the overrides.
    """
    scope = _OVERRIDES.get()
    if scope is None:
        return clone_function
    import keras  # noqa: PLC0415

    from dkm_tf.graph import clusterable as clusterable_lib  # noqa: PLC0415

    def wrapped(layer):  # as cluster_weights decides (a BatchNormalization is no clusterable)
        return (not isinstance(layer, (*keeps, keras.Model, keras.layers.Pipeline,
                                       keras.layers.InputLayer))
                and clusterable_lib.is_clusterable(layer)
                and not clusterable_lib.skipped_by_overrides(layer, scope["overrides"]))

    return named(plan_names(model, wrapped), clone_function)


def named(plan, clone_function):
    """``clone_function`` naming the wrapper it makes of layer ``l`` ``plan[id(l)]``, if any."""
    if not plan:
        return clone_function

    def call(layer):
        token = _NAME.set(plan.get(id(layer)))
        try:
            return clone_function(layer)
        finally:
            _NAME.reset(token)

    return call


def clash_error(model, error):
    """A ValueError for Keras' "The name ... is used 2 times in the model" at a copy: which
    wrapper holds a layer named like another layer of its model (stripped, both would keep
    that name; :func:`dkm_tf.strip_clustering` keeps the wrapped layers' names)."""
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    found = []
    for m in [model, *(s for s in walk_layers(model) if isinstance(s, keras.Model))]:
        names = [op.name for op in _operations(m)]
        found += [f"wrapper {op.name!r} holds layer {op.layer.name!r}, the name of another "
                  f"layer of model {m.name!r}" for op in _operations(m)
                  if isinstance(getattr(op, "layer", None), keras.layers.Layer)
                  and op.layer.name in names]
    return ValueError(f"Model {model.name!r}: {error}" + (
        f" ({'; '.join(found)}: a stripped model keeps each wrapped layer's name. Rename one "
        "of them.)" if found else ""))
