"""Kernel <-> units round trips and the layout conventions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dkm_tf.core import units

dims = st.integers(1, 4)


@st.composite
def kernels(draw):
    kind = draw(st.sampled_from(units.KINDS))
    if kind in ("dense", "embedding"):
        shape = (draw(dims), draw(dims))
    elif kind == "vector":  # 1-D weights (biases) of custom layers
        shape = (draw(dims),)
    else:
        n_spatial = draw(st.integers(1, 3))  # Conv1D/2D/3D and their transposes/depthwise
        shape = tuple(draw(dims) for _ in range(n_spatial)) + (draw(dims), draw(dims))
    seed = draw(st.integers(0, 2**16))
    return kind, np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@settings(max_examples=150, deadline=None)
@given(kernels(), st.sampled_from(units.UNITS), st.sampled_from(units.GRANULARITIES))
def test_round_trip_is_exact(kernel_and_kind, unit, granularity):
    kind, kernel = kernel_and_kind
    layout = units.layout_for(kernel.shape, kind, unit, granularity)
    u = units.to_units(kernel, layout)
    assert u.shape == (layout.n_groups, layout.n_units, layout.unit_dim)
    assert u.size == kernel.size
    np.testing.assert_array_equal(units.from_units(u, layout), kernel)
    again = units.UnitLayout.from_config(layout.to_config())
    assert again == layout


def test_row_units_follow_the_paper_and_pytorch_order():
    k = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)  # (kh, kw, in, out)
    layout = units.layout_for(k.shape, "conv", "row")
    u = units.to_units(k, layout)[0]
    ref = np.transpose(k, [3, 2, 0, 1]).reshape(-1, 3)  # methods.md §1.2
    np.testing.assert_array_equal(u, ref)
    assert layout.n_units == 3 * 2 * 4  # N = s c m


def test_kernel_units_are_whole_spatial_kernels():
    k = np.random.default_rng(0).normal(size=(3, 5, 2, 4))
    u = units.to_units(k, units.layout_for(k.shape, "conv", "kernel"))[0]
    assert u.shape == (8, 15)
    np.testing.assert_array_equal(u[1 * 2 + 0], k[:, :, 0, 1].ravel())  # (out=1, in=0)


@pytest.mark.parametrize("kind,shape,channel_of", [
    ("conv", (3, 3, 2, 5), lambda k, c: k[..., c]),
    ("dense", (6, 5), lambda k, c: k[:, c]),
    ("conv_t", (3, 3, 5, 2), lambda k, c: k[:, :, c, :]),
    ("depthwise", (3, 3, 5, 1), lambda k, c: k[:, :, c, 0]),
    ("embedding", (7, 5), lambda k, c: k[:, c]),
])
def test_per_channel_groups_are_output_channels(kind, shape, channel_of):
    k = np.random.default_rng(1).normal(size=shape)
    u = units.to_units(k, units.layout_for(shape, kind, "scalar", "per_channel"))
    assert u.shape[0] == 5
    for c in range(5):
        np.testing.assert_array_equal(np.sort(u[c].ravel()), np.sort(channel_of(k, c).ravel()))


def test_depthwise_channel_is_in_times_multiplier():
    k = np.random.default_rng(2).normal(size=(3, 3, 4, 2))
    u = units.to_units(k, units.layout_for(k.shape, "depthwise", "kernel", "per_channel"))
    assert u.shape == (8, 1, 9)
    np.testing.assert_array_equal(u[2 * 2 + 1, 0], k[:, :, 2, 1].ravel())


def test_unit_without_spatial_axes_is_scalar():
    assert units.layout_for((5, 7), "dense", "row").unit_dim == 1
    assert units.layout_for((1, 1, 4, 8), "conv", "row").unit_dim == 1
    assert units.layout_for((1, 1, 4, 8), "conv", "kernel").unit_dim == 1


@pytest.mark.parametrize("arg,value", [("kind", "lstm"), ("unit", "filter"),
                                       ("granularity", "per_row")])
def test_bad_names_list_allowed_values(arg, value):
    kw = {"kernel_shape": (3, 3, 2, 2), "kind": "conv", "unit": "scalar",
          "granularity": "per_tensor", arg: value}
    with pytest.raises(ValueError, match=rf"`{arg}`. Expected one of .* Received: {arg}='{value}'"):
        units.layout_for(**kw)


def test_shape_mismatch_errors():
    layout = units.layout_for((3, 3, 2, 2), "conv")
    with pytest.raises(ValueError, match="does not match"):
        units.to_units(np.zeros((3, 3, 2, 3)), layout)
    with pytest.raises(ValueError, match="does not match"):
        units.from_units(np.zeros((1, 5, 1)), layout)
    with pytest.raises(ValueError, match="must be 2-D"):
        units.layout_for((3, 3, 2), "dense")


def test_resolve_unit_auto():
    assert units.resolve_unit("auto", "conv", (3, 3, 4, 8)) == "row"
    assert units.resolve_unit("auto", "conv", (1, 1, 4, 8)) == "scalar"
    assert units.resolve_unit("auto", "dense", (4, 8)) == "scalar"
    assert units.resolve_unit("auto", "depthwise", (5, 5, 4, 1)) == "row"
    assert units.resolve_unit("kernel", "conv", (3, 3, 4, 8)) == "kernel"
    with pytest.raises(ValueError, match="Received: unit='rows'"):
        units.resolve_unit("rows", "conv", (3, 3, 4, 8))
