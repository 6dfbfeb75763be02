"""`keras.layers.Pipeline` through energy and `share_weights` (probe 18c).

Measured on the code before these tests (2026-12-06): a BatchNormalization inside a Pipeline
was charged as an "affine" record instead of folded into the convolution before it, as the
Functional reader and the converter fold it (Pipeline([Conv2D, BN, ReLU, MaxPooling2D]):
paper 30,272 vs the same layers as a Functional model 28,832); a Pipeline inside a Pipeline
(no `compute_output_shape`) made the outer one skipped whole (216 of 4,392 MACs counted);
`share_weights` of a model calling one Pipeline twice and inside another Pipeline copied it
twice (8 weights for the original's 6: the copies no longer share).
"""

import keras
import numpy as np

import dkm_tf
from dkm_tf import energy

L = keras.layers


def _stats(m):
    rng = np.random.RandomState(2)
    for layer in m._flatten_layers():
        if isinstance(layer, L.BatchNormalization):
            layer.moving_mean.assign(rng.rand(*layer.moving_mean.shape))
            layer.gamma.assign(rng.rand(*layer.gamma.shape) + 0.5)
    return m


def _model(kind):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    if kind == "pipeline":
        x = L.Pipeline([L.Conv2D(4, 3, name="c"), L.BatchNormalization(name="bn"), L.ReLU(),
                        L.MaxPooling2D()])(inp)
    elif kind == "functional":
        x = L.MaxPooling2D()(L.ReLU()(L.BatchNormalization(name="bn")(L.Conv2D(4, 3)(inp))))
    else:  # nested
        x = L.Pipeline([L.Conv2D(4, 3, name="c"), L.Pipeline([
            L.Conv2D(2, 1, name="c1"), L.BatchNormalization(name="bn"), L.ReLU()])])(inp)
    return _stats(keras.Model(inp, L.Dense(3)(L.Flatten()(x))))


def test_batch_norm_in_a_pipeline_is_folded_as_in_a_functional_model():
    p, f = energy.estimate(_model("pipeline")), energy.estimate(_model("functional"))
    assert p.macs == f.macs == 6 * 6 * 27 * 4 + 3 * 3 * 4 * 3
    np.testing.assert_allclose(p.paper_total, f.paper_total, rtol=1e-9)  # old: 30,272 vs 28,832
    np.testing.assert_allclose(p.hierarchy_total, f.hierarchy_total, rtol=1e-9)
    assert not any(r.shape.kind == "eltwise" and r.shape.eltwise_op == "affine" for r in p.layers)
    assert dict(p.skipped)["bn"].startswith("folded into c ")


def test_pipeline_in_a_pipeline_is_read_and_matches_the_tflite_macs(tmp_path):
    m = _model("nested")
    r = energy.estimate(m)
    hand = 6 * 6 * 27 * 4 + 6 * 6 * 4 * 2 + 6 * 6 * 2 * 3  # conv 3x3, conv 1x1, dense
    path = tmp_path / "n.tflite"
    x = np.random.RandomState(1).rand(2, 8, 8, 3).astype("float32")
    dkm_tf.export.to_tflite(m, str(path), format="float", sample_inputs=x)
    assert r.macs == energy.estimate(str(path)).macs == hand  # old Keras: 216
    assert not any("Pipeline" in why for _, why in r.skipped)
    assert dict(r.skipped)["bn"].startswith("folded into c1 ")


def test_share_weights_keeps_a_pipeline_used_twice_one_layer():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    pipe = L.Pipeline([L.Dense(6, name="pd")], name="pipe")
    outer = L.Pipeline([pipe, L.ReLU(), L.Dense(6, name="o")], name="outer")
    m = keras.Model(inp, L.Dense(2, name="head")(outer(pipe(pipe(inp)))))
    shared, palettes, skipped = dkm_tf.share_weights(m, n_clusters=4)
    assert not skipped and len(shared.weights) == len(m.weights) == 6  # old: 8
    dense = {}
    for layer in shared._flatten_layers():
        if isinstance(layer, L.Dense):
            dense.setdefault(layer.name, set()).add(id(layer))
    assert {k: len(v) for k, v in dense.items()} == {"pd": 1, "o": 1, "head": 1}  # old pd: 2
    top = shared.get_layer("pipe")
    assert shared.get_layer("outer").layers[0] is top
    # the palettes describe the one copy: the shared model is the original with each kernel
    # replaced by its decoded palette (keras.models.clone_model copies the Pipeline twice too)
    by_name = {p.name.split("/")[0]: p for p in palettes}
    x = np.random.RandomState(3).randn(4, 6).astype("float32")
    for layer in m._flatten_layers():
        if isinstance(layer, L.Dense):
            layer.kernel.assign(np.asarray(by_name[layer.name].decode()).reshape(
                layer.kernel.shape))
            copy = next(c for c in shared._flatten_layers() if c.name == layer.name)
            np.testing.assert_array_equal(np.asarray(layer.kernel), np.asarray(copy.kernel))
    np.testing.assert_allclose(np.asarray(shared(x)), np.asarray(m(x)), rtol=1e-5, atol=1e-6)


def test_cluster_weights_keeps_a_layer_inside_two_pipelines_one_wrapper():
    # old: the Dense "pd" inside two Pipelines got two wrappers (12 weights for 8, palettes
    # pd, pre, pd), which a fit pulls apart; strip then returned 6 weights for the original's 4
    keras.utils.set_random_seed(0)
    pd = L.Dense(3, name="pd")
    pipe = L.Pipeline([pd], name="pipe")
    outer = L.Pipeline([L.Dense(3, name="pre"), pd], name="outer")
    inp = keras.Input((3,))
    m = keras.Model(inp, L.Add()([pipe(inp), pipe(inp), outer(inp)]))
    clustered = dkm_tf.cluster_weights(m, 2)
    assert [p.name for p in dkm_tf.palettes_of(clustered)] == ["pd/kernel", "pre/kernel"]
    wrappers = {id(la) for la in clustered._flatten_layers()
                if isinstance(la, dkm_tf.ClusterWeights) and la.layer.name == "pd"}
    assert len(wrappers) == 1
    x = np.random.RandomState(0).randn(4, 3).astype("float32")
    clustered.compile("sgd", "mse")
    clustered.fit(x, np.ones((4, 3), "float32"), epochs=1, verbose=0)
    plain, palettes = dkm_tf.strip_clustering(clustered)
    assert len(plain.weights) == len(m.weights) == 4
    assert [p.name for p in palettes] == ["pd/kernel", "pre/kernel"]
    for batch in (1, 3):
        np.testing.assert_allclose(np.asarray(plain(x[:batch])), np.asarray(clustered(x[:batch])),
                                   rtol=1e-5, atol=1e-6)


def test_cluster_and_strip_a_pipeline_holding_preprocessing_layers():
    # a regression of this session's Pipeline wrapping (5321a43): the copied Rescaling /
    # Resizing were built as if they were ClusterWeights ("'Rescaling' object has no
    # attribute 'layer'"); before it the Pipeline was skipped whole. (A RandomFlip in a
    # Pipeline flips at inference too, in Keras itself: not compared here.)
    keras.utils.set_random_seed(0)
    pipe = L.Pipeline([L.Rescaling(0.5), L.Resizing(9, 9), L.Conv2D(4, 3, name="pc")],
                      name="pp")
    inp = keras.Input((8, 8, 3))
    m = keras.Model(inp, L.Dense(2, name="head")(L.Flatten()(pipe(inp))))
    clustered = dkm_tf.cluster_weights(m, 4)
    assert [p.name for p in dkm_tf.palettes_of(clustered)] == ["pc/kernel", "head/kernel"]
    plain, palettes = dkm_tf.strip_clustering(clustered)
    x = np.random.RandomState(1).rand(3, 8, 8, 3).astype("float32")
    for batch in (1, 3):
        np.testing.assert_allclose(np.asarray(plain(x[:batch])),
                                   np.asarray(clustered(x[:batch])), rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.asarray(plain.get_layer("pp").layers[2].kernel))) <= 4
