"""The `LayerShape` of a transposed convolution (Conv1DTranspose / Conv2DTranspose).

A transposed convolution with stride s scatters every input pixel into the output: each of
the `in_h · in_w` input pixels multiplies its `in_c` values by the `kh · kw · out_c` taps of
the kernel and accumulates the products into a `kh × kw` window of the output (windows s
apart, overlapping when k > s). So, for any stride, padding ('same' or 'valid') and dilation,

    MACs = in_h · in_w · in_c · kh · kw · out_c / groups,

and the kernel holds `kh · kw · in_c · out_c / groups` weights. It is not the direct
convolution of the output (that would count `out_h · out_w · kh · kw · in_c · out_c`, s² times
more, the products with the zeros inserted between input pixels), nor the useful products
only: 'same' padding crops the output after the products are computed.

This is how the runtimes compute it (TFLite's TRANSPOSE_CONV and XNNPACK's deconvolution: a
matrix product, then an overlap-add "col2im" of its columns into the output), so it is
recorded as that matrix product: a 1 × 1 "conv" record at the input resolution, `in_c` input
channels, `kh · kw · out_c` output channels (the columns). Its MACs and weight count are the
ones above (a palette of the kernel matches it by size); its output is the column buffer,
`in_h · in_w · kh · kw · out_c` values (the output itself when k = s; k²/s² times it when the
windows overlap). The overlap-add is the accumulation of the MACs and is not charged apart,
nor is the bias (as for every layer).

Every reader builds it with :func:`conv_transpose_shape`: the Keras reader from the layer's
input shape and kernel size, the traced reader from a `Conv2DBackpropInput` op (filter
`[kh, kw, out_c, in_c]`, input operand 2), the `.tflite` reader from a `TRANSPOSE_CONV` op
(filter `[out_c, kh, kw, in_c]`, input operand 2). A 1-D layer is a 2-D one with `in_h = kh = 1`.
"""

from dkm_tf.energy.shapes import _pair, check_positive_int, conv_shape


def conv_transpose_shape(name, *, in_hw, in_c, out_c, kernel, groups=1, repeat=1, layer=None,
                         op="Conv2DTranspose"):
    """Builds the `LayerShape` of a transposed convolution (see the module docstring).

    Args:
        name: Record name.
        in_hw: Input `(height, width)` (the layer's input, not its output), or an int.
        in_c: Input channels.
        out_c: Output channels (filters).
        kernel: `(kernel_h, kernel_w)` or an int.
        groups: Channel groups (1 for Keras layers).
        repeat: Multiplier for extra leading axes.
        layer: Model layer name; defaults to `name`.
        op: Display name of the operation.

    Returns:
        A frozen `LayerShape` of kind "conv" with
        `macs == in_h · in_w · in_c · kh · kw · out_c / groups`.

    Example:
        >>> conv_transpose_shape("up", in_hw=8, in_c=8, out_c=8, kernel=2).macs
        16384
    """
    kh, kw = _pair(kernel, "kernel")
    check_positive_int("out_c", out_c)
    return conv_shape(name, in_hw=in_hw, in_c=in_c, out_hw=in_hw, out_c=kh * kw * out_c,
                      kernel=1, groups=groups, repeat=repeat, layer=layer, op=op)
