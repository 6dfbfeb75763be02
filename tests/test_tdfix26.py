"""Review R4 of reading Lambdas and chains of folded ops (`tests/test_tdnest26.py`,
`tests/test_tdnest226.py`): each case's Keras estimate against its file's.

A layer a Lambda calls that is also called elsewhere (or twice in the Lambda) had no palette
on its record inside the Lambda (Keras / palettized-file hierarchy 1.4516, paper 1.2102).
"""

import functools
import gc
import weakref

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy
from dkm_tf.export import to_tflite
from tests._energy_file25 import both, randomize, same_totals

L = keras.layers

FNS = {
    "once_inside": lambda d: lambda t: d(t) * t,
    "twice_inside": lambda d: lambda t: d(d(t)),
}


@pytest.mark.parametrize("fn", sorted(FNS))
def test_a_layer_a_lambda_calls_keeps_its_palette(fn, tmp_path):
    keras.utils.set_random_seed(0)
    d = L.Dense(8, name="inner_d")
    i = keras.Input((8,))
    h = L.Dense(8, name="d0")(i)
    model = keras.Model(i, L.Lambda(FNS[fn](d), name="lam")(d(h)))  # d called outside too
    clustered, palettes, _ = dkm_tf.share_weights(model, n_clusters=4, seed=0, inplace=True)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    k = energy.estimate(clustered, palettes=palettes)
    path = str(tmp_path / "m.tflite")
    to_tflite(clustered, path, "palettized", palettes, sample_inputs=x)
    f = energy.estimate(path)
    dense = [x for x in k.layers if x.shape.layer == "inner_d"]
    assert len(dense) == 2 + (fn == "twice_inside")
    assert all(x.n_clusters == 4 for x in dense)
    assert sorted(x.n_clusters or 0 for x in k.layers) == sorted(
        x.n_clusters or 0 for x in f.layers)
    np.testing.assert_allclose(k.hierarchy_total, f.hierarchy_total, rtol=1e-6)
    np.testing.assert_allclose(k.paper_total, f.paper_total, rtol=1e-6)


def _bn(name, axis=-1, shape=(None, 8, 8, 4)):
    bn = L.BatchNormalization(axis=axis, name=name)
    bn.build(shape)
    randomize(bn)  # not an identity
    return bn


def _conv(x, **kw):
    return L.Conv2D(4, 3, padding="same", name="c", **kw)(x)


def _nested_ending_in_a_scale(x):
    j = keras.Input((8, 8, 4))
    return keras.Model(j, _conv(j) * 0.5, name="sub")(x) + 1.0


def _chain(pairs):
    return lambda x: functools.reduce(lambda t, _: t * 1.01 + 0.01, range(pairs), _conv(x))


CHAINS = {  # (the ops the file keeps after the conv, the chain)
    "through_dropout": (0, lambda x: L.Dropout(0.3)(_conv(x) * 0.5) + 1.0),
    "lambda_then_outer": (0, lambda x: L.Lambda(lambda t: t * 0.5, name="lam")(_conv(x)) + 1.0),
    "lambda_lambda": (0, lambda x: L.Lambda(lambda t: t + 1.0, name="l2")(
        L.Lambda(lambda t: t * 0.5, name="lam")(_conv(x)))),
    "nested_output": (0, _nested_ending_in_a_scale),
    "20_pairs": (0, _chain(20)),  # 40 ops: beyond the 16 followed before
    "24_pairs": (7, _chain(24)),  # 48 ops: the converter folds the first 41 only
    "20_batch_norms": (0, lambda x: functools.reduce(
        lambda t, k: _bn(f"b{k}")(t), range(20), _conv(x))),  # 40 ops: 6.1795 before
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_a_chain_folds_through_what_the_converter_steps_over(chain, tmp_path):
    """Charged before (Keras / file hierarchy 1.8627; 20 pairs 3.5892, 20 batch norms
    6.1795)."""
    keras.utils.set_random_seed(0)
    kept, fn = CHAINS[chain]
    i = keras.Input((8, 8, 4))
    k, f = both(keras.Model(i, L.Flatten()(fn(i))), tmp_path)
    assert [x.shape.kind for x in f.layers] == ["conv"] + ["eltwise"] * kept
    assert len(k.layers) == 1 + kept
    same_totals(k, f)


CF = (None, 4, 8, 6)


def _cf_conv(x):
    return L.Conv2D(4, 3, padding="same", data_format="channels_first", name="c")(x)


CF_CHAINS = {  # (the ops the file keeps after the conv, the chain)
    "bn_then_per_column": (1, lambda x: _bn("b1", 1, CF)(_cf_conv(x)) * np.arange(
        6, dtype="float32")),
    "bn_then_bn_last_axis": (2, lambda x: _bn("b2", -1, CF)(_bn("b1", 1, CF)(_cf_conv(x)))),
    "bn_then_bn": (0, lambda x: _bn("b2", 1, CF)(_bn("b1", 1, CF)(_cf_conv(x)))),
    "bn_then_scalars": (0, lambda x: _bn("b1", 1, CF)(_cf_conv(x)) * 0.5 + 1.0),
    "scalars": (0, lambda x: _cf_conv(x) * 0.5 + 1.0),
    "rescaling": (0, lambda x: L.Rescaling(0.5, 1.0)(_cf_conv(x))),
}


@pytest.mark.usefixtures("cf_runs")
@pytest.mark.parametrize("chain", sorted(CF_CHAINS))
def test_a_chain_after_a_channels_first_conv(chain, tmp_path):
    """An op on the last axis (W) after a channels_first conv is not folded into it, a
    scalar is (the per-column MUL was listed folded: Keras / file hierarchy 0.5503)."""
    keras.utils.set_random_seed(0)
    kept, fn = CF_CHAINS[chain]
    i = keras.Input(CF[1:])
    k, f = both(keras.Model(i, L.Flatten()(fn(i))), tmp_path)
    assert [x.shape.kind for x in f.layers] == ["conv"] + ["eltwise"] * kept
    assert len(k.layers) == 1 + kept
    same_totals(k, f)


def test_a_lambdas_graph_does_not_keep_the_model_alive():
    """The graph of a Lambda calling a layer of the model was cached in a module-level
    WeakKeyDictionary whose value reached its key: the layer and its weights stayed in
    memory after the model was deleted."""
    def make():
        d = L.Dense(8, name="inner_d")
        i = keras.Input((8,))
        h = d(L.Dense(8, name="d0")(i))
        return keras.Model(i, L.Lambda(lambda t: d(t) * t, name="lam")(h)), d

    model, d = make()
    assert [x.shape.layer for x in energy.estimate(model).layers] == [
        "d0", "inner_d", "inner_d", "lam"]
    layer, kernel = weakref.ref(d), weakref.ref(d.kernel)
    del model, d
    gc.collect()
    assert layer() is None and kernel() is None


def test_a_lambda_folded_into_the_conv_after_it_names_it():
    """Its ADD was noted "folded into  after it" (no name)."""
    i = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, name="c")(L.Lambda(lambda t: (t - 127.5) / 127.5, name="pre")(i))
    report = energy.estimate(keras.Model(i, y))
    assert [x.name for x in report.layers] == ["c"]
    notes = {k.split("_")[0] if k.startswith("pre/") else k: v  # ops' auto-names get a
             for k, v in report.skipped}  # suffix when others were made in the process
    assert notes["pre/subtract"] == "its ADD folded into c after it (as a .tflite folds it)"
    assert notes["pre/true"] == "its MUL folded into c after it (as a .tflite folds it)"
