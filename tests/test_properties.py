"""Property-based tests (hypothesis) of the k-means engines, the index packers, the unit
layouts, the energy model and the palettized TFLite export.

Each property runs 200 examples (``PROP``), derandomized (the same examples on every run, no
example database written), with small sizes so that the file stays well under 90 s on two
cores. The export round trip is the exception: each example is a TFLite conversion plus two
interpreter runs (about 1 s), so it runs ``EXPORT_EXAMPLES`` = 6 models, each in both decode
modes.

The references are independent numpy code: brute-force nearest centroids and member means,
a bit-by-bit field reader, a Python loop that undoes a unit layout, and the interpreter's own
outputs against Keras'.
"""

import math

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from testing import run_tflite_per_sample

from dkm_tf import energy
from dkm_tf.core import codebook as codebook_lib
from dkm_tf.core import kmeans
from dkm_tf.core import units as units_lib
from dkm_tf.core._kmeans1d import Weighted1D, _init_1d, _lloyd_1d
from dkm_tf.core.palette import Palette
from dkm_tf.export import pack

EXAMPLES = 200
EXPORT_EXAMPLES = 6
PROP = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

finite32 = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


def values(min_size=1, max_size=200):
    """1-D float32 arrays: hypothesis' own values (zeros, repeats, tiny and extreme floats)."""
    return hnp.arrays(np.float32, st.integers(min_size, max_size), elements=finite32)


def _scalar_sse(x, c, idx):
    return float(np.sum((x.astype(np.float64) - c.astype(np.float64)[idx]) ** 2))


def _gaps(x, c, idx):
    """|x - c[idx]| - min_k |x - c_k| for every value (0 where the index is the nearest)."""
    d = np.abs(x.astype(np.float64)[:, None] - c.astype(np.float64)[None, :])
    return d[np.arange(x.size), idx] - d.min(axis=1)


# --------------------------------------------------------------------------- k-means
@PROP
@given(x=values(2), k=st.integers(1, 8), init=st.sampled_from(kmeans.INITS),
       seed=st.integers(0, 2**16))
def test_scalar_lloyd_steps_never_raise_the_sse(x, k, init, seed):
    """One Lloyd step at a time (the engine's own step, ``_lloyd_1d(max_iter=1)``)."""
    vals, counts = np.unique(x.astype(np.float64), return_counts=True)
    data = Weighted1D(vals, counts.astype(np.float64))
    c = _init_1d(data, min(k, vals.size), init, np.random.default_rng(seed))
    sse = [data.total_sse(c)]
    for _ in range(8):
        c = _lloyd_1d(data, c, 1, 0.0)
        sse.append(data.total_sse(c))
    # prefix-sum SSEs carry rounding of order eps * sum(x^2)
    tol = 1e-9 * sse[0] + 1e-12 * float(np.sum(vals ** 2 * counts))
    assert all(b <= a + tol for a, b in zip(sse, sse[1:])), sse


@PROP
@given(x=values(2), k=st.integers(1, 8), init=st.sampled_from(kmeans.INITS),
       seed=st.integers(0, 2**16))
def test_scalar_engine_sse_falls_with_max_iter(x, k, init, seed):
    """The public engine with plain Lloyd (``refine=False``): max_iter = 1..5 from one init."""
    sse = [_scalar_sse(x, *kmeans.scalar_kmeans(x, k, init=init, seed=seed, refine=False,
                                                max_iter=n)) for n in range(1, 6)]
    tol = 1e-9 * (sse[0] + 1e-30) + 1e-12 * float(np.sum(x.astype(np.float64) ** 2))
    assert all(b <= a + tol for a, b in zip(sse, sse[1:])), sse


@PROP
@given(x=values(1), k=st.integers(1, 10), init=st.sampled_from(kmeans.INITS),
       seed=st.integers(0, 2**16))
def test_scalar_result_is_nearest_and_means(x, k, init, seed):
    """Exact engine (<= 65,536 values, default refine): indices are nearest, centroids means."""
    c, idx = kmeans.cluster_values(x, k, init=init, seed=seed)
    assert c.ndim == 1 and idx.shape == x.shape and 1 <= c.size <= k
    assert c.size == min(k, np.unique(x).size)
    assert np.all(np.diff(c.astype(np.float64)) > 0)  # sorted, distinct
    span = float(np.ptp(x.astype(np.float64)))
    assert _gaps(x, c, idx).max() <= 1e-6 * max(span, 1e-30)
    for j in range(c.size):
        members = x[idx == j].astype(np.float64)
        assert members.size  # no empty cluster
        np.testing.assert_allclose(c[j], members.mean(), rtol=2e-6, atol=1e-6 * span)


@PROP
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(65_537, 80_000), k=st.integers(2, 16),
       shape=st.sampled_from(["normal", "laplace", "bimodal", "grid", "outliers"]))
def test_histogram_engine_is_nearest_up_to_the_last_mean_update(seed, n, k, shape):
    """> 65,536 values: indices nearest up to the final mean update, centroids exact means."""
    rng = np.random.default_rng(seed)
    x = {"normal": lambda: rng.normal(0, 0.05, n),
         "laplace": lambda: rng.laplace(0, 0.02, n),
         "bimodal": lambda: np.concatenate([rng.normal(-1, 0.1, n // 2),
                                            rng.normal(2, 0.3, n - n // 2)]),
         "grid": lambda: rng.integers(-40, 40, n) * 0.25,
         "outliers": lambda: np.concatenate([rng.normal(0, 1, n - 50),
                                             rng.normal(0, 100, 50)])}[shape]()
    x = x.astype(np.float32)
    c, idx = kmeans.cluster_values(x, k, seed=seed % 1000)
    assert idx.dtype == np.int32 and 1 <= c.size <= k
    span = float(np.ptp(x.astype(np.float64)))
    assert _gaps(x, c, idx).max() <= 1e-4 * span
    counts = np.bincount(idx, minlength=c.size)
    sums = np.bincount(idx, weights=x.astype(np.float64), minlength=c.size)
    assert np.all(counts > 0)
    np.testing.assert_allclose(c, sums / counts, rtol=1e-5, atol=1e-6 * span)


units_2d = st.tuples(st.integers(2, 120), st.integers(2, 4)).flatmap(
    lambda s: hnp.arrays(np.float32, s, elements=st.floats(-100, 100, width=32)))


@PROP
@given(x=units_2d, k=st.integers(1, 8), init=st.sampled_from(kmeans.INITS),
       seed=st.integers(0, 2**16))
def test_vector_engine_sse_falls_with_max_iter_and_ends_nearest(x, k, init, seed):
    results = [kmeans.vector_kmeans(x, k, init=init, seed=seed, max_iter=n, tol=0.0)
               for n in range(1, 6)]
    xd = x.astype(np.float64)
    sse = [float(np.sum((xd - c.astype(np.float64)[i]) ** 2)) for c, i in results]
    tol = 1e-5 * (sse[0] + 1e-30) + 1e-9 * float(np.sum(xd ** 2))
    assert all(b <= a + tol for a, b in zip(sse, sse[1:])), sse
    c, idx = results[-1]
    d = np.sum((xd[:, None, :] - c.astype(np.float64)[None]) ** 2, axis=2)
    # float32 distances inside the engine: ties broken within float32 rounding
    slack = 1e-5 * (np.sum(xd ** 2, axis=1) + np.sum(c.astype(np.float64) ** 2, axis=1).max())
    assert np.all(d[np.arange(len(x)), idx] <= d.min(axis=1) + slack + 1e-12)
    assert np.all(np.bincount(idx, minlength=len(c)) > 0)  # unused centroids are dropped


# --------------------------------------------------------------------------- packing
def _read_fields(packed, bits, n):
    """Independent reader: ``bits``-bit two's-complement fields, low bits first, + 2**(b-1)."""
    out = []
    for byte in bytes(np.asarray(packed, np.uint8)):
        for j in range(8 // bits):
            field = (byte >> (bits * j)) & ((1 << bits) - 1)
            signed = field - (1 << bits) if field >= 1 << (bits - 1) else field
            out.append(signed + (1 << (bits - 1)))
    return np.array(out[:n], np.int64)


@PROP
@given(data=st.data(), bits=st.sampled_from([2, 4]), n=st.integers(0, 70))
def test_bit_fields_round_trip(data, bits, n):
    idx = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n,
                                      max_size=n)), np.int64)
    packed = pack.pack_bits(idx, bits)
    assert packed.dtype == np.uint8 and packed.size == math.ceil(n * bits / 8)
    np.testing.assert_array_equal(pack.unpack_bits(packed, bits, n), idx)
    np.testing.assert_array_equal(_read_fields(packed, bits, n), idx)


@PROP
@given(data=st.data(), k=st.one_of(st.integers(1, 40), st.integers(41, 1 << 15)),
       lead=st.lists(st.integers(1, 3), max_size=2), n=st.integers(1, 40))
def test_int16_tuples_round_trip(data, k, lead, n):
    g = data.draw(st.integers(1, pack.tuple_width(k)))
    shape = (*lead, n)
    flat = data.draw(st.lists(st.integers(0, k - 1), min_size=math.prod(shape),
                              max_size=math.prod(shape)))
    idx = np.array(flat, np.int64).reshape(shape)
    packed = pack.pack_tuples(idx, k, g)
    assert packed.dtype == np.int16 and packed.shape == (*lead, math.ceil(n / g))
    assert packed.min(initial=0) >= 0  # GATHER positions are non-negative
    np.testing.assert_array_equal(pack.unpack_tuples(packed, k, g, n), idx)
    # the base-k digits, least significant first (enum_table is the decode table of "once")
    table = pack.enum_table(k, g) if k ** g <= 4096 else None
    if table is not None:
        padded = np.concatenate([idx, np.zeros((*lead, (-n) % g), np.int64)], axis=-1)
        np.testing.assert_array_equal(table[packed.astype(np.int64)].reshape(padded.shape),
                                      padded)


@PROP
@given(data=st.data(), k=st.integers(1, 1 << 15), n=st.integers(1, 40))
def test_every_bit_width_round_trips_through_its_storage(data, k, n):
    """For every K, the per-invoke storage of ceil(log2 K)-bit indices gives them back."""
    idx = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), np.int64)
    bits = pack.bit_width(k)
    assert 2 ** bits >= k and (bits == 1 or 2 ** (bits - 1) < k)
    storage, stored_bits = pack.storage_for_bits(bits)
    assert stored_bits >= bits
    if storage in ("int2", "int4"):
        back = pack.unpack_bits(pack.pack_bits(idx, stored_bits), stored_bits, n)
    else:
        stored = idx.astype(storage)
        assert stored.dtype.itemsize * 8 == stored_bits
        back = stored.astype(np.int64)
    np.testing.assert_array_equal(back, idx)


# --------------------------------------------------------------------------- unit layouts
@st.composite
def kernels(draw):
    """(kind, kernel) of every layout kind, ranks and sizes the kind allows."""
    kind = draw(st.sampled_from([*units_lib.KINDS, "einsum"]))
    dim = st.integers(1, 4)
    if kind in ("dense", "embedding"):
        shape = draw(st.tuples(dim, dim))
    elif kind == "vector":
        shape = (draw(st.integers(1, 12)),)
    elif kind == "einsum":
        shape = tuple(draw(st.lists(dim, min_size=1, max_size=4)))
        axes = draw(st.sets(st.integers(0, len(shape) - 1), max_size=len(shape)))
        kind = units_lib.einsum_kind(axes) if axes else "einsum:"
    else:
        shape = tuple(draw(st.lists(dim, min_size=3, max_size=5)))
    order = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(math.prod(shape))
    return kind, order.astype(np.float32).reshape(shape)  # distinct values: any mix-up shows


def _slow_from_units(units, layout):
    """Python-loop reference: the kernel position of every unit value, via ``perm``."""
    t_shape = [layout.kernel_shape[a] for a in layout.perm]
    out = np.empty(layout.kernel_shape, units.dtype)
    for flat, value in enumerate(units.reshape(-1)):
        t_pos = np.unravel_index(flat, t_shape)
        pos = [0] * len(t_shape)
        for axis, i in zip(layout.perm, t_pos):
            pos[axis] = i
        out[tuple(pos)] = value
    return out


@PROP
@given(kk=kernels(), unit=st.sampled_from(units_lib.UNITS),
       granularity=st.sampled_from(units_lib.GRANULARITIES))
def test_units_round_trip_for_every_kind_unit_and_granularity(kk, unit, granularity):
    kind, kernel = kk
    layout = units_lib.layout_for(kernel.shape, kind, unit, granularity)
    u = units_lib.to_units(kernel, layout)
    assert u.shape == (layout.n_groups, layout.n_units, layout.unit_dim)
    assert u.size == kernel.size == layout.size
    np.testing.assert_array_equal(units_lib.from_units(u, layout), kernel)
    np.testing.assert_array_equal(_slow_from_units(u, layout), kernel)
    assert units_lib.UnitLayout.from_config(layout.to_config()) == layout
    if granularity == "per_tensor" or kind in ("vector", "einsum:"):
        assert layout.n_groups == 1
    # a unit is a run of the kernel's last spatial axis (row) or all spatial axes (kernel)
    if layout.unit_dim > 1:
        assert unit != "scalar" and kind in ("conv", "conv_t", "depthwise")


@PROP
@given(kk=kernels(), unit=st.sampled_from(units_lib.UNITS),
       granularity=st.sampled_from(units_lib.GRANULARITIES), k=st.integers(1, 300),
       seed=st.integers(0, 2**16))
def test_palette_decode_is_codebook_at_indices_in_kernel_layout(kk, unit, granularity, k, seed):
    """``codebook_lib.decode`` (slab by slab, no transposed copy) against take + from_units."""
    kind, kernel = kk
    layout = units_lib.layout_for(kernel.shape, kind, unit, granularity)
    rng = np.random.default_rng(seed)
    g, m, d = layout.n_groups, layout.n_units, layout.unit_dim
    book = rng.standard_normal((g, k, d)).astype(np.float32)
    idx = rng.integers(0, k, (g, m))
    ref = units_lib.from_units(np.stack([book[j][idx[j]] for j in range(g)]), layout)
    out = codebook_lib.decode(book, idx, layout)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == kernel.shape
    np.testing.assert_array_equal(out, ref)
    pal = Palette("layer", "kernel", book, idx, layout)
    assert pal.indices.dtype == (np.uint8 if k <= 256 else np.uint16)
    np.testing.assert_array_equal(pal.decode(), ref)
    np.testing.assert_array_equal(Palette.from_dict(pal.to_dict()).decode(), ref)


# --------------------------------------------------------------------------- energy
def _conv(in_hw, in_c, out_c, kernel, padding):
    out_hw = in_hw if padding == "same" else in_hw - kernel + 1
    return energy.conv_shape("c", in_hw=in_hw, in_c=in_c, out_hw=out_hw, out_c=out_c,
                             kernel=kernel)


def _totals(shape):
    e = energy.estimate_layer(shape)
    return e.macs, e.paper_total, e.hierarchy_total


@PROP
@given(in_hw=st.integers(1, 24), in_c=st.integers(1, 48), out_c=st.integers(1, 48),
       kernel=st.integers(1, 7), padding=st.sampled_from(["same", "valid"]),
       grow=st.sampled_from(["in_c", "out_c", "kernel", "in_hw"]), step=st.integers(1, 5))
def test_conv_energy_and_macs_grow_with_the_layer(in_hw, in_c, out_c, kernel, padding, grow,
                                                  step):
    """More channels, a bigger kernel (same output size) or a bigger input: never less."""
    assume(padding == "same" or kernel <= in_hw)
    args = {"in_hw": in_hw, "in_c": in_c, "out_c": out_c, "kernel": kernel}
    bigger = dict(args, **{grow: args[grow] + step})
    pad = "same" if grow == "kernel" else padding  # valid padding shrinks the output instead
    small, large = _totals(_conv(**args, padding=pad)), _totals(_conv(**bigger, padding=pad))
    for name, a, b in zip(("macs", "paper", "hierarchy"), small, large):
        assert b >= a, (name, args, grow, step, a, b)
    assert large[0] > small[0]


@PROP
@given(in_features=st.integers(1, 300), units=st.integers(1, 300), positions=st.integers(1, 20),
       grow=st.sampled_from(["in_features", "units", "positions"]), step=st.integers(1, 50))
def test_dense_energy_and_macs_grow_with_the_layer(in_features, units, positions, grow, step):
    args = {"in_features": in_features, "units": units, "positions": positions}
    bigger = dict(args, **{grow: args[grow] + step})
    small = _totals(energy.dense_shape("d", **args))
    large = _totals(energy.dense_shape("d", **bigger))
    for name, a, b in zip(("macs", "paper", "hierarchy"), small, large):
        assert b >= a, (name, args, grow, step, a, b)


# --------------------------------------------------------------------------- export
@st.composite
def small_models(draw):
    return {"hw": draw(st.integers(4, 8)), "in_c": draw(st.integers(1, 3)),
            "filters": draw(st.integers(1, 6)), "kernel": draw(st.integers(1, 3)),
            "units": draw(st.integers(1, 8)), "k": draw(st.integers(2, 16)),
            "unit": draw(st.sampled_from(["scalar", "auto"])),
            "granularity": draw(st.sampled_from(units_lib.GRANULARITIES)),
            "seed": draw(st.integers(0, 1000))}


@settings(PROP, max_examples=EXPORT_EXAMPLES)
@given(spec=small_models())
def test_palettized_export_matches_keras_on_random_models(spec, tmp_path_factory):
    """A random conv + dense model, shared with K centroids, exported in both decode modes:
    the interpreter's outputs equal Keras' (6 models, 12 conversions)."""
    import keras  # noqa: PLC0415

    import dkm_tf.export as ex  # noqa: PLC0415
    from dkm_tf.graph.share import share_weights  # noqa: PLC0415

    keras.utils.set_random_seed(spec["seed"])
    L = keras.layers
    inp = keras.Input((spec["hw"], spec["hw"], spec["in_c"]))
    y = L.Conv2D(spec["filters"], spec["kernel"], padding="same", activation="relu",
                 name="conv")(inp)
    y = L.Flatten()(y)
    model = keras.Model(inp, L.Dense(spec["units"], name="dense")(y))
    shared, palettes, _ = share_weights(model, spec["k"], unit=spec["unit"],
                                        granularity=spec["granularity"])
    x = np.random.default_rng(spec["seed"]).normal(
        size=(3, spec["hw"], spec["hw"], spec["in_c"])).astype(np.float32)
    ref = np.asarray(shared(x))
    out = tmp_path_factory.mktemp("export")
    for decode in ("once", "per_invoke"):
        path = out / f"m_{decode}.tflite"
        report = ex.to_tflite(shared, path, "palettized", palettes, x, decode=decode,
                              **({"keep_float": None} if decode == "once" else {}))
        assert all(c.ok for c in report.comparisons)
        assert {t["palette"] for t in report.tensors} == {p.name for p in palettes}
        np.testing.assert_allclose(run_tflite_per_sample(path, x), ref,
                                   atol=1e-4 * max(np.abs(ref).max(), 1e-6), rtol=0)


def test_profile_is_derandomized_with_200_examples():
    assert PROP.max_examples >= 200 and PROP.derandomize and PROP.database is None
