"""Fixes of the review of bcee330 / 78599ac (LoRA / quantized layers, the training loop).

Measured on 78599ac (each test fails there):
- ``palettes_of`` compared a palette with a 32-bit codebook against 16-bit storage, so the
  per-channel K=4 palettes of a float16 model that ``share_weights`` reported were dropped;
- a float backbone with an int8 Dense head was refused by ``share_weights`` /
  ``cluster_weights`` / ``compress`` with ``overrides={"q": None}`` and by
  ``attach_regularizer(include_dense=False)`` (all worked at ca21de9, correct);
- ``RefreshKMeans(every_n_steps=8)`` with ``steps_per_execution=3`` and 8 batches per epoch
  refreshed after batches 0, 8, 16, 22, 30, ... (Keras reports a short last call as full);
  with data of unknown length the count drifted every epoch;
- ``compress`` of a compiled LoRA model trained its merged copy with the default loss, not
  the model's ``mse``.
"""

import keras
import numpy as np
import pytest
from testing import to_numpy

import dkm_tf

L = keras.layers
X = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype("float32")


def _float16_model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    x = L.Dense(16, name="fc1", dtype="float16")(inp)
    return keras.Model(inp, L.Dense(4, name="fc2", dtype="float16")(x))


def test_palettes_of_a_float16_model_finds_what_share_weights_made():
    shared = dkm_tf.share_weights(_float16_model(), n_clusters=4, granularity="per_channel",
                                  verbose=False)
    found = {p.layer_name: p for p in dkm_tf.palettes_of(shared.model)}
    assert sorted(found) == ["fc1", "fc2"]
    for p in shared.palettes:
        assert found[p.layer_name].n_clusters == 4
        np.testing.assert_array_equal(found[p.layer_name].decode(), p.decode())


def _backbone_with_int8_head():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    x = L.Flatten()(L.Conv2D(8, 3, name="c1")(inp))
    model = keras.Model(inp, L.Dense(4, name="q")(x))
    model.get_layer("q").quantize("int8")
    return model


def _with_kernel(model, kernel):
    """numpy reference: ``model``'s output with c1's kernel replaced (then restored)."""
    c1 = model.get_layer("c1")
    old = to_numpy(c1.kernel)
    c1.kernel.assign(kernel)
    try:
        return to_numpy(model(X))
    finally:
        c1.kernel.assign(old)


@pytest.mark.parametrize("entry", ["share", "cluster", "compress"])
def test_an_int8_head_left_float_by_overrides_leaves_the_backbone_clusterable(entry):
    model = _backbone_with_int8_head()
    if entry == "share":
        out = dkm_tf.share_weights(model, n_clusters=4, overrides={"q": None}, verbose=False)
        copy = out.model
    elif entry == "cluster":
        copy, _ = dkm_tf.strip_clustering(
            dkm_tf.cluster_weights(model, n_clusters=4, overrides={"q": None}))
    else:
        out = dkm_tf.compress(model, method="wr", n_clusters=4, overrides={"q": None},
                              verbose=0)
        copy = out.model
    kernel = to_numpy(copy.get_layer("c1").kernel)
    assert len(np.unique(kernel)) <= 4
    q0, q1 = model.get_layer("q"), copy.get_layer("q")
    assert q1.dtype_policy.quantization_mode == "int8"
    for a, b in zip(q0.weights, q1.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_allclose(to_numpy(copy(X)), _with_kernel(model, kernel), atol=1e-5)


def test_an_int8_head_not_left_float_is_refused_naming_the_way_out():
    with pytest.raises(ValueError, match=r"'q' \(int8.*overrides=\{name: None\}"):
        dkm_tf.share_weights(_backbone_with_int8_head(), n_clusters=4, verbose=False)
    with pytest.raises(ValueError, match=r"'q' \(int8.*include_dense=False, or layers="):
        dkm_tf.attach_regularizer(_backbone_with_int8_head(), 4, include_dense=True)


def test_attach_regularizer_without_dense_layers_ignores_an_int8_head():
    model = _backbone_with_int8_head()
    dkm_tf.attach_regularizer(model, 4, include_dense=False)
    assert type(model.get_layer("c1").kernel_regularizer).__name__ == \
        "SpectralKMeansRegularizer"


def _regularized(spe, every):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(3)(L.Dense(6)(inp)))
    dkm_tf.attach_regularizer(model, 2, include_dense=True)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=spe)
    refresh = dkm_tf.RefreshKMeans(every_n_epochs=None, every_n_steps=every,
                                   log_penalty=False)
    at, original = [], refresh.refresh

    def recording():
        at.append(int(model.optimizer.iterations.numpy()))
        return original()

    refresh.refresh = recording
    return model, refresh, at


def test_refresh_at_each_epoch_end_when_the_last_execution_is_short():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8)).astype("float32"), rng.integers(0, 3, 32)
    model, refresh, at = _regularized(3, 8)  # 8 batches of 4: calls of 3, 3, 2 batches
    model.fit(x, y, batch_size=4, epochs=6, verbose=0, shuffle=False, callbacks=[refresh])
    assert at == list(range(0, 49, 8))


def test_refresh_per_step_with_data_of_unknown_length_and_several_steps_per_call_is_refused():
    import tensorflow as tf  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(36, 8)).astype("float32"), rng.integers(0, 3, 36)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).filter(lambda a, b: True)
    model, refresh, at = _regularized(2, 4)
    with pytest.raises(ValueError, match=r"every_n_steps.*None with data of unknown length.*"
                                         r"steps_per_execution=2"):
        model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[refresh])
    assert at == [] and int(model.optimizer.iterations.numpy()) == 0


def test_compress_of_a_compiled_lora_model_trains_with_its_own_loss():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(1, name="o")(L.Dense(16, name="t", activation="relu")(inp)))
    model.get_layer("t").enable_lora(2)
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    out = dkm_tf.compress(model, (x, y), method="finetune", n_clusters=4, finetune_epochs=1,
                          verbose=0)
    assert out.model.loss == "mse"
    assert any(note.startswith("LoRA merged") for note in out.notes)


def test_a_protocol_layer_returning_a_tensor_is_told_to_return_variables():
    class Tensorish(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 5), name="w")

        def call(self, x):
            return x @ self.w

        def get_clusterable_weights(self):
            return [("w", self.w * 1.0, "dense")]

    layer = Tensorish()
    layer(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="must return the layer's keras.Variable objects"):
        dkm_tf.ClusterWeights(layer, n_clusters=2)


def test_the_lora_note_names_only_the_weights_lora_changed():
    """Measured before: a MultiHeadAttention with LoRA on its query projection only got the
    "LoRA merged" note on all four projections' palettes (the note was keyed by layer)."""
    keras.utils.set_random_seed(0)
    q = keras.Input((5, 8))
    mha = L.MultiHeadAttention(2, 4, name="mha")
    model = keras.Model(q, L.Dense(3, name="fc")(mha(q, q)))
    mha._query_dense.enable_lora(2)  # noqa: SLF001 - Keras keeps the projections private
    shared = dkm_tf.share_weights(model, n_clusters=4, verbose=False)
    noted = sorted((p.layer_name, p.weight_name) for p in shared.palettes
                   if "LoRA merged" in (p.note or ""))
    assert noted == [("mha", "query_dense.kernel")]
    assert shared.lora_merged == ["mha"]
