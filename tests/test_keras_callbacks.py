"""Our models and callbacks inside Keras' own training machinery.

Keras callbacks users combine with ours (``BackupAndRestore``, ``ModelCheckpoint``,
``EarlyStopping(restore_best_weights=True)``, ``TerminateOnNaN``), re-compiling, and loading
weights into a model clustered otherwise. Tiny Dense models, a few epochs each.
"""

import keras
import numpy as np
import pytest
from testing import interrupt_at

import dkm_tf

EPOCHS = 4


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)


def _base(use_bias=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", use_bias=use_bias, name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, use_bias=use_bias, name="d2")(h))


def _compile(model, lr=0.05):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _fit(model, callbacks, **kwargs):
    x, y = _data()
    kwargs.setdefault("epochs", EPOCHS)
    return model.fit(x, y, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks,
                     **kwargs)


def _state(model):
    return {w.path: np.array(w.numpy()) for w in model.weights}


def _assert_same(got, want):
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _latent():
    return _compile(dkm_tf.cluster_weights(_base(), 4, latent=True))


# --------------------------------------------------------------- ReassignClusters and resume
@pytest.fixture(scope="module")
def reassigned_each_epoch():
    """The uninterrupted reference: EPOCHS epochs with ReassignClusters(1) (its end state and
    the callback's history), fitted once for the tests that resume it."""
    reference = _latent()
    reassign = dkm_tf.ReassignClusters(1)
    _fit(reference, [reassign])
    return _state(reference), list(reassign.history)


@pytest.mark.parametrize("stop_at", [2, 3])
def test_reassign_resumed_by_backup_and_restore_matches_uninterrupted(tmp_path, stop_at,
                                                                      reassigned_each_epoch):
    """BackupAndRestore listed before ReassignClusters saves each epoch before its
    re-assignment; the resumed fit must redo it (the old code lost it: other indices)."""
    reference, history = reassigned_each_epoch
    assert sum(changed for _, changed in history) > 0  # re-assignment acts here
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        _fit(_latent(), [keras.callbacks.BackupAndRestore(backup), dkm_tf.ReassignClusters(1),
                         interrupt_at(stop_at)])
    resumed = _latent()
    _fit(resumed, [keras.callbacks.BackupAndRestore(backup), dkm_tf.ReassignClusters(1)])
    _assert_same(_state(resumed), reference)


def test_reassign_resumed_from_weights_checkpoint_with_initial_epoch(tmp_path):
    """ModelCheckpoint(save_weights_only=True) listed first (it saves before the re-assignment
    of every second epoch), then load_weights into a fresh cluster_weights model and
    fit(initial_epoch=2): the end state of the uninterrupted fit."""
    reference = _latent()
    _fit(reference, [dkm_tf.ReassignClusters(2)])
    path = tmp_path / "e{epoch}.weights.h5"
    with pytest.raises(KeyboardInterrupt):
        _fit(_latent(), [keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True),
                         dkm_tf.ReassignClusters(2), interrupt_at(2)])
    resumed = _latent()
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "e2.weights.h5")
    _fit(resumed, [dkm_tf.ReassignClusters(2)], initial_epoch=2)
    _assert_same(_state(resumed), _state(reference))


def test_reassign_resume_redo_is_idempotent_when_the_checkpoint_holds_it(
        tmp_path, reassigned_each_epoch):
    """BackupAndRestore listed after ReassignClusters already saved the re-assigned state:
    the redo at resume changes nothing."""
    reference = reassigned_each_epoch[0]
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        _fit(_latent(), [dkm_tf.ReassignClusters(1), keras.callbacks.BackupAndRestore(backup),
                         interrupt_at(2)])
    resumed, reassign = _latent(), dkm_tf.ReassignClusters(1)
    _fit(resumed, [reassign, keras.callbacks.BackupAndRestore(backup)])
    assert reassign.history[0] == (1, 0)
    _assert_same(_state(resumed), reference)


def test_reassign_callback_arguments():
    assert dkm_tf.ReassignClusters(np.int64(2)).every_n_epochs == 2
    assert dkm_tf.ReassignClusters(1, verbose=True).verbose == 1
    with pytest.raises(ValueError, match="`every_n_epochs`"):
        dkm_tf.ReassignClusters(2.0)
    with pytest.raises(ValueError, match="`verbose`"):
        dkm_tf.ReassignClusters(1, verbose="yes")


# --------------------------------------------------------------- NaN: TerminateOnNaN and strip
def _poison(wrapper, where=(0, 0)):
    kernel = wrapper.layer.kernel
    values = np.array(kernel.numpy())
    values[where] = np.nan
    kernel.assign(values)


def test_soft_strip_refuses_a_nan_kernel():
    """A soft model whose float kernel went NaN predicts NaN; stripping must not snap the
    NaN weights to finite centroids (the old code returned a finite, wrong kernel)."""
    model = dkm_tf.cluster_weights(_base(use_bias=False), 4, assignment="soft",
                                   temperature=1e-2)
    _poison(model.get_layer("cluster_d2"))
    x, _ = _data()
    assert not np.isfinite(model.predict(x[:4], verbose=0)).all()
    with pytest.raises(ValueError, match=r"cluster_d2.*'kernel' holds 1 NaN/Inf"):
        dkm_tf.strip_clustering(model)
    with pytest.raises(ValueError, match="NaN/Inf"):
        dkm_tf.palettes_of(model)


def test_soft_fit_stopped_by_terminate_on_nan_cannot_be_stripped():
    model = dkm_tf.cluster_weights(_base(use_bias=False), 4, assignment="soft",
                                   temperature=1e-2)
    model.compile(keras.optimizers.SGD(1e38),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = _fit(model, [keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    with pytest.raises(ValueError, match="NaN/Inf"):
        dkm_tf.strip_clustering(model)


def test_reassign_refuses_a_nan_latent_kernel_and_changes_no_index():
    model = dkm_tf.cluster_weights(_base(), 4, latent=True)
    first, second = model.get_layer("cluster_d1"), model.get_layer("cluster_d2")
    _poison(second)
    before = [np.array(w.numpy()) for w in model.weights]
    d1 = first.layer.kernel
    d1.assign(np.array(d1.numpy())[:, ::-1].copy())  # every d1 index would move
    with pytest.raises(ValueError, match=r"cluster_d2.*latent 'kernel' holds 1 NaN/Inf"):
        second.reassign_indices()
    x, y = _data()
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=1, verbose=0, callbacks=[dkm_tf.ReassignClusters(1)])
    idx = [w for w in second.weights if w.path.endswith("_indices")][0]
    np.testing.assert_array_equal(idx.numpy(), before[[w.path for w in model.weights]
                                                      .index(idx.path)])


def test_reassign_callback_checks_every_layer_before_changing_any():
    # the first layer was re-assigned before the second's NaN raised: half a re-assignment
    model = dkm_tf.cluster_weights(_base(), 4, latent=True)
    first, second = model.get_layer("cluster_d1"), model.get_layer("cluster_d2")
    d1 = first.layer.kernel
    d1.assign(np.array(d1.numpy())[:, ::-1].copy())  # every d1 index would move
    _poison(second)
    before = {w.path: np.array(w.numpy()) for w in model.weights}
    callback = dkm_tf.ReassignClusters(1)
    callback.set_model(model)
    with pytest.raises(ValueError, match=r"cluster_d2.*latent 'kernel' holds 1 NaN/Inf"):
        callback.on_epoch_end(0)
    for w in model.weights:
        np.testing.assert_array_equal(w.numpy(), before[w.path], err_msg=w.path)


# --------------------------------------------------------------- TemperatureSchedule
def test_temperature_schedule_refuses_a_hard_model_before_the_first_epoch():
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    model = _compile(dkm_tf.cluster_weights(_base(), 4))
    schedule = dkm_tf.TemperatureSchedule(1e-2)
    schedule.set_model(model)
    with pytest.raises(ValueError, match="assignment='soft'"):
        schedule.on_train_begin()
    with pytest.raises(ValueError, match="assignment='soft'"):
        _fit(model, [Probe(), dkm_tf.TemperatureSchedule(1e-2)])
    assert seen == []


# --------------------------------------------------------------- checked behaviour (guards)
def test_load_weights_into_another_k_fails_and_same_k_other_seed_loads_exactly(tmp_path):
    x, y = _data()
    model = _compile(dkm_tf.cluster_weights(_base(), 4))
    model.fit(x, y, epochs=1, verbose=0)
    model.save_weights(tmp_path / "m.weights.h5")
    other = dkm_tf.cluster_weights(_base(), 4, seed=3)
    other.load_weights(tmp_path / "m.weights.h5")
    _assert_same(_state(other), _state(model))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="shape"):
        dkm_tf.cluster_weights(_base(), 8).load_weights(tmp_path / "m.weights.h5")


def test_recompiled_model_trains_codebooks_not_indices():
    x, y = _data()
    model = _compile(dkm_tf.cluster_weights(_base(), 4))
    model.fit(x, y, epochs=1, verbose=0)
    before = _state(model)
    model.compile(keras.optimizers.SGD(0.5),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    after = _state(model)
    for key, value in before.items():
        moved = not np.array_equal(after[key], value)
        assert moved == key.endswith(("_codebook", "bias")), key


def test_early_stopping_restores_codebooks_and_indices_of_one_epoch():
    snaps = {}

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snaps[epoch] = _state(self.model)

    model = _latent()
    stop = keras.callbacks.EarlyStopping("loss", patience=1, mode="max",
                                         restore_best_weights=True)
    _fit(model, [dkm_tf.ReassignClusters(1), Snap(), stop])
    assert stop.best_epoch == 0 and len(snaps) == 2
    _assert_same(_state(model), snaps[0])


def test_attach_regularizer_to_a_clustered_model_says_why():
    with pytest.raises(ValueError, match="ClusterWeights layers already share their kernels"):
        dkm_tf.attach_regularizer(dkm_tf.cluster_weights(_base(), 4), 4, include_dense=True)
