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
"""

import contextlib

_SAME_AS_WRAPPED = ("ClusterWeights",)  # wrappers whose output is their layer's, same shapes


def read_traced(model, input_shape):
    """`graph_reader.read_traced_model` with clustering wrappers read as their layers."""
    from dkm_tf.energy.graph_reader import read_traced_model

    with _as_wrapped_layers(model):
        return read_traced_model(model, input_shape)


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
