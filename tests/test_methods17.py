"""share_weights(refine=...) beyond LeNet-like nets: nested blocks with layers of the same
name, layers shared inside a nested block, and channels_first convolutions against their
channels_last twins. Numpy references, tiny models, fixed seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dkm_tf.graph.share import share_weights  # noqa: E402

L = keras.layers


def _sse_before(note):
    """The layer output SSE before the update, as the note prints it."""
    found = re.search(r"layer output SSE ([0-9.e+-]+) ->", note)
    assert found, note
    return float(found.group(1))


def _two_blocks(width_b):
    """Two nested Sequential blocks, each with a Dense named "fc", then a head."""
    keras.utils.set_random_seed(0)
    a = keras.Sequential([keras.Input((6,)), L.Dense(6, name="fc")], name="a")
    b = keras.Sequential([keras.Input((6,)), L.Dense(width_b, name="fc")], name="b")
    inp = keras.Input((6,))
    return keras.Model(inp, L.Dense(3, name="head")(b(a(inp))))


def test_refine_fits_each_same_named_layer_of_nested_blocks_on_its_own_layer():
    """Palettes were matched to layers by name: block a's "fc" palette was fitted on block b's
    "fc" (same shape: a note with b's numbers, a's layer never refined; other shape: "could
    not be evaluated")."""
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    for width_b in (6, 4):
        model = _two_blocks(width_b)
        plain = share_weights(model, 4)
        refined = share_weights(model, 4, refine="outputs", data=x)
        pal_a = refined.palettes[0]
        assert [p.layer_name for p in refined.palettes] == ["fc", "fc", "head"]
        fc_a = model.get_layer("a").get_layer("fc")
        w, bias = (np.asarray(v.numpy(), np.float64) for v in fc_a.weights)
        wq = plain.palettes[0].decode().astype(np.float64)  # block a's k-means kernel
        want = float(np.sum((x @ wq - x @ w) ** 2))  # the first layer: inputs x in both
        np.testing.assert_allclose(_sse_before(pal_a.note), want, rtol=2e-3)
        # stored values are the returned palettes' decode, block by block
        for block, pal in (("a", refined.palettes[0]), ("b", refined.palettes[1])):
            kernel = refined.model.get_layer(block).get_layer("fc").kernel.numpy()
            np.testing.assert_array_equal(kernel, pal.decode())
        assert np.array_equal(fc_a.kernel.numpy(), w.astype(np.float32))  # user model as is
        assert np.array_equal(fc_a.bias.numpy(), bias.astype(np.float32))


@pytest.mark.parametrize("where", ["inside", "inside_and_outside"])
def test_a_layer_called_twice_inside_a_nested_block_is_reported_as_shared(where):
    """Only the top-level graph was counted: a Dense called twice inside a nested model (or
    once inside, once outside) was fitted on the inputs of one call only (and kept with
    refine="gptq")."""
    keras.utils.set_random_seed(0)
    dense = L.Dense(6, name="twice")
    inner_in = keras.Input((6,))
    inp = keras.Input((6,))
    if where == "inside":
        inner = keras.Model(inner_in, dense(dense(inner_in)), name="inner")
        model = keras.Model(inp, L.Dense(3, name="head")(inner(inp)))
    else:
        inner = keras.Model(inner_in, L.Dense(6, name="other")(dense(inner_in)), name="inner")
        model = keras.Model(inp, L.Dense(3, name="head")(dense(inner(inp))))
    # two samples: on one, refine keeps every k-means codebook (session 23) before this check
    x = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
    plain = share_weights(model, 4)
    for refine in ("outputs", "gptq"):
        got = share_weights(model, 4, refine=refine, data=x)
        pal = got.palettes[0]
        assert "called 2 times (shared layer)" in pal.note, pal.note
        np.testing.assert_array_equal(pal.codebook, plain.palettes[0].codebook)
        kernel = got.model.get_layer("inner").get_layer("twice").kernel.numpy()
        np.testing.assert_array_equal(kernel, plain.palettes[0].decode())
        assert "output-refined" in got.palettes[-1].note  # the head still is


def test_fisher_takes_the_input_arrays_of_a_two_input_model_as_x():
    """``data=[x1, x2]`` was read as ``(x=x1, y=x2)`` and refused with "x of shape (3, 4), y
    of shape (3, 3)"; the same arrays as ``([x1, x2], None)`` worked."""
    from dkm_tf.graph import sensitivity  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,)), keras.Input((3,))
    h = L.Concatenate()([L.Dense(5, name="da")(a), L.Dense(5, name="db")(b)])
    model = keras.Model([a, b], L.Dense(3, name="head")(h))
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 3)).astype(np.float32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = [model.get_layer(n).kernel for n in ("da", "db", "head")]
    got = sensitivity.fisher_importance(model, [xa, xb], loss, variables=variables, damping=0)
    want = sensitivity.fisher_importance(model, ([xa, xb], None), loss, variables=variables,
                                         damping=0)
    for v in variables:
        assert got[id(v)].shape == tuple(v.shape)
        np.testing.assert_allclose(got[id(v)], want[id(v)], rtol=1e-6)
    # the mean over the 3 samples given, each taken alone
    one = [sensitivity.fisher_importance(model, [xa[i:i + 1], xb[i:i + 1]], loss,
                                         variables=variables, damping=0) for i in range(3)]
    for v in variables:
        np.testing.assert_allclose(got[id(v)], np.mean([o[id(v)] for o in one], 0),
                                   rtol=1e-5, atol=1e-12)
    shared = share_weights(model, 4, weighting="fisher", data=(xa, xb), loss=loss)
    assert all(p.note == "fisher-weighted k-means" for p in shared.palettes)


def test_fisher_refusal_of_a_two_output_model_names_its_outputs():
    """The refusal said "with output None" for a model with two heads."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    h = L.Dense(5)(inp)
    model = keras.Model(inp, [L.Dense(3)(h), L.Dense(2)(h)])
    x = np.random.default_rng(0).normal(size=(2, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"outputs \[\(1, 3\), \(1, 2\)\]"):
        share_weights(model, 4, weighting="fisher", data=x,
                      loss="sparse_categorical_crossentropy")


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_channels_first_conv_refines_as_its_channels_last_twin(cf_runs, granularity):
    """The least-squares fit of a channels_first conv equals its channels_last twin's (the
    same kernel on transposed inputs); 3 filters on a 4-wide output (Keras 3.15's ops.add
    takes a (1, C, 1, 1) bias over the width when the output's width is C)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    results = []
    for data_format, shape, xs in (("channels_last", (6, 6, 2), x),
                                   ("channels_first", (2, 6, 6), np.moveaxis(x, -1, 1))):
        keras.utils.set_random_seed(0)
        inp = keras.Input(shape)
        model = keras.Model(inp, L.Conv2D(3, 3, data_format=data_format, name="c")(inp))
        if results:
            model.set_weights(results[0][0])
        else:
            model.get_layer("c").bias.assign(rng.normal(size=3).astype(np.float32) * 0.1)
        res = share_weights(model, 4, granularity=granularity, refine="outputs", data=xs)
        results.append((model.get_weights(), res.palettes[0], res.model.get_layer("c")))
    (_, pal_l, layer_l), (_, pal_f, layer_f) = results
    assert "output-refined codebook and bias" in pal_l.note, pal_l.note
    np.testing.assert_array_equal(pal_l.indices, pal_f.indices)
    np.testing.assert_allclose(pal_f.codebook, pal_l.codebook, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer_f.bias.numpy(), layer_l.bias.numpy(), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_array_equal(layer_f.kernel.numpy(), pal_f.decode())


def test_attention_projections_are_not_called_nonlinear():
    """Every MultiHeadAttention weight was noted "MultiHeadAttention is not linear in its
    kernel", though the value and output projections are (with the attention fixed)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 8))
    h = L.MultiHeadAttention(2, 4, name="mha")(inp, inp)
    model = keras.Model(inp, L.Dense(3, name="head")(L.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    notes = {p.weight_name: p.note for p in share_weights(model, 4, refine="outputs",
                                                          data=x).palettes}
    for name in ("query_dense.kernel", "value_dense.kernel", "output_dense.kernel"):
        assert "not linear" not in notes[name], notes[name]
        assert f"{name} is a weight inside a MultiHeadAttention" in notes[name], notes[name]


def test_a_nested_block_of_a_sequential_built_with_add_is_refined_on_its_inputs():
    """A Sequential built with add() leaves a node per rebuild on its nested block: refine read
    the block as "called 2 times or on several inputs" and left its layer unrefined."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential()
    model.add(keras.Input((6,)))
    model.add(L.Dense(6, name="first"))
    model.add(keras.Sequential([L.Dense(5, name="inner")], name="block"))
    model.add(L.Dense(3, name="head"))
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    plain = share_weights(model, 4)
    got = share_weights(model, 4, refine="outputs", data=x)
    first, inner = got.palettes[0], got.palettes[1]
    assert inner.layer_name == "inner" and "could not be evaluated" not in inner.note
    w1, b1 = (np.asarray(v.numpy(), np.float64) for v in model.get_layer("first").weights)
    w2, b2 = (np.asarray(v.numpy(), np.float64)
              for v in model.get_layer("block").get_layer("inner").weights)
    q1 = got.model.get_layer("first")  # as refine left it (updated or not) before "inner"
    xq = x @ np.asarray(q1.kernel.numpy(), np.float64) + np.asarray(q1.bias.numpy(), np.float64)
    xf = x @ w1 + b1
    want = float(np.sum((xq @ plain.palettes[1].decode().astype(np.float64) + b2
                         - (xf @ w2 + b2)) ** 2))
    np.testing.assert_allclose(_sse_before(inner.note), want, rtol=2e-3)
    assert "output-refined" in first.note or "reverted" in first.note
