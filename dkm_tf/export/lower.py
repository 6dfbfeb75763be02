"""Rewrite CONV_2D / FULLY_CONNECTED with a decoded weight into XNNPACK-friendly BATCH_MATMUL.

XNNPACK delegates CONV_2D and FULLY_CONNECTED only when the filter is a flatbuffer constant;
a weight decoded at load time (persistent, not constant) sends them to the much slower builtin
kernels. BATCH_MATMUL accepts a non-constant float right-hand side, so:

* ``FULLY_CONNECTED(x, W, b)`` -> ``ADD(BATCH_MATMUL(x2d, W), b, act)``;
* ``CONV_2D(x, W, b)`` (any stride, dilation) -> an im2col built from PAD + STRIDED_SLICE +
  CONCATENATION, then ``BATCH_MATMUL`` with W as a ``[kh*kw*C_in, C_out]`` matrix and an
  ``ADD`` of the bias with the fused activation. A 1x1 conv needs no im2col.
* a grouped ``CONV_2D`` (G groups: filter ``[C_out, kh, kw, C_in/G]``) -> the same im2col,
  transposed to ``[G, rows, kh*kw*C_in/G]``, one batched ``BATCH_MATMUL`` against the weight
  read as ``[G, C_out/G, kh*kw*C_in/G]`` (output-major), a TRANSPOSE back to
  ``[rows, C_out]``, then the ``ADD``.

Every op used here is supported by the XNNPACK delegate, so the rewritten layer stays in one
delegate partition; the fused activation goes on the ADD (never lost, unlike the converter's
BATCH_MATMUL path in toolchain.md section 5).

Dynamic batch. When the layer input's batch dimension varies at run time (shape signature -1
on axis 0), every batch-dependent size is left open: RESHAPE gets -1 and the im2col shifts
are STRIDED_SLICEs whose begin/end masks take the whole batch axis (a SLICE size of -1 would
do the same, but XNNPACK refuses it: measured, 3 delegate partitions instead of 1 and +20 %
latency on the digits CNN), so the rewritten graph stays correct after
``resize_tensor_input``; tensors carry the -1 in their shape signature. A layer whose other
dimensions vary is not lowered.
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.rewrite import schema

__all__ = ["CONCAT_FANIN", "MIN_ROWS_WEIGHT_LEFT", "conv_groups", "conv_lowerable", "lower_conv",
           "lower_fc", "route", "weight_left"]

CONCAT_FANIN = 4  # XNNPACK's concatenation takes at most 5 inputs; stay below
_ACTS = (0, 1, 2, 3)  # NONE, RELU, RELU_N1_TO_1, RELU6: what ADD can fuse
MIN_ROWS_WEIGHT_LEFT = 16  # BATCH_MATMUL with the weight on the left needs this many rows


def _dyn(fm, t):
    """Whether the leading (batch) dimension of tensor ``t`` varies at run time."""
    sig = fm.signature(t)
    return bool(sig) and sig[0] < 0


def _fixed_but_batch(fm, t):
    """Every dimension of ``t`` is known, except possibly the leading (batch) one."""
    return all(s > 0 for s in fm.shape(t)) and all(v > 0 for v in fm.signature(t)[1:])


def _batch_sig(dyn, shape):
    """``shape`` with its leading dimension -1 when ``dyn`` (None when fixed)."""
    return [-1, *shape[1:]] if dyn else None


def conv_groups(fm, op):
    """Number of groups of CONV_2D ``op``: input channels / the filter's input channels."""
    c, cg = fm.shape(int(op.inputs[0]))[-1], fm.shape(int(op.inputs[1]))[-1]
    return c // cg if cg > 0 and c % cg == 0 else 0


def conv_lowerable(fm, op):
    """True when this CONV_2D can become im2col + BATCH_MATMUL (any stride, dilation and
    number of groups)."""
    o = op.builtinOptions
    x = int(op.inputs[0])
    return (o.fusedActivationFunction in _ACTS and len(fm.shape(x)) == 4
            and _fixed_but_batch(fm, x) and conv_groups(fm, op) > 0
            and fm.shape(int(op.outputs[0]))[-1] % conv_groups(fm, op) == 0)


def route(fm, palette, uses, decode, lowering):
    """``(kind, transposed, groups)`` when the consumers ``uses`` (``(op position, name)``)
    of ``palette``'s weight become BATCH_MATMUL (``kind``: ``"CONV_2D"`` or
    ``"FULLY_CONNECTED"``; ``transposed``: weight on the left), else None."""
    names = {name for _, name in uses}
    if decode != "once" or not lowering or len(names) != 1:
        return None
    kind = next(iter(names))
    ops = [fm.operators[i] for i, _ in uses]
    groups = 1
    if kind == "CONV_2D" and len(palette.layout.kernel_shape) == 4 \
            and all(conv_lowerable(fm, op) for op in ops):
        o, kh, kw, c = fm.shape(int(ops[0].inputs[1]))
        rows = int(np.prod(fm.shape(int(ops[0].outputs[0]))[:3]))
        k = kh * kw * c
        groups = conv_groups(fm, ops[0])
        if any(conv_groups(fm, op) != groups for op in ops):
            return None
    elif kind == "FULLY_CONNECTED" and all(fc_lowerable(fm, op) for op in ops):
        o, k = fm.shape(int(ops[0].inputs[1]))
        rows = int(np.prod(fm.shape(int(ops[0].inputs[0])))) // k
    else:
        return None
    if kind == "FULLY_CONNECTED" and rows < MIN_ROWS_WEIGHT_LEFT:
        return None  # a matrix-vector product: the builtin kernel beats packing the weight
    return kind, weight_left(rows, k, o, groups), groups


def weight_left(rows, k, o, groups=1):
    """Whether the lowered product puts the ``[o, k]`` weight on the left of the ``[rows, k]``
    activations: XNNPACK packs the right-hand operand on every invoke, so pack whichever is
    smaller (a grouped conv keeps it on the right: one layout for the batched product)."""
    return groups == 1 and rows >= MIN_ROWS_WEIGHT_LEFT and rows * (k + o) < k * o


def _same_pads(size, out, k, stride, dilation):
    """TFLite's SAME padding (before, after) of one spatial axis."""
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return [total // 2, total - total // 2]


def fc_lowerable(fm, op):
    o = op.builtinOptions
    return o.fusedActivationFunction in _ACTS and _fixed_but_batch(fm, int(op.inputs[0]))


def _shape_of(em, fm, t):
    return em.shapes.get(t) or fm.shape(t)


def _concat(em, parts, shape_of, axis, dyn=False):
    """CONCATENATION in a tree of fan-in <= CONCAT_FANIN (XNNPACK's limit)."""
    s = schema()
    while len(parts) > 1:
        nxt = []
        for i in range(0, len(parts), CONCAT_FANIN):
            group = parts[i:i + CONCAT_FANIN]
            if len(group) == 1:
                nxt.append(group[0])
                continue
            shp = list(shape_of[group[0]])
            shp[axis] = sum(shape_of[t][axis] for t in group)
            opt = s.ConcatenationOptionsT()
            opt.axis = axis
            out = em.tensor("im2col", shp, signature=_batch_sig(dyn, shp))
            em.op("CONCATENATION", group, [out], opt)
            shape_of[out] = shp
            nxt.append(out)
        parts = nxt
    return parts[0]


def lower_fc(em, fm, op, weight, adj_y, transposed=False):
    """Emit ops replacing FULLY_CONNECTED ``op`` by BATCH_MATMUL with ``weight``.

    Args:
        em: the :class:`~dkm_tf.export.decode.Emitter` collecting the new ops.
        fm: the model.
        op: the FULLY_CONNECTED operator.
        weight: decoded tensor, ``[C_in, C_out]`` (or ``[C_out, C_in]`` when ``adj_y``).
        adj_y: whether ``weight`` is stored output-major.
        transposed: multiply with the weight on the left (needs ``adj_y``).
    """
    x, out = int(op.inputs[0]), int(op.outputs[0])
    bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
    wshape = fm.shape(weight)
    c_out, c_in = (wshape[0], wshape[1]) if adj_y else (wshape[1], wshape[0])
    xs = fm.shape(x)
    dyn = _dyn(fm, x)
    rows = int(np.prod(xs)) // c_in
    if len(xs) != 2 or xs[1] != c_in:
        x = em.reshape(x, [rows, c_in], static=True, signature=_batch_sig(dyn, [rows, c_in]))
    _matmul_bias_act(em, fm, x, weight, adj_y, [rows, c_out], bias,
                     op.builtinOptions.fusedActivationFunction, out, transposed, dyn)


def _matmul_bias_act(em, fm, lhs, weight, adj_y, shape, bias, act, out, transposed=False,
                     dyn=False):
    """BATCH_MATMUL, then ADD(bias, act) when needed, ending in tensor ``out``.

    ``transposed`` computes ``(W x^T)^T`` with the weight ``[C_out, K]`` as the left operand:
    XNNPACK packs the right operand on every invoke, so this packs the activations instead of
    the weights, which is cheaper when there are few output rows. ``dyn``: the row count
    (``shape[0]``, a multiple of the batch) varies at run time.
    """
    s = schema()
    rows, c_out = shape
    sig = _batch_sig(dyn, shape)
    opt = s.BatchMatMulOptionsT()
    if transposed:
        opt.adjX, opt.adjY = False, True
        y = em.op("BATCH_MATMUL", [weight, lhs], [em.tensor(
            "matmul", [c_out, rows], signature=[c_out, -1] if dyn else None)], opt)
        if rows == 1 and not dyn:
            y = em.reshape(y, [1, c_out], static=True)
        else:
            y = em.transpose(y, [c_out, rows], [1, 0], [c_out, -1] if dyn else None)
    else:
        opt.adjX, opt.adjY = False, bool(adj_y)
        y = em.op("BATCH_MATMUL", [lhs, weight], [em.tensor("matmul", shape, signature=sig)],
                  opt)
    _bias_act(em, fm, y, shape, bias, act, out, dyn)


def _bias_act(em, fm, y, shape, bias, act, out, dyn):
    """ADD(y, bias) with the fused activation ``act`` when needed, ending in tensor ``out``
    (``y``: ``shape`` = ``[rows, C_out]``, rows varying at run time when ``dyn``)."""
    s = schema()
    c_out = shape[1]
    sig = _batch_sig(dyn, shape)
    if bias >= 0 or act != 0:
        if bias < 0:
            bias = em.const("zero_bias", np.zeros(c_out, np.float32))
        a = s.AddOptionsT()
        a.fusedActivationFunction = act
        y = em.op("ADD", [y, bias], [em.tensor("biased", shape, signature=sig)], a)
    if tuple(fm.shape(out)) == tuple(shape):  # equal at batch 1, so at every batch
        em.ops[-1].outputs = np.asarray([out], np.int32)  # write the original output
    else:
        oshape = list(fm.signature(out)) if dyn else list(fm.shape(out))
        r = s.ReshapeOptionsT()
        r.newShape = oshape
        em.op("RESHAPE", [y, em.const("newshape", np.asarray(oshape, np.int32))], [out], r)


def lower_conv(em, fm, op, weight, adj_y, order, transposed=False):
    """Emit ops replacing CONV_2D ``op`` by im2col + BATCH_MATMUL.

    Args:
        em: emitter collecting the new ops.
        fm: the model.
        op: the CONV_2D operator (filter OHWI in the original graph; any stride, dilation).
        weight: decoded tensor ``[kh*kw*C_in, C_out]`` (``[C_out, kh*kw*C_in]`` if adj_y),
            its rows ordered by ``order`` then input channel.
        adj_y: whether ``weight`` is output-major.
        order: list of kernel offsets ``(dy, dx)`` in the order of the weight's rows, or
            ``"channel_major"`` (one-hot DEPTHWISE_CONV_2D im2col).
        transposed: multiply with the weight on the left (needs ``adj_y``).

    A strided or dilated conv takes every ``stride``-th position of each shifted view
    (STRIDED_SLICE strides); a 1x1 conv with stride 1 reads its input as is.
    """
    s = schema()
    x, out = int(op.inputs[0]), int(op.outputs[0])
    bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
    o = op.builtinOptions
    n, h, w, c = fm.shape(x)
    dyn = _dyn(fm, x)
    c_out, kh, kw, _ = fm.shape(int(op.inputs[1]))
    _, ho, wo, _ = fm.shape(out)
    strides, dil = (o.strideH, o.strideW), (o.dilationHFactor, o.dilationWFactor)
    cols = [n * ho * wo, kh * kw * c]
    groups = conv_groups(fm, op)
    if groups > 1 and not (adj_y and not transposed):
        raise ValueError("a grouped CONV_2D is lowered with an output-major weight on the "
                         f"right only. Received: adj_y={adj_y}, transposed={transposed}")
    rows, act = n * ho * wo, o.fusedActivationFunction
    if order == "channel_major":
        col = _im2col_depthwise(em, x, [n, ho, wo, c], kh, kw, o.padding, dyn, strides, dil)
        if groups > 1:  # columns (channel, offset): [rows, G, C/G * kh*kw]
            _grouped_matmul(em, fm, col, [rows, groups, c // groups * kh * kw], [1, 0, 2],
                            weight, [rows, c_out], bias, act, out, dyn)
            return
        col = em.reshape(col, cols, static=True, signature=_batch_sig(dyn, cols))
        _matmul_bias_act(em, fm, col, weight, adj_y, [n * ho * wo, c_out], bias,
                         o.fusedActivationFunction, out, transposed, dyn)
        return
    if o.padding == s.Padding.SAME:
        pads = [[0, 0], _same_pads(h, ho, kh, strides[0], dil[0]),
                _same_pads(w, wo, kw, strides[1], dil[1]), [0, 0]]
    else:
        pads = [[0, 0]] * 4
    if any(p for pair in pads for p in pair):
        shp = [n, h + sum(pads[1]), w + sum(pads[2]), c]
        xp = em.tensor("pad", shp, signature=_batch_sig(dyn, shp))
        em.op("PAD", [x, em.const("paddings", np.asarray(pads, np.int32))], [xp])
        x = xp
        em.shapes[x] = shp
    if kh == kw == 1 and (ho, wo) != (h, w):  # a strided 1x1 conv: one subsampling slice
        shp = [n, ho, wo, c]
        opt = s.StridedSliceOptionsT()
        opt.beginMask = opt.endMask = 1
        end = [0, (ho - 1) * strides[0] + 1, (wo - 1) * strides[1] + 1, c]
        x = em.op("STRIDED_SLICE", [x, em.const("begin", np.zeros(4, np.int32)),
                                    em.const("end", np.asarray(end, np.int32)),
                                    em.const("strides", np.asarray([1, *strides, 1], np.int32))],
                  [em.tensor("patch", shp, signature=_batch_sig(dyn, shp))], opt)
        em.shapes[x] = shp
    # separable im2col: shift along one spatial axis, concatenate, then along the other
    # (kh + kw slices instead of kh * kw); rows end up ordered like ``order``
    y_major = kw == 1 or tuple(order[1]) == (0, 1)
    stages = [(2, kw, wo), (1, kh, ho)] if y_major else [(1, kh, ho), (2, kw, wo)]
    for axis, taps, size in stages:
        full = _shape_of(em, fm, x)[axis]
        if taps == 1 and full == size:
            continue  # nothing to shift or subsample along this axis
        stride, rate = strides[axis - 1], dil[axis - 1]
        shp = list(_shape_of(em, fm, x))
        shp[axis] = size
        parts, shape_of = [], {}
        opt = s.StridedSliceOptionsT()
        opt.beginMask = opt.endMask = 1  # axis 0 (batch): all of it, at any batch size
        step = np.ones(4, np.int32)
        step[axis] = stride
        for d in range(taps):
            begin = [0, 0, 0, 0]
            begin[axis] = d * rate
            end = [0, *shp[1:]]
            end[axis] = d * rate + (size - 1) * stride + 1
            t = em.tensor("patch", shp, signature=_batch_sig(dyn, shp))
            em.op("STRIDED_SLICE", [x, em.const("begin", np.asarray(begin, np.int32)),
                                    em.const("end", np.asarray(end, np.int32)),
                                    em.const("strides", step)], [t], opt)
            shape_of[t] = shp
            parts.append(t)
        x = _concat(em, parts, shape_of, axis=3, dyn=dyn)
        em.shapes[x] = shp[:3] + [shp[3] * taps]
    if groups > 1:  # columns (offset, channel): [rows, kh*kw, G, C/G]
        _grouped_matmul(em, fm, x, [rows, kh * kw, groups, c // groups], [2, 0, 1, 3],
                        weight, [rows, c_out], bias, act, out, dyn)
        return
    col = em.reshape(x, cols, static=True, signature=_batch_sig(dyn, cols))
    _matmul_bias_act(em, fm, col, weight, adj_y, [n * ho * wo, c_out], bias,
                     o.fusedActivationFunction, out, transposed, dyn)


def _grouped_matmul(em, fm, x, split, perm, weight, shape, bias, act, out, dyn):
    """Grouped conv product: im2col ``x`` read as ``split`` (rows first, one axis of G
    groups), transposed by ``perm`` to put the groups first, ``[G, rows, K]``, times the
    output-major weight ``[C_out, K]`` read as ``[G, C_out/G, K]``; then back to
    ``[rows, C_out]`` and :func:`_bias_act`."""
    s = schema()
    rows, c_out = shape
    groups = split[perm[0]]
    k, c_g = int(np.prod(split[1:])) // groups, c_out // groups
    lhs = em.reshape(x, split, static=True, signature=_batch_sig(dyn, split))
    lhs = em.transpose(lhs, split, perm, _batch_sig(dyn, split))
    if len(split) > 3:
        lhs = em.reshape(lhs, [groups, rows, k], static=True,
                         signature=[groups, -1, k] if dyn else None)
    w = em.reshape(weight, [groups, c_g, k])  # shape operand not static: folds at load
    opt = s.BatchMatMulOptionsT()
    opt.adjX, opt.adjY = False, True
    y = em.op("BATCH_MATMUL", [lhs, w], [em.tensor(
        "matmul", [groups, rows, c_g], signature=[groups, -1, c_g] if dyn else None)], opt)
    y = em.transpose(y, [groups, rows, c_g], [1, 0, 2], [groups, -1, c_g] if dyn else None)
    y = em.reshape(y, shape, static=True, signature=_batch_sig(dyn, shape))
    _bias_act(em, fm, y, shape, bias, act, out, dyn)


def _im2col_depthwise(em, x, out_shape, kh, kw, padding, dyn=False, strides=(1, 1),
                      dilation=(1, 1)):
    """im2col as one DEPTHWISE_CONV_2D with a constant one-hot filter (channel-major rows).

    Output channel ``c*kh*kw + j`` holds input channel c shifted by kernel offset j, so the
    columns are ordered (input channel, dy, dx). XNNPACK runs it (the filter is constant).
    """
    s = schema()
    n, ho, wo, c = out_shape
    taps = kh * kw
    key = ("onehot", c, kh, kw)
    if key not in em.cache:
        f = np.zeros((1, kh, kw, c, taps), np.float32)
        f[0, np.arange(taps) // kw, np.arange(taps) % kw, :, np.arange(taps)] = 1.0
        em.cache[key] = (em.const("im2col_filter", f.reshape(1, kh, kw, c * taps)),
                         em.const("im2col_bias", np.zeros(c * taps, np.float32)))
        em.aux_bytes += f.nbytes + 4 * c * taps
    opt = s.DepthwiseConv2DOptionsT()
    opt.padding, opt.strideH, opt.strideW = padding, *strides
    opt.depthMultiplier = taps
    opt.dilationHFactor, opt.dilationWFactor = dilation
    out = em.tensor("im2col", [n, ho, wo, c * taps],
                    signature=_batch_sig(dyn, [n, ho, wo, c * taps]))
    return em.op("DEPTHWISE_CONV_2D", [x, *em.cache[key]], [out], opt, version=2)
