"""Keras 3 layer features: LoRA (``enable_lora``) and ``model.quantize`` across entry points.

Measured on the code before these tests (HEAD ca21de9): ``share_weights(n_clusters=2)`` of a
model whose Dense ``fc1`` had LoRA enabled returned the palette ``fc1/kernel K=2`` and a copy
still computing with LoRA (128 distinct values in its 8 x 16 effective kernel; the same for
EinsumDense, Conv2D: 216, Embedding: 80); ``cluster_weights`` refused with no way to merge;
``attach_regularizer`` failed with AttributeError; on int8 models ``share_weights`` clustered
the integer codes (outputs off by 1.32), int4 left the layer unchanged under a K=2 palette,
float8 failed inside Keras' clone_model; ``to_tflite`` of an int8 model failed in the
converter with an MLIR type error.
"""

import warnings

import keras
import numpy as np
import pytest

import dkm_tf

L = keras.layers


def _model(kind="dense", lora=True, seed=0):
    keras.utils.set_random_seed(seed)
    if kind == "dense":
        inp = keras.Input((8,))
        x = L.Dense(16, activation="relu", name="fc1")(inp)
    elif kind == "einsum":
        inp = keras.Input((8,))
        x = L.EinsumDense("ab,bc->ac", output_shape=16, bias_axes="c", activation="relu",
                          name="fc1")(inp)
    elif kind == "conv":
        inp = keras.Input((6, 6, 3))
        x = L.Flatten()(L.Conv2D(8, 3, activation="relu", name="fc1")(inp))
    else:
        inp = keras.Input((5,), dtype="int32")
        x = L.Flatten()(L.Embedding(10, 8, name="fc1")(inp))
    m = keras.Model(inp, L.Dense(4, name="fc2")(x))
    if lora:
        layer = m.get_layer("fc1")
        layer.enable_lora(2)
        b = next(w for w in layer.weights if w.path.endswith("_b"))
        b.assign(np.random.RandomState(0).randn(*b.shape).astype("float32"))
    return m


def _x(kind, n):
    r = np.random.RandomState(1)
    if kind == "emb":
        return r.randint(0, 10, (n, 5)).astype("int32")
    return r.randn(n, 6, 6, 3).astype("float32") if kind == "conv" else \
        r.randn(n, 8).astype("float32")


def _effective(layer):
    k = layer.embeddings if isinstance(layer, L.Embedding) else layer.kernel
    return np.asarray(keras.ops.convert_to_numpy(k), dtype=np.float32)


def _quantized(mode):
    m = _model(lora=False)
    with warnings.catch_warnings():  # Keras warns that InputLayer has no quantize()
        warnings.simplefilter("ignore")
        m.quantize(mode)
    return m


@pytest.mark.parametrize("kind", ["dense", "einsum", "conv", "emb"])
def test_share_weights_clusters_the_merged_lora_kernel(kind):
    m = _model(kind)
    before = _effective(m.get_layer("fc1"))
    s = dkm_tf.share_weights(m, n_clusters=2, overrides={"fc2": None})
    layer = s.model.get_layer("fc1")
    assert not getattr(layer, "lora_enabled", False)
    w = _effective(layer)
    (pal,) = s.palettes
    assert len(np.unique(w)) == 2  # old: 128 / 216 / 80 (LoRA still on)
    np.testing.assert_array_equal(w, pal.decode())
    assert s.lora_merged == ["fc1"] and "LoRA merged" in pal.note
    # the user's model is untouched
    assert m.get_layer("fc1").lora_enabled
    np.testing.assert_array_equal(_effective(m.get_layer("fc1")), before)


@pytest.mark.parametrize("batch", [1, 3])
def test_share_weights_lora_lossless_matches_numpy_reference(batch):
    m = _model("dense")
    fc1, fc2 = m.get_layer("fc1"), m.get_layer("fc2")
    eff = _effective(fc1)
    x = _x("dense", batch)
    ref = np.maximum(x @ eff + fc1.bias.numpy(), 0) @ fc2.kernel.numpy() + fc2.bias.numpy()
    s = dkm_tf.share_weights(m, n_clusters=len(np.unique(eff)), overrides={"fc2": None})
    np.testing.assert_allclose(np.asarray(s.model(x)), ref, rtol=1e-5, atol=1e-5)
    layer = s.model.get_layer("fc1")
    assert not getattr(layer, "lora_enabled", False)  # old: still LoRA (no palette applied)
    np.testing.assert_array_equal(_effective(layer), eff)


def test_share_weights_lora_with_fisher_and_gptq():
    m = _model("dense")
    x = _x("dense", 6)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    s = dkm_tf.share_weights(m, n_clusters=2, weighting="fisher", data=x, loss=loss)
    assert len(np.unique(_effective(s.model.get_layer("fc1")))) == 2  # old: AttributeError
    s = dkm_tf.share_weights(m, n_clusters=2, refine="gptq", data=x)
    w = _effective(s.model.get_layer("fc1"))
    pal = next(p for p in s.palettes if p.layer_name == "fc1")
    assert len(np.unique(w)) <= 2  # old: 128, note "output refine not applied"
    np.testing.assert_allclose(w, pal.decode(), atol=1e-6)


def test_share_weights_inplace_refuses_lora():
    m = _model("dense")
    with pytest.raises(ValueError, match="inplace=False") as e:
        dkm_tf.share_weights(m, n_clusters=2, inplace=True)
    assert "'fc1'" in str(e.value) and "merge_lora" in str(e.value)
    assert m.get_layer("fc1").lora_enabled


def test_merge_lora_in_a_multi_head_attention_sublayer():
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    mha = L.MultiHeadAttention(2, 4, name="mha")
    m = keras.Model(inp, mha(inp, inp))
    mha._query_dense.enable_lora(2)  # noqa: SLF001 - MultiHeadAttention has no enable_lora
    b = mha._query_dense.lora_kernel_b  # noqa: SLF001
    b.assign(np.random.RandomState(0).randn(*b.shape).astype("float32"))
    x = np.random.RandomState(0).randn(2, 3, 8).astype("float32")
    from dkm_tf.graph import layer_features  # noqa: PLC0415 (new in this change)

    merged, names = layer_features.merge_lora(m)
    assert names == ["mha"] and not layer_features.lora_layers(merged)
    np.testing.assert_allclose(np.asarray(merged(x)), np.asarray(m(x)), atol=1e-5)


def test_cluster_weights_merges_lora_and_reports_it():
    m = _model("conv")
    x, y = _x("conv", 4), np.array([0, 1, 2, 3])
    c, report = dkm_tf.cluster_weights(m, n_clusters=2, return_report=True)  # old: ValueError
    assert dict((n, s) for n, _, s in report.clustered)["fc1"].get("lora_merged")
    assert "LoRA merged" in report.summary()
    c.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    c.fit(x, y, epochs=1, batch_size=2, verbose=0)
    plain, palettes = dkm_tf.strip_clustering(c)
    assert len(np.unique(_effective(plain.get_layer("fc1")))) <= 2
    assert m.get_layer("fc1").lora_enabled


def test_attach_regularizer_refuses_lora_and_names_the_merge():
    m = _model("conv")
    with pytest.raises(ValueError, match="merge_lora") as e:  # old: AttributeError
        dkm_tf.attach_regularizer(m, n_clusters=2)
    assert "'fc1'" in str(e.value)
    from dkm_tf.graph import layer_features  # noqa: PLC0415 (new in this change)

    merged, _ = layer_features.merge_lora(m)
    assert dkm_tf.attach_regularizer(merged, n_clusters=2)


@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_quantized_models_are_refused_by_every_entry_point(mode):
    m = _quantized(mode)
    calls = {
        "share_weights": lambda: dkm_tf.share_weights(m, n_clusters=2),
        "cluster_weights": lambda: dkm_tf.cluster_weights(m, n_clusters=2),
        "attach_regularizer": lambda: dkm_tf.attach_regularizer(m, 2, include_dense=True),
        "compress": lambda: dkm_tf.compress(m, method="wr", n_clusters=2),
        "Clustering layer": lambda: dkm_tf.clusterable_weights(m.get_layer("fc1")),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=f"{what}.*needs float kernels") as e:
            call()
        assert "'fc1'" in str(e.value) and f"({mode};" in str(e.value)


def test_export_refuses_keras_int8_layers_clearly(tmp_path):
    m = _quantized("int8")
    with pytest.raises(ValueError, match=r"int8 / float8 layers.*'fc1' \(int8") as e:
        dkm_tf.export.to_tflite(m, tmp_path / "m.tflite", format="float",
                                sample_inputs=_x("dense", 2))
    assert "ConverterError" not in str(e.value)  # old: the converter's MLIR type error
    assert not (tmp_path / "m.tflite").exists()


def test_compress_merges_lora_and_exports_palettized(tmp_path):
    m = _model("dense")
    r = dkm_tf.compress(m, method="wr", n_clusters=4)
    assert any("LoRA merged" in n for n in r.notes)
    fc1 = r.model.get_layer("fc1")
    assert not getattr(fc1, "lora_enabled", False)
    assert len(np.unique(_effective(fc1))) <= 4  # old: 128 (LoRA kept)
    x = _x("dense", 3)
    rep = dkm_tf.export.to_tflite(r.model, tmp_path / "m.tflite", format="palettized",
                                  palettes=r.palettes, sample_inputs=x)
    assert rep.path.endswith("m.tflite")  # verified against Keras (old: palettes mismatch)


def test_palettes_of_counts_a_bfloat16_kernel_at_its_own_16_bits():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = L.Dense(16, activation="relu", name="fc1", dtype="bfloat16")(inp)
    m = keras.Model(inp, L.Dense(4, name="fc2")(x))
    # 85 distinct bfloat16 values in 128: 7-bit indices + codebook beat float32, not bfloat16
    assert dkm_tf.palettes_of(m) == []  # old: [Palette(fc1/kernel, K=85)]
    s = dkm_tf.share_weights(m, n_clusters=4)
    (found,) = [p for p in dkm_tf.palettes_of(s.model) if p.layer_name == "fc1"]
    w = _effective(s.model.get_layer("fc1"))
    assert found.n_clusters == len(np.unique(w)) == 4
    np.testing.assert_array_equal(found.decode(), w)


def test_fold_batch_norm_says_how_to_fold_a_lora_layer():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, name="c1")(inp))
    m = keras.Model(inp, L.Dense(4, name="fc2")(L.Flatten()(x)))
    m.get_layer("c1").enable_lora(2)
    m.get_layer("c1").lora_kernel_b.assign(np.random.RandomState(0).randn(2, 8).astype("float32"))
    reason = dict(dkm_tf.fold_batch_norm(m).skipped)["bn"]
    assert "LoRA" in reason and "merge_lora" in reason  # old: no way named
    s = dkm_tf.share_weights(m, n_clusters=216, overrides={"fc2": None})  # lossless K
    assert s.folded == [("c1", "bn")] and s.lora_merged == ["c1"]
    x = _x("conv", 3)
    np.testing.assert_allclose(np.asarray(s.model(x)), np.asarray(m(x)), atol=1e-5)


def test_cli_compress_of_a_saved_lora_model(tmp_path, capsys):
    from dkm_tf import cli  # noqa: PLC0415

    path = tmp_path / "lora.keras"
    _model("dense").save(path)
    out = tmp_path / "out"
    assert cli.run(["dkm-tf", "compress", "--model", str(path), "--n_clusters", "4",
                    "--output_dir", str(out)]) == 0  # old: 1, "Palettes do not match"
    capsys.readouterr()
    fc1 = dkm_tf.load_model(out / "clustered.keras").get_layer("fc1")
    assert not getattr(fc1, "lora_enabled", False)
    assert len(np.unique(_effective(fc1))) == 4  # old: 128, LoRA kept
