"""Session 26, review of the carried loss: an uncompiled ``share_weights`` /
``strip_clustering`` copy carries its source's whole compile settings (``loss_weights``,
metrics, keys renamed to its own outputs), not only the loss, in memory and through save."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import dkm_tf  # noqa: E402
from dkm_tf.core.loss_kind import source_loss  # noqa: E402
from dkm_tf.training.compile_settings import compile_settings  # noqa: E402

L = keras.layers


def _xy(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype("float32"), rng


def _two_heads():
    """Outputs a (1 unit, "mse") and b (3 classes), b weighted 0, a metric on a."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    h = L.Dense(12, activation="relu", name="h")(inp)
    model = keras.Model(inp, {"a": L.Dense(1, name="a")(h), "b": L.Dense(3, name="b")(h)})
    model.compile("adam", loss={"a": "mse", "b": "sparse_categorical_crossentropy"},
                  loss_weights={"a": 1.0, "b": 0.0}, metrics={"a": ["mae"]})
    x, rng = _xy()
    y = {"a": rng.normal(size=(48, 1)).astype("float32"), "b": rng.integers(0, 3, 48)}
    model.fit(x, y, epochs=1, verbose=0)
    return model, x, y


def _classifier(metrics=("accuracy",)):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    out = L.Dense(3, name="o")(L.Dense(12, activation="relu", name="h")(inp))
    model = keras.Model(inp, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=list(metrics) or None)
    x, rng = _xy()
    y = rng.integers(0, 3, 48)
    model.fit(x, y, epochs=1, verbose=0)
    return model, x, y


def test_finetune_of_a_copy_trains_with_the_sources_loss_weights():
    # the copy was trained on a + b unweighted (b's cross-entropy ~1.1 added to a's mse)
    model, x, y = _two_heads()
    copy = dkm_tf.share_weights(model, 8).model
    assert compile_settings(copy)["loss_weights"] == {"a": 1.0, "b": 0.0}
    start, _, _ = dkm_tf.finetune(copy, (x, y), n_clusters=4, epochs=0, seed=0)
    out = start.predict(x, verbose=0)
    mse = float(np.mean((np.asarray(out["a"], np.float64) - y["a"]) ** 2))  # b weighs 0
    _, _, history = dkm_tf.finetune(copy, (x, y), n_clusters=4, epochs=1, seed=0,
                                    batch_size=48, learning_rate=1e-6)
    assert history.history["loss"][0] == pytest.approx(mse, rel=1e-4)
    assert "a_mae" in history.history  # the source's metric too


def test_a_saved_copy_keeps_its_sources_loss_weights_and_metrics(tmp_path):
    model, _, _ = _two_heads()
    copy = dkm_tf.share_weights(model, 8).model
    copy.save(tmp_path / "c.keras")
    back = compile_settings(dkm_tf.load_model(tmp_path / "c.keras"))
    assert back["loss_weights"] == {"a": 1.0, "b": 0.0}
    assert back["metrics"] == {"a": ["mae"]}


def test_a_copy_of_a_classifier_keeps_its_accuracy():
    # f6c1785 (the default loss) gave ['accuracy', 'loss']; the carried loss gave ['loss']
    model, x, y = _classifier()
    copy = dkm_tf.share_weights(model, 8).model
    tuned, _, history = dkm_tf.finetune(copy, (x, y), n_clusters=4, epochs=1, seed=0)
    assert sorted(history.history) == ["accuracy", "loss"]
    loss, accuracy = tuned.evaluate(x, y, verbose=0)
    expected = float(np.mean(np.argmax(tuned.predict(x, verbose=0), -1) == y))
    assert accuracy == pytest.approx(expected, abs=1e-6)


def test_a_copy_of_a_classifier_compiled_without_metrics_gets_accuracy():
    model, x, y = _classifier(metrics=())
    copy = dkm_tf.share_weights(model, 8).model
    assert compile_settings(copy)["metrics"] == ["accuracy"]
    _, _, history = dkm_tf.finetune(copy, (x, y), n_clusters=4, epochs=1, seed=0)
    assert sorted(history.history) == ["accuracy", "loss"]


def test_a_copy_of_a_regressor_gets_no_accuracy():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(inp))
    model.compile("adam", "mse")
    assert compile_settings(dkm_tf.share_weights(model, 8).model)["metrics"] is None


def _stripped_copy():
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(L.Dense(12, activation="relu",
                                                            name="h")(inp)))
    clustered = dkm_tf.cluster_weights(model, 8)
    name = clustered.output_names[0]
    clustered.compile("adam", loss={name: keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)}, loss_weights={name: 2.0}, metrics={name: ["accuracy"]})
    return dkm_tf.strip_clustering(clustered)[0]


def test_strip_clustering_renames_the_carried_keys_to_its_outputs(tmp_path):
    stripped = _stripped_copy()
    assert stripped.output_names == ["o"]
    assert list(source_loss(stripped)) == ["o"]
    settings = compile_settings(stripped)
    assert settings["loss_weights"] == {"o": 2.0} and list(settings["metrics"]) == ["o"]
    stripped.save(tmp_path / "s.keras")
    assert list(source_loss(dkm_tf.load_model(tmp_path / "s.keras"))) == ["o"]


def test_dkm_retrain_of_a_stripped_copy_with_a_loss_dict_is_not_refused():
    # ValueError "Expected keys ['o'] in loss dict" (keyed by cluster_o)
    stripped = _stripped_copy()
    x, rng = _xy()
    y = rng.integers(0, 3, 48)
    retrained, _ = dkm_tf.dkm_retrain(stripped, (x, y), n_clusters=4, epochs=1)
    assert retrained.output_names == ["o"]
    result = dkm_tf.compress(stripped, (x, y), method="dkm", n_clusters=4, dkm_epochs=1,
                             finetune_epochs=1, verbose=0)
    assert result.model is not None


def _stateful():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4, 3), batch_size=8)
    model = keras.Model(inp, L.Dense(3)(L.LSTM(6, stateful=True)(inp)))
    x = np.random.default_rng(0).normal(size=(8, 4, 3)).astype("float32")
    return model, x


def test_the_probability_probe_leaves_a_stateful_rnns_state_alone():
    from dkm_tf import pipeline_metrics as pm

    model, x = _stateful()
    lstm = model.layers[1]
    before = [np.array(v.numpy()) for v in lstm.states]
    assert pm.logits_note(model, [pm.AGREEMENT_USE], None, ((x, None),)) is not None
    after = [np.array(v.numpy()) for v in lstm.states]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_a_stateful_float_model_agrees_with_itself():
    # the probe moved the state: accuracy_before (the float model's agreement) read 0.875
    model, x = _stateful()
    result = dkm_tf.compress(model, (x, None), (x, None), method="wr", n_clusters=4,
                             verbose=0)
    assert result.accuracy_before == 1.0


@pytest.mark.parametrize("loss", [["mse"], {"o": "mse"}])
def test_the_carried_loss_note_names_a_list_or_dict_loss(loss):
    # read "trained with the loss 'ListWrapper'" / "'_DictWrapper'" (Keras' tracked types)
    from dkm_tf.training.compile_settings import carried_loss_note

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(1, name="o")(L.Dense(8, name="h")(inp)))
    model.compile("adam", loss)
    note = carried_loss_note(dkm_tf.share_weights(model, 8).model)
    assert note.startswith("trained with the loss 'mse' of the model it was copied from")


def test_the_carried_loss_note_names_each_output_loss():
    from dkm_tf.training.compile_settings import carried_loss_note

    model, _, _ = _two_heads()
    note = carried_loss_note(dkm_tf.share_weights(model, 8).model)
    assert "the loss 'a: mse, b: sparse_categorical_crossentropy' of" in note


def _saved_regressor_copy(tmp_path, units=3):
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, L.Dense(units, name="o")(L.Dense(16, activation="relu",
                                                               name="h")(inp)))
    model.compile("adam", "mse")
    path = str(tmp_path / "c.keras")
    dkm_tf.share_weights(model, 8).model.save(path)
    return path, keras.models.load_model(path, compile=False)


def test_the_cli_notes_do_not_call_a_saved_copy_compiled(tmp_path):
    # "c.keras was compiled with loss 'mse'" / "the model is compiled with loss 'mse'"
    from dkm_tf.cli_custom import loss_note
    from dkm_tf.core.custom_code import compiled_loss_name
    from dkm_tf.pipeline_metrics import not_class_scores

    path, model = _saved_regressor_copy(tmp_path)
    assert loss_note(path, "finetune", None, model=model) is None  # trained with it (h27)
    note = loss_note(path, "finetune", None)  # a loss it cannot tell: the cross-entropy
    assert "carries the loss 'mse' of the model it was copied from" in note
    assert "compiled with" not in note.split(";")[0]
    why = not_class_scores(model, compiled_loss_name(path))
    assert why.startswith("the model is read by the loss 'mse' of the model it was copied from")


def test_to_tflite_script_does_not_call_a_saved_copy_compiled(tmp_path):
    from dkm_tf.export.cli import _compile_as_classifier

    path, model = _saved_regressor_copy(tmp_path)
    note = _compile_as_classifier(model, path)
    assert "the file carries the loss 'mse' of the model it was copied from (a regressor)" in note


def test_load_model_says_only_a_keras_file_keeps_a_copys_loss(tmp_path):
    # an .h5 copy reloads without its carried loss: the docstring said nothing of it
    from dkm_tf.core.loss_kind import source_loss as carried

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(inp))
    model.compile("adam", "mse")
    copy = dkm_tf.share_weights(model, 8).model
    copy.save(tmp_path / "c.h5")
    assert carried(dkm_tf.load_model(tmp_path / "c.h5")) is None
    doc = " ".join(dkm_tf.load_model.__doc__.split())
    assert "Only a ``.keras`` file keeps them: a copy saved to ``.h5`` loads back" in doc


def test_a_saved_metric_unknown_at_load_drops_only_itself():
    # a custom metric not registered where the file loads must not cost the carried loss
    from dkm_tf.core.loss_kind import FILE_KEY, SETTINGS_KEY, restore_source_loss

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(inp))
    unknown = {"module": None, "class_name": "NoSuchMetric", "config": {},
               "registered_name": "nowhere>NoSuchMetric"}
    config = {"build_config": {FILE_KEY: "mse", SETTINGS_KEY: {
        "loss_weights": [2.0], "metrics": [unknown]}}}
    assert restore_source_loss(model, config) is None
    assert source_loss(model) == "mse"
    settings = compile_settings(model)
    assert settings["loss_weights"] == [2.0] and settings["metrics"] is None


@pytest.mark.parametrize("metrics", [["accuracy"], None])
def test_a_copy_of_a_distilled_model_keeps_the_distillation_accuracy(metrics):
    # Keras' "accuracy" on [one-hot | teacher logits] targets is no accuracy of the labels
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, L.Dense(3, name="o")(inp))
    model.compile("adam", dkm_tf.DistillationLoss(3), metrics=metrics)
    got = compile_settings(dkm_tf.share_weights(model, 8).model)["metrics"]
    assert len(got) == 1 and isinstance(got[0], dkm_tf.DistillationAccuracy)


def test_the_default_loss_probe_leaves_a_stateful_rnns_state_alone():
    # weighting="fisher" of an uncompiled model reads its outputs on x to pick from_logits
    from dkm_tf.training.common import default_loss

    model, x = _stateful()
    model = keras.Model(model.inputs[0], L.Lambda(lambda t: t * 1.0)(model.outputs[0]))
    lstm = model.layers[1]  # a last op of unknown activation: its outputs are read
    before = [np.array(v.numpy()) for v in lstm.states]
    assert default_loss(model, x=x).get_config()["from_logits"] is True
    after = [np.array(v.numpy()) for v in lstm.states]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_the_probability_probe_reads_a_model_built_with_a_list_of_inputs():
    # model(x) of keras.Model([inp], ...) warns about the input structure (predict does not)
    from dkm_tf import pipeline_metrics as pm

    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    out = L.Lambda(lambda t: keras.ops.log_softmax(t))(L.Dense(3)(inp))
    model = keras.Model([inp], out)
    x, _ = _xy(8)
    assert pm.logits_note(model, [pm.AGREEMENT_USE], None, ((x, None),)) is None
