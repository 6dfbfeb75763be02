"""Keras 3 training-loop features with dkm_tf's training layers and callbacks.

XLA (``jit_compile``), ``run_eagerly``, ``steps_per_execution``, optimizer options (EMA,
gradient accumulation, AdamW weight decay), custom loops and frozen models, each against a
reference run without the feature or an independent numpy computation.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from testing import assert_all_close, tf_backend_only, to_numpy  # noqa: E402

import dkm_tf  # noqa: E402

pytestmark = tf_backend_only("jit_compile / steps_per_execution of the TensorFlow trainer")

RNG = np.random.default_rng(15)
X = RNG.normal(size=(64, 6)).astype("float32")
Y = RNG.integers(0, 3, 64)
MODES = {"hard": {}, "soft": {"assignment": "soft", "temperature": 0.05},
         "latent": {"latent": True}}


def _dense(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _clustered(mode, optimizer=None, **compile_kw):
    model = dkm_tf.cluster_weights(_dense(), n_clusters=4, **MODES[mode])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss=_loss(), **compile_kw)
    return model


def _values(variables):
    """``{name: value}``, names without the model's and layers' numbered prefixes."""
    return {f"{i}:" + v.path.rsplit("/", 1)[-1]: to_numpy(v) for i, v in enumerate(variables)}


def _slot(wrapper, what):
    """The wrapper's ``"codebook"`` or ``"indices"`` variable (one clustered kernel)."""
    found = [v for v in wrapper.weights if v.path.endswith("kernel_" + what)]
    assert len(found) == 1
    return found[0]


def _assert_strips(model, k=4):
    """At most ``k`` values per kernel after strip_clustering, and the same outputs (hard)."""
    plain, _ = dkm_tf.strip_clustering(model)
    for layer in plain.layers:
        assert len(np.unique(to_numpy(layer.kernel))) <= k
    return plain


# ------------------------------------------------------------ RefreshKMeans, steps_per_execution
def _regularized(steps_per_execution=1, every_n_steps=4, **compile_kw):
    model = _dense()
    dkm_tf.attach_regularizer(model, n_clusters=3, lam=0.05, include_dense=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss(),
                  steps_per_execution=steps_per_execution, **compile_kw)
    refresh = dkm_tf.RefreshKMeans(every_n_epochs=None, every_n_steps=every_n_steps)
    at = []
    original = refresh.refresh

    def recording():
        at.append(int(model.optimizer.iterations.numpy()))
        return original()

    refresh.refresh = recording
    return model, refresh, at


@pytest.mark.parametrize("spe, every, jit", [(4, 4, False), (4, 8, True), (3, 8, False)])
def test_refresh_every_n_steps_counts_batches_under_steps_per_execution(spe, every, jit):
    """Keras calls on_train_batch_end once per execution of ``spe`` batches; the old code
    counted calls, so every_n_steps=4 with spe=4 refreshed after batches 0 and 16 only (not
    4, 8, 12) and trained other weights (max diff 0.013)."""
    runs = []
    for s, kw in ((1, {}), (spe, {"jit_compile": jit})):
        model, refresh, at = _regularized(s, every, **kw)
        model.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[refresh])
        assert at == list(range(0, 17, every))  # 8 batches per epoch, 2 epochs
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        assert_all_close(a, b, atol=1e-6)


@pytest.mark.parametrize("spe, every, message", [
    (2, 3, "a multiple of the 8 steps per epoch or of steps_per_execution=2"),
    (3, 3, "a multiple of the 8 steps per epoch: with compile.steps_per_execution=3")])
def test_refresh_due_inside_an_execution_is_refused_before_training(spe, every, message):
    """A refresh due inside an execution cannot run after its batch: refused at the start of
    fit, before any step (the old code refreshed after batches 0, 6, 12 for every_n_steps=3
    with spe=2, against 0, 3, 6, 9, 12, 15)."""
    model, refresh, at = _regularized(spe, every)
    before = model.get_weights()
    with pytest.raises(ValueError, match=message + ".*every_n_steps=" + str(every)):
        model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[refresh])
    assert at == [] and int(model.optimizer.iterations.numpy()) == 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ frozen soft wrapper
def test_frozen_soft_wrapper_fit_changes_nothing():
    """A frozen soft model (trainable=False, re-compiled) must leave every variable and its
    outputs alone in fit, as a frozen BatchNormalization does. The old code moved the DKM
    warm-start centroids at each training call (codebook by 0.0056 in 3 epochs; predictions
    by 7e-4, so the strip's palettes changed too)."""
    model = _clustered("soft")
    model.trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss())
    before, pred = _values(model.weights), model.predict(X, verbose=0)
    with pytest.warns(UserWarning, match="does not have any trainable weights"):  # Keras'
        model.fit(X, Y, batch_size=16, epochs=3, verbose=0)
    for path, value in _values(model.weights).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
    np.testing.assert_array_equal(model.predict(X, verbose=0), pred)
    model.trainable = True  # unfrozen: the warm start moves again
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss())
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0)
    after = _values(model.weights)
    moved = [k for k in after if k.endswith("codebook") and np.abs(after[k] - before[k]).max()
             > 1e-4]
    assert moved


# ------------------------------------------------------------ XLA, steps_per_execution, eager
def test_hard_codebook_step_under_xla_matches_numpy():
    """One SGD step with jit_compile=True: each centroid moves by -lr times the sum of the
    gradients of its member weights, computed on the plain model holding the decoded kernel."""
    import tensorflow as tf  # noqa: PLC0415

    model = _clustered("hard", jit_compile=True)
    plain, _ = dkm_tf.strip_clustering(model)
    with tf.GradientTape() as tape:
        loss = _loss()(Y[:16], plain(X[:16]))
    grads = tape.gradient(loss, [layer.kernel for layer in plain.layers])
    wrappers = model.layers
    expected = []
    for wrapper, g in zip(wrappers, grads):
        cb = to_numpy(_slot(wrapper, "codebook"))  # (1, K, 1)
        idx = to_numpy(_slot(wrapper, "indices")).astype(np.int64).reshape(-1)
        units = dkm_tf.to_units(to_numpy(g).astype(np.float64), wrapper._slots[0].layout)  # noqa: SLF001
        sums = np.bincount(idx, weights=units.reshape(-1), minlength=4)
        expected.append(cb.reshape(-1) - 0.1 * sums)
    model.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, shuffle=False)
    for wrapper, want in zip(wrappers, expected):
        assert_all_close(to_numpy(_slot(wrapper, "codebook")).reshape(-1), want, atol=1e-6)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_xla_steps_per_execution_and_eager_train_as_the_reference(mode):
    """jit_compile=True with steps_per_execution=4, and run_eagerly=True, train the same
    codebooks / kernels as the default graph step, and strip to <= K values per kernel."""
    runs = {}
    for name, kw in (("ref", {}), ("xla", {"jit_compile": True, "steps_per_execution": 4}),
                     ("eager", {"run_eagerly": True})):
        model = _clustered(mode, **kw)
        model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        runs[name] = _values(model.trainable_variables + model.non_trainable_variables)
        _assert_strips(model)
    assert runs["ref"].keys() == runs["xla"].keys() == runs["eager"].keys()
    for path, value in runs["ref"].items():
        assert_all_close(runs["xla"][path], value, atol=1e-5, msg=path)
        assert_all_close(runs["eager"][path], value, atol=1e-6, msg=path)


# ------------------------------------------------------------ optimizer options
@pytest.mark.parametrize("mode", ["hard", "latent"])
def test_ema_swaps_in_averaged_codebooks_and_leaves_indices(mode):
    """use_ema=True: at the end of fit the codebook is the numpy EMA (momentum 0.99, the
    first step's value at step 1) of its per-step values; the indices are never averaged;
    the stripped model computes what the EMA model computes."""
    model = _clustered(mode, keras.optimizers.SGD(0.1, use_ema=True))
    wrapper = model.layers[0]
    cb, idx = _slot(wrapper, "codebook"), _slot(wrapper, "indices")
    idx0, seen = to_numpy(idx).copy(), []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(to_numpy(cb).copy()))
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False, callbacks=[record])
    ema = seen[0]
    for value in seen[1:]:
        ema = 0.99 * ema + 0.01 * value
    assert np.abs(seen[-1] - ema).max() > 1e-3  # the swap is visible
    assert_all_close(to_numpy(cb), ema, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(idx), idx0)
    plain = _assert_strips(model)
    assert_all_close(plain.predict(X, verbose=0), model.predict(X, verbose=0), atol=1e-6)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_adamw_weight_decay_never_touches_indices_or_temperature(mode):
    model = _clustered(mode, keras.optimizers.AdamW(0.01, weight_decay=0.5))
    frozen = {v.path: to_numpy(v).copy() for v in model.non_trainable_variables
              if "indices" in v.path or "temperature" in v.path}
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    for v in model.non_trainable_variables:
        if v.path in frozen:
            np.testing.assert_array_equal(to_numpy(v), frozen[v.path], err_msg=v.path)
    _assert_strips(model)


def test_gradient_accumulation_equals_the_larger_batch():
    """gradient_accumulation_steps=2 over batches of 8 = one step per batch of 16 (hard)."""
    a = _clustered("hard", keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))
    a.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    b = _clustered("hard")
    b.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for x, y in zip(a.trainable_variables, b.trainable_variables):
        assert_all_close(to_numpy(x), to_numpy(y), atol=1e-6)


# ------------------------------------------------------------ custom loops
@pytest.mark.parametrize("mode", sorted(MODES))
def test_gradient_tape_loop_and_train_on_batch_match_fit(mode):
    import tensorflow as tf  # noqa: PLC0415

    fitted = _clustered(mode)
    fitted.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    taped, on_batch = _clustered(mode), _clustered(mode)
    for i in range(0, 64, 16):
        with tf.GradientTape() as tape:
            loss = _loss()(Y[i:i + 16], taped(X[i:i + 16], training=True)) + sum(taped.losses)
        grads = tape.gradient(loss, taped.trainable_variables)
        assert all(g is not None for g in grads)
        taped.optimizer.apply_gradients(zip(grads, taped.trainable_variables))
        on_batch.train_on_batch(X[i:i + 16], Y[i:i + 16])
    want = _values(fitted.weights)
    for model in (taped, on_batch):
        for path, value in _values(model.weights).items():
            assert_all_close(value, want[path], atol=1e-6, msg=path)
    assert_all_close(on_batch.test_on_batch(X, Y), fitted.evaluate(X, Y, verbose=0), atol=1e-6)


# ------------------------------------------------------------ the penalty metric under XLA
def test_penalty_metric_under_xla_matches_numpy():
    """kmeans_penalty and val_kmeans_penalty with jit_compile and steps_per_execution=2:
    the validation value is (lam/2) sum ||w - mean of its cluster||^2 of the final weights
    (no refresh after the first), computed in numpy from each regularizer's assignment."""
    model = _dense()
    dkm_tf.attach_regularizer(model, n_clusters=3, lam=0.05, include_dense=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=_loss(), jit_compile=True,
                  steps_per_execution=2)
    refresh = dkm_tf.RefreshKMeans(every_n_epochs=5)
    hist = model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False,
                     validation_data=(X[:16], Y[:16]), callbacks=[refresh])
    total = 0.0
    for var, reg in dkm_tf.kmeans_regularizers(model):
        w, a = to_numpy(var).astype(np.float64).reshape(-1), reg.assignment
        means = np.array([w[a == k].mean() if np.any(a == k) else 0.0
                          for k in range(reg.n_clusters + 1)])
        total += 0.5 * reg.lam * np.sum((w - means[a]) ** 2)
    assert refresh.refresh_count == 1
    assert_all_close(hist.history["val_kmeans_penalty"][0], total, rtol=1e-5)
    assert hist.history["kmeans_penalty"][0] > total  # the penalty fell during training
