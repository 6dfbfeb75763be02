"""Layers of one name in different nested models (probe of session 18).

Keras 3 names are unique only within one model: two nested blocks may each hold a layer
``fc``. Energy matched palettes to them by name, size and order (a float ``fc`` was charged
with the other ``fc``'s palette; a ``.keras`` file's inferred palettes kept the last ``fc``'s
only), and ``strip_clustering`` folded one block's BatchNormalization scales into both
blocks' palettes (a broadcast error or "does not match the folded kernel" after training).
"""

import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy

keras = pytest.importorskip("keras")


def _block(name, n_in, units):
    inp = keras.Input((n_in,))
    return keras.Model(inp, keras.layers.Dense(units, name="fc")(inp), name=name)


def _two_blocks(units_a=6, units_b=6):
    """Two nested Functional blocks, each with a Dense named ``fc`` (6 -> a -> b)."""
    inp = keras.Input((6,))
    out = _block("b", units_a, units_b)(_block("a", 6, units_a)(inp))
    return keras.Model(inp, out)


def _fcs(model):
    from dkm_tf.graph.clusterable import walk_layers

    return [lay for lay in walk_layers(model) if lay.name == "fc"]


def _set_levels(layer, levels, seed):
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.choice(levels, size=layer.kernel.shape).astype("float32"))


def _charged(report):
    return {row.shape.name: row.n_clusters for row in report.layers}


def test_float_same_named_layer_not_charged_with_the_others_palette():
    model = _two_blocks()
    fa, _ = _fcs(model)
    _set_levels(fa, [-0.5, 0.5], 0)  # a/fc holds K=2, b/fc stays float (same 6x6 size)
    pals = dkm_tf.palettes_of(model)
    assert [(p.name, p.n_clusters) for p in pals] == [("fc/kernel", 2)]
    # the old code charged b/fc (record fc#2) with a/fc's palette: 68 stored bits, not 576;
    # the palette decodes to a/fc's kernel only, so it is charged there and b/fc stays float
    assert _charged(energy.estimate(model, palettes=pals)) == {"fc": 2, "fc#2": None}
    _set_levels(_fcs(model)[1], [-0.5, 0.5], 0)  # now b/fc holds it too: it matches both
    with pytest.raises(ValueError, match=r"1 palette\(s\) of fc/kernel.*'a/fc', 'b/fc'"):
        energy.estimate(model, palettes=pals)


def test_differing_palettes_of_same_named_layers_paired_by_value():
    model = _two_blocks()
    fa, fb = _fcs(model)
    _set_levels(fa, [-0.5, 0.5], 0)
    _set_levels(fb, [-0.5, 0.0, 0.5], 1)
    pals = dkm_tf.palettes_of(model)
    assert [p.n_clusters for p in pals] == [2, 3]
    for order in (pals, pals[::-1]):  # old: K followed list order, reversed = swapped
        assert _charged(energy.estimate(model, palettes=order)) == {"fc": 2, "fc#2": 3}


def test_identical_or_size_told_palettes_are_charged_on_their_own_layers():
    model = _two_blocks()
    fa, fb = _fcs(model)
    _set_levels(fa, [-0.5, 0.5], 0)
    _set_levels(fb, [-0.25, 0.25], 1)
    report = energy.estimate(model, palettes=dkm_tf.palettes_of(model))
    assert _charged(report) == {"fc": 2, "fc#2": 2}
    model = _two_blocks(8, 5)  # kernels 6x8 and 8x5: size tells them apart
    fa, fb = _fcs(model)
    _set_levels(fa, [-0.5, 0.5], 0)
    _set_levels(fb, [-0.5, 0.0, 0.5], 1)
    pals = dkm_tf.palettes_of(model)
    for order in (pals, pals[::-1]):
        assert _charged(energy.estimate(model, palettes=order)) == {"fc": 2, "fc#2": 3}
    assert _charged(energy.estimate(model, palettes=pals[1:])) == {"fc": None, "fc#2": 3}


def test_keras_file_inferred_palettes_keep_each_same_named_layer(tmp_path):
    model = _two_blocks(8, 5)
    fa, fb = _fcs(model)
    _set_levels(fa, [-0.5, 0.5], 0)
    _set_levels(fb, [-0.5, 0.0, 0.5], 1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    # old: the inferred {name: info} kept b/fc's K=3 only; a/fc (48 weights) charged float
    report = energy.estimate(path)
    assert _charged(report) == {"fc": 2, "fc#2": 3}
    expected = 2 * 1 * 16 + 48 * 1  # K d B_w codebook + N log2 K index bits
    assert report.layers[0].stored_weight_bits == pytest.approx(expected)


def test_keras_file_same_size_float_layer_not_charged(tmp_path):
    model = _two_blocks()
    fa, _ = _fcs(model)
    _set_levels(fa, [-0.5, 0.5], 0)  # b/fc float, same size: cannot be told apart
    path = str(tmp_path / "m.keras")
    model.save(path)
    report = energy.estimate(path)
    # old: both records charged K=2 (b/fc float: 576 stored bits, not 68)
    assert _charged(report) == {"fc": None, "fc#2": None}
    assert [row.stored_weight_bits for row in report.layers] == [576.0, 576.0]
    assert any("'a/fc', 'b/fc'" in note and "charged as float" in note for note in report.notes)


def _bn_block(name):
    inp = keras.Input((5, 5, 3))
    h = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inp)
    return keras.Model(inp, keras.layers.BatchNormalization(name="bn")(h), name=name)


def test_strip_folds_batch_norm_into_same_named_layers():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 5, 3))
    model = keras.Model(inp, _bn_block("b")(_bn_block("a")(inp)))
    rng = np.random.default_rng(1)
    for lay in model.layers[1:]:
        bn = lay.get_layer("bn")
        bn.gamma.assign(rng.uniform(0.5, 2.0, 3))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, 3))
    with pytest.warns(UserWarning, match="folds"):
        clustered = dkm_tf.cluster_weights(model, 4)
    # old: "Palette conv/kernel does not match the folded kernel" (one BN's scales for both)
    folded, folded_pals = dkm_tf.strip_clustering(clustered)
    plain, pals = dkm_tf.strip_clustering(clustered, fold_bn=False)
    for batch in (1, 3):
        x = rng.normal(size=(batch, 5, 5, 3)).astype("float32")
        np.testing.assert_allclose(plain(x), clustered(x), atol=1e-5)
        np.testing.assert_allclose(folded(x), plain(x), atol=1e-5)
    assert len(folded_pals) == 2
    for pal, lay in zip(folded_pals, _conv_layers(folded)):
        np.testing.assert_allclose(pal.decode(), keras.ops.convert_to_numpy(lay.kernel),
                                   atol=1e-6)
    assert len(pals) == 2
    for pal, lay in zip(pals, _conv_layers(plain)):
        np.testing.assert_array_equal(pal.decode(), keras.ops.convert_to_numpy(lay.kernel))


def _conv_layers(model):
    from dkm_tf.graph.clusterable import walk_layers

    return [lay for lay in walk_layers(model) if isinstance(lay, keras.layers.Conv2D)]


def _cli(tmp_path, *flags):
    import io

    from dkm_tf import cli

    inp = keras.Input((6,))
    out = keras.layers.Dense(2, name="head")(_block("b", 8, 5)(_block("a", 6, 8)(inp)))
    model = keras.Model(inp, out)
    path = tmp_path / "dup.keras"
    model.save(str(path))
    out, err = io.StringIO(), io.StringIO()
    rc = cli.run(["dkm-tf", "compress", "--model", str(path), "--method", "wr", "--n_clusters",
                  "4", "--noplots", "--quiet", "--output_dir", str(tmp_path / "out"), *flags],
                 stdout=out, stderr=err)
    return rc, err.getvalue()


def test_cli_refuses_same_named_clustered_layers_before_any_work(tmp_path):
    # old: k-means ran and wrote clustered.keras, then the palettized export raised (exit 1)
    rc, err = _cli(tmp_path)
    assert rc == 2 and "invalid --tflite" in err and "'a/fc', 'b/fc'" in err, err
    assert "--notflite" in err and not (tmp_path / "out" / "clustered.keras").exists()
    rc, err = _cli(tmp_path, "--overrides", '{"fc": null}')  # fc left float: nothing to refuse
    assert rc == 0, err


def test_same_named_separable_convs_charged_by_size():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    h = inp
    for name in ("a", "b"):
        h = keras.Sequential([keras.layers.SeparableConv2D(4, 3, name="sc")], name=name)(h)
    model = keras.Model(inp, h)
    result = dkm_tf.share_weights(model, 3)
    assert [p.name for p in result.palettes] == ["sc/depthwise_kernel", "sc/pointwise_kernel"] * 2
    # old: b/sc's palettes (36 and 16 weights) found only record sc/* (27, 12): ValueError
    report = energy.estimate(result.model, palettes=result.palettes)
    assert _charged(report) == {"sc/depthwise": 3, "sc/pointwise": 3, "sc#2/depthwise": 3,
                                "sc#2/pointwise": 3}
    sizes = {row.shape.name: row.shape.n_weights for row in report.layers}
    assert sizes == {"sc/depthwise": 27, "sc/pointwise": 12, "sc#2/depthwise": 36,
                     "sc#2/pointwise": 16}


def test_wrapped_model_palettes_of_same_named_layers_paired_by_value():
    keras.utils.set_random_seed(0)
    clustered = dkm_tf.cluster_weights(_two_blocks(), 3)  # wrappers cluster_fc, palettes fc
    pals = dkm_tf.palettes_of(clustered)
    assert [p.name for p in pals] == ["fc/kernel", "fc/kernel"]
    # old: both records charged with the one palette given; now on the layer it decodes to
    for given, charged in ((pals[:1], (3, None)), (pals[1:], (None, 3))):
        assert tuple(_charged(energy.estimate(clustered, palettes=given)).values()) == charged
    assert _charged(energy.estimate(clustered, palettes=pals)) == {"cluster_fc": 3,
                                                                   "cluster_fc#2": 3}
