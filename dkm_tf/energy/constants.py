"""Constants of the two energy models, in one documented table.

Every number the energy estimators use lives here, with its source. Nothing in this module
imports TensorFlow or Keras.

Paper metric (Deep k-Means, Wu et al., ICML 2018, §3 and §4.2.1):

* `REPRESENTATIONAL_TO_COMPUTE` = 6: "the representational cost of a MAC is about 6 times
  that of performing a MAC computation" (paper §4.2.1, citing Chen et al. 2016b, Eyeriss,
  where a global-buffer access costs ≈ 6× a MAC).

Hierarchy model (Eyeriss / Yang et al.), normalised energy per access of one 16-bit word,
relative to one 16-bit MAC, 65 nm (Chen, Emer, Sze, ISCA 2016, "Eyeriss", table of normalised
energy costs; the same values are used by the Yang, Chen, Sze CVPR 2017 energy-aware-pruning
methodology). The values here were corroborated from the third-party estimator
`AdrenoRS/Energy-Estimator-for-Eyeriss-like-Architecture-` (`Norm_energy`), not read from the
primary PDF:

| level | key | cost | notes |
|---|---|---|---|
| DRAM | `"dram"` | 200 | off-chip |
| global buffer (>100 kB) | `"buffer"` | 6 | on-chip SRAM |
| array (inter-PE / NoC) | `"array"` | 2 | PE-to-PE and buffer-to-PE network |
| register file (0.5 kB) | `"rf"` | 1 | per-PE scratch pad |
| MAC | `MAC_ENERGY` | 1 | 16 × 16-bit multiply-accumulate |

Row-stationary mapping parameters (Eyeriss ISCA 2016: 12 × 14 PE array, 224-word filter
scratch pad per PE). `FILTERS_PER_PE` = 16 follows the Eyeriss AlexNet mappings (p = 16);
it is a modelling choice of this package, not a published constant.

Bit-width scaling (Yang et al. 2017, as summarised by the AdrenoRS README): data energy scales
linearly with the bits moved; MAC energy scales with the product of the two operand widths.
All hierarchy costs are normalised at `REFERENCE_BITS` = 16.
"""

REPRESENTATIONAL_TO_COMPUTE = 6.0
"""Paper metric: representational cost of one MAC relative to its compute (paper §4.2.1)."""

LEVEL_COSTS = {"dram": 200.0, "buffer": 6.0, "array": 2.0, "rf": 1.0}
"""Hierarchy model: energy per 16-bit word access, in units of one 16-bit MAC (Eyeriss)."""

LEVELS = ("dram", "buffer", "array", "rf")
"""Memory levels of the hierarchy model, outermost first."""

DATA_TYPES = ("weight", "input", "psum")
"""Data types whose traffic the hierarchy model counts (psum includes the final outputs)."""

MAC_ENERGY = 1.0
"""Hierarchy model: energy of one 16 × 16-bit MAC (the unit of the table)."""

REFERENCE_BITS = 16
"""Bit width at which `LEVEL_COSTS` and `MAC_ENERGY` are normalised."""

PE_ROWS = 12
"""Rows of the Eyeriss PE array (filter rows of a row-stationary PE set map onto them)."""

PE_COLS = 14
"""Columns of the Eyeriss PE array (output rows of a row-stationary PE set map onto them)."""

RF_FILTER_WORDS = 224
"""Words of filter scratch pad per PE (Eyeriss ISCA 2016)."""

FILTERS_PER_PE = 16
"""Filters interleaved in one PE's scratch pad (the Eyeriss AlexNet mappings use p = 16)."""

INDEX_COSTS = ("none", "log2", "entropy")
"""Allowed values of `index_cost`."""

COMPUTE_MODELS = ("conservative", "unique_products")
"""Allowed values of `compute_model`."""

SOURCES = {
    "paper": "Wu, Wang, Xu, Zhang, Huang, Tang, Wang, Chen. Deep k-Means: Re-Training and "
    "Parameter Sharing with Harder Cluster Assignments for Compressing Deep Convolutions. "
    "ICML 2018, §3 (eqs. 5-7) and §4.2.",
    "sakr": "Sakr, Kim, Shanbhag. Analytical Guarantees on Numerical Precision of Deep Neural "
    "Networks. ICML 2017 (computational and representational cost).",
    "eyeriss": "Chen, Emer, Sze. Eyeriss: A Spatial Architecture for Energy-Efficient Dataflow "
    "for Convolutional Neural Networks. ISCA 2016 (normalised access costs, row stationary).",
    "yang": "Yang, Chen, Sze. Designing Energy-Efficient Convolutional Neural Networks using "
    "Energy-Aware Pruning. CVPR 2017 (E = E_comp + E_data, bit-width scaling).",
    "adrenors": "AdrenoRS/Energy-Estimator-for-Eyeriss-like-Architecture- (third-party script; "
    "Norm_energy = {MAC: 1, RF: 1, NoC: 2, GL_Buffer: 6, DRAM: 200}).",
}
"""Citations for the constants above."""
