"""How deep a model is in layers with weights, per output: the float tolerance's depth.

Float32 rounding grows with depth: ResNet50 (random weights, batch norms calibrated on 8
images; 107 layers with weights) differs from Keras by 2.7e-5 in its float file and was
refused at 1e-5, while a small net keeps 1e-5 (a float file of a 2-layer regressor whose small
unit's bias was dropped, 9e-5 of the output's range, is refused; review R4). Each output gets
the tolerance of its own depth (:func:`output_tolerances`): a 1-deep head beside a 20-deep
one was verified at the deep one's 4e-5 and a head 2.5e-5 off was written (review R1, h25).

Float32 rounding also grows with the length of a sum: a Dense(10) on 196,608 flattened pixels
differs from Keras by 0.6-1.6e-5 in its float file at depth 1 and was refused at 1e-5 (review
R4, h25). An output's tolerance is therefore at least :data:`FAN_IN_FACTOR` x 2^-24 x
sqrt(K) for the longest sum K of a Dense or Conv on its chain (:func:`output_fan_ins`; other
layers, recurrent ones included, add no term: review R8, h25): measured on Dense(10), K
1e3 to 1e6, N(0, 1) inputs, 60 files (10 seeds per K, 5 at K >= 3e5) x 4 draws at batch 1
and 3 (480 runs), the error is 0 to 0.95 x 2^-24 x sqrt(K) of the output's max |keras|
(median 0.35); uniform [0, 1) or [0, 255) pixels on 196,608 inputs and Conv2D of 3 x 3 x 2048
or 1 x 1 x 16384, 12 runs each, at most 0.72.
"""

from __future__ import annotations

__all__ = ["FAN_IN_FACTOR", "FLOAT_LAYERS_PER_STEP", "depth_tolerance", "fan_in",
           "file_order", "input_depths", "output_depths", "output_fan_ins",
           "output_tolerances", "weighted_depth"]

FLOAT_LAYERS_PER_STEP = 5  # the float tolerance grows by itself per this many weighted layers
FAN_IN_FACTOR = 1.5  # x 2^-24 x sqrt(longest sum): 1.6x the largest of 480 measured files
_WRAPPED = ("forward_layer", "backward_layer", "layer")  # Bidirectional, TimeDistributed, ...


def weighted_depth(layer):
    """Layers with weights on the longest chain from ``layer``'s inputs to one of its outputs
    (parallel branches and tables not added up: review R6): the largest of
    :func:`output_depths`.

    A walk over the tensors the model computes with, from each of its inputs: a nested
    model's output tensor is as deep as that output's own chain from each input of the nested
    model that reaches it (:func:`input_depths`), so an outer model reading a nested model's
    1-deep output beside its 20-deep one counts 1 for it, not 20 (review R8), and an output
    reading input b is not charged for the chain feeding input a. Never less than the deepest
    path through a Functional model's graph; an upper bound where the graph is not known: a
    Sequential (the sum over its layers), a subclassed model (its every layer with weights), a
    layer holding layers (TimeDistributed / Bidirectional: the wrapped layer's depth; another
    layer: the sum over the layers it tracks, e.g. 4 for MultiHeadAttention, whose longest
    chain is 2; fewer only where its ``call`` applies a layer more than once)."""
    return max(output_depths(layer), default=0)


def output_depths(layer):
    """Per output of ``layer``, the layers with weights on its longest chain from any input
    that reaches it (see :func:`weighted_depth`): a list, one entry per output tensor."""
    return [max((d for d in row if d is not None), default=0) for row in input_depths(layer)]


def input_depths(layer, cache=None):
    """Per output of ``layer``, per input: the layers with weights on the longest chain from
    that input to that output, None where that input does not reach it (a list of lists).
    A layer or model whose graph is not walked has one entry per output, for any input."""
    return _rows(layer, {} if cache is None else cache)[0]


def _rows(layer, cache):
    """``(depths, fans)``: :func:`input_depths` and :func:`output_fan_ins` of ``layer``, from
    one walk of its graph (``cache``: id(layer) -> them, for the layers it nests)."""
    if id(layer) not in cache:
        cache[id(layer)] = _walked(layer, cache)
    return cache[id(layer)]


def _walked(layer, cache):
    import keras  # noqa: PLC0415

    from dkm_tf.graph.clusterable import walk_layers  # noqa: PLC0415

    if not getattr(layer, "layers", None):
        return [[_layer_depth(layer, cache)]], [fan_in(layer)]
    if isinstance(layer, keras.Sequential):
        return [[sum(weighted_depth(x) for x in layer.layers)]], [fan_in(layer)]
    by_depth = getattr(layer, "_nodes_by_depth", None)  # Keras' own node depths
    if not by_depth:
        return [[sum(1 for x in walk_layers(layer) if getattr(x, "weights", None)
                     and not getattr(x, "layers", None))]], [fan_in(layer)]
    walks = [_walk(by_depth, x, cache) for x in layer.inputs]
    deepest = max((m[0] for _, made in walks for m in made.values()), default=0)
    found = [[got.get(id(t)) for got, _ in walks] for t in layer.outputs]
    rows = [[None if x is None else x[0] for x in row] for row in found]
    fans = [max((x[1] for x in row if x is not None), default=None) for row in found]
    # an output no walk reached (a tensor not found): no fewer than any chain, every sum
    return ([row if any(d is not None for d in row) else [deepest] * len(row) for row in rows],
            [fan_in(layer) if f is None else f for f in fans])


def _walk(by_depth, seed, cache):
    """``(got, made)``: id(tensor) -> (weighted layers from ``seed`` before it, the longest
    sum on its chain from ``seed``) for the tensors it reaches; id(node) -> the deepest and
    the longest of its outputs'."""
    got, made = {id(seed): (0, 0)}, {}
    for level in sorted(by_depth, reverse=True):  # from the inputs to the outputs
        for node in by_depth[level]:
            tensors = list(node.input_tensors)
            ins = [got.get(id(t)) for t in tensors]
            if all(x is None for x in ins):
                parents = [made[id(p)] for p in node.parent_nodes if id(p) in made]
                if not tensors or not parents:
                    continue  # not reached from this input
                ins = [_top(parents)] * len(tensors)  # its tensors not found: its parents'
            rows, fans = _rows(node.operation, cache)
            outs = [_combine(ins, row, fan) for row, fan in zip(rows, fans)]
            outputs = list(node.outputs)
            reached = [x for x in outs if x is not None]
            if len(outs) != len(outputs):  # not one per output: the deepest, longest for all
                outs = [_top(reached) if reached else None] * len(outputs)
            got.update((id(t), x) for t, x in zip(outputs, outs) if x is not None)
            if reached:
                made[id(node)] = _top(reached)
    return got, made


def _top(pairs):
    """The deepest and the longest of ``pairs`` of (depth, sum)."""
    return max(d for d, _ in pairs), max(f for _, f in pairs)


def _combine(ins, row, fan):
    """An output's (depth, sum) from the (depth, sum) ``ins`` of the tensors a node reads
    (None: not reached) and the operation's ``row`` (depths per input, or one entry for any
    input) and ``fan`` (the longest sum on that output's own chain in it)."""
    if len(row) == len(ins):  # per input: only the inputs that reach this output count
        got = [(x[0] + r, x[1]) for x, r in zip(ins, row) if x is not None and r is not None]
    else:
        reached = [x for x in ins if x is not None]
        own = max((r for r in row if r is not None), default=0)
        got = [(_top(reached)[0] + own, _top(reached)[1])] if reached else []
    return (max(d for d, _ in got), max([fan] + [f for _, f in got])) if got else None


def _layer_depth(layer, cache):
    """A layer that is no model: 1 with weights; a wrapper (TimeDistributed, Bidirectional)
    its wrapped layers' deepest; a layer tracking layers the sum over them (a chain, an
    upper bound), plus 1 for weights of its own."""
    weights = getattr(layer, "weights", None) or []
    inner = [x for x in (getattr(layer, a, None) for a in _WRAPPED)
             if x is not None and x is not layer and hasattr(x, "weights")]
    if inner:
        return max([1 if weights else 0] + [max(_depths(x, cache)) for x in inner])
    flatten = getattr(layer, "_flatten_layers", None)
    subs = list(flatten(include_self=False, recursive=False)) if flatten else []
    if not subs:
        return 1 if weights else 0
    theirs = {id(w) for s in subs for w in (getattr(s, "weights", None) or [])}
    own = any(id(w) not in theirs for w in weights)
    total = sum(max(_depths(s, cache), default=0) for s in subs) + own
    return max(total, 1 if weights else 0)


def _depths(layer, cache):
    """:func:`output_depths` with ``cache`` (id(layer) -> :func:`input_depths`)."""
    return [max((d for d in row if d is not None), default=0)
            for row in input_depths(layer, cache)] or [0]


def _scaled(n, tolerance, cap):
    return min(cap, tolerance * max(1.0, n / FLOAT_LAYERS_PER_STEP))


def depth_tolerance(model, tolerance, cap, notes):
    """The float ``tolerance`` for ``model``'s deepest output: ``tolerance x n / 5`` for
    ``n`` layers with weights on its longest chain (:func:`weighted_depth`) beyond 5, at most
    ``cap`` (palettized's), with a note saying so. The export verifies each output at its own
    depth's (:func:`output_tolerances`)."""
    n = weighted_depth(model)
    scaled = _scaled(n, tolerance, cap)
    if scaled > tolerance:
        notes.append(_one_note(scaled, n, tolerance, cap))
    return scaled


def _wide_note(tols, fans, deep, tolerance):
    ks = [k for k, (t, d) in enumerate(zip(tols, deep)) if t > d and t > tolerance]
    who = (f"output{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}"
           if len(ks) <= 3 else f"{len(ks)} outputs") if len(tols) > 1 else "the output"
    return (f"float tolerance {max(tols[k] for k in ks):.3g} for {who} (a sum over "
            f"{max(fans[k] for k in ks)} terms: {FAN_IN_FACTOR:g} x 2^-24 x sqrt of it): "
            "float32 rounding grows with the length of a sum")


def _one_note(scaled, n, tolerance, cap):
    return (f"float tolerance {scaled:.3g} for {n} layers with weights on the longest "
            f"chain ({tolerance:g} per {FLOAT_LAYERS_PER_STEP}, at most {cap:g}): "
            "float32 rounding grows with depth")


def fan_in(layer):
    """The longest sum of products ``layer`` computes per output value, from its weights'
    shapes, for the layer kinds whose float rounding was measured (Dense, Conv): Dense / Conv
    (1D-3D, grouped) the kernel's all but last axis (kernel rows; kh x kw x cin / groups),
    EinsumDense its contracted axes, a depthwise conv kh x kw, a separable conv the larger of
    kh x kw and cin x multiplier, a transposed conv of stride s ceil(kh / s) x ceil(kw / s) x
    cin (the taps that reach one output), a wrapper (TimeDistributed), a model or any other
    layer the largest of its sublayers' (a custom Layer holding a Dense: review R10). 0 (no
    term: the depth's alone) for every other layer: recurrent layers (LSTM, GRU, ConvLSTM2D,
    Bidirectional, stacked cells: their sums are not measured, and a sum over time steps is
    not one sum), MultiHeadAttention, embeddings, Attention (review R8, h25)."""
    kinds = {c.__name__ for c in type(layer).__mro__}
    kernel = _weight(layer, "kernel")
    if kinds & {"RNN", "Bidirectional", "ConvLSTM", "MultiHeadAttention"}:
        return 0
    if kernel is not None and "EinsumDense" in kinds:
        ins, out = layer.equation.split("->")
        return _prod(d for c, d in zip(ins.split(",")[-1], kernel.shape) if c not in out)
    if kernel is not None and "BaseDepthwiseConv" in kinds:
        return _prod(kernel.shape[:-2])
    if kernel is not None and "BaseConvTranspose" in kinds:
        strides = tuple(getattr(layer, "strides", None) or (1,) * (len(kernel.shape) - 2))
        return _prod(-(-int(k) // max(1, int(s))) for k, s in zip(kernel.shape[:-2], strides)
                     ) * int(kernel.shape[-1])
    if kernel is not None and len(kernel.shape) >= 2 and kinds & {"Dense", "BaseConv"}:
        return _prod(kernel.shape[:-1])
    separable = _weight(layer, "depthwise_kernel"), _weight(layer, "pointwise_kernel")
    if "BaseSeparableConv" in kinds and all(w is not None for w in separable):
        return max(_prod(separable[0].shape[:-2]), _prod(separable[1].shape[:-1]))
    subs = list(getattr(layer, "layers", None) or []) if "Model" in kinds else []
    subs += [x for x in (getattr(layer, a, None) for a in _WRAPPED) if hasattr(x, "weights")]
    subs += _children(layer)  # a custom Layer's own sublayers (a Dense it holds: review R10)
    return max((fan_in(x) for x in subs if x is not layer), default=0)


def _children(layer):
    """``layer``'s direct sublayers as Keras tracks them (none if it cannot say)."""
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except Exception:  # noqa: BLE001 (not a Keras layer)
        return []


def _weight(layer, name):
    """``layer``'s weight ``name`` (anything with a shape), or None."""
    try:
        w = getattr(layer, name, None)
    except Exception:  # noqa: BLE001 (a property of an unbuilt or quantized layer)
        return None
    return w if hasattr(w, "shape") else None


def _prod(dims):
    out = 1
    for d in dims:
        out *= int(d)
    return out


def output_fan_ins(model):
    """Per output of ``model``, the longest sum (:func:`fan_in`) of a layer on its chain: a
    list. A Functional model's outputs each read the layers they are computed from; a nested
    Functional model's output the layers on that output's own chain, and the chains feeding
    only the nested model's inputs that reach it (an output beside a wide one on another
    branch was held to the wide one's sum: review R8, h25); another model has one entry, its
    every layer's. The same walk as :func:`input_depths`: the inputs that reach a nested
    model's output are those its depth counts (they were two walks, which could disagree)."""
    return _rows(model, {})[1]


def output_tolerances(model, tolerance, cap, notes, n_outputs=None):
    """Per output of ``model`` (a tuple, in the order of the Keras reference and the file:
    :func:`file_order`), the float tolerance of that output's depth
    (:func:`output_depths`; ``tolerance x n / 5`` beyond 5) or of its longest sum K
    (:func:`output_fan_ins`; :data:`FAN_IN_FACTOR` x 2^-24 x sqrt(K)), the larger, at most
    ``cap``, with one note: the per-output values grouped (a 50-output model gets one line,
    not 50).

    ``n_outputs``: the number of outputs the model returns (flattened), or None. Where the
    depths are not one per output (a subclassed model: one entry, its every layer with
    weights), every output gets the deepest: a 2-output subclassed model's 1-tuple failed
    the export as an invalid ``tolerance`` (review R4, h25)."""
    cache = {}  # one walk for both
    depths, fans = _depths(model, cache), _rows(model, cache)[1] or [0]
    n = len(depths) if n_outputs is None else max(1, n_outputs)
    depths = depths if len(depths) == n else [max(depths)] * n
    fans = fans if len(fans) == n else [max(fans)] * n
    order = file_order(model, n)  # model.outputs' order to the reference's and the file's
    depths, fans = [depths[k] for k in order], [fans[k] for k in order]
    wide = [min(cap, FAN_IN_FACTOR * 2.0 ** -24 * k ** 0.5) for k in fans]
    deep = [_scaled(d, tolerance, cap) for d in depths]
    tols = tuple(max(t, w) for t, w in zip(deep, wide))
    if any(w > t and w > tolerance for t, w in zip(deep, wide)):
        notes.append(_wide_note(tols, fans, deep, tolerance))
    if max(deep) > tolerance:
        _depth_note(deep, depths, tolerance, cap, notes)
    return tols


def _depth_note(tols, depths, tolerance, cap, notes):
    if len(set(tols)) == 1:
        notes.append(_one_note(tols[0], max(depths), tolerance, cap))
        return
    groups = []
    for t in sorted(set(tols)):
        ks = [k for k, x in enumerate(tols) if x == t]
        ns = sorted({depths[k] for k in ks})
        who = (f"output{'s' if len(ks) > 1 else ''} {', '.join(map(str, ks))}"
               if len(ks) <= 3 else f"{len(ks)} outputs")
        many = f"{ns[0]}-{ns[-1]}" if len(ns) > 1 else f"{ns[0]}"
        groups.append(f"{t:.3g} for {who} ({many} layers with weights)")
    shown = groups if len(groups) <= 4 else [*groups[:2], "...", *groups[-2:]]
    notes.append(f"float tolerance per output, from its own longest chain: {'; '.join(shown)} "
                 f"({tolerance:g} per {FLOAT_LAYERS_PER_STEP} layers with weights, at most "
                 f"{cap:g}): float32 rounding grows with depth")


def file_order(model, n):
    """Which of ``model.outputs`` (``keras.tree.flatten`` order) each of the ``n`` outputs
    of the Keras reference and the file is (``tf.nest.flatten`` order: every mapping's keys
    sorted, an ``OrderedDict``'s too): a list, ``model.outputs`` index per reference index.
    The identity where they agree, the structure is not known or is not ``n`` outputs.
    An ``OrderedDict`` of a 20-deep ``"z"`` and a 1-deep ``"a"`` gave the reference's "a"
    the 20-deep chain's 4e-5, and a file with "a" 2.5e-5 off was written (review F1, h26)."""
    struct = getattr(model, "_outputs_struct", None)
    if struct is None or n < 2:
        return list(range(n))
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    try:
        order = [int(k) for k in tf.nest.flatten(
            keras.tree.pack_sequence_as(struct, list(range(n))))]
    except Exception:  # noqa: BLE001 (another structure than n outputs: as they are)
        return list(range(n))
    return order if sorted(order) == list(range(n)) else list(range(n))
