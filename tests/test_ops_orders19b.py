"""Public operations in unusual orders, with artifacts that do not belong to the model.

What a notebook user does by mistake: palettes of the float original or of a model trained on
after clustering passed to ``energy.estimate``; one palette listed twice (export, energy); a
function's whole result (``ShareResult``, ``FoldResult``, a ``(model, palettes)`` tuple) passed
on as the model; ``cluster_weights`` / ``share_weights`` of a model already clustered. Tiny
models (an MLP, a conv + BatchNormalization net), batch 3.
"""

import warnings

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.training.clustering_report import ClusteringReport

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 6)).astype(np.float32)


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="d2")(h), name="mlp")


def _conv_bn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(h), name="cnn")
    r = np.random.default_rng(1)
    model.get_layer("bn1").set_weights([r.uniform(0.5, 1.5, 4), r.normal(size=4),
                                        r.normal(size=4), r.uniform(0.5, 2.0, 4)])
    return model


def _weights(model):
    return [np.array(w, copy=True) for w in model.get_weights()]


def _unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))


@pytest.fixture(scope="module")
def shared():
    model = _mlp()
    before = _weights(model)
    plain, palettes, _ = dkm_tf.share_weights(model, n_clusters=4)
    assert _unchanged(model, before)  # the original is never modified
    return model, plain, palettes


def test_estimate_names_palettes_that_are_not_the_model_weights(shared):
    # Measured before: estimate(float model, palettes) and estimate(model trained on after
    # share_weights, palettes) gave hierarchy 15,584 with no word; the same palettes beside a
    # .keras file were rejected with a note. Now a note names them (still charged as given).
    model, plain, palettes = shared
    right = dkm_tf.energy.estimate(plain, palettes=palettes)
    assert not any("NOT OF THIS MODEL" in n for n in right.notes)
    stale = keras.models.clone_model(plain)
    stale.set_weights([w + 0.01 for w in plain.get_weights()])
    for other, flag in ((stale, "PALETTES NOT OF THIS MODEL"), (model, "what-if: ")):
        # stale clustered weights: a warning; the float original: a what-if, said calmly
        report = dkm_tf.energy.estimate(other, palettes=palettes)
        note = [n for n in report.notes if "NOT OF THIS MODEL" in n or "what-if" in n]
        assert len(note) == 1 and note[0].startswith(flag) and "2 of the 2 palettes" in note[0]
        assert "d1/kernel" in note[0] and "d2/kernel" in note[0]
        assert flag in report.summary()
        assert report.hierarchy_total == pytest.approx(right.hierarchy_total, rel=1e-12)
    one = dkm_tf.energy.estimate(stale, palettes=palettes[:1])
    assert any("1 of the 1 palettes" in n for n in one.notes)
    quantized = keras.models.clone_model(plain)  # int8 codes are not the weights: not flagged
    quantized.set_weights(plain.get_weights())
    for name in ("d1", "d2"):  # model.quantize warns about the InputLayer
        quantized.get_layer(name).quantize("int8")
    notes = dkm_tf.energy.estimate(quantized, palettes=palettes).notes
    assert not any("NOT OF THIS MODEL" in n or "what-if" in n for n in notes)


def test_a_weight_given_two_palettes_is_refused(shared, tmp_path):
    # Measured before: to_tflite wrote the file, its report listing d1/kernel twice (int16
    # indices, and "float32 (not found) ... kept as the converter's float32 constants"); with
    # a K=8 twin of the K=4 palette the file was 8,560 or 11,440 bytes by list order.
    _, plain, palettes = shared
    twin = palettes[0].__class__(**{**palettes[0].__dict__, "codebook": np.concatenate(
        [palettes[0].codebook, palettes[0].codebook + 10.0], axis=1)})
    np.testing.assert_array_equal(twin.decode(), palettes[0].decode())
    for extra in (palettes[0], twin):
        with pytest.raises(ValueError, match=r"argument `palettes`. Expected one palette per "
                                             r"weight.*'d1/kernel' \(2x, K=\[4, (4|8)\]\)"):
            dkm_tf.export.check_palettes(plain, [*palettes, extra])
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match="one palette per weight"):
        dkm_tf.export.to_tflite(plain, path, palettes=[*palettes, twin], sample_inputs=X)
    assert not path.exists()
    # energy names the repetition (was: "describes 96 weights ... matches no unassigned
    # kernel of that layer. Kernel sizes: {'d1': 96}")
    with pytest.raises(ValueError, match=r"describes kernel 'd1' \(96 weights\) more than "
                                         r"once: 2 palettes"):
        dkm_tf.energy.estimate(plain, palettes=[*palettes, palettes[0]])


def test_a_result_passed_as_the_model_is_named(shared):
    # Measured before: cluster_weights / strip_clustering of a ShareResult, a FoldResult or a
    # (model, palettes) tuple blamed a subclassed model ("rebuild Sequential and Functional
    # models only. For a subclassed model, ..."); the others named only the type.
    model, plain, palettes = shared
    result = dkm_tf.share_weights(model, n_clusters=4)
    folded = dkm_tf.fold_batch_norm(model)
    pair = (plain, palettes)
    calls = [(dkm_tf.cluster_weights, result, "model", "ShareResult"),
             (dkm_tf.cluster_weights, folded, "model", "FoldResult"),
             (dkm_tf.strip_clustering, result, "model", "ShareResult"),
             (dkm_tf.strip_clustering, pair, "model", "tuple of 2 items"),
             (dkm_tf.palettes_of, pair, "model", "tuple of 2 items"),
             (dkm_tf.share_weights, folded, "model", "FoldResult"),
             (dkm_tf.fold_batch_norm, result, "model", "ShareResult"),
             (dkm_tf.attach_regularizer, folded, "model", "FoldResult"),
             (dkm_tf.energy.estimate, folded, "model_or_path", "FoldResult")]
    for fn, arg, name, kind in calls:
        with pytest.raises(TypeError, match=rf"argument `{name}`. Expected a Keras model. "
                                            rf"Received: a {kind}.*(`\.model`|unpack it)"):
            fn(arg, 4) if fn in (dkm_tf.cluster_weights, dkm_tf.attach_regularizer,
                                 dkm_tf.share_weights) else fn(arg)
    with pytest.raises(TypeError, match=r"argument `model`. Expected a Keras model. Received: "
                                        r"a FoldResult .*pass its `\.model` \(model 'mlp'\)"):
        dkm_tf.cluster_weights(folded, 4, unit="kernel", codebook="shared")  # Son et al.'s
    with pytest.raises(TypeError, match=r"argument `model`.*tuple of 2 items holding model "
                                        r"'mlp' at position 0.*unpack it first"):
        dkm_tf.export.to_tflite(pair, "unused.tflite", palettes=palettes)


def test_clustering_a_clustered_conv_bn_reports_the_fold_it_does():
    # Measured before: cluster_weights of a clustered model warned "BatchNormalization that
    # strip_clustering cannot fold (they stay float ...): bn1" (report: "it follows
    # ClusterWeights 'cluster_c1'"), and strip_clustering then folded bn1 into c1.
    model = _conv_bn()
    before = _weights(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = dkm_tf.cluster_weights(model, n_clusters=4)
        again, report = dkm_tf.cluster_weights(wrapped, n_clusters=4, return_report=True)
    texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert not any("cannot fold" in t for t in texts), texts
    assert isinstance(report, ClusteringReport) and report.folded == (("c1", "bn1"),)
    assert not any(name == "bn1" for name, _, _ in report.skipped)
    plain, palettes = dkm_tf.strip_clustering(again)
    assert "bn1" not in [la.name for la in plain.layers]  # folded, as the report says
    x = RNG.normal(size=(3, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(plain.predict(x, verbose=0), again.predict(x, verbose=0),
                               atol=1e-5, rtol=1e-5)
    assert [p.name for p in palettes] == ["c1/kernel", "fc/kernel"]
    assert _unchanged(model, before)


def test_share_weights_of_a_clustered_model_says_to_strip_it(shared):
    model = shared[0]
    wrapped = dkm_tf.cluster_weights(model, n_clusters=4)
    with pytest.raises(ValueError, match=r"found no weight to cluster in model .*: it is a "
                                         r"clustered model \(ClusterWeights layers\): its "
                                         r"palettes are dkm_tf.strip_clustering"):
        dkm_tf.share_weights(wrapped, n_clusters=8)
    with pytest.raises(ValueError, match=r"compress found no layer to cluster in model 'mlp': "
                                         r"it is a clustered model \(ClusterWeights layers\): "
                                         r"strip it first"):
        dkm_tf.compress(wrapped, (X, np.array([0, 1, 2])), method="finetune", n_clusters=8,
                        verbose=0)
