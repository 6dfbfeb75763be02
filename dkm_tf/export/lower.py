"""Rewrite CONV_2D / FULLY_CONNECTED with a decoded weight into XNNPACK-friendly BATCH_MATMUL.

XNNPACK delegates CONV_2D and FULLY_CONNECTED only when the filter is a flatbuffer constant;
a weight decoded at load time (persistent, not constant) sends them to the much slower builtin
kernels. BATCH_MATMUL accepts a non-constant float right-hand side, so:

* ``FULLY_CONNECTED(x, W, b)`` -> ``ADD(BATCH_MATMUL(x2d, W), b, act)``;
* ``CONV_2D(x, W, b)`` (stride 1, no dilation) -> an im2col built from PAD + SLICE +
  CONCATENATION, then ``BATCH_MATMUL`` with W as a ``[kh*kw*C_in, C_out]`` matrix and an
  ``ADD`` of the bias with the fused activation. A 1x1 conv needs no im2col.

Every op used here is supported by the XNNPACK delegate, so the rewritten layer stays in one
delegate partition; the fused activation goes on the ADD (never lost, unlike the converter's
BATCH_MATMUL path in toolchain.md section 5).
"""

from __future__ import annotations

import numpy as np

from dkm_tf.export.rewrite import schema

__all__ = ["CONCAT_FANIN", "conv_lowerable", "lower_conv", "lower_fc"]

CONCAT_FANIN = 4  # XNNPACK's concatenation takes at most 5 inputs; stay below
_ACTS = (0, 1, 2, 3)  # NONE, RELU, RELU_N1_TO_1, RELU6: what ADD can fuse


def conv_lowerable(fm, op):
    """True when this CONV_2D can become im2col + BATCH_MATMUL (stride 1, dilation 1)."""
    o = op.builtinOptions
    shape_in = fm.shape(int(op.inputs[0]))
    return (o.strideW == 1 and o.strideH == 1 and o.dilationWFactor == 1
            and o.dilationHFactor == 1 and o.fusedActivationFunction in _ACTS
            and len(shape_in) == 4 and all(s > 0 for s in shape_in))


def fc_lowerable(fm, op):
    o = op.builtinOptions
    return o.fusedActivationFunction in _ACTS and all(s > 0 for s in fm.shape(int(op.inputs[0])))


def _shape_of(em, fm, t):
    return em.shapes.get(t) or fm.shape(t)


def _concat(em, parts, shape_of, axis):
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
            out = em.tensor("im2col", shp)
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
    rows = int(np.prod(xs)) // c_in
    if len(xs) != 2 or xs[1] != c_in:
        x = em.reshape(x, [rows, c_in], static=True)
    _matmul_bias_act(em, fm, x, weight, adj_y, [rows, c_out], bias,
                     op.builtinOptions.fusedActivationFunction, out, transposed)


def _matmul_bias_act(em, fm, lhs, weight, adj_y, shape, bias, act, out, transposed=False):
    """BATCH_MATMUL, then ADD(bias, act) when needed, ending in tensor ``out``.

    ``transposed`` computes ``(W x^T)^T`` with the weight ``[C_out, K]`` as the left operand:
    XNNPACK packs the right operand on every invoke, so this packs the activations instead of
    the weights, which is cheaper when there are few output rows.
    """
    s = schema()
    rows, c_out = shape
    opt = s.BatchMatMulOptionsT()
    if transposed:
        opt.adjX, opt.adjY = False, True
        y = em.op("BATCH_MATMUL", [weight, lhs], [em.tensor("matmul", [c_out, rows])], opt)
        if rows == 1:
            y = em.reshape(y, [1, c_out], static=True)
        else:
            y = em.transpose(y, [c_out, rows], [1, 0])
    else:
        opt.adjX, opt.adjY = False, bool(adj_y)
        y = em.op("BATCH_MATMUL", [lhs, weight], [em.tensor("matmul", shape)], opt)
    if bias >= 0 or act != 0:
        if bias < 0:
            bias = em.const("zero_bias", np.zeros(c_out, np.float32))
        a = s.AddOptionsT()
        a.fusedActivationFunction = act
        y = em.op("ADD", [y, bias], [em.tensor("biased", shape)], a)
    if tuple(fm.shape(out)) == tuple(shape):
        em.ops[-1].outputs = np.asarray([out], np.int32)  # write the original output
    else:
        oshape = list(fm.shape(out))
        r = s.ReshapeOptionsT()
        r.newShape = oshape
        em.op("RESHAPE", [y, em.const("newshape", np.asarray(oshape, np.int32))], [out], r)


def lower_conv(em, fm, op, weight, adj_y, order, transposed=False):
    """Emit ops replacing CONV_2D ``op`` (stride 1) by im2col + BATCH_MATMUL.

    Args:
        em: emitter collecting the new ops.
        fm: the model.
        op: the CONV_2D operator (filter OHWI in the original graph).
        weight: decoded tensor ``[kh*kw*C_in, C_out]`` (``[C_out, kh*kw*C_in]`` if adj_y),
            its rows ordered by ``order`` then input channel.
        adj_y: whether ``weight`` is output-major.
        order: list of kernel offsets ``(dy, dx)`` in the order of the weight's rows.
        transposed: multiply with the weight on the left (needs ``adj_y``).
    """
    s = schema()
    x, out = int(op.inputs[0]), int(op.outputs[0])
    bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
    o = op.builtinOptions
    n, h, w, c = fm.shape(x)
    c_out, kh, kw, _ = fm.shape(int(op.inputs[1]))
    _, ho, wo, _ = fm.shape(out)
    if order == "channel_major":
        col = _im2col_depthwise(em, x, [n, ho, wo, c], kh, kw, o.padding)
        col = em.reshape(col, [n * ho * wo, kh * kw * c], static=True)
        _matmul_bias_act(em, fm, col, weight, adj_y, [n * ho * wo, c_out], bias,
                         o.fusedActivationFunction, out, transposed)
        return
    if o.padding == s.Padding.SAME:
        ph, pw = max(kh - 1, 0), max(kw - 1, 0)
        pads = [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]]
    else:
        pads = [[0, 0]] * 4
    if any(p for pair in pads for p in pair):
        shp = [n, h + sum(pads[1]), w + sum(pads[2]), c]
        xp = em.tensor("pad", shp)
        em.op("PAD", [x, em.const("paddings", np.asarray(pads, np.int32))], [xp])
        x = xp
        em.shapes[x] = shp
    if kh * kw == 1:
        col = x
    else:
        # separable im2col: shift along one spatial axis, concatenate, then along the other
        # (kh + kw slices instead of kh * kw); rows end up ordered like ``order``
        y_major = kw == 1 or tuple(order[1]) == (0, 1)
        stages = [(2, kw, wo), (1, kh, ho)] if y_major else [(1, kh, ho), (2, kw, wo)]
        for axis, taps, size in stages:
            if taps == 1:
                continue
            shp = list(_shape_of(em, fm, x))
            shp[axis] = size
            parts, shape_of = [], {}
            for d in range(taps):
                begin = [0, 0, 0, 0]
                begin[axis] = d
                t = em.tensor("patch", shp)
                em.op("SLICE", [x, em.const("begin", np.asarray(begin, np.int32)),
                                em.const("size", np.asarray(shp, np.int32))], [t],
                      s.SliceOptionsT())
                shape_of[t] = shp
                parts.append(t)
            x = _concat(em, parts, shape_of, axis=3)
            em.shapes[x] = shp[:3] + [shp[3] * taps]
        col = x
    col = em.reshape(col, [n * ho * wo, kh * kw * c], static=True)
    _matmul_bias_act(em, fm, col, weight, adj_y, [n * ho * wo, c_out], bias,
                     o.fusedActivationFunction, out, transposed)


def _im2col_depthwise(em, x, out_shape, kh, kw, padding):
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
    opt.padding, opt.strideW, opt.strideH = padding, 1, 1
    opt.depthMultiplier = taps
    opt.dilationWFactor = opt.dilationHFactor = 1
    out = em.tensor("im2col", [n, ho, wo, c * taps])
    return em.op("DEPTHWISE_CONV_2D", [x, *em.cache[key]], [out], opt, version=2)
