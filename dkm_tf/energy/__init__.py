"""Energy estimation from layer shapes: the Deep k-Means metric and a memory-hierarchy model.

Two models, both per image and from shapes only (no weights, no TensorFlow at import):

* the paper's metric (Deep k-Means, ICML 2018, §3 eqs. 5-7 and §4.2): full-adder compute cost
  plus weight and activation representational costs, normalised so that one MAC's data costs
  6× its compute, in MAC units (≈ 7 × MACs uncompressed);
* an Eyeriss row-stationary hierarchy model: accesses at DRAM / global buffer / array / RF
  with normalised costs 200 / 6 / 2 / 1 and MAC 1 (`constants`).

Example:
    >>> from dkm_tf import energy
    >>> shapes = [energy.conv_shape("conv", in_hw=8, in_c=4, out_hw=6, out_c=8, kernel=3)]
    >>> report = energy.estimate(shapes)
    >>> report.macs
    10368
"""

from dkm_tf.energy.api import (
    energy_cli_text,
    estimate,
    estimate_layer,
    estimate_shapes,
)
from dkm_tf.energy.hierarchy import (
    HierarchyCost,
    hierarchy_cost,
)
from dkm_tf.energy.layer_totals import LayerTotal
from dkm_tf.energy.paper import (
    PaperCost,
    fa_dot,
    fa_per_mac,
    paper_cost,
)
from dkm_tf.energy.report import (
    EnergyRatio,
    EnergyReport,
    LayerEnergy,
)
from dkm_tf.energy.shapes import (
    LayerShape,
    SharingInfo,
    conv_shape,
    dense_shape,
    eltwise_shape,
    pool_shape,
)
from dkm_tf.energy.unique_products import expected_unique_fraction, unique_product_fraction

__all__ = [
    "EnergyRatio",
    "EnergyReport",
    "HierarchyCost",
    "LayerEnergy",
    "LayerShape",
    "LayerTotal",
    "PaperCost",
    "SharingInfo",
    "conv_shape",
    "dense_shape",
    "eltwise_shape",
    "energy_cli_text",
    "estimate",
    "estimate_layer",
    "estimate_shapes",
    "expected_unique_fraction",
    "fa_dot",
    "fa_per_mac",
    "hierarchy_cost",
    "paper_cost",
    "pool_shape",
    "unique_product_fraction",
]
