"""Multiply-accumulate counts of a convolution whose kernels share a small codebook.

Son et al. (ECCV 2018, methods.md §2.6) factor a convolution whose kernels are
``W[:, :, i, j] = s[i, j] * mu[l[i, j]]`` (``mu``: K centroids of kh x kw) in two ways
(x_i: input channel i, y_j: output channel j, ``*``: 2-D convolution):

* **conv-then-add**: ``z[i, n] = mu[n] * x_i`` for each distinct centroid n of input i, then
  ``y_j = sum_i s[i, j] * z[i, l[i, j]]``. Cost ``sum_i U_i * Ho*Wo*kh*kw`` MACs, plus
  ``Ho*Wo`` multiply-adds per (i, j) kernel for the scaled accumulation
  (``Cin*Cout*Ho*Wo``). ``U_i``: distinct indices in row i of ``l`` (shape (cin, cout)).
* **add-then-conv**: ``y_j = sum_n mu[n] * (sum_{i: l[i, j] = n} s[i, j] * x_i)``. Cost
  ``sum_j U_j * Ho*Wo*kh*kw`` MACs, plus the scaled input additions: every input channel
  enters every output once, ``Cin*Cout*Hi*Wi`` multiply-adds at the *input* resolution.
  ``U_j``: distinct indices in column j.

Baseline: ``Ho*Wo*Cin*Cout*kh*kw`` MACs. Convolution terms use the **output** spatial size
(what a conv computes); the paper's ``calc_flops`` uses the input size for both numerator and
denominator and omits the scaled-accumulation terms (``paper_*`` fields reproduce that). With
stride 1 and ``same`` padding the two agree; with stride 2 the paper's absolute counts are
4x too large, its ratios unchanged (the spatial size cancels).

The ``realised_*`` fields count what :class:`dkm_tf.graph.factorised.FactorisedConv2D`
actually runs: a depthwise conv with channel multiplier ``U = max_i U_i`` (padded slots
compute too), then either a dense 1x1 conv with the ``(Cin*U, Cout)`` mixing matrix
(``mixing="dense"``) or a gather + scaled sum (``mixing="gather"``).

NumPy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dkm_tf.core.validate import check_choice, check_hw, invalid

__all__ = ["KernelFlops", "conv_output_hw", "distinct_counts", "kernel_flops"]

CRITERIA = ("paper", "theoretical", "realised")
MIXINGS = ("dense", "gather")


@dataclasses.dataclass(frozen=True)
class KernelFlops:
    """MAC counts of one layer (per image). See the module docstring for the formulas.

    Attributes:
        baseline: plain conv, ``Ho*Wo*Cin*Cout*kh*kw``.
        conv_then_add: ``sum_i U_i * Ho*Wo*kh*kw`` (centroid convolutions only).
        conv_then_add_accumulate: ``Cin*Cout*Ho*Wo`` (scaled accumulation of conv-then-add).
        add_then_conv: ``sum_j U_j * Ho*Wo*kh*kw``.
        add_then_conv_additions: ``Cin*Cout*Hi*Wi`` (scaled input sums of add-then-conv).
        paper_conv_then_add, paper_add_then_conv, paper_baseline: the paper's ``calc_flops``
            (input size ``Hi*Wi`` everywhere, no scaled terms).
        realised_dense, realised_gather: what FactorisedConv2D runs with each mixing.
        channel_multiplier: ``U = max_i U_i``, the depthwise multiplier of the layer.
    """

    baseline: int
    conv_then_add: int
    conv_then_add_accumulate: int
    add_then_conv: int
    add_then_conv_additions: int
    paper_baseline: int
    paper_conv_then_add: int
    paper_add_then_conv: int
    realised_dense: int
    realised_gather: int
    channel_multiplier: int

    @property
    def conv_then_add_total(self):
        """Conv-then-add with its scaled accumulation."""
        return self.conv_then_add + self.conv_then_add_accumulate

    @property
    def add_then_conv_total(self):
        """Add-then-conv with its scaled input additions."""
        return self.add_then_conv + self.add_then_conv_additions

    @property
    def best(self):
        """``"conv_then_add"`` or ``"add_then_conv"``: the cheaper with the scaled terms."""
        return "add_then_conv" if self.add_then_conv_total < self.conv_then_add_total \
            else "conv_then_add"

    def factorised(self, criterion="theoretical", mixing="dense"):
        """MACs of the factorised layer under ``criterion``.

        ``"paper"``: min of the two paper counts (input size, no scaled terms);
        ``"theoretical"``: conv-then-add with its accumulation (the form the layer runs);
        ``"realised"``: what FactorisedConv2D runs with ``mixing``.
        """
        check_choice("criterion", criterion, CRITERIA)
        check_choice("mixing", mixing, MIXINGS)
        if criterion == "paper":
            return min(self.paper_conv_then_add, self.paper_add_then_conv)
        if criterion == "theoretical":
            return self.conv_then_add_total
        return self.realised_dense if mixing == "dense" else self.realised_gather

    def baseline_for(self, criterion="theoretical"):
        """The baseline the ``criterion`` compares with (the paper's uses the input size)."""
        check_choice("criterion", criterion, CRITERIA)
        return self.paper_baseline if criterion == "paper" else self.baseline

    def ratio(self, criterion="theoretical", mixing="dense"):
        """Baseline over factorised MACs (> 1: the factorised form is cheaper)."""
        return self.baseline_for(criterion) / max(self.factorised(criterion, mixing), 1)

    def to_dict(self):
        """All counts, plus the totals and ``best``."""
        out = dataclasses.asdict(self)
        out.update(conv_then_add_total=self.conv_then_add_total,
                   add_then_conv_total=self.add_then_conv_total, best=self.best)
        return out


def conv_output_hw(in_hw, kernel, strides=1, padding="same"):
    """Output ``(Ho, Wo)`` of a conv (dilation 1), Keras' rule.

    ``same``: ``ceil(H / stride)``; ``valid``: ``floor((H - k) / stride) + 1``.
    """
    (h, w), (kh, kw), (sh, sw) = check_hw("in_hw", in_hw), check_hw("kernel", kernel), \
        check_hw("strides", strides)
    check_choice("padding", padding, ("same", "valid"))
    if padding == "same":
        return -(-h // sh), -(-w // sw)
    if h < kh or w < kw:
        raise invalid("in_hw", f"at least the kernel size {(kh, kw)} with padding='valid'",
                      in_hw)
    return (h - kh) // sh + 1, (w - kw) // sw + 1


def _check_indices(indices):
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise invalid("indices", "a non-empty 2-D integer array of shape (cin, cout)",
                      f"array of shape {idx.shape} and dtype {idx.dtype}")
    if idx.min() < 0:
        raise invalid("indices", "centroid ids >= 0", f"min {int(idx.min())}")
    return idx


def distinct_counts(indices, axis):
    """Distinct values per row (``axis=1``: ``U_i`` per input channel) or per column
    (``axis=0``: ``U_j`` per output channel) of a (cin, cout) index matrix."""
    idx = _check_indices(indices)
    srt = np.sort(idx, axis=axis)
    return 1 + np.count_nonzero(np.diff(srt, axis=axis), axis=axis)


def kernel_flops(indices, *, in_hw, kernel, out_hw=None, strides=1, padding="same"):
    """MAC counts of a codebook-shared conv layer (methods.md §2.6), per image.

    Args:
        indices: int array (cin, cout), ``l[i, j]`` the centroid of kernel (i, j).
        in_hw: input ``(Hi, Wi)`` (or an int).
        kernel: ``(kh, kw)`` (or an int).
        out_hw: output ``(Ho, Wo)``; computed from ``strides`` and ``padding`` if None.
        strides: conv strides.
        padding: ``"same"`` or ``"valid"``.

    Returns:
        A :class:`KernelFlops`.

    Example:
        >>> f = kernel_flops(np.array([[0, 0], [0, 1]]), in_hw=4, kernel=3)
        >>> f.baseline, f.conv_then_add, f.conv_then_add_accumulate, f.add_then_conv
        (576, 432, 64, 432)
    """
    idx = _check_indices(indices)
    (hi, wi), (kh, kw) = check_hw("in_hw", in_hw), check_hw("kernel", kernel)
    if out_hw is None:
        out_hw = conv_output_hw((hi, wi), (kh, kw), strides, padding)
    ho, wo = check_hw("out_hw", out_hw)
    cin, cout = idx.shape
    u_in, u_out = distinct_counts(idx, 1), distinct_counts(idx, 0)
    k2, n_out, n_in = kh * kw, ho * wo, hi * wi
    mult = int(u_in.max())
    depthwise = cin * mult * n_out * k2
    return KernelFlops(
        baseline=n_out * cin * cout * k2,
        conv_then_add=int(u_in.sum()) * n_out * k2,
        conv_then_add_accumulate=cin * cout * n_out,
        add_then_conv=int(u_out.sum()) * n_out * k2,
        add_then_conv_additions=cin * cout * n_in,
        paper_baseline=n_in * cin * cout * k2,
        paper_conv_then_add=int(u_in.sum()) * n_in * k2,
        paper_add_then_conv=int(u_out.sum()) * n_in * k2,
        realised_dense=depthwise + cin * mult * cout * n_out,
        realised_gather=depthwise + cin * cout * n_out,
        channel_multiplier=mult,
    )
