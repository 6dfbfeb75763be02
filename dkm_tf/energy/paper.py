"""The paper's energy metric (Deep k-Means, ICML 2018, §3 and §4.2), as pure functions.

Definitions (paper §3, after Sakr et al. 2017; B_w, B_x are the weight and activation bits):

* Computational cost, in 1-bit full adders, of one D-dimensional dot product (eq. 5):

      FA(D) = D·B_w·B_x + (D − 1)·(B_x + B_w + ⌈log₂ D⌉ − 1)

* Weight representational cost (eq. 6): C_W = N_w · |W| · B_w, with N_w the number of times
  each weight is used (the output positions) and |W| the number of stored weights.
* Activation representational cost (eq. 7): C_X = N_x · |X| · B_x, with N_x = MACs / |X|,
  so C_X = MACs · B_x.

Normalisation (paper §4.2.1, reconstructed in methods.md §1.8.2): the representational cost
of one MAC is 6× its computational cost. One MAC costs FA_MAC = B_w·B_x + B_w + B_x +
⌈log₂ D⌉ − 1 full adders and moves B_w + B_x bit-uses, so one bit-use costs
κ = 6·FA_MAC / (B_w + B_x) full adders and, in MAC units,

      E = (CC + κ·(C_W + C_X)) / FA_MAC  ≈  7 · MACs  (uncompressed).

Weight sharing (paper §4.2.2) shrinks |W| to the codebook K·d (plus, optionally, N index
bits; the paper's footnote 3 ignores them), leaves C_X unchanged and leaves CC unchanged in
the conservative reading. The optional "unique products" model multiplies each distinct
codeword once per unit position. Pruning to a kept fraction f scales CC, C_W and C_X by f.

Pooling and element-wise layers are not covered by the paper. They are modelled the same
way: CC counts B_x-bit adders/comparators (B_x·B_x for a multiply), C_X counts the values
read, and FA_MAC uses D = 1.
"""

import dataclasses
import math

from dkm_tf.energy import constants


def fa_dot(d, bits_w, bits_x):
    """Full adders of one d-dimensional dot product, paper eq. (5).

    FA(d) = d·B_w·B_x + (d − 1)·(B_x + B_w + ⌈log₂ d⌉ − 1): d Baugh-Wooley multipliers, then
    d − 1 ripple-carry adders, each counted at the sum's full width (Sakr et al., ICML 2017).

    Args:
        d: The dot product's length, an integer >= 1.
        bits_w, bits_x: B_w and B_x, bits of a weight and of an activation (> 0; may be
            fractional, e.g. an average over layers).

    Example:
        >>> fa_dot(4, 8, 8)
        307
    """
    _check_bits(d, bits_w, bits_x)
    return d * bits_w * bits_x + (d - 1) * (bits_x + bits_w + _clog2(d) - 1)


def fa_per_mac(d, bits_w, bits_x):
    """Per-MAC share of eq. (5): B_w·B_x + B_w + B_x + ⌈log₂ d⌉ − 1 (methods.md §1.8.2).

    Args:
        d: The dot product's length, an integer >= 1.
        bits_w, bits_x: B_w and B_x, bits of a weight and of an activation (> 0).
    """
    _check_bits(d, bits_w, bits_x)
    return bits_w * bits_x + bits_w + bits_x + _clog2(d) - 1


@dataclasses.dataclass(frozen=True)
class PaperCost:
    """The paper metric of one layer.

    Attributes:
        compute_fa: CC, the computational cost in full adders (eq. 5 summed over outputs).
        weight_bits: C_W in bit-uses (eq. 6).
        activation_bits: C_X in bit-uses (eq. 7).
        fa_per_mac: FA_MAC, the normaliser (full adders per MAC).
        kappa: κ = 6·FA_MAC / (B_w + B_x), full adders per bit-use.
    """

    compute_fa: float
    weight_bits: float
    activation_bits: float
    fa_per_mac: float
    kappa: float

    @property
    def compute(self):
        """Computational term in MAC units, CC / FA_MAC."""
        return self.compute_fa / self.fa_per_mac

    @property
    def weights(self):
        """Weight representational term in MAC units, κ·C_W / FA_MAC."""
        return self.kappa * self.weight_bits / self.fa_per_mac

    @property
    def activations(self):
        """Activation representational term in MAC units, κ·C_X / FA_MAC."""
        return self.kappa * self.activation_bits / self.fa_per_mac

    @property
    def total(self):
        """E = (CC + κ·(C_W + C_X)) / FA_MAC, in MAC units."""
        return self.compute + self.weights + self.activations


def paper_cost(shape, *, bits_w=16, bits_x=16, sharing=None, index_bits=0.0,
               kept_fraction=1.0, unique_fraction=1.0):
    """Computes the paper metric for one layer.

    Args:
        shape: A `LayerShape`.
        bits_w: B_w, weight bits.
        bits_x: B_x, activation bits.
        sharing: A `SharingInfo` if the kernel is weight-shared, else `None`.
        index_bits: Bits per index charged to C_W (0 reproduces the paper's footnote 3).
        kept_fraction: f, the fraction of weights (and MACs) kept after pruning.
        unique_fraction: Fraction of unit dot products that must be computed (1 =
            conservative; < 1 for the unique-products model, only with `sharing`).

    Returns:
        A `PaperCost`.

    Example:
        >>> from dkm_tf.energy.shapes import dense_shape
        >>> c = paper_cost(dense_shape("fc", in_features=4, units=2), bits_w=8, bits_x=8)
        >>> round(c.total, 4), c.compute_fa
        (55.5802, 614.0)
    """
    check_layer_args(shape, bits_w, bits_x, kept_fraction=kept_fraction,
                     unique_fraction=unique_fraction)
    _check_sharing(shape, sharing, index_bits)
    bw, bx, f = bits_w, bits_x, kept_fraction
    if shape.kind in ("conv", "dense"):
        d_len = shape.dot_length
        n_out = shape.positions * shape.out_c
        fa_mac = fa_per_mac(d_len, bw, bx)
        if sharing is not None and unique_fraction < 1.0:
            units = d_len / sharing.unit_dim
            adder = bx + bw + _clog2(d_len) - 1
            within = d_len * bw * bx + (d_len - units) * adder
            cc = n_out * (unique_fraction * within + (units - 1) * adder) * f
        else:
            cc = n_out * fa_dot(d_len, bw, bx) * f
        if sharing is None:
            stored = shape.n_weights * bw * f
        else:
            stored = sharing.codebook_size * bw + f * sharing.n_units * index_bits
        c_w = shape.positions * stored
        c_x = shape.macs * bx * f
    elif shape.kind == "pool":
        window = shape.kernel_h * shape.kernel_w
        fa_mac = fa_per_mac(1, bw, bx)
        cc = shape.output_size * (window - 1) * bx
        c_w = 0.0
        c_x = shape.output_size * window * bx
    else:
        fa_mac = fa_per_mac(1, bw, bx)
        cc = shape.output_size * eltwise_fa(shape, bw, bx)
        c_w = shape.output_size * 2 * bw if shape.eltwise_op == "affine" else 0.0
        c_x = shape.input_size * bx
    kappa = constants.REPRESENTATIONAL_TO_COMPUTE * fa_mac / (bw + bx)
    return PaperCost(compute_fa=cc, weight_bits=c_w, activation_bits=c_x, fa_per_mac=fa_mac,
                     kappa=kappa)


def eltwise_fa(shape, bits_w, bits_x):
    """Full adders per output of an element-wise op.

    add / max: (n − 1)·B_x; relu: B_x (compare with 0); mul: (n − 1)·B_x²;
    affine (x·a + b): B_w·B_x + B_w + B_x.
    """
    n = shape.n_inputs
    op = shape.eltwise_op
    if op in ("add", "max"):
        return max(n - 1, 1) * bits_x
    if op == "relu":
        return bits_x
    if op == "mul":
        return max(n - 1, 1) * bits_x * bits_x
    return bits_w * bits_x + bits_w + bits_x


def _check_bits(d, bits_w, bits_x):
    from dkm_tf.energy.shapes import check_positive, check_positive_int  # noqa: PLC0415

    check_positive_int("d", d)
    check_positive("bits_w", bits_w)
    check_positive("bits_x", bits_x)


def check_layer_args(shape, bits_w, bits_x, **fractions):
    """Check a per-layer cost function's arguments: a `LayerShape`, bits > 0, and fractions
    in (0, 1] (``None`` refused: it reached the arithmetic as a raw TypeError)."""
    from dkm_tf.energy.shapes import LayerShape, check_positive  # noqa: PLC0415

    if not isinstance(shape, LayerShape):
        raise TypeError("Invalid type for argument `shape`. Expected a LayerShape. "
                        f"Received: shape={shape!r}")
    check_positive("bits_w", bits_w)
    check_positive("bits_x", bits_x)
    for name, value in fractions.items():
        check_positive(name, value)
        if value > 1:
            raise ValueError(f"Invalid value for argument `{name}`. Expected a number in "
                             f"(0, 1]. Received: {name}={value!r}")


def _check_sharing(shape, sharing, index_bits):
    """`sharing`: None or a `SharingInfo` of the kernel's size; `index_bits` a finite number
    >= 0 (a negative one lowered C_W below the codebook's, NaN made every term NaN)."""
    from dkm_tf.core.validate import check_number  # noqa: PLC0415
    from dkm_tf.energy.shapes import SharingInfo  # noqa: PLC0415

    check_number("index_bits", index_bits, "a finite number >= 0 (bits per stored index)",
                 low=0)
    if sharing is None:
        return
    if not isinstance(sharing, SharingInfo):
        raise TypeError("Invalid type for argument `sharing`. Expected a SharingInfo or None. "
                        f"Received: sharing={sharing!r} of type {type(sharing).__name__}")
    if shape.kind in ("conv", "dense") and sharing.n_weights != shape.n_weights:
        raise ValueError(f"Invalid value for argument `sharing`. Expected a SharingInfo of the "
                         f"{shape.n_weights} weights of layer {shape.name!r} (n_units x "
                         f"unit_dim). Received: sharing={sharing!r}, {sharing.n_weights} "
                         "weights")


def _clog2(d):
    return math.ceil(math.log2(d)) if d > 1 else 0
