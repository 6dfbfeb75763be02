"""Layer shape records and compression descriptions used by the energy models.

Pure Python and NumPy; no TensorFlow. A `LayerShape` is everything the two energy models need
to know about one layer: its kind, its input and output feature-map sizes and, for
convolutions and dense layers, its kernel. Readers (`keras_reader`, `tflite_reader`) produce
them; `conv_shape`, `dense_shape`, `pool_shape` and `eltwise_shape` (`prelu_shape` for a PReLU)
build them by hand.

Conventions (Eyeriss notation in brackets): a convolution reads an input of `in_h × in_w ×
in_c` [H × W × C], applies `out_c` [M] filters of `kernel_h × kernel_w × in_c / groups`
[R × S × C/G] and writes `out_h × out_w × out_c` [E × F × M]. A dense layer is a 1 × 1
convolution on a `1 × positions` feature map. 1-D layers use `in_h = out_h = kernel_h = 1`.
`repeat` multiplies everything for layers applied to extra leading axes (e.g. TimeDistributed).
"""

import dataclasses
import math

import numpy as np

from dkm_tf.core.validate import check_choice  # noqa: F401 (re-exported for api.py)

KINDS = ("conv", "dense", "pool", "eltwise")
POOL_OPS = ("max", "avg")
ELTWISE_OPS = ("add", "mul", "max", "relu", "affine")


def check_positive(name, value):
    """Raises `ValueError` unless `value` is a positive finite real number."""
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    if not ok:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a positive number. "
            f"Received: {name}={value!r}"
        )


def check_positive_int(name, value):
    """Raises `ValueError` unless `value` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected an integer >= 1. "
            f"Received: {name}={value!r}"
        )


@dataclasses.dataclass(frozen=True)
class SharingInfo:
    """How one weight tensor is shared: K codewords of dimension d for N units.

    A kernel of `n_units × unit_dim` weights is cut into N units (scalars, kernel rows of
    length d = kernel width, or whole kernels) and each unit is replaced by one of K codewords.
    Storage is a codebook of `G · K · d` values plus N indices (G = 1 codebook by default).

    Args:
        n_clusters: K, the number of codewords (>= 1).
        unit_dim: d, the length of one unit (1 for scalar sharing, the kernel width for rows).
        n_units: N, the number of units; `n_units * unit_dim` must equal the kernel size.
        index_bits: Average stored bits per index, e.g. the entropy of the assignment
            histogram. Needed only for `index_cost="entropy"`. `None` if unknown.
        n_codebooks: G, the number of codebooks of K entries (e.g. one per output channel);
            they are assumed to partition the filters. Default 1 (one per tensor).
        n_transforms: T, the transforms of transform-invariant kernel clustering (Son et al.,
            ECCV 2018, §2.5): each unit stores the index ``k + K t``, log2(K T) bits.
        scale_bits: b_s, bits of the per-unit scale of scaled kernel units stored beside each
            index (0: none), so a unit costs log2(K T) + b_s bits.
        unique_fraction: Optional measured fraction Σ U / (units per filter · filters) of
            distinct unit products (see `unique_product_fraction`). `None` uses the expected
            value under uniform random assignment. Only read by `compute_model="unique_products"`.

    Raises:
        ValueError: If a field is out of range.
    """

    n_clusters: int
    unit_dim: int
    n_units: int
    index_bits: float | None = None
    unique_fraction: float | None = None
    n_codebooks: int = 1
    n_transforms: int = 1
    scale_bits: int = 0

    def __post_init__(self):
        check_positive_int("n_clusters", self.n_clusters)
        check_positive_int("unit_dim", self.unit_dim)
        check_positive_int("n_units", self.n_units)
        check_positive_int("n_codebooks", self.n_codebooks)
        check_positive_int("n_transforms", self.n_transforms)
        _whole("scale_bits", self.scale_bits, 0)
        if self.index_bits is not None and not (
            _is_real(self.index_bits)
            and math.isfinite(self.index_bits)
            and self.index_bits >= 0
        ):
            raise ValueError(
                "Invalid value for argument `index_bits`. Expected None or a number >= 0. "
                f"Received: index_bits={self.index_bits!r}"
            )
        if self.unique_fraction is not None and not (
            _is_real(self.unique_fraction) and 0 < self.unique_fraction <= 1
        ):
            raise ValueError(
                "Invalid value for argument `unique_fraction`. Expected None or a number in "
                f"(0, 1]. Received: unique_fraction={self.unique_fraction!r}"
            )

    @property
    def n_weights(self):
        """Number of weights described: `n_units * unit_dim`."""
        return self.n_units * self.unit_dim

    @property
    def codebook_size(self):
        """Number of stored codebook values: `n_codebooks * n_clusters * unit_dim`."""
        return self.n_codebooks * self.n_clusters * self.unit_dim


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """Shape description of one layer, as read by the energy models (built by `conv_shape`, ...).

    Attributes:
        name: Record name (`layer` for single-kernel layers, `layer/depthwise` etc. otherwise).
        layer: Name of the model layer the record comes from (key for compression info).
        op: Source operation (Keras class name or TFLite op name), for display.
        kind: One of "conv", "dense", "pool", "eltwise".
        in_h, in_w, in_c: Input feature-map size (per input tensor for element-wise ops).
        out_h, out_w, out_c: Output feature-map size.
        kernel_h, kernel_w: Kernel (or pooling window) size; 1 for element-wise ops.
        stride_h, stride_w: Strides (informational; output sizes are given).
        groups: Channel groups (depthwise: groups = in_c).
        repeat: Multiplier for extra leading axes.
        pool_op: "max" or "avg" for pooling, else "".
        eltwise_op: "add", "mul", "max", "relu" or "affine" for element-wise ops, else "".
        n_inputs: Number of input tensors of an element-wise op.
        n_params: Per-channel parameters of an "affine" op (batch norm: 2 · C), else 0.
        steps: `((call, k, T), ...)` for a record of step k of T of a `TimeDistributed`
            layer's call named `call` (outermost first; `keras_wrapped`), else `()`: what
            `EnergyReport.layer(call)` sums (`layer_totals`). Not compared.
        within: `(call, ...)` of the nested models' calls the record is read inside
            (outermost first; `record_names.within`), else `()`: what
            `EnergyReport.layer(call)` sums. Not compared.
    """

    name: str
    layer: str
    op: str
    kind: str
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    groups: int = 1
    repeat: int = 1
    pool_op: str = ""
    eltwise_op: str = ""
    n_inputs: int = 1
    n_params: int = 0
    steps: tuple = dataclasses.field(default=(), compare=False)
    within: tuple = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        for field in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h",
                      "kernel_w", "stride_h", "stride_w", "groups", "repeat", "n_inputs"):
            check_positive_int(field, getattr(self, field))
        if self.kind in ("conv", "dense") and (
            self.in_c % self.groups or self.out_c % self.groups
        ):
            raise ValueError(
                f"Invalid value for argument `groups` of layer {self.name!r}. Expected a divisor "
                f"of in_c={self.in_c} and out_c={self.out_c}. Received: groups={self.groups}"
            )
        if self.kind == "pool":
            check_choice("pool_op", self.pool_op, POOL_OPS)
        if self.kind == "eltwise":
            check_choice("eltwise_op", self.eltwise_op, ELTWISE_OPS)
        if not isinstance(self.steps, tuple) or not all(  # numpy integers too, no bool
                isinstance(t, tuple) and len(t) == 3 and isinstance(t[0], str) and all(
                    isinstance(n, (int, np.integer)) and not isinstance(n, bool) and 1 <= n
                    for n in t[1:]) and t[1] <= t[2] for t in self.steps):
            raise ValueError("Invalid value for argument `steps`. Expected a tuple of "
                             f"(call, k, T) with 1 <= k <= T. Received: steps={self.steps!r}")
        object.__setattr__(self, "steps", tuple((c, int(k), int(t)) for c, k, t in self.steps))
        if not isinstance(self.within, tuple) or not all(isinstance(c, str) for c in self.within):
            raise ValueError("Invalid value for argument `within`. Expected a tuple of call "
                             f"names (str). Received: within={self.within!r}")

    @property
    def positions(self):
        """Output positions per image, `repeat · out_h · out_w`."""
        return self.repeat * self.out_h * self.out_w

    @property
    def dot_length(self):
        """D, the length of one output's dot product (`kernel_h · kernel_w · in_c / groups`)."""
        if self.kind in ("conv", "dense"):
            return self.kernel_h * self.kernel_w * (self.in_c // self.groups)
        return 1

    @property
    def n_weights(self):
        """Kernel size |W| (`D · out_c`); 0 for pooling and element-wise layers."""
        if self.kind in ("conv", "dense"):
            return self.dot_length * self.out_c
        return 0

    @property
    def macs(self):
        """Multiply-accumulates per image, `positions · out_c · D` (0 for other kinds)."""
        if self.kind in ("conv", "dense"):
            return self.positions * self.out_c * self.dot_length
        return 0

    @property
    def input_size(self):
        """|X|, input activations per image (all input tensors)."""
        return self.repeat * self.in_h * self.in_w * self.in_c * self.n_inputs

    @property
    def output_size(self):
        """Output activations per image."""
        return self.repeat * self.out_h * self.out_w * self.out_c


def conv_shape(name, *, in_hw, in_c, out_hw, out_c, kernel, strides=1, groups=1, repeat=1,
               layer=None, op="Conv2D"):
    """Builds a frozen `LayerShape` of kind "conv": a (grouped, depthwise or 1-D) convolution.

    Args:
        name: Record name.
        in_hw, out_hw: Input and output `(height, width)`, or ints for square maps; 1-D:
            `(1, length)`.
        in_c: Input channels.
        out_c: Output channels (depthwise: `in_c * depth_multiplier`).
        kernel, strides: `(kernel_h, kernel_w)` and `(stride_h, stride_w)`, or ints.
        groups: Channel groups (depthwise: `in_c`).
        repeat: Multiplier for extra leading axes.
        layer, op: Model layer name (default `name`); display name of the operation.
    """
    (ih, iw), (oh, ow) = _pair(in_hw, "in_hw"), _pair(out_hw, "out_hw")
    (kh, kw), (sh, sw) = _pair(kernel, "kernel"), _pair(strides, "strides")
    for arg, value in (("in_c", in_c), ("out_c", out_c), ("groups", groups),
                       ("repeat", repeat)):
        check_positive_int(arg, value)
    return LayerShape(name=name, layer=layer or name, op=op, kind="conv", in_h=ih, in_w=iw,
                      in_c=in_c, out_h=oh, out_w=ow, out_c=out_c, kernel_h=kh, kernel_w=kw,
                      stride_h=sh, stride_w=sw, groups=groups, repeat=repeat)


def dense_shape(name, *, in_features, units, positions=1, groups=1, layer=None, op="Dense"):
    """Builds a frozen `LayerShape` of kind "dense" (a 1 × 1 convolution on a `1 × positions`
    map) for a dense layer applied at `positions` positions.

    Args:
        name: Record name.
        in_features, units: Input and output features (multiples of `groups`).
        positions: Positions per image the layer is applied at (tokens, pixels); default 1.
        groups: G independent (in_features / G) x (units / G) matrices (e.g. one per attention
            head): each output is a dot product of length in_features / G. Default 1.
        layer, op: Model layer name (default `name`); display name of the operation.
    """
    for arg, value in (("in_features", in_features), ("units", units),
                       ("positions", positions), ("groups", groups)):
        check_positive_int(arg, value)
    if in_features % groups or units % groups:
        raise ValueError(f"Invalid value for argument `groups` of layer {name!r}. Expected a "
                         f"divisor of in_features={in_features} and units={units}. "
                         f"Received: groups={groups}")
    return LayerShape(name=name, layer=layer or name, op=op, kind="dense", in_h=1,
                      in_w=positions, in_c=in_features, out_h=1, out_w=positions, out_c=units,
                      groups=groups)


def pool_shape(name, *, in_hw, channels, out_hw, window, pool_op="max", strides=None, repeat=1,
               layer=None, op=None):
    """Builds a frozen `LayerShape` of kind "pool": max or average pooling (global: window = in_hw).

    Args:
        name: Record name.
        in_hw, out_hw: Input and output `(height, width)`, or ints for square maps.
        channels: Channels (input and output).
        window: Pooling window `(kernel_h, kernel_w)` or an int.
        pool_op: "max" (default) or "avg".
        strides: `(stride_h, stride_w)`, an int, or None (default): the window.
        repeat: Multiplier for extra leading axes.
        layer, op: Model layer name (default `name`); display name (default "<pool_op>_pool").
    """
    (ih, iw), (oh, ow) = _pair(in_hw, "in_hw"), _pair(out_hw, "out_hw")
    kh, kw = _pair(window, "window", " (LayerShape fields `kernel_h`, `kernel_w`)")
    sh, sw = _pair(strides, "strides") if strides is not None else (kh, kw)
    check_positive_int("channels", channels)
    check_positive_int("repeat", repeat)
    check_choice("pool_op", pool_op, POOL_OPS)
    return LayerShape(name=name, layer=layer or name, op=op or f"{pool_op}_pool", kind="pool",
                      in_h=ih, in_w=iw, in_c=channels, out_h=oh, out_w=ow, out_c=channels,
                      kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw, repeat=repeat,
                      pool_op=pool_op)


def eltwise_shape(name, *, elements, eltwise_op="add", n_inputs=2, n_params=0, layer=None,
                  op=None):
    """Builds a frozen `LayerShape` of kind "eltwise": an op over `elements` output values.

    Args:
        name: Record name.
        elements: Output values per image (a whole number >= 1).
        eltwise_op: "add" (default), "mul", "max", "relu" or "affine" (inference batch norm,
            rescaling: x · a + b with per-channel a, b).
        n_inputs, n_params: Input tensors of the output's size read (default 2); per-channel
            parameters that "affine" reads as weights (default 0).
        layer, op: Model layer name (default `name`); display name (default `eltwise_op`).
    """
    elements = _whole("elements", elements, 1)
    n_params = _whole("n_params", n_params, 0)
    check_positive_int("n_inputs", n_inputs)
    return LayerShape(name=name, layer=layer or name, op=op or eltwise_op, kind="eltwise",
                      in_h=1, in_w=elements, in_c=1, out_h=1, out_w=elements, out_c=1,
                      eltwise_op=eltwise_op, n_inputs=n_inputs, n_params=n_params)


def prelu_shape(name, *, elements, n_params, layer=None, op="PReLU"):
    """Builds the frozen "eltwise" `LayerShape` of a PReLU, `max(x, 0) + alpha · min(x, 0)`.

    Charged as one "affine" op over `elements` outputs with its `n_params` slopes (the alpha
    values: `C` with `shared_axes` over the spatial axes) read as weights. Per output a PReLU
    tests the sign of x and multiplies it by a stored slope, the datapath of "affine"
    (x · a + b, a per-channel parameter): its multiply by a parameter (B_w · B_x full adders)
    dominates, and only "affine" charges it and the parameter reads. "relu" (a B_x compare, no
    weights) would leave both out; "mul" multiplies two activation tensors. "affine" is an upper
    bound: a B_w + B_x adder where PReLU has a B_x comparator, two parameter reads per output
    where it has one, and the multiply charged for every output, not only the negative ones.
    """
    return eltwise_shape(name, elements=elements, eltwise_op="affine", n_inputs=1,
                         n_params=n_params, layer=layer, op=op)


def _pair(value, name, fields=""):
    """``(h, w)`` from an int or a sequence of one or two ints >= 1 (strings, floats refused);
    ``fields`` names the record's fields in the message (a pooling window's kernel_h)."""
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if not 1 <= len(items) <= 2 or any(isinstance(v, bool) or not isinstance(
            v, (int, np.integer)) or v < 1 for v in items):
        raise ValueError(f"Invalid value for argument `{name}`{fields}. Expected a positive "
                         f"integer or a pair of integers (height, width), each >= 1. "
                         f"Received: {name}={value!r}")
    return int(items[0]), int(items[-1])


def _is_real(value):
    """A real number (Python or numpy), not a bool nor a string."""
    return isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, (bool, np.bool_))


def _whole(name, value, minimum):
    """``value`` as an int: a whole number >= ``minimum`` (4.0 is 4; 4.5, bools, strings,
    NaN refused), else `ValueError` naming ``name``."""
    if not (_is_real(value) and math.isfinite(value) and float(value).is_integer()
            and value >= minimum):
        raise ValueError(f"Invalid value for argument `{name}`. Expected an integer >= "
                         f"{minimum}. Received: {name}={value!r}")
    return int(value)
