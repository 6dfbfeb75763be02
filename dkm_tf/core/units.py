"""Cutting kernels into clustering units and putting them back: every layout permutation.

A *unit* is what one codebook entry replaces:

* ``"scalar"``: one weight (d = 1);
* ``"row"``: one row of one 2-D filter, the last spatial axis (d = kw). This is Deep k-Means'
  unit (Wu et al., ICML 2018, §2.1: W in R^{s x N}, N = s c m). Kernels without spatial axes
  (Dense, 1x1 convs, Embedding) have rows of length 1, i.e. scalar units, as in the paper's
  code for 1x1 convs;
* ``"kernel"``: one whole spatial kernel, all spatial axes (d = kh kw for 2-D), the unit of
  Son et al. (ECCV 2018).

Granularity ``"per_tensor"`` puts all units of a tensor in one group (one codebook);
``"per_channel"`` makes one group per output channel (one codebook each).

Keras kernel layouts, with their spatial and output-channel axes:

============  ==========================  =========  ============
kind          Keras kernel shape           spatial    channel axes
============  ==========================  =========  ============
dense         (in, out)                   -          out
conv          (*k, in, out)               k          out
conv_t        (*k, out, in)               k          out
depthwise     (*k, in, multiplier)        k          in, mult
embedding     (vocab, dim)                -          dim
vector        (n,)                        -          - (one group)
einsum:...    any (EinsumDense kernel)    -          the listed axes
============  ==========================  =========  ============

``"vector"`` is for 1-D weights (a bias, a scale) returned by a custom layer's
``get_clusterable_weights()``: scalar units only, and no channel axis, so ``"per_channel"``
gives the same single codebook as ``"per_tensor"``.

``"einsum:<axes>"`` (built by :func:`einsum_kind`) is for ``EinsumDense`` kernels of any rank,
e.g. a multi-head attention projection of shape (d_model, heads, head_dim): the listed axes
are the kernel axes that appear in the einsum output (its output channels, one group each with
``"per_channel"``; ``"einsum:1,2"`` gives heads * head_dim groups), the others are contracted.
No spatial axes, so units are scalars.

Units are ordered as PyTorch orders a conv weight, ``(out, in, *k)``: the group axis first, then
the other channel axes, then the spatial axes, with the unit axis last. That order is fixed by
``perm`` in :class:`UnitLayout`; :func:`to_units` and :func:`from_units` are exact inverses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core.validate import check_choice

__all__ = ["EINSUM_PREFIX", "GRANULARITIES", "KINDS", "UNITS", "UNIT_CHOICES", "UnitLayout",
           "check_kind", "describe_unit", "einsum_kind", "from_units", "is_kind", "kernel_view",
           "layout_for", "resolve_unit", "to_units", "unit_summary"]

UNITS = ("scalar", "row", "kernel")
UNIT_CHOICES = (*UNITS, "auto")  # "auto": the paper's choice, see resolve_unit
GRANULARITIES = ("per_tensor", "per_channel")
KINDS = ("dense", "conv", "conv_t", "depthwise", "embedding", "vector")
EINSUM_PREFIX = "einsum:"  # + the output (channel) axes: see einsum_kind


def einsum_kind(channel_axes):
    """The kind string of an EinsumDense kernel whose output axes are ``channel_axes``."""
    return EINSUM_PREFIX + ",".join(str(int(a)) for a in sorted(set(channel_axes)))


def is_kind(kind):
    """True for a name in :data:`KINDS` or a well-formed ``"einsum:<axes>"`` kind."""
    if kind in KINDS:
        return True
    try:
        _einsum_channels(kind)
    except (TypeError, ValueError):
        return False
    return True


def _einsum_channels(kind, ndim=None):
    """The channel axes of an ``"einsum:<axes>"`` kind (checked against ``ndim``)."""
    if not isinstance(kind, str) or not kind.startswith(EINSUM_PREFIX):
        raise ValueError(f"Not an einsum kind: {kind!r}.")
    body = kind[len(EINSUM_PREFIX):]
    axes = tuple(int(a) for a in body.split(",")) if body else ()
    if any(a < 0 for a in axes) or list(axes) != sorted(set(axes)) or (
            ndim is not None and any(a >= ndim for a in axes)):
        raise ValueError(f"Invalid einsum kind {kind!r}: expected increasing axes in "
                         f"[0, {ndim if ndim is not None else 'ndim'}).")
    return axes


def _axes(kind, ndim):
    """(spatial axes, channel axes, other axes) of a kernel of this kind and rank."""
    if isinstance(kind, str) and kind.startswith(EINSUM_PREFIX):
        channel = _einsum_channels(kind, ndim)
        return (), channel, tuple(a for a in range(ndim) if a not in channel)
    if kind == "vector":
        if ndim != 1:
            raise ValueError(f"A vector weight must be 1-D. Received a {ndim}-D weight.")
        return (), (), (0,)
    if kind in ("dense", "embedding"):
        if ndim != 2:
            raise ValueError(f"A {kind} kernel must be 2-D. Received a {ndim}-D kernel.")
        return (), (1,), (0,)
    if ndim < 3:
        raise ValueError(f"A {kind} kernel must have at least 3 axes. Received {ndim}.")
    spatial = tuple(range(ndim - 2))
    if kind == "conv":
        return spatial, (ndim - 1,), (ndim - 2,)
    if kind == "conv_t":
        return spatial, (ndim - 2,), (ndim - 1,)
    return spatial, (ndim - 2, ndim - 1), ()  # depthwise: channel = in * multiplier + m


@dataclasses.dataclass(frozen=True)
class UnitLayout:
    """How a kernel is cut into units; enough to put it back exactly.

    Attributes:
        kernel_shape: shape of the Keras kernel.
        kind: one of :data:`KINDS`.
        unit: one of :data:`UNITS`.
        granularity: one of :data:`GRANULARITIES`.
        perm: transpose that takes the kernel to (channels, others, spatial) order.
        n_groups: G, number of codebooks (1 per tensor, C_out per channel).
        n_units: M, units per group.
        unit_dim: d, values per unit.
    """

    kernel_shape: tuple
    kind: str
    unit: str
    granularity: str
    perm: tuple
    n_groups: int
    n_units: int
    unit_dim: int

    def __post_init__(self):  # built by layout_for; a hand-made one must be consistent
        shape, perm = tuple(self.kernel_shape), tuple(self.perm)
        counts = (self.n_groups, self.n_units, self.unit_dim)
        if (not is_kind(self.kind) or self.unit not in UNITS
                or self.granularity not in GRANULARITIES
                or sorted(perm) != list(range(len(shape)))
                or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                       for n in (*shape, *counts))
                or int(np.prod(counts)) != int(np.prod(shape))):
            raise ValueError(f"Invalid UnitLayout {self}: expected a known kind, unit and "
                             "granularity, a permutation of the kernel axes and G x M x d = "
                             "the kernel size. Build layouts with dkm_tf.layout_for().")

    @property
    def size(self):
        """Number of weights in the kernel."""
        return int(np.prod(self.kernel_shape))

    @property
    def effective_unit(self):
        """The unit as clustered: ``"scalar"`` when a unit holds one value (a row or kernel
        unit of a weight without spatial axes, e.g. Dense, Embedding or attention kernels,
        or of a 1x1 kernel), else :attr:`unit`, which keeps the unit asked for (saved)."""
        return "scalar" if self.unit_dim == 1 else self.unit

    def to_config(self):
        """The four inputs of :func:`layout_for` as a JSON-ready dict (the rest follows)."""
        return {"kernel_shape": list(self.kernel_shape), "kind": self.kind, "unit": self.unit,
                "granularity": self.granularity}

    @classmethod
    def from_config(cls, config):
        """The layout that ``config``, a :meth:`to_config` dict, describes (:func:`layout_for`)."""
        return layout_for(tuple(config["kernel_shape"]), config["kind"], config["unit"],
                          config["granularity"])


def check_kind(kind, shape, where="weight"):
    """Raise a ``ValueError`` naming ``where`` unless a weight of ``shape`` has layout ``kind``.

    Used for the kinds that custom layers declare in ``get_clusterable_weights()``.
    """
    if not is_kind(kind):
        raise ValueError(f"{where}: invalid layout kind {kind!r}. Expected one of "
                         f"{list(KINDS)} or 'einsum:<output axes>'.")
    shape = tuple(int(s) for s in shape)
    try:
        _axes(kind, len(shape))
    except ValueError as e:
        hint = " Use kind 'vector' for 1-D weights (biases, scales)." if len(shape) == 1 else ""
        raise ValueError(f"{where}: kind {kind!r} does not fit its shape {shape}. {e}{hint}") \
            from None


def resolve_unit(unit, kind, kernel_shape):
    """``"auto"`` -> ``"row"`` for kernels with a spatial extent > 1, else ``"scalar"``.

    That is Deep k-Means' choice (§2.1 and its code): rows of k x k filters, scalars for 1x1
    convs and dense kernels. Other units are returned unchanged.
    """
    check_choice("unit", unit, UNIT_CHOICES)
    if unit != "auto":
        return unit
    spatial, _, _ = _axes(kind, len(kernel_shape))
    return "row" if any(kernel_shape[a] > 1 for a in spatial) else "scalar"


def describe_unit(layout, requested):
    """The unit of ``layout`` as reports show it: the unit clustered, and why it is not the
    ``requested`` one (``"scalar (row units need spatial kernel axes)"`` for a Dense kernel with
    ``unit="row"``, ``"row (auto)"``)."""
    used = layout.effective_unit
    if requested in (used, "auto"):
        return used if requested == used else f"{used} (auto)"
    if used != "scalar":
        return used
    spatial, _, _ = _axes(layout.kind, len(layout.kernel_shape))
    return (f"scalar (its {requested}s hold 1 value)" if spatial
            else f"scalar ({requested} units need spatial kernel axes)")


def unit_summary(weights, unit, granularity="per_tensor"):
    """:func:`describe_unit` of a layer's ``(path, variable, kind)`` weights clustered with
    ``unit`` (``"auto"`` resolved per weight): one text when all agree, else ``path: text``
    for each weight."""
    texts = {}
    for path, var, kind in weights:
        shape = tuple(int(s) for s in var.shape)
        lay = layout_for(shape, kind, resolve_unit(unit, kind, shape), granularity)
        texts[path] = describe_unit(lay, unit)
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return ", ".join(f"{path}: {text}" for path, text in texts.items())


def _check_shape(kernel_shape):
    """``kernel_shape`` as a tuple of ints >= 1, or a ``ValueError`` that says what is wrong."""
    try:
        dims = tuple(kernel_shape)
    except TypeError:
        dims = None
    ok = dims is not None and len(dims) >= 1 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in dims)
    if not ok:
        raise ValueError("Invalid value for argument `kernel_shape`. Expected a non-empty "
                         f"sequence of integers >= 1. Received: kernel_shape={kernel_shape!r}")
    return tuple(int(s) for s in dims)


def layout_for(kernel_shape, kind, unit="scalar", granularity="per_tensor"):
    """The :class:`UnitLayout` of a kernel.

    Args:
        kernel_shape: shape of the Keras kernel.
        kind: ``"dense"``, ``"conv"`` (Conv1D/2D/3D and separable pointwise kernels),
            ``"conv_t"`` (Conv*Transpose), ``"depthwise"`` (DepthwiseConv*, separable
            depthwise kernels), ``"embedding"``, ``"vector"`` (1-D weights) or
            ``"einsum:<axes>"`` (EinsumDense kernels, see :func:`einsum_kind`).
        unit: ``"scalar"``, ``"row"`` or ``"kernel"``.
        granularity: ``"per_tensor"`` or ``"per_channel"``.

    Returns:
        A :class:`UnitLayout`.
    """
    if not is_kind(kind):
        check_choice("kind", kind, KINDS)  # raises the usual message
    check_choice("unit", unit, UNITS)
    check_choice("granularity", granularity, GRANULARITIES)
    shape = _check_shape(kernel_shape)
    spatial, channel, other = _axes(kind, len(shape))
    perm = channel + other + spatial
    if unit == "scalar" or not spatial:
        d = 1
    elif unit == "row":
        d = shape[spatial[-1]]
    else:
        d = int(np.prod([shape[a] for a in spatial]))
    groups = int(np.prod([shape[a] for a in channel])) if granularity == "per_channel" else 1
    total = int(np.prod(shape))
    return UnitLayout(shape, kind, unit, granularity, perm, groups, total // (groups * d), d)


def to_units(kernel, layout):
    """Cut ``kernel`` into units: an array of shape (G, M, d) in the kernel's dtype.

    Args:
        kernel: array of exactly ``layout.kernel_shape`` (the Keras kernel's layout).
        layout: a :class:`UnitLayout` (from :func:`layout_for`): its ``perm`` moves the kernel to
            (channels, others, spatial) order; G groups of M units of d values follow.
    """
    _check_layout(layout)
    kernel = np.asarray(kernel)
    if tuple(kernel.shape) != layout.kernel_shape:
        raise _shape_error("kernel", f"the layout's kernel_shape {layout.kernel_shape}", kernel)
    t = np.transpose(kernel, layout.perm)
    return np.ascontiguousarray(t).reshape(layout.n_groups, layout.n_units, layout.unit_dim)


def from_units(units, layout):
    """Put units back into a kernel of ``layout.kernel_shape``: the inverse of :func:`to_units`.

    Args:
        units: array of shape (G, M, d) = ``(layout.n_groups, layout.n_units, layout.unit_dim)``.
        layout: the :class:`UnitLayout` that cut the kernel (from :func:`layout_for`).

    Returns:
        A new C-contiguous array, as :func:`to_units` returns: never a view of ``units`` (an
        edit of either one would silently change the other).
    """
    return np.array(kernel_view(units, layout), order="C")


def kernel_view(units, layout):
    """:func:`from_units` as a view of ``units`` (no copy; for broadcast views of indices)."""
    _check_layout(layout)
    units = np.asarray(units)
    expected = (layout.n_groups, layout.n_units, layout.unit_dim)
    if tuple(units.shape) != expected:
        raise _shape_error("units", f"the layout's (G, M, d) = {expected}", units)
    t_shape = tuple(layout.kernel_shape[a] for a in layout.perm)
    return np.transpose(units.reshape(t_shape), np.argsort(layout.perm))


def _shape_error(name, expected, value):
    """The ``ValueError`` for array argument ``name`` of another shape than ``expected``."""
    return ValueError(f"Invalid value for argument `{name}`. Expected an array of shape "
                      f"{expected}. Received: {name} of shape {tuple(value.shape)} and dtype "
                      f"{value.dtype}, which does not match")


def _check_layout(layout):
    if not isinstance(layout, UnitLayout):
        raise TypeError("Invalid type for argument `layout`. Expected a UnitLayout "
                        f"(dkm_tf.layout_for). Received: {type(layout).__name__}")
