"""Which layer each palette of :func:`dkm_tf.graph.refine.refine_codebooks` updates, how often
the model calls it, and GPTQ's re-assignment of its weights.

Layers are matched to palettes by position, not by name: layers of two nested models may
share a name (two ``Sequential`` blocks each with a ``"fc"``), and a lookup by name fitted the
first block's palette on the second block's layer. A layer's calls are counted in the graphs
of the nested models too: a layer called twice inside a nested block is shared like one
called twice at the top.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core import units as units_lib
from dkm_tf.graph import calibration, gptq
from dkm_tf.graph.clusterable import get_weight
from dkm_tf.graph.copying import iter_layers

__all__ = ["GPTQ_MAX_INPUTS", "calls_in", "gptq_palette", "pair_layers"]

GPTQ_MAX_INPUTS = 8192  # GPTQ's Hessian is d_in x d_in float64 (512 MiB here)


def _holds(layer, pal):
    var = get_weight(layer, pal.weight_name)
    return (layer.name == pal.layer_name and var is not None
            and tuple(var.shape) == tuple(pal.layout.kernel_shape))


def pair_layers(float_model, model, palettes):
    """``[(float layer, clustered layer)]`` per palette (``(None, None)`` if not found).

    The two models have the same layers in the same order (one is a copy of the other);
    palettes are in layer order, so each is matched to the next layer, from the previous
    palette's one on, that has its name and a weight of its shape."""
    lf, lq = ([la for la in iter_layers(m) if la.weights] for m in (float_model, model))
    if [la.name for la in lf] != [la.name for la in lq]:  # not a copy: by name
        by_f, by_q = ({la.name: la for la in ls} for ls in (lf, lq))
        return [(by_f.get(p.layer_name), by_q.get(p.layer_name)) for p in palettes]
    out, i = [], 0
    for pal in palettes:
        j = next((k for k in range(i, len(lq)) if _holds(lq[k], pal)), None)
        if j is None:  # not in layer order: the first layer that holds it
            j = next((k for k in range(len(lq)) if _holds(lq[k], pal)), None)
        out.append((None, None) if j is None else (lf[j], lq[j]))
        i = i if j is None else j
    return out


def _graphs(model, seen):
    """``model`` and every nested model under it, each once."""
    if id(model) in seen:
        return []
    seen.add(id(model))
    out = [model]
    for sub in getattr(model, "layers", ()):
        if getattr(sub, "layers", None) and getattr(sub, "inputs", None):
            out += _graphs(sub, seen)
    return out


def calls_in(model, layer):
    """How many times the graphs of ``model`` and of its nested models call ``layer`` (a
    shared layer: > 1): a layer called twice inside a nested block, or once inside and once
    outside it, is shared too. A nested model called several times is
    :func:`dkm_tf.graph.calibration.layer_inputs`' refusal. Not ``layer._inbound_nodes``: a
    Sequential built with ``add()`` or loaded from ``.keras`` leaves one node per rebuild
    there. A layer found in no graph (a sublayer) counts as 1."""
    total = 0
    for holder in _graphs(model, set()):
        graph = getattr(holder, "_functional", None) or holder
        nodes = getattr(graph, "_nodes_by_depth", None) or {}
        total += sum(n.operation is layer for ns in nodes.values() for n in ns)
    return max(1, total)


def _hessian(rows, xq, batch_size):
    """``sum`` of :func:`gptq.hessian` over chunks of ``xq``, added in place (the same sums)."""
    chunk = calibration.chunk(rows(xq[:1]).size, batch_size)
    h = gptq.hessian(rows(xq[:chunk]))
    h += 0.0  # as sum()'s 0 + h: -0.0 becomes 0.0
    for lo in range(chunk, len(xq), chunk):
        h += gptq.hessian(rows(xq[lo:lo + chunk]))
    return h


def gptq_palette(pal, layer_f, layer_q, xq, batch_size):
    """``(pal with its indices chosen by GPTQ for the same centroids, "")`` (see
    :mod:`dkm_tf.graph.gptq`), or ``(None, why not)``: Dense and channels-last, ungrouped
    Conv2D kernels with at most :data:`GPTQ_MAX_INPUTS` inputs per output."""
    name = type(layer_q).__name__
    if pal.unit_dim != 1:
        return None, f"GPTQ assigns scalar units only, not {pal.layout.unit} units"
    kernel = np.asarray(get_weight(layer_f, pal.weight_name).numpy())  # gptq_assign: float64
    if name == "Dense" and kernel.ndim == 2:
        def rows(xs):
            return xs.reshape(-1, kernel.shape[0])
    elif (name == "Conv2D" and getattr(layer_q, "groups", 1) == 1
          and layer_q.data_format == "channels_last"):
        def rows(xs):
            return gptq.im2col(xs, layer_q.kernel_size, layer_q.strides,
                               layer_q.dilation_rate, layer_q.padding)
    else:
        if name == "Conv2D":  # say which setting, not "not Conv2D"
            name = (f"Conv2D with groups={layer_q.groups}" if layer_q.groups != 1
                    else f"Conv2D with data_format={layer_q.data_format!r}")
        return None, f"GPTQ assigns Dense and Conv2D kernels only, not {name}"
    d_in = int(np.prod(kernel.shape[:-1]))
    if d_in > GPTQ_MAX_INPUTS:
        return None, (f"{d_in:,} inputs per output is above GPTQ_MAX_INPUTS = "
                      f"{GPTQ_MAX_INPUTS:,} (its Hessian is d_in x d_in)")
    book = pal.codebook[:, :, 0].astype(np.float64)  # (1, K) or one per output column
    if book.shape[0] not in (1, kernel.shape[-1]):
        return None, "its codebooks are not one per output column"
    # the Hessian is made in the call, so that gptq_assign holds its only reference and
    # frees it once permuted
    idx = gptq.gptq_assign(kernel.reshape(-1, kernel.shape[-1]), _hessian(rows, xq, batch_size),
                           book[0] if book.shape[0] == 1 else book)
    units = units_lib.to_units(idx.reshape(kernel.shape), pal.layout)[:, :, 0]
    return dataclasses.replace(pal, indices=units.astype(pal.indices.dtype)), ""
