"""Running a model on calibration inputs, for :mod:`dkm_tf.graph.refine`: a layer's inputs,
the model's outputs (all outputs, flattened per sample) and the error of one model's outputs
against another's, in bounded memory."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from dkm_tf.core import std_fds

__all__ = ["MEMORY", "chunk", "layer_inputs", "output_error", "outputs", "predict", "quiet"]

MEMORY = 1 << 28  # bytes of layer outputs (or im2col rows) held at once


def _inputs(model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _path(model, layer):
    """The chain of models from ``model`` down to the (nested) model whose own graph holds
    ``layer``, or None."""
    for sub in getattr(model, "layers", ()):
        if sub is layer:
            return [model]
        if getattr(sub, "layers", None) and getattr(sub, "inputs", None):
            inner = _path(sub, layer)
            if inner:
                return [model, *inner]
    return None


def _calls(outer, inner):
    """The nodes of ``outer``'s own graph that call ``inner``. Not ``inner._inbound_nodes``:
    a Sequential built with ``add()`` leaves one node per rebuild there (a nested model
    called once read as "called 2 times")."""
    graph = getattr(outer, "_functional", None) or outer
    nodes = getattr(graph, "_nodes_by_depth", None) or {}
    return [n for ns in nodes.values() for n in ns if n.operation is inner]


def layer_inputs(model, layer, x, batch_size):
    """``layer``'s inputs when ``model`` runs on ``x``; the layer may sit in a nested
    Functional / Sequential model called once (a pretrained base inside a classifier): the
    inputs of each nested model are computed first, then the layer's inside it."""
    import keras  # noqa: PLC0415

    path = _path(model, layer)
    if path is None:
        raise ValueError(f"layer {layer.name!r} is not reachable from model {model.name!r}")
    for outer, inner in zip(path, path[1:]):
        nodes = _calls(outer, inner)
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            raise ValueError(f"nested model {inner.name!r} is called {len(nodes)} times or "
                             "on several inputs")
        x = predict(keras.Model(_inputs(outer), nodes[0].input_tensors[0]), x, batch_size)
    return predict(keras.Model(_inputs(path[-1]), layer.input), x, batch_size)


@contextlib.contextmanager
def quiet():
    """Keras warns when a model built on a list of one input is called on a tensor."""
    with std_fds.catch_warnings():  # thread-safe (warnings.catch_warnings is not)
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        yield


def predict(fn, x, batch_size):
    """``fn(x)`` (a Keras model or layer) in steps of ``batch_size`` samples, as numpy."""
    import keras  # noqa: PLC0415

    with quiet():
        return np.concatenate([keras.ops.convert_to_numpy(fn(x[lo:lo + batch_size],
                                                             training=False))
                               for lo in range(0, len(x), batch_size)])


def chunk(floats_per_sample, batch_size):
    """Samples per step so that a step holds at most :data:`MEMORY` bytes of float64."""
    return int(max(1, min(batch_size, MEMORY // max(8 * floats_per_sample, 1))))


def outputs(model, x, batch_size):
    """The model's outputs on ``x``, all outputs flattened per sample (n, total)."""
    import keras  # noqa: PLC0415

    parts = []
    with quiet():
        for lo in range(0, len(x), batch_size):
            out = keras.tree.flatten(model(x[lo:lo + batch_size], training=False))
            parts.append(np.concatenate([keras.ops.convert_to_numpy(o).reshape(len(o), -1)
                                         for o in out], 1).astype(np.float64))
    return np.concatenate(parts)


def is_distribution(y):
    return bool(np.all(y >= 0) and np.allclose(y.sum(1), 1.0, atol=1e-3))


def output_error(y, ref):
    """The model's output error: mean KL(ref || y) when its outputs are probability
    distributions (a softmax head: squared error there ignores the small probabilities), else
    the mean squared error."""
    if is_distribution(ref):
        p = np.clip(y, 1e-12, None)
        q = np.clip(ref, 1e-12, None)
        return float(np.mean(np.sum(q * (np.log(q) - np.log(p)), 1)))
    return float(np.mean((y - ref) ** 2))
