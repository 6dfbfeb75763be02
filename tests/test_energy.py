"""Tests of the pure energy models (no TensorFlow): hand-computed values and invariants.

Hand values are written from the formulas (methods.md §1.8.2, dkm_tf/energy/hierarchy.py
module docstring), not by calling the library.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkm_tf import energy
from dkm_tf.energy import SharingInfo, conv_shape, dense_shape, eltwise_shape, pool_shape

# A tiny conv: 5x5x2 input, 4 filters of 3x3, valid -> 3x3x4.
TINY_CONV = conv_shape("conv", in_hw=5, in_c=2, out_hw=3, out_c=4, kernel=3)
# A tiny dense: 10 -> 4.
TINY_DENSE = dense_shape("fc", in_features=10, units=4)


def _fa(d, bw, bx):
    """Eq. (5) written out again for the tests."""
    return d * bw * bx + (d - 1) * (bx + bw + math.ceil(math.log2(d)) - 1)


# ----------------------------------------------------------------------------- paper metric


def test_paper_metric_tiny_conv_by_hand():
    bw = bx = 8
    macs = 3 * 3 * 4 * (3 * 3 * 2)  # 648
    d = 18
    cc = 3 * 3 * 4 * (d * 64 + (d - 1) * (8 + 8 + 5 - 1))  # 36 * 1492
    fa_mac = 64 + 8 + 8 + 5 - 1  # 84
    kappa = 6 * fa_mac / (bw + bx)  # 31.5
    c_w = (3 * 3) * (3 * 3 * 2 * 4) * bw  # N_w = positions, |W| = 72
    c_x = macs * bx
    expected = (cc + kappa * (c_w + c_x)) / fa_mac
    layer = energy.estimate_layer(TINY_CONV, bits_w=bw, bits_x=bx)
    assert layer.macs == 648
    assert layer.paper.compute_fa == pytest.approx(53712)
    assert layer.paper.weight_bits == pytest.approx(5184)
    assert layer.paper.activation_bits == pytest.approx(5184)
    assert layer.paper_total == pytest.approx(expected, rel=1e-12)
    assert layer.paper_total == pytest.approx(4527.428571428, rel=1e-9)


def test_paper_metric_tiny_dense_asymmetric_bits_by_hand():
    bw, bx = 8, 4
    cc = 4 * (10 * 32 + 9 * (4 + 8 + 4 - 1))  # 4 * 455
    fa_mac = 32 + 8 + 4 + 4 - 1  # 47
    kappa = 6 * 47 / 12
    expected = (cc + kappa * (40 * 8 + 40 * 4)) / fa_mac
    layer = energy.estimate_layer(TINY_DENSE, bits_w=bw, bits_x=bx)
    assert layer.paper_total == pytest.approx(expected, rel=1e-12)
    assert layer.paper_total == pytest.approx(13100 / 47, rel=1e-12)


def test_paper_metric_weight_sharing_by_hand():
    bw = bx = 8
    # Row units: d = kernel width 3, N = 3 rows x 2 channels x 4 filters = 24, K = 3.
    info = SharingInfo(n_clusters=3, unit_dim=3, n_units=24)
    fa_mac = 84
    kappa = 6 * fa_mac / 16
    cc = 36 * 1492
    c_x = 648 * 8
    for index_cost, idx_bits in (("none", 0.0), ("log2", math.log2(3))):
        c_w = 9 * (3 * 3 * bw + 24 * idx_bits)
        expected = (cc + kappa * (c_w + c_x)) / fa_mac
        layer = energy.estimate_layer(TINY_CONV, bits_w=bw, bits_x=bx, sharing=info,
                                      index_cost=index_cost)
        assert layer.paper_total == pytest.approx(expected, rel=1e-12), index_cost
    entropy = SharingInfo(n_clusters=3, unit_dim=3, n_units=24, index_bits=1.25)
    layer = energy.estimate_layer(TINY_CONV, bits_w=bw, bits_x=bx, sharing=entropy,
                                  index_cost="entropy")
    c_w = 9 * (72 + 24 * 1.25)
    assert layer.paper_total == pytest.approx((cc + kappa * (c_w + c_x)) / fa_mac, rel=1e-12)


def test_unique_products_compute_by_hand():
    # Dense 10 -> 4 with scalar sharing (d = 1): all products of a position shared by the 4
    # outputs reduce to U distinct ones; the D - 1 accumulations per output stay.
    bw = bx = 8
    info = SharingInfo(n_clusters=2, unit_dim=1, n_units=40, unique_fraction=0.5)
    layer = energy.estimate_layer(TINY_DENSE, bits_w=bw, bits_x=bx, sharing=info,
                                  compute_model="unique_products")
    adder = 8 + 8 + 4 - 1
    expected_cc = 4 * (0.5 * (10 * 64 + 0 * adder) + 9 * adder)
    assert layer.paper.compute_fa == pytest.approx(expected_cc)
    # With fraction 1 the model reduces to eq. (5).
    full = SharingInfo(n_clusters=2, unit_dim=1, n_units=40, unique_fraction=1.0)
    layer1 = energy.estimate_layer(TINY_DENSE, bits_w=bw, bits_x=bx, sharing=full,
                                   compute_model="unique_products")
    assert layer1.paper.compute_fa == pytest.approx(4 * _fa(10, 8, 8))
    # Expected fraction under uniform assignment: K (1 - (1 - 1/K)^M) / M = 2 * 0.9375 / 4.
    auto = SharingInfo(n_clusters=2, unit_dim=1, n_units=40)
    layer2 = energy.estimate_layer(TINY_DENSE, bits_w=bw, bits_x=bx, sharing=auto,
                                   compute_model="unique_products")
    assert layer2.unique_fraction == pytest.approx(2 * (1 - 0.5**4) / 4)


def test_unique_product_fraction_counts_distinct_codewords():
    idx = np.array([[0, 0, 1, 1], [2, 2, 2, 2], [0, 1, 2, 3]])
    assert energy.unique_product_fraction(idx) == pytest.approx((2 + 1 + 4) / 12)
    with pytest.raises(ValueError, match="indices"):
        energy.unique_product_fraction(np.zeros(3))


# ----------------------------------------------------------------------------- hierarchy model


def test_hierarchy_tiny_conv_by_hand():
    # R = S = 3, C = 2, M = 4, E = F = 3, H = W = 5; p = 4, q_pe = 2, stack = 4, n_c = 1,
    # copies = 4, strips = 1, filter passes = 1.
    w_dram, w_buf, w_arr, w_rf = 72, 72, 72 * 3, 648
    x_dram, x_buf, x_arr, x_rf = 50, 50, 3 * 3 * 5 * 2, 648
    p_dram, p_buf, p_arr, p_rf = 36, 36 * 1, 36 * (3 * 1 - 1), 2 * 648
    expected = (200 * (w_dram + x_dram + p_dram) + 6 * (w_buf + x_buf + p_buf)
                + 2 * (w_arr + x_arr + p_arr) + 1 * (w_rf + x_rf + p_rf) + 648)
    layer = energy.estimate_layer(TINY_CONV)
    assert layer.hierarchy_total == pytest.approx(expected)
    assert layer.hierarchy_total == pytest.approx(36544)
    h = layer.hierarchy
    assert h.words("weight", "array") == pytest.approx(216)
    assert h.words("psum", "array") == pytest.approx(72)
    assert h.words("input", "array") == pytest.approx(90)


def test_hierarchy_tiny_dense_bits_and_sharing_by_hand():
    sw, sx = 8 / 16, 4 / 16
    # weights 40, inputs 10, outputs 4; p = 4, q_pe = 10, n_c = 1, copies = 14.
    dram = 40 * sw + 10 * sx + 4 * sx
    buf = 40 * sw + 10 * sx + 4 * sx
    arr = 40 * sw + 10 * sx + 0
    rf = 40 * sw + 40 * sx + 80 * sx
    mac = 40 * sw * sx
    expected = 200 * dram + 6 * buf + 2 * arr + rf + mac
    layer = energy.estimate_layer(TINY_DENSE, bits_w=8, bits_x=4)
    assert layer.hierarchy_total == pytest.approx(expected)
    assert layer.hierarchy_total == pytest.approx(4941)
    # Sharing: DRAM/buffer weights become N log2 K + K d B_w bits = 40 + 16 = 56 bits.
    info = SharingInfo(n_clusters=2, unit_dim=1, n_units=40)
    shared = energy.estimate_layer(TINY_DENSE, bits_w=8, bits_x=4, sharing=info)
    assert shared.hierarchy.words("weight", "dram") == pytest.approx(56 / 16)
    assert shared.hierarchy.words("weight", "buffer") == pytest.approx(56 / 16)
    assert shared.hierarchy.words("weight", "rf") == pytest.approx(40 * sw)
    saved = (200 + 6) * (40 * sw - 56 / 16)
    assert layer.hierarchy_total - shared.hierarchy_total == pytest.approx(saved)


def test_pool_and_eltwise_by_hand():
    bw = bx = 16
    pool = pool_shape("pool", in_hw=4, channels=3, out_hw=2, window=2)
    layer = energy.estimate_layer(pool, bits_w=bw, bits_x=bx)
    fa_mac = 256 + 16 + 16 - 1
    outputs = 2 * 2 * 3
    cc = outputs * 3 * 16
    c_x = outputs * 4 * 16
    assert layer.paper_total == pytest.approx((cc + 6 * fa_mac / 32 * c_x) / fa_mac)
    expected_h = (200 + 6 + 2) * (48 + outputs) + (outputs * 4 + outputs) + cc / fa_mac
    assert layer.hierarchy_total == pytest.approx(expected_h)
    add = eltwise_shape("add", elements=10, eltwise_op="add", n_inputs=2)
    layer = energy.estimate_layer(add)
    assert layer.paper_total == pytest.approx((10 * 16 + 6 * fa_mac / 32 * 20 * 16) / fa_mac)
    assert layer.macs == 0


# ----------------------------------------------------------------------------- invariants


def test_uncompressed_paper_metric_is_about_seven_macs():
    shapes = [conv_shape("a", in_hw=56, in_c=64, out_hw=56, out_c=64, kernel=3),
              conv_shape("b", in_hw=28, in_c=128, out_hw=14, out_c=256, kernel=3, strides=2),
              conv_shape("dw", in_hw=14, in_c=256, out_hw=14, out_c=256, kernel=3, groups=256),
              dense_shape("fc", in_features=4096, units=1000)]
    for bw, bx in ((16, 16), (8, 8), (8, 16)):
        report = energy.estimate(shapes, bits_w=bw, bits_x=bx)
        assert 6.9 * report.macs <= report.paper_total <= 7.0 * report.macs
        terms = report.paper_terms()
        assert terms["weights"] + terms["activations"] == pytest.approx(6 * report.macs)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(hw=st.integers(1, 20), c=st.integers(1, 64), m=st.integers(1, 64),
       k=st.integers(3, 7), rate=st.floats(0.0, 1.0), bits=st.sampled_from([8, 16]),
       index_cost=st.sampled_from(["none", "log2"]))
def test_weight_sharing_alone_is_bounded_by_seven_fourths(hw, c, m, k, rate, bits, index_cost):
    shape = conv_shape("c", in_hw=hw + k - 1, in_c=c, out_hw=hw, out_c=m, kernel=k)
    n_units = k * c * m
    info = SharingInfo(n_clusters=max(1, round(rate * n_units)), unit_dim=k, n_units=n_units)
    base = energy.estimate_layer(shape, bits_w=bits, bits_x=bits)
    comp = energy.estimate_layer(shape, bits_w=bits, bits_x=bits, sharing=info,
                                 index_cost=index_cost)
    ratio = base.paper_total / comp.paper_total
    assert ratio <= 1.76
    # Only the weight term changes.
    assert comp.paper.compute == pytest.approx(base.paper.compute)
    assert comp.paper.activations == pytest.approx(base.paper.activations)


def test_weight_sharing_limit_approaches_seven_fourths():
    shape = conv_shape("c", in_hw=30, in_c=256, out_hw=28, out_c=256, kernel=3)
    info = SharingInfo(n_clusters=1, unit_dim=3, n_units=3 * 256 * 256)
    report = energy.estimate([shape], weight_sharing={"c": info})
    assert report.reduction.paper == pytest.approx(1.75, abs=0.005)


@pytest.mark.parametrize("kept", [1.0, 0.5, 0.1])
def test_pruning_scales_paper_metric_linearly(kept):
    shapes = [TINY_CONV, TINY_DENSE]
    report = energy.estimate(shapes, pruning={"conv": kept, "fc": kept}, bits_w=8, bits_x=8)
    assert report.paper_total == pytest.approx(kept * report.baseline.paper_total)
    for layer in report.layers:
        assert layer.paper_total == pytest.approx(7 * kept * layer.macs, rel=0.02)
        base = report.baseline.layer(layer.name)
        assert layer.hierarchy.compute == pytest.approx(kept * base.hierarchy.compute)


def test_report_ratio_and_baseline():
    info = {"conv": SharingInfo(n_clusters=2, unit_dim=3, n_units=24)}
    base = energy.estimate([TINY_CONV])
    comp = energy.estimate([TINY_CONV], weight_sharing=info)
    assert base.baseline is None and base.reduction is None
    ratio = comp.ratio_vs(base)
    assert ratio == comp.reduction
    assert ratio.paper == pytest.approx(base.paper_total / comp.paper_total)
    assert ratio.paper > 1 and ratio.hierarchy > 1
    with pytest.raises(TypeError, match="baseline"):
        comp.ratio_vs(3)


# ----------------------------------------------------------------------------- report


def test_summary_repr_to_dict_and_plot(tmp_path):
    info = {"conv": SharingInfo(n_clusters=2, unit_dim=3, n_units=24)}
    report = energy.estimate([TINY_CONV, pool_shape("pool", in_hw=3, channels=4, out_hw=1,
                                                    window=3), TINY_DENSE],
                             weight_sharing=info)
    text = report.summary()
    for token in ("conv", "pool", "fc", "TOTAL", "Reduction vs uncompressed"):
        assert token in text
    assert repr(report).startswith("EnergyReport(") and "reduction=" in repr(report)
    d = report.to_dict()
    assert d["macs"] == report.macs and len(d["layers"]) == 3
    path = tmp_path / "energy.png"
    assert report.plot(path) == str(path)
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["energy.png"]  # no temporary file left behind


def test_report_is_frozen():
    report = energy.estimate([TINY_CONV])
    with pytest.raises(AttributeError):
        report.bits_w = 8
    with pytest.raises(AttributeError):
        report.layers[0].paper.compute_fa = 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("arg,value", [("bits_w", 0), ("bits_x", -1), ("bits_w", float("nan")),
                                       ("bits_x", True)])
def test_bad_bit_widths(arg, value):
    expected = (f"Invalid value for argument `{arg}`. Expected a positive number. "
                f"Received: {arg}={value!r}")
    with pytest.raises(ValueError) as err:
        energy.estimate([TINY_CONV], **{arg: value})
    assert str(err.value) == expected


def test_bad_modes_and_compression_info():
    with pytest.raises(ValueError, match=r"`index_cost`.*'none', 'log2', 'entropy'.*'huffman'"):
        energy.estimate([TINY_CONV], index_cost="huffman")
    with pytest.raises(ValueError, match="`compute_model`"):
        energy.estimate([TINY_CONV], compute_model="fast")
    with pytest.raises(ValueError, match="not a conv or dense layer.*Known layers"):
        energy.estimate([TINY_CONV], weight_sharing={"nope": SharingInfo(2, 3, 24)})
    with pytest.raises(ValueError, match="describes 30 weights"):
        energy.estimate([TINY_CONV], weight_sharing={"conv": SharingInfo(2, 3, 10)})
    with pytest.raises(ValueError, match="index_cost='entropy' needs"):
        energy.estimate([TINY_CONV], weight_sharing={"conv": SharingInfo(2, 3, 24)},
                        index_cost="entropy")
    with pytest.raises(ValueError, match="`n_clusters`. Expected an integer >= 1"):
        SharingInfo(n_clusters=0, unit_dim=1, n_units=1)
    with pytest.raises(ValueError, match="kept fraction"):
        energy.estimate([TINY_CONV], pruning={"conv": 1.5})
    with pytest.raises(ValueError, match="`groups`"):
        conv_shape("g", in_hw=4, in_c=3, out_hw=2, out_c=4, kernel=3, groups=2)
    with pytest.raises(ValueError, match=r"\('.keras', '.h5', '.hdf5', '.tflite'\)"):
        energy.estimate(__file__)


def test_duck_typed_palettes_with_entropy():
    class FakePalette:
        layer_name = "conv"
        n_clusters = 4
        unit_dim = 3
        n_units = 24

        def __init__(self, bits):
            self._bits = bits

        def entropy_bits(self):
            return self._bits

    per_index = energy.estimate([TINY_CONV], palettes=[FakePalette(1.5)], index_cost="entropy")
    total = energy.estimate([TINY_CONV], palettes=[FakePalette(1.5 * 24)], index_cost="entropy")
    assert per_index.layers[0].index_bits == pytest.approx(1.5)
    assert total.layers[0].index_bits == pytest.approx(1.5)
    assert per_index.paper_total == pytest.approx(total.paper_total)
    with pytest.raises(ValueError, match="missing"):
        energy.estimate([TINY_CONV], palettes=[object()])


def test_importing_energy_does_not_import_tensorflow():
    code = ("import sys, dkm_tf.energy; "
            "print(any(m in sys.modules for m in ('tensorflow', 'keras', 'matplotlib')))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, cwd=root)
    assert out.stdout.strip() == "False"
