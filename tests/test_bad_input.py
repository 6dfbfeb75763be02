"""Bad input gets a clear error that names what is wrong (issue 13's catalogue).

Each case: a call, the exception type, and a regex its message must match. ``CASES`` need
no model; ``MODEL_CASES`` take the module's tiny models (built once, fixture ``m``). Every
error is raised before any expensive work (k-means, training, conversion) and before any
file is written; the tests at the end check that nothing the user owns changes on an error.
The command line's bad flags are covered by ``tests/test_cli.py``.
"""

import os
import types
import warnings

import numpy as np
import pytest
from testing import subclassed_model

import dkm_tf

LAYOUT = dkm_tf.layout_for((4, 3), "dense")
GOOD = dict(layer_name="l", weight_name="kernel", codebook=np.zeros((1, 2, 1), np.float32),
            indices=np.zeros((1, 12), np.int32), layout=LAYOUT)
V = np.random.default_rng(0).standard_normal(100)
K43 = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def _palette(**change):
    return dkm_tf.Palette(**{**GOOD, **change})


def _from_dict_without(key):
    d = _palette().to_dict()
    del d[key]
    return dkm_tf.Palette.from_dict(d)


def _energy():
    from dkm_tf import energy  # noqa: PLC0415

    return energy


def _fc():
    return _energy().dense_shape("fc", in_features=4, units=3)


CASES = [
    # layout_for: shapes
    ("layout negative dim", lambda: dkm_tf.layout_for((3, -1, 2, 4), "conv"), ValueError,
     r"kernel_shape.*integers >= 1.*\(3, -1, 2, 4\)"),
    ("layout zero dim", lambda: dkm_tf.layout_for((0, 4), "dense"), ValueError,
     r"kernel_shape.*\(0, 4\)"),
    ("layout empty shape", lambda: dkm_tf.layout_for((), "dense"), ValueError,
     r"non-empty sequence"),
    ("layout float dim", lambda: dkm_tf.layout_for((2.5, 3), "dense"), ValueError,
     r"kernel_shape=\(2.5, 3\)"),
    ("layout None", lambda: dkm_tf.layout_for(None, "dense"), ValueError, r"kernel_shape=None"),
    ("layout bad kind", lambda: dkm_tf.layout_for((3, 3), "convolution"), ValueError,
     r"kind.*convolution"),
    ("layout bad unit", lambda: dkm_tf.layout_for((3, 3), "dense", unit="pixel"), ValueError,
     r"unit.*pixel"),
    ("UnitLayout made by hand, inconsistent", lambda: dkm_tf.UnitLayout(
        (4, 3), "dense", "scalar", "per_tensor", (1, 0), 1, 5, 1), ValueError,
     r"Invalid UnitLayout.*G x M x d = the kernel size.*layout_for"),
    ("to_units layout not a layout", lambda: dkm_tf.to_units(K43, {"kind": "dense"}),
     TypeError, r"`layout`.*UnitLayout.*dict"),
    ("from_units layout not a layout", lambda: dkm_tf.from_units(np.zeros((1, 12, 1)), None),
     TypeError, r"`layout`.*UnitLayout.*NoneType"),
    # Palette: what it holds
    ("palette float indices", lambda: _palette(indices=np.zeros((1, 12))), TypeError,
     r"indices must be whole numbers stored as floats.*float64"),
    ("palette fractional indices", lambda: _palette(indices=np.full((1, 12), 0.5)), TypeError,
     r"indices must be integers.*float64"),
    ("palette NaN codebook", lambda: _palette(codebook=np.full((1, 2, 1), np.nan)), ValueError,
     r"2 NaN/Inf value"),
    ("palette Inf codebook", lambda: _palette(codebook=np.array([[[0.0], [np.inf]]])),
     ValueError, r"1 NaN/Inf"),
    ("palette complex codebook", lambda: _palette(codebook=np.zeros((1, 2, 1), complex)),
     TypeError, r"real numbers.*complex128"),
    ("palette string codebook", lambda: _palette(codebook=np.full((1, 2, 1), "a")), TypeError,
     r"real numbers"),
    ("palette index out of range", lambda: _palette(indices=np.full((1, 12), 2)), ValueError,
     r"indices must lie in \[0, 2\)"),
    ("palette wrong indices shape", lambda: _palette(indices=np.zeros((1, 11), int)),
     ValueError, r"indices shape \(1, 11\)"),
    ("palette layout not a layout", lambda: _palette(layout={"kind": "dense"}), TypeError,
     r"`layout`.*UnitLayout.*dict"),
    ("from_dict missing layout", lambda: _from_dict_without("layout"), ValueError,
     r"missing \['layout'\]"),
    ("from_dict missing codebook", lambda: _from_dict_without("codebook"), ValueError,
     r"missing \['codebook'\]"),
    ("from_dict unknown key", lambda: dkm_tf.Palette.from_dict(
        {**_palette().to_dict(), "bits": 4}), ValueError, r"unknown \['bits'\]"),
    ("from_dict not a dict", lambda: dkm_tf.Palette.from_dict([1, 2]), TypeError,
     r"`d`.*dict.*list"),
    # size_report
    ("size_report of ints", lambda: dkm_tf.size_report([1, 2]), TypeError,
     r"`palettes`.*list of Palette.*\['int'\]"),
    ("size_report of None", lambda: dkm_tf.size_report(None), TypeError,
     r"`palettes`.*NoneType"),
    ("size_report negative other_params", lambda: dkm_tf.size_report([], other_params=-5),
     ValueError, r"`other_params`.*>= 0.*other_params=-5"),
    ("size_report zero bits", lambda: dkm_tf.size_report([], bits=0), ValueError,
     r"`bits`.*>= 1.*bits=0"),
    ("size_report string bits", lambda: dkm_tf.size_report([], bits="32"), TypeError,
     r"`bits`.*bits='32' of type str"),
    # cluster_values
    ("cluster_values string seed", lambda: dkm_tf.cluster_values(V, 4, seed="a"), TypeError,
     r"`seed`.*integer >= 0.*seed='a' of type str"),
    ("cluster_values float seed", lambda: dkm_tf.cluster_values(V, 4, seed=1.5), TypeError,
     r"`seed`.*seed=1.5 of type float"),
    ("cluster_values negative seed", lambda: dkm_tf.cluster_values(V, 4, seed=-1), ValueError,
     r"`seed`.*integer >= 0.*seed=-1"),
    ("cluster_values bool seed", lambda: dkm_tf.cluster_values(V, 4, seed=True), TypeError,
     r"`seed`.*seed=True of type bool"),
    ("cluster_values strings", lambda: dkm_tf.cluster_values(np.array(["a", "b", "c"]), 2),
     TypeError, r"`x`.*real numbers.*<U1"),
    ("cluster_values None entries", lambda: dkm_tf.cluster_values([1.0, None], 2), TypeError,
     r"`x`.*real numbers.*object"),
    ("cluster_values complex", lambda: dkm_tf.cluster_values(V + 1j * V, 4), TypeError,
     r"`x`.*complex numbers \(the imaginary part would be lost\)"),
    ("cluster_values ragged", lambda: dkm_tf.cluster_values([[1.0, 2.0], [3.0]], 2),
     ValueError, r"`x`.*non-ragged"),
    ("cluster_values zero-width units", lambda: dkm_tf.cluster_values(np.zeros((5, 0)), 2),
     ValueError, r"`x`.*dimension d >= 1.*\(5, 0\)"),
    ("cluster_values K above the histogram", lambda: dkm_tf.cluster_values(
        np.arange(65_537.0), 70_000), ValueError,
     r"`n_clusters`.*at most 65,536 for more than 65,536 values.*n_clusters=70000"),
    ("cluster_values unknown option", lambda: dkm_tf.cluster_values(V, 4, foo=1), TypeError,
     r"k-means option 'foo'.*\['chunk', 'max_iter', 'refine', 'tol', 'use_faiss'\]"),
    ("cluster_values option of the other engine", lambda: dkm_tf.cluster_values(V, 4, tol=0.1),
     TypeError, r"'tol'.*applies to vector units.*scalar units"),
    ("cluster_values max_iter 0", lambda: dkm_tf.cluster_values(V, 4, max_iter=0), ValueError,
     r"`max_iter`.*>= 1.*max_iter=0"),
    ("cluster_values refine not a bool", lambda: dkm_tf.cluster_values(V, 4, refine="no"),
     TypeError, r"`refine`.*bool.*refine='no'"),
    # assignment_entropy
    ("entropy negative index", lambda: dkm_tf.assignment_entropy(np.array([0, -1])),
     ValueError, r"`indices`.*integers >= 0.*smallest value -1"),
    ("entropy float indices", lambda: dkm_tf.assignment_entropy(np.array([0.5, 1.0])),
     ValueError, r"`indices`.*integers >= 0.*float64"),
    ("entropy K below the largest index", lambda: dkm_tf.assignment_entropy(
        np.array([0, 5]), 2), ValueError, r"`n_clusters`.*more than the largest index, 5"),
    # cluster_tensor
    ("cluster_tensor string sparsity", lambda: dkm_tf.cluster_tensor(
        K43, kind="dense", n_clusters=2, sparsity="a"), TypeError, r"`sparsity`.*'a'"),
    ("cluster_tensor float seed", lambda: dkm_tf.cluster_tensor(
        K43, kind="dense", n_clusters=2, seed=0.5), TypeError, r"`seed`.*0.5"),
    ("cluster_tensor truthy preserve_sparsity", lambda: dkm_tf.cluster_tensor(
        K43, kind="dense", n_clusters=2, preserve_sparsity="yes"), TypeError,
     r"`preserve_sparsity`.*bool.*'yes'"),
    ("cluster_tensor complex kernel", lambda: dkm_tf.cluster_tensor(
        K43 + 1j, kind="dense", n_clusters=2), TypeError, r"`kernel`.*complex"),
    # energy: shape records and the formulas
    ("conv_shape fractional size", lambda: _energy().conv_shape(
        "c", in_hw=4.5, in_c=1, out_hw=1, out_c=1, kernel=1), ValueError,
     r"`in_hw`.*integer or a pair of integers.*4.5"),
    ("conv_shape string size", lambda: _energy().conv_shape(
        "c", in_hw="4", in_c=1, out_hw=1, out_c=1, kernel=1), ValueError, r"`in_hw`.*'4'"),
    ("conv_shape 3-D kernel", lambda: _energy().conv_shape(
        "c", in_hw=4, in_c=1, out_hw=1, out_c=1, kernel=(1, 2, 3)), ValueError,
     r"`kernel`.*\(1, 2, 3\)"),
    ("pool_shape window 0", lambda: _energy().pool_shape(
        "p", in_hw=4, channels=1, out_hw=2, window=0), ValueError, r"`kernel_h`.*>= 1"),
    ("eltwise_shape fractional elements", lambda: _energy().eltwise_shape("e", elements=4.7),
     ValueError, r"`elements`.*4.7"),
    ("expected_unique_fraction K 0", lambda: _energy().expected_unique_fraction(0, 4),
     ValueError, r"`n_clusters`.*>= 1"),
    ("expected_unique_fraction no filters", lambda: _energy().expected_unique_fraction(4, 0),
     ValueError, r"`n_filters`.*>= 1"),
    ("unique_product_fraction negative index", lambda: _energy().unique_product_fraction(
        np.array([[0, -1]])), ValueError, r"`indices`.*indices >= 0"),
    ("fa_dot d 0", lambda: _energy().fa_dot(0, 16, 16), ValueError, r"`d`.*>= 1.*d=0"),
    ("fa_per_mac bits 0", lambda: _energy().fa_per_mac(4, 0, 16), ValueError,
     r"`bits_w`.*positive.*bits_w=0"),
    ("paper_cost of None", lambda: _energy().paper_cost(None), TypeError,
     r"`shape`.*LayerShape.*None"),
    ("hierarchy_cost kept_fraction 2", lambda: _energy().hierarchy_cost(
        _fc(), kept_fraction=2), ValueError, r"`kept_fraction`.*\(0, 1\].*2"),
    ("estimate_shapes of None", lambda: _energy().estimate_shapes(None), TypeError,
     r"`shapes`.*list of LayerShape.*None"),
    ("SharingInfo K 0", lambda: _energy().SharingInfo(0, 1, 4), ValueError,
     r"`n_clusters`.*>= 1"),
    ("estimate index_cost typo", lambda: _energy().estimate([_fc()], index_cost="entropic"),
     ValueError, r"`index_cost`.*\['none', 'log2', 'entropy', 'auto'\].*'entropic'"),
]


@pytest.fixture(scope="module")
def m(tmp_path_factory):
    """The tiny models, data and files the cases use (built once)."""
    import keras  # noqa: PLC0415

    layers = keras.layers
    keras.utils.set_random_seed(0)
    ns = types.SimpleNamespace()
    ns.dense = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="d1"),
                                 layers.Dense(2, name="d2")], name="dense")
    ns.conv = keras.Sequential([keras.Input((6, 6, 1)), layers.Conv2D(4, 3, name="c1"),
                                layers.Flatten(), layers.Dense(2, name="fc")], name="conv")
    ns.unbuilt = keras.Sequential([layers.Dense(3, name="u1")], name="unbuilt")
    ns.empty = keras.Sequential([keras.Input((4,))], name="empty")
    ns.noclust = keras.Sequential([keras.Input((4,)), layers.BatchNormalization(name="bn")],
                                  name="noclust")
    ns.sub = subclassed_model(3, 4)
    ns.x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    ns.y = np.arange(8) % 2
    ns.xc = np.random.default_rng(1).standard_normal((8, 6, 6, 1)).astype(np.float32)
    ns.shared, ns.palettes, _ = dkm_tf.share_weights(ns.dense, 4)
    ns.dir = tmp_path_factory.mktemp("bad_input")
    ns.out = str(ns.dir / "out.tflite")
    ns.tflite = str(ns.dir / "float.tflite")
    dkm_tf.export.to_tflite(ns.shared, ns.tflite, "float", sample_inputs=ns.x)
    return ns


def _tt(m, *args, **kwargs):
    return dkm_tf.export.to_tflite(m.shared, m.out, *args, **kwargs)


def _xy(m, n=8, width=4):
    return np.zeros((n, width), np.float32), m.y[:n]


MODEL_CASES = [
    # which layers cluster
    ("clusterable_weights of None", lambda m: dkm_tf.clusterable_weights(None), TypeError,
     r"`layer`.*keras.layers.Layer.*None"),
    # share_weights
    ("share_weights unbuilt model", lambda m: dkm_tf.share_weights(m.unbuilt, 4), ValueError,
     r"'unbuilt' is not built, so it has no weights to cluster"),
    ("share_weights model with only an Input", lambda m: dkm_tf.share_weights(m.empty, 4),
     ValueError, r"'empty' is not built"),
    ("share_weights nothing clusterable", lambda m: dkm_tf.share_weights(m.noclust, 4),
     ValueError, r"found no weight to cluster in model 'noclust'.*BatchNormalization"),
    ("share_weights subclassed, not inplace", lambda m: dkm_tf.share_weights(m.sub, 4),
     TypeError, r"only Sequential and Functional.*inplace=True"),
    ("share_weights string seed", lambda m: dkm_tf.share_weights(m.dense, 4, seed="a"),
     TypeError, r"`seed`.*seed='a'"),
    ("share_weights None seed", lambda m: dkm_tf.share_weights(m.dense, 4, seed=None),
     TypeError, r"`seed`.*seed=None"),
    ("share_weights overrides key names no layer", lambda m: dkm_tf.share_weights(
        m.dense, 4, overrides={"dense_9": {"n_clusters": 2}}), ValueError,
     r"Keys \['dense_9'\] match no layer name or layer class name of model 'dense'.*d1"),
    ("share_weights overrides value not a dict", lambda m: dkm_tf.share_weights(
        m.dense, 4, overrides={"d1": 5}), TypeError, r"`overrides\['d1'\]`.*None or a dict"),
    ("share_weights overrides bad K", lambda m: dkm_tf.share_weights(
        m.dense, 4, overrides={"Dense": {"n_clusters": 0}}), ValueError,
     r"`n_clusters`.*n_clusters=0"),
    ("share_weights string sparsity", lambda m: dkm_tf.share_weights(
        m.dense, 4, sparsity="a"), TypeError, r"`sparsity`.*fraction.*'a'"),
    # cluster_weights and the wrapper
    ("cluster_weights unbuilt model", lambda m: dkm_tf.cluster_weights(m.unbuilt, 4),
     ValueError, r"'unbuilt' is not built"),
    ("cluster_weights model with only an Input", lambda m: dkm_tf.cluster_weights(m.empty, 4),
     ValueError, r"'empty' is not built"),
    ("cluster_weights nothing clusterable", lambda m: dkm_tf.cluster_weights(m.noclust, 4),
     ValueError, r"found no layer to cluster in model 'noclust'.*BatchNormalization"),
    ("cluster_weights float seed", lambda m: dkm_tf.cluster_weights(m.dense, 4, seed=1.5),
     TypeError, r"`seed`.*1.5"),
    ("cluster_weights kmeans_options string", lambda m: dkm_tf.cluster_weights(
        m.dense, 4, kmeans_options="fast"), TypeError, r"`kmeans_options`.*dict.*'fast'"),
    ("cluster_weights kmeans_options unknown", lambda m: dkm_tf.cluster_weights(
        m.dense, 4, kmeans_options={"iters": 5}), TypeError, r"k-means option 'iters'"),
    ("cluster_weights truthy return_report", lambda m: dkm_tf.cluster_weights(
        m.dense, 4, return_report="yes"), TypeError, r"`return_report`.*bool"),
    ("cluster_weights overrides key names no layer", lambda m: dkm_tf.cluster_weights(
        m.dense, 4, overrides={"nope": None}), ValueError, r"Keys \['nope'\] match no layer"),
    ("ClusterWeights string seed", lambda m: dkm_tf.ClusterWeights(
        __import__("keras").layers.Dense(2), 4, seed="a"), TypeError, r"`seed`.*'a'"),
    ("ClusterWeights kmeans_options list", lambda m: dkm_tf.ClusterWeights(
        __import__("keras").layers.Dense(2), 4, kmeans_options=[1]), TypeError,
     r"`kmeans_options`.*\[1\]"),
    ("palettes_of None", lambda m: dkm_tf.palettes_of(None), TypeError,
     r"`model`.*Keras model or layer.*None"),
    ("strip_clustering fold_bn string", lambda m: dkm_tf.strip_clustering(
        m.dense, fold_bn="no"), TypeError, r"`fold_bn`.*bool"),
    # finetune
    ("finetune without train_data", lambda m: dkm_tf.finetune(m.dense, None, epochs=1),
     ValueError, r"`train_data`.*\(x, y\) pair.*train_data=None"),
    ("finetune train_data (x,)", lambda m: dkm_tf.finetune(m.dense, (m.x,), epochs=1),
     ValueError, r"`train_data`.*a sequence of length 1"),
    ("finetune x of the wrong shape", lambda m: dkm_tf.finetune(
        m.dense, _xy(m, 8, 5), epochs=1), ValueError,
     r"`train_data`.*x of shape \(samples, 4\).*\(8, 5\)"),
    ("finetune x and y lengths differ", lambda m: dkm_tf.finetune(
        m.dense, (m.x, m.y[:3]), epochs=1), ValueError, r"same number of samples.*8 and 3"),
    ("finetune val_data of the wrong shape", lambda m: dkm_tf.finetune(
        m.dense, (m.x, m.y), _xy(m, 3, 5), epochs=1), ValueError, r"`val_data`.*\(3, 5\)"),
    ("finetune batch_size 0", lambda m: dkm_tf.finetune(
        m.dense, (m.x, m.y), epochs=1, batch_size=0), ValueError, r"`batch_size`.*>= 1"),
    ("finetune metrics string", lambda m: dkm_tf.finetune(
        m.dense, (m.x, m.y), epochs=1, metrics="accuracy"), TypeError,
     r"`metrics`.*list of metrics"),
    ("finetune callbacks string", lambda m: dkm_tf.finetune(
        m.dense, (m.x, m.y), epochs=1, callbacks="x"), TypeError,
     r"`callbacks`.*keras.callbacks.Callback"),
    ("finetune reassign_every without latent", lambda m: dkm_tf.finetune(
        m.dense, (m.x, m.y), epochs=1, reassign_every=1), ValueError,
     r"`reassign_every`.*unless latent=True"),
    # compress: every argument before any evaluation or training
    ("compress unbuilt model", lambda m: dkm_tf.compress(m.unbuilt, verbose=0), ValueError,
     r"'unbuilt' is not built"),
    ("compress nothing clusterable", lambda m: dkm_tf.compress(m.noclust, verbose=0),
     ValueError, r"compress found no layer to cluster"),
    ("compress overrides key names no layer", lambda m: dkm_tf.compress(
        m.dense, overrides={"nope": {"n_clusters": 2}}, verbose=0), ValueError,
     r"Keys \['nope'\] match no layer"),
    ("compress bad granularity before dkm re-training", lambda m: dkm_tf.compress(
        m.dense, (m.x, m.y), method="dkm+finetune", granularity="per_row", verbose=0),
     ValueError, r"`granularity`.*'per_row'"),
    ("compress negative finetune_epochs", lambda m: dkm_tf.compress(
        m.dense, (m.x, m.y), method="dkm+finetune", finetune_epochs=-1, verbose=0),
     ValueError, r"`finetune_epochs`.*>= 0"),
    ("compress dkm_epochs 0", lambda m: dkm_tf.compress(
        m.dense, (m.x, m.y), method="dkm", dkm_epochs=0, verbose=0), ValueError,
     r"`dkm_epochs`.*>= 1"),
    ("compress verbose string", lambda m: dkm_tf.compress(m.dense, verbose="x"), TypeError,
     r"`verbose`.*'x'"),
    ("compress test_data lengths differ", lambda m: dkm_tf.compress(
        m.dense, test_data=(m.x, m.y[:3]), verbose=0), ValueError,
     r"`test_data`.*same number of samples"),
    ("compress batch_size 0", lambda m: dkm_tf.compress(
        m.dense, (m.x, m.y), method="finetune", batch_size=0, verbose=0), ValueError,
     r"`batch_size`.*>= 1"),
    # the Deep k-Means penalty
    ("attach_regularizer None", lambda m: dkm_tf.attach_regularizer(None, 4), TypeError,
     r"`model`.*keras.Model.*None"),
    ("attach_regularizer K dict naming no layer", lambda m: dkm_tf.attach_regularizer(
        m.conv, {"nope": 4}), ValueError, r"`n_clusters`.*name no layer: \['nope'\]"),
    ("attach_regularizer layers as one string", lambda m: dkm_tf.attach_regularizer(
        m.conv, 4, layers="c1"), TypeError, r"`layers`.*list of layer names.*'c1'"),
    ("attach_regularizer truthy include_dense", lambda m: dkm_tf.attach_regularizer(
        m.conv, 4, include_dense="yes"), TypeError, r"`include_dense`.*bool"),
    ("detach_regularizer None", lambda m: dkm_tf.detach_regularizer(None), TypeError,
     r"`model`.*keras.Model"),
    ("refresh_regularizers None", lambda m: dkm_tf.refresh_regularizers(None), TypeError,
     r"`model`.*keras.Model"),
    ("SpectralKMeansRegularizer string seed", lambda m: dkm_tf.SpectralKMeansRegularizer(
        4, seed="a"), TypeError, r"`seed`.*'a'"),
    ("dkm_retrain epochs True", lambda m: dkm_tf.dkm_retrain(
        m.conv, (m.xc, m.y), n_clusters=2, epochs=True), ValueError, r"`epochs`.*True"),
    ("dkm_retrain without train_data", lambda m: dkm_tf.dkm_retrain(
        m.conv, None, n_clusters=2, epochs=1), ValueError, r"`train_data`.*None"),
    ("dkm_retrain x of the wrong shape", lambda m: dkm_tf.dkm_retrain(
        m.conv, (m.x, m.y), n_clusters=2, epochs=1), ValueError,
     r"`train_data`.*\(samples, 6, 6, 1\).*\(8, 4\)"),
    ("dkm_retrain refresh_every 0", lambda m: dkm_tf.dkm_retrain(
        m.conv, (m.xc, m.y), n_clusters=2, epochs=1, refresh_every=0), ValueError,
     r"`refresh_every`.*>= 1"),
    ("dkm_retrain batch_size 0", lambda m: dkm_tf.dkm_retrain(
        m.conv, (m.xc, m.y), n_clusters=2, epochs=1, batch_size=0), ValueError,
     r"`batch_size`.*>= 1"),
    # distillation
    ("distillation_targets teacher None", lambda m: dkm_tf.distillation_targets(
        None, m.x, m.y), TypeError, r"`teacher`.*keras.Model"),
    ("distillation_targets x of the wrong shape", lambda m: dkm_tf.distillation_targets(
        m.dense, np.zeros((8, 5)), m.y), ValueError, r"`x`.*\(samples, 4\).*\(8, 5\)"),
    ("distillation_targets batch_size 0", lambda m: dkm_tf.distillation_targets(
        m.dense, m.x, m.y, batch_size=0), ValueError, r"`batch_size`.*>= 1"),
    ("DistillationLoss y_true of the wrong width", lambda m: dkm_tf.DistillationLoss(3)(
        np.zeros((2, 5), np.float32), np.zeros((2, 3), np.float32)), ValueError,
     r"`y_true`.*width 6.*distillation_targets.*\(2, 5\)"),
    # loading
    ("load_model None", lambda m: dkm_tf.load_model(None), TypeError, r"`path`.*None"),
    # export.to_tflite: arguments checked before any conversion
    ("to_tflite model None", lambda m: dkm_tf.export.to_tflite(None, m.out, "float"),
     TypeError, r"`model`.*built Keras model.*None"),
    ("to_tflite model given as a path", lambda m: dkm_tf.export.to_tflite(
        "m.keras", m.out, "float"), TypeError, r"`model`.*'m.keras' of type str"),
    ("to_tflite unbuilt model", lambda m: dkm_tf.export.to_tflite(
        m.unbuilt, m.out, "float"), ValueError, r"`model`.*'unbuilt', which is not built"),
    ("to_tflite path None", lambda m: dkm_tf.export.to_tflite(m.shared, None, "float"),
     TypeError, r"`path`.*str or os.PathLike.*None"),
    ("to_tflite samples of the wrong shape", lambda m: _tt(
        m, "float", sample_inputs=np.zeros((4, 5), np.float32)), ValueError,
     r"`sample_inputs`.*\(samples, 4\).*\(4, 5\)"),
    ("to_tflite samples without a sample axis", lambda m: _tt(
        m, "float", sample_inputs=np.zeros(4, np.float32)), ValueError,
     r"`sample_inputs`.*\(samples, 4\).*\(4,\)"),
    ("to_tflite NaN samples", lambda m: _tt(
        m, "float", sample_inputs=np.full((4, 4), np.nan, np.float32)), ValueError,
     r"`sample_inputs`.*finite.*16 NaN/Inf"),
    ("to_tflite string samples", lambda m: _tt(
        m, "float", sample_inputs=np.full((4, 4), "a")), TypeError,
     r"`sample_inputs`.*real numbers"),
    ("to_tflite zero samples", lambda m: _tt(
        m, "float", sample_inputs=np.zeros((0, 4), np.float32)), ValueError,
     r"`sample_inputs`.*at least one sample"),
    ("to_tflite more sample arrays than inputs", lambda m: _tt(
        m, "float", sample_inputs=[m.x, m.x]), ValueError,
     r"`sample_inputs`.*1 array\(s\), one per input.*2 array"),
    ("to_tflite representative_data of the wrong shape", lambda m: _tt(
        m, "int8", sample_inputs=m.x, int8_mode="full",
        representative_data=np.zeros((4, 7), np.float32)), ValueError,
     r"`representative_data`.*\(4, 7\)"),
    ("to_tflite non-numeric tolerance", lambda m: _tt(
        m, "float", sample_inputs=m.x, tolerance="tight"), TypeError,
     r"`tolerance`.*'tight'"),
    ("to_tflite negative tolerance", lambda m: _tt(
        m, "float", sample_inputs=m.x, tolerance=-1), ValueError, r"`tolerance`.*>= 0"),
    ("to_tflite interpreters as one string", lambda m: _tt(
        m, "float", sample_inputs=m.x, interpreters="litert"), TypeError,
     r"`interpreters`.*list.*'litert'"),
    ("to_tflite no interpreter", lambda m: _tt(
        m, "float", sample_inputs=m.x, interpreters=[]), ValueError,
     r"`interpreters`.*always verified"),
    ("to_tflite max_table_bytes string", lambda m: _tt(
        m, "palettized", m.palettes, m.x, max_table_bytes="1MB"), TypeError,
     r"`max_table_bytes`.*'1MB'"),
    ("to_tflite truthy matmul_lowering", lambda m: _tt(
        m, "palettized", m.palettes, m.x, matmul_lowering="no"), TypeError,
     r"`matmul_lowering`.*bool"),
    ("to_tflite float_content not a tflite", lambda m: _tt(
        m, "palettized", m.palettes, m.x, float_content=b"garbage"), ValueError,
     r"`float_content`.*float .tflite.*b'garbage'"),
    # export_all, inspect_tflite, benchmark_latency
    ("export_all targets as one string", lambda m: dkm_tf.export.export_all(
        m.shared, m.palettes, m.dir, m.x, targets="float"), TypeError,
     r"`targets`.*non-empty list.*targets='float'"),
    ("export_all no targets", lambda m: dkm_tf.export.export_all(
        m.shared, m.palettes, m.dir, m.x, targets=[]), TypeError, r"`targets`.*\[\]"),
    ("export_all out_dir None", lambda m: dkm_tf.export.export_all(
        m.shared, m.palettes, None, m.x), ValueError, r"`out_dir`.*existing directory"),
    ("export_all empty stem", lambda m: dkm_tf.export.export_all(
        m.shared, m.palettes, m.dir, m.x, stem=""), ValueError, r"`stem`.*stem=''"),
    ("export_all stem with a folder", lambda m: dkm_tf.export.export_all(
        m.shared, m.palettes, m.dir, m.x, stem="a/b"), ValueError, r"`stem`.*'a/b'"),
    ("export_all truthy latency", lambda m: dkm_tf.export.export_all(
        m.shared, m.palettes, m.dir, m.x, latency="yes"), TypeError, r"`latency`.*bool"),
    ("export_all palettized without palettes", lambda m: dkm_tf.export.export_all(
        m.shared, None, m.dir, m.x, targets=["float", "palettized"]), ValueError,
     r"`palettes`.*\['palettized'\]"),
    ("inspect_tflite None", lambda m: dkm_tf.export.inspect_tflite(None), TypeError,
     r"`path`.*None"),
    ("inspect_tflite folder", lambda m: dkm_tf.export.inspect_tflite(m.dir), ValueError,
     r"`path`.*not a folder"),
    ("benchmark_latency nothing to time", lambda m: dkm_tf.export.benchmark_latency({}),
     ValueError, r"`paths`.*non-empty"),
    ("benchmark_latency input of the wrong size", lambda m: dkm_tf.export.benchmark_latency(
        {"a": m.tflite}, [np.zeros(9, np.float32)], runs=1), ValueError,
     r"`inputs`.*shape \(4,\).*\(9,\)"),
    # energy.estimate
    ("energy.estimate missing file", lambda m: _energy().estimate(m.dir / "x.tflite"),
     FileNotFoundError, r"No such model file"),
    ("energy.estimate one palette, not a list", lambda m: _energy().estimate(
        m.shared, palettes=m.palettes[0]), TypeError, r"`palettes`.*list.*Palette"),
    ("energy.estimate palettes of another model", lambda m: _energy().estimate(
        m.conv, palettes=m.palettes), ValueError, r"names layer 'd1'.*\['c1', 'fc'\]"),
]


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


@pytest.mark.parametrize("call, error, pattern", [c[1:] for c in MODEL_CASES],
                         ids=[c[0] for c in MODEL_CASES])
def test_bad_model_input_is_a_clear_error(m, call, error, pattern):
    before = sorted(os.listdir(m.dir))
    with pytest.raises(error, match=pattern):
        call(m)
    assert sorted(os.listdir(m.dir)) == before  # nothing written, no temp left


def test_case_ids_are_distinct():
    ids = [c[0] for c in CASES + MODEL_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 80


def test_energy_estimate_of_a_folder_says_so(tmp_path):
    folder = tmp_path / "folder.tflite"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"`model_or_path`.*not a folder"):
        _energy().estimate(folder)


def test_errors_leave_the_users_files_and_models_as_they_were(m):
    import keras  # noqa: PLC0415

    # an existing output file survives a refused export, byte for byte
    keep = m.dir / "keep.tflite"
    keep.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="sample_inputs"):
        dkm_tf.export.to_tflite(m.shared, keep, "float",
                                sample_inputs=np.zeros((4, 5), np.float32))
    assert keep.read_bytes() == b"keep me"
    keep.unlink()
    # attach_regularizer failing on its second kernel attaches nothing to the first
    inp = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="hc")(inp)
    out = keras.layers.EinsumDense("abc,cd->abd", output_shape=(4, 3), name="ein")(h)
    model = keras.Model(inp, out)
    with pytest.raises(ValueError, match=r"`unit`.*EinsumDense"):
        dkm_tf.attach_regularizer(model, 2, unit="row", layers=["hc", "ein"])  # named
    assert dkm_tf.kmeans_regularizers(model) == []
    assert model.get_layer("hc").kernel.regularizer is None
    # share_weights(inplace=True) writes nothing when a later kernel cannot be clustered
    nan = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="ok"),
                            keras.layers.Dense(2, name="bad", kernel_initializer=(
                                keras.initializers.Constant(float("nan"))))])
    before = nan.get_layer("ok").kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"bad/kernel.*NaN or Inf"):
        dkm_tf.share_weights(nan, 2, inplace=True)
    np.testing.assert_array_equal(nan.get_layer("ok").kernel.numpy(), before)
    # settings are checked before the input model is touched
    weights = [w.copy() for w in m.dense.get_weights()]
    with pytest.raises(ValueError, match="overrides"):
        dkm_tf.share_weights(m.dense, 4, inplace=True, overrides={"nope": None})
    for a, b in zip(m.dense.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["bfloat16", "mixed_bfloat16", "float16"])
def test_low_precision_palettes_decode_to_the_stored_weights(policy):
    """A bf16/fp16 kernel is stored rounded: its palette must decode to exactly that."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, dtype=policy, name="a"),
                              keras.layers.Dense(4, dtype=policy, name="b")])
    shared = dkm_tf.share_weights(model, 4)
    plain, palettes = dkm_tf.strip_clustering(dkm_tf.cluster_weights(model, 4))
    for clustered, pals in ((shared.model, shared.palettes), (plain, palettes)):
        assert len(pals) == 2
        for p in pals:
            kernel = clustered.get_layer(p.layer_name).kernel
            stored = keras.ops.convert_to_numpy(keras.ops.cast(kernel, "float32"))
            np.testing.assert_array_equal(p.decode(), stored)
            assert np.unique(stored).size <= 4
        dkm_tf.export.check_palettes(clustered, pals)  # raises on any difference


def test_cluster_values_says_when_the_histogram_caps_k(monkeypatch):
    # 69,990 values inside one histogram bin: the exact values are clustered instead (K found)
    x = np.concatenate([np.random.default_rng(0).uniform(0, 1e-6, 69_990),
                        np.linspace(0.5, 1.0, 10)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codebook, _ = dkm_tf.cluster_values(x, 20)
    assert len(codebook) == 20
    # beyond the exact fallback's size: far fewer centroids than K, lossy, and said so
    monkeypatch.setattr(dkm_tf.core._kmeans1d, "EXACT_FALLBACK_MAX", 0)
    with pytest.warns(UserWarning, match=r"found only \d+ of n_clusters=20 centroids \(lossy\)"):
        codebook, _ = dkm_tf.cluster_values(x, 20)
    assert len(codebook) < 20
    with warnings.catch_warnings():  # fewer distinct values than K: lossless, no warning
        warnings.simplefilter("error")
        codebook, idx = dkm_tf.cluster_values(np.repeat(np.arange(10.0), 7000), 20)
    assert len(codebook) == 10 and np.array_equal(codebook[idx], np.repeat(np.arange(10.0), 7000))


def test_attach_regularizer_on_a_dense_only_model_says_why_nothing_attaches():
    import keras  # noqa: PLC0415

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    with pytest.raises(ValueError, match=r"no kernel to regularize.*Dense.*include_dense=True"):
        dkm_tf.attach_regularizer(model, 4)
    assert model.get_layer("d").kernel.regularizer is None  # nothing half-attached
    assert len(dkm_tf.attach_regularizer(model, 2, include_dense=True)) == 1


def test_truncated_tflite_in_energy_is_a_clear_error(tmp_path):
    model = dkm_tf.models.digits_cnn()
    path = tmp_path / "m.tflite"
    dkm_tf.export.to_tflite(model, path, "float",
                            sample_inputs=np.zeros((2, 8, 8, 1), np.float32))
    data = path.read_bytes()
    for n in (40, 2000, len(data) // 2, len(data) - 100):
        cut = tmp_path / f"cut{n}.tflite"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=r"is not a readable TFLite model"):
            dkm_tf.energy.estimate(cut)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"test_fraction": 2}, r"`test_fraction`.*\(0, 1\).*test_fraction=2"),
    ({"test_fraction": 0}, r"test_fraction=0"),
    ({"test_fraction": "a"}, r"test_fraction='a'"),
    ({"seed": -1}, r"`seed`.*seed=-1"),
    ({"seed": 1.5}, r"seed=1.5"),
])
def test_load_digits_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        dkm_tf.data.load_digits(**kwargs)


@pytest.mark.parametrize("call", ["refine", "fisher", "compress_wr", "compress_finetune"])
def test_nan_inputs_are_refused_before_any_work(call):
    """A NaN input gave a refine note blaming the layer ('not linear') or, after training, a
    codebook of NaN; now it is a clear error naming the argument, before any work."""
    import dkm_tf
    from tests.testing import small_cnn

    model = small_cnn()
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(0).random((8, 8, 8, 1)).astype(np.float32)
    x[3, 2, 2, 0] = np.nan
    y = np.zeros(8, int)
    name = "train_data" if call.startswith("compress") else "data"
    with pytest.raises(ValueError, match=rf"argument `{name}`. Expected finite samples.*"
                                         r"1 NaN or infinite values among 512"):
        if call == "refine":
            dkm_tf.share_weights(model, 4, refine="gptq", data=x)
        elif call == "fisher":
            dkm_tf.share_weights(model, 4, weighting="fisher", data=(x, y),
                                 loss="sparse_categorical_crossentropy")
        else:
            dkm_tf.compress(model, (x, y), None, method=call[9:], n_clusters=4)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
