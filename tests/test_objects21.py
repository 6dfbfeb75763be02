"""dkm_tf's public objects as Python objects: aliasing, copies, pickle, configs.

* A ``Palette`` kept the caller's ``indices`` array (uint8 already: ``astype(copy=False)``) and
  float32 ``scales``: an edit of the caller's array later changed the palette silently (an
  index of 200 in a K=4 palette: IndexError at ``decode``). Its arrays were writable: ``p.indices[:]
  = 0`` on ``share_weights``' palettes changed ``size_report``'s entropy CR (13.98 -> 14.15)
  with no check. Now it holds its own read-only copies; copy / deepcopy / pickle go through
  its constructor (checked, read-only again).
* ``from_units`` returned a transposed view of its ``units`` argument (``to_units`` returns a new
  array): an edit of either changed the other. It returns a new C-contiguous array now.
* ``ClusterWeights.get_config()`` returned the wrapper's own ``kmeans_options`` dict: editing
  the config to build a variant changed the wrapper's k-means settings.
"""

import copy
import os
import pickle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import small_cnn, two_conv_model  # noqa: E402

import dkm_tf  # noqa: E402

ROUND_TRIPS = {"copy": copy.copy, "deepcopy": copy.deepcopy,
               "pickle": lambda o: pickle.loads(pickle.dumps(o))}  # noqa: S301 (our own bytes)


def _scaled_palette():
    """A kernel palette with scales and transforms (Son et al.), from the caller's arrays."""
    lay = dkm_tf.layout_for((3, 3, 2, 2), "conv", "kernel")
    rng = np.random.default_rng(0)
    arrays = {"codebook": rng.normal(size=(1, 4, 9)).astype(np.float32),
              "indices": np.array([[0, 1, 2, 3]], np.uint8),
              "scales": np.array([[1.0, 0.5, 2.0, 1.5]], np.float32),
              "transforms": np.array([[0, 1, 1, 0]], np.uint8)}
    pal = dkm_tf.Palette("conv", "kernel", layout=lay, n_transforms=2, scale_bits=16, **arrays)
    return pal, arrays


def test_palette_keeps_its_own_read_only_arrays():
    pal, arrays = _scaled_palette()
    decoded = pal.decode().copy()
    for name, a in arrays.items():
        assert not np.shares_memory(getattr(pal, name), a), name
        a[...] = 3  # the caller reuses its buffers: the palette must not follow
    np.testing.assert_array_equal(pal.decode(), decoded)
    for name in arrays:
        arr = getattr(pal, name)
        assert not arr.flags.writeable, name
        with pytest.raises(ValueError, match="read-only"):
            arr[...] = 0


def test_share_weights_palettes_cannot_be_edited_in_place():
    res = dkm_tf.share_weights(small_cnn(), 4, seed=0)
    before = dkm_tf.size_report(res.palettes).totals
    pal = res.palettes[0]
    with pytest.raises(ValueError, match="read-only"):
        pal.indices[:] = 0
    with pytest.raises(ValueError, match="read-only"):
        pal.codebook[0, 0, 0] = 99.0
    assert dkm_tf.size_report(res.palettes).totals == before
    np.testing.assert_array_equal(pal.decode(), keras.ops.convert_to_numpy(
        res.model.get_layer(pal.layer_name).kernel))
    # the supported way to get an edited palette: a new one, checked by the constructor
    import dataclasses  # noqa: PLC0415

    with pytest.raises(ValueError, match="indices must lie in"):
        dataclasses.replace(pal, indices=np.full_like(pal.indices, 200))


@pytest.mark.parametrize("how", sorted(ROUND_TRIPS))
def test_palette_round_trips_stay_checked_and_independent(how):
    pal, _ = _scaled_palette()
    twin = ROUND_TRIPS[how](pal)
    assert type(twin) is dkm_tf.Palette and twin is not pal
    assert twin.to_dict() == pal.to_dict()
    np.testing.assert_array_equal(twin.decode(), pal.decode())
    for name in ("codebook", "indices", "scales", "transforms"):
        assert not getattr(twin, name).flags.writeable, name
        assert not np.shares_memory(getattr(twin, name), getattr(pal, name)) or how == "copy"


def test_from_units_returns_a_new_array():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    for unit, gran in (("scalar", "per_tensor"), ("kernel", "per_channel")):
        lay = dkm_tf.layout_for(kernel.shape, "conv", unit, gran)
        units = dkm_tf.to_units(kernel, lay)
        back = dkm_tf.from_units(units, lay)
        np.testing.assert_array_equal(back, kernel)  # exact inverse
        assert back.flags.c_contiguous and not np.shares_memory(back, units)
        units[...] = 0
        np.testing.assert_array_equal(back, kernel)


def test_cluster_weights_config_is_a_copy():
    model = dkm_tf.cluster_weights(two_conv_model(), 4, seed=0, kmeans_options={"max_iter": 7})
    wrapper = next(lay for lay in model.layers if isinstance(lay, dkm_tf.ClusterWeights))
    config = wrapper.get_config()
    config["kmeans_options"]["max_iter"] = 1  # a variant built from the config
    variant = dkm_tf.ClusterWeights.from_config(config)
    assert wrapper.kmeans_options == {"max_iter": 7}
    assert wrapper.get_config()["kmeans_options"] == {"max_iter": 7}
    assert variant.kmeans_options == {"max_iter": 1}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_clustered_model_round_trip_is_independent(how):
    """A deepcopy / pickle of a clustered model computes the same outputs and palettes, and
    an edit of the copy's weights leaves the original alone."""
    model = dkm_tf.cluster_weights(two_conv_model(), 4, seed=0)
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype(np.float32)
    y = keras.ops.convert_to_numpy(model(x))
    twin = ROUND_TRIPS[how](model)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin(x)), y)
    for a, b in zip(dkm_tf.palettes_of(model), dkm_tf.palettes_of(twin), strict=True):
        assert a.to_dict() == b.to_dict()
    for v in twin.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), y)


def test_size_report_to_dict_is_a_copy():
    res = dkm_tf.share_weights(two_conv_model(), 4, seed=0)
    report = dkm_tf.size_report(res.palettes, other_params=5)
    text, totals = report.summary(), dict(report.totals)
    d = report.to_dict()
    d["rows"][0]["K"] = 99  # e.g. a caller annotating the dict before writing it as JSON
    d["totals"]["cr_clustered_log2"] = -1.0
    assert report.summary() == text and report.totals == totals
    assert report.rows[0]["K"] == 4


@pytest.mark.parametrize("cin_cout", [(2, 2), (1, 3)])  # (1, 3): scales' transpose is C-order
def test_kernel_factors_are_new_arrays(cin_cout):
    lay = dkm_tf.layout_for((3, 3, *cin_cout), "conv", "kernel")
    n = cin_cout[0] * cin_cout[1]
    rng = np.random.default_rng(3)
    pal = dkm_tf.Palette("conv", "kernel", rng.normal(size=(1, 2, 9)).astype(np.float32),
                         np.arange(n, dtype=np.uint8)[None] % 2, lay,
                         scales=rng.uniform(0.5, 2, (1, n)).astype(np.float32), scale_bits=16)
    decoded = pal.decode().copy()
    factors = dkm_tf.kernel_factors(pal)
    for f in factors:
        if f is not None:
            assert f.flags.writeable and f.flags.c_contiguous
            for name in ("codebook", "indices", "scales"):
                assert not np.shares_memory(f, getattr(pal, name)), name
            f[...] = 0
    np.testing.assert_array_equal(pal.decode(), decoded)


def test_wrapper_from_config_leaves_the_config_as_it_is():
    """Keras' Wrapper.from_config popped "layer" from the caller's dict: a second
    ``from_config`` of one config raised KeyError: 'layer'."""
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(2, 3, name="c")
    conv.build((None, 5, 5, 2))
    wrappers = [dkm_tf.ClusterWeights(conv, 4, unit="kernel", granularity="per_channel",
                                      init="linear", seed=3, latent=True),
                dkm_tf.ClusterKernels(conv, 4, transforms=2, scale_bits=8, codebook_id="k")]
    for wrapper in wrappers:
        config = wrapper.get_config()
        kept = copy.deepcopy(config)
        first = type(wrapper).from_config(config)
        assert config == kept
        second = type(wrapper).from_config(config)
        assert first.get_config() == second.get_config() == kept
        twin = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapper))
        assert twin.get_config() == kept
