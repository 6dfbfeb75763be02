"""Memory-hierarchy energy model (Eyeriss row-stationary), as pure functions.

E = E_comp + E_data (Yang, Chen, Sze, CVPR 2017). E_comp = MACs · e_MAC · (B_w/16)·(B_x/16).
E_data = Σ_{data ∈ {weight, input, psum}} Σ_{level ∈ {DRAM, buffer, array, RF}}
accesses · e_level · bits/16, with e = 200 / 6 / 2 / 1 and e_MAC = 1 (`constants`).

Access counts under a row-stationary mapping on a 12 × 14 PE array (Chen et al., ISCA 2016).
Notation: R × S kernel, C = in_c / groups channels per group, M filters (M_g per group),
E × F output, H × W input, |W| = R·S·C·M, |X| = H·W·in_c, MACs = E·F·M·R·S·C. A PE holds one
filter row (S weights) of p = min(M_g, 16) filters for q_pe = max(1, ⌊224 / (S·p)⌋) channels
(capped at C) and slides one input row through them; a PE set is R rows × E columns, folded
into strips of 14 output rows; sets are stacked vertically ⌊12 / R⌋ times over channels.

* weights: DRAM |W| (read once); buffer |W|·⌈E/14⌉ (once per strip); array |W|·E (each
  filter row multicast to the E PEs of its output rows); RF one read per MAC.
* inputs: DRAM |X|; buffer |X|·⌈M_g / (p·t)⌉ with t = max(1, ⌊14/E⌋) horizontal copies;
  array E·R·W·in_c·⌈M_g/p⌉ (each PE receives a whole input row); RF one read per MAC.
* psums: RF 2·MACs (read + write; q_pe channels accumulate inside a PE); array
  E·F·M·(R·⌈C/q_pe⌉ − n_c) vertical hops with n_c = ⌈C / (q_pe·⌊12/R⌋)⌉ channel passes;
  buffer E·F·M·(2·n_c − 1) (write every pass, read back all but the first); DRAM E·F·M.

A dense layer is a 1 × 1 convolution on a 1 × positions map. Pooling and element-wise layers
read each input once from DRAM, the buffer and the array, read their window (or operands) from
the RF and write each output once to every level; their compute is charged in full-adder
units relative to one 16-bit MAC (`paper.fa_per_mac(1, 16, 16)`).

Everything is per image with batch size 1: each layer's weights are read from DRAM once per
image, so fully connected layers are dominated by DRAM weight traffic (no amortisation over a
batch, which the Eyeriss/Yang et al. setups may apply).

Weight sharing (methods.md §1.8.3 proposal): the codebook is decoded at the array boundary, so
DRAM and buffer weight traffic becomes N·b_idx + K·d·B_w bits instead of |W|·B_w; array and
RF weight traffic, inputs and psums are unchanged. Pruning to a kept fraction f scales the
MACs, all weight traffic and the RF input/psum traffic by f.
"""

import dataclasses
import math

from dkm_tf.core.validate import check_number
from dkm_tf.energy import constants
from dkm_tf.energy.paper import check_layer_args, eltwise_fa, fa_per_mac


@dataclasses.dataclass(frozen=True)
class HierarchyCost:
    """The hierarchy model of one layer.

    Attributes:
        compute: E_comp, MAC energy in units of one 16-bit MAC.
        traffic: Tuple of `((data_type, level), words)` with words in 16-bit-word
            equivalents (accesses × bits / 16), for every data type and level.
    """

    compute: float
    traffic: tuple

    def words(self, data_type=None, level=None):
        """Sums 16-bit-word-equivalent accesses, optionally of one `data_type` ("weight",
        "input", "psum") and/or one `level` ("dram", "buffer", "array", "rf"); None: all."""
        return sum(w for (d, lv), w in self.traffic
                   if (data_type is None or d == data_type) and (level is None or lv == level))

    def energy(self, data_type=None, level=None):
        """Data energy (MAC units: words × the level's cost, DRAM 200 / buffer 6 / array 2 /
        RF 1), optionally of one `data_type` and/or `level` as in `words`; None: all."""
        return sum(w * constants.LEVEL_COSTS[lv] for (d, lv), w in self.traffic
                   if (data_type is None or d == data_type) and (level is None or lv == level))

    @property
    def data(self):
        """E_data, all data movement in MAC units."""
        return self.energy()

    @property
    def total(self):
        """E_comp + E_data, in units of one 16-bit MAC."""
        return self.compute + self.data


def hierarchy_cost(shape, *, bits_w=16, bits_x=16, weight_store_bits=None, kept_fraction=1.0,
                   compute_fraction=1.0):
    """Computes the hierarchy model for one layer.

    Args:
        shape: A `LayerShape`.
        bits_w: Weight bits (data energy scales linearly, compute with B_w·B_x).
        bits_x: Activation and psum bits.
        weight_store_bits: Bits of the stored kernel as fetched from DRAM and the buffer
            (weight sharing: N·b_idx + K·d·B_w). `None` means |W|·B_w·f.
        kept_fraction: f, the fraction of weights and MACs kept after pruning.
        compute_fraction: Multiplier on MAC energy (the unique-products model passes the
            ratio of its full-adder count to the conservative one).

    Returns:
        A `HierarchyCost`.
    """
    check_layer_args(shape, bits_w, bits_x, kept_fraction=kept_fraction)
    if weight_store_bits is not None:
        check_number("weight_store_bits", weight_store_bits, "None or a finite number > 0 "
                     "(bits of the stored kernel)", low=0, low_open=True)
    check_number("compute_fraction", compute_fraction, "a number in (0, 1] (unique-products "
                 "full adders over the conservative count)", low=0, high=1, low_open=True)
    ref = constants.REFERENCE_BITS
    sw, sx = bits_w / ref, bits_x / ref
    if shape.kind in ("conv", "dense"):
        counts = _rs_counts(shape)
        f = kept_fraction
        macs = shape.macs * f
        if weight_store_bits is None:
            stored = counts["w_dram"] * bits_w * f
        else:
            stored = float(weight_store_bits)
        strips = counts["strips"]
        traffic = {
            ("weight", "dram"): stored / ref,
            ("weight", "buffer"): stored / ref * strips * shape.repeat,
            ("weight", "array"): counts["w_array"] * f * sw,
            ("weight", "rf"): macs * sw,
            ("input", "dram"): counts["x_dram"] * sx,
            ("input", "buffer"): counts["x_buffer"] * sx,
            ("input", "array"): counts["x_array"] * sx,
            ("input", "rf"): macs * sx,
            ("psum", "dram"): counts["p_dram"] * sx,
            ("psum", "buffer"): counts["p_buffer"] * sx,
            ("psum", "array"): counts["p_array"] * sx,
            ("psum", "rf"): 2 * macs * sx,
        }
        compute = macs * compute_fraction * constants.MAC_ENERGY * sw * sx
    else:
        n_in, n_out = shape.input_size, shape.output_size
        if shape.kind == "pool":
            rf_reads = n_out * shape.kernel_h * shape.kernel_w
            fa = n_out * (shape.kernel_h * shape.kernel_w - 1) * bits_x
            n_w, rf_w = 0, 0
        else:
            rf_reads = n_in
            fa = n_out * eltwise_fa(shape, bits_w, bits_x)
            affine = shape.eltwise_op == "affine"
            n_w, rf_w = (shape.n_params, 2 * n_out) if affine else (0, 0)
        traffic = {
            ("weight", "dram"): n_w * sw,
            ("weight", "buffer"): n_w * sw,
            ("weight", "array"): n_w * sw,
            ("weight", "rf"): rf_w * sw,
            ("input", "dram"): n_in * sx,
            ("input", "buffer"): n_in * sx,
            ("input", "array"): n_in * sx,
            ("input", "rf"): rf_reads * sx,
            ("psum", "dram"): n_out * sx,
            ("psum", "buffer"): n_out * sx,
            ("psum", "array"): n_out * sx,
            ("psum", "rf"): n_out * sx,
        }
        compute = constants.MAC_ENERGY * fa / fa_per_mac(1, ref, ref)
    ordered = tuple(((d, lv), float(traffic[(d, lv)]))
                    for d in constants.DATA_TYPES for lv in constants.LEVELS)
    return HierarchyCost(compute=float(compute), traffic=ordered)


def _rs_counts(shape):
    """Row-stationary access counts (words) of a conv/dense `LayerShape`; see module doc."""
    r, s = shape.kernel_h, shape.kernel_w
    c = shape.in_c // shape.groups
    m = shape.out_c
    m_g = m // shape.groups
    e, f = shape.out_h, shape.out_w
    rep = shape.repeat
    n_w = shape.n_weights
    p = min(m_g, constants.FILTERS_PER_PE)
    q_pe = max(1, min(c, constants.RF_FILTER_WORDS // (s * p)))
    stack = max(1, constants.PE_ROWS // r)
    n_c = math.ceil(c / (q_pe * stack))
    copies = max(1, constants.PE_COLS // e)
    strips = math.ceil(e / constants.PE_COLS)
    filter_passes = math.ceil(m_g / p)
    outputs = rep * e * f * m
    return {
        "strips": strips,
        "w_dram": n_w,
        "w_array": n_w * e * rep,
        "x_dram": shape.input_size,
        "x_buffer": shape.input_size * math.ceil(m_g / (p * copies)),
        "x_array": rep * e * r * shape.in_w * shape.in_c * filter_passes,
        "p_dram": outputs,
        "p_buffer": outputs * (2 * n_c - 1),
        "p_array": outputs * (r * math.ceil(c / q_pe) - n_c),
    }
