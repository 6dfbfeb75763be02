"""Traces a model whose clustering wrappers run as their wrapped layers (`graph_reader`).

A `ClusterWeights` wrapper computes its shared kernel (``codebook[indices]``: a gather, a
reshape, a transpose) and runs the wrapped layer's op with that tensor, so in a traced graph
the Conv2D's or MatMul's kernel is no variable: `graph_reader` could not attribute it to a
layer (a conv was named by its TensorFlow name scope, ``net_1/cluster_c1_1/c1_1``, which no
palette names; a dense MatMul was only listed in `skipped`, "matmul without a variable kernel",
its MACs not charged). The Functional reader (`keras_reader`) classifies a wrapper by its
wrapped layer; the traced reader does the same: while the model is traced, each clustering
wrapper's `call` runs the wrapped layer on its own kernel variable (same op, same shapes, so
the same MACs), whose `variable.path` names the wrapped layer (`c1`, `fc`), the name its
palettes carry. The kernel's decoding is not charged (as in the Functional reader; a
palettized file's lookups are priced from the palettes). The wrappers are restored before
`read_traced` returns, also when the trace fails; meanwhile a call of the model from another
thread would run the wrapped layers' float kernels (the energy reader is not thread-safe).

A `TimeDistributed` layer of a traced model is charged once per step, its records named after
the wrapped layer as a layer called T times (`d`, `d#2`, `d#3`); `_steps` tags and names them
as the Functional reader does (`td`, `td#2`, ...; `LayerShape.steps`), so that
`EnergyReport.layer("td")` is the whole layer: before 2026-12-07 it raised `KeyError` and
`layer("d")` was one step, 32 of 96 MACs, with no warning. A traced model records no calls:
a TimeDistributed called twice is one call over the steps of both.
"""

import contextlib
import dataclasses
import re

_SAME_AS_WRAPPED = ("ClusterWeights",)  # wrappers whose output is their layer's, same shapes


def read_traced(model, input_shape):
    """`graph_reader.read_traced_model` with clustering wrappers read as their layers."""
    from dkm_tf.energy.graph_reader import read_traced_model

    with _as_wrapped_layers(model):
        records, skipped = read_traced_model(model, input_shape)
    return _steps(model, list(records)), skipped


def _steps(model, records):
    """`records` with those of each `TimeDistributed` layer of `model` (named after its
    wrapped layer `d`: `d`, `d#2`, `d/silu`, ...) tagged as its steps and named after it."""
    for td in [x for x in _flat(model) if type(x).__name__ == "TimeDistributed"]:
        taken = {x.name for x in _flat(model) if x is not td} | {r.name for r in records}
        inner = td.layer
        while type(inner).__name__ == "TimeDistributed":
            inner = inner.layer
        mine = re.compile(re.escape(inner.name) + r"(#\d+)?")
        at = [i for i, r in enumerate(records) if not r.steps and r.layer == inner.name
              and mine.fullmatch(r.name.split("/")[0])]
        bases = list(dict.fromkeys(records[i].name.split("/")[0] for i in at))
        if len(bases) < 2 or len(at) % len(bases):
            continue
        names = [td.name] + [f"{td.name}#{k}" for k in range(2, len(bases) + 1)]
        keep = any(n in taken and n != b for n, b in zip(names, bases))  # a clash: as read
        for i in at:
            r = records[i]
            base, k = r.name.split("/")[0], bases.index(r.name.split("/")[0])
            records[i] = dataclasses.replace(r, name=r.name if keep else names[k] + r.name[
                len(base):], steps=((td.name, k + 1, len(bases)),) + r.steps)
    return records


def _is_clustering_wrapper(layer):
    return any(k.__name__ in _SAME_AS_WRAPPED and k.__module__.startswith("dkm_tf.")
               for k in type(layer).__mro__) and hasattr(layer, "layer")


def _flat(model):
    try:
        return list(model._flatten_layers(include_self=False))  # noqa: SLF001 - every depth
    except (AttributeError, TypeError):
        return list(getattr(model, "layers", []))


@contextlib.contextmanager
def _as_wrapped_layers(model):
    from dkm_tf.graph.layer_features import lora_layers

    wrappers = [x for x in _flat(model) if _is_clustering_wrapper(x)]
    saved, lora = [], lora_layers(model)
    try:
        for x in lora:  # traced with its effective kernel's shape (`keras_quantized`)
            x.lora_enabled = False
        for w in wrappers:
            own = vars(w).get("call")
            object.__setattr__(w, "call", _runs_wrapped(w.layer))
            saved.append((w, own))
        yield
    finally:
        for x in lora:
            x.lora_enabled = True
        for w, own in saved:
            if own is None:
                object.__delattr__(w, "call")
            else:
                object.__setattr__(w, "call", own)


def _runs_wrapped(inner):
    def call(inputs, *args, training=None, **kwargs):  # training: through the call context
        return inner(inputs, *args, **kwargs)

    return call
