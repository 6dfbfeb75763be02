"""Training scenarios run on one Keras backend, in a process of their own.

Keras picks its backend at import, so the tests start this script with ``KERAS_BACKEND`` set
(tests/test_backend_jax.py, tests/test_backend_torch.py) and assert on the JSON it prints as
its last stdout line: ``{"backend": ..., "<scenario>": {...}, ...}``. Every scenario uses
weights and data drawn from numpy with fixed seeds (not Keras' per-backend random
initialisers), so the same scenario gives the same numbers on every backend up to float
rounding. The numpy references (penalty, distillation loss) are computed here, independently
of the library.

Usage: ``KERAS_BACKEND=jax python tests/_backend_scenarios.py wrapper regularizer ...``
"""

import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dkm_tf  # noqa: E402

K = 4
LAM = 0.05
N_CLASSES = 3


def model(seed=0):
    """Conv -> Conv -> Dense with numpy-drawn weights (the same on every backend)."""
    L = keras.layers
    inp = keras.Input((6, 6, 1))
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="c2")(h)
    out = L.Dense(N_CLASSES, name="out")(L.Flatten(name="flat")(h))
    m = keras.Model(inp, out, name="backend_net")
    rng = np.random.default_rng(seed)
    m.set_weights([(rng.standard_normal(w.shape) * 0.4).astype(np.float32)
                   for w in m.get_weights()])
    return m


def data(n=48, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].sum(axis=(1, 2, 3)) > 0).astype(np.int64) + (x[:, 3:, 3:].mean(
        axis=(1, 2, 3)) > 0.3).astype(np.int64)
    return x, y


def sgd(lr):
    return keras.optimizers.SGD(learning_rate=lr)


def compile_(m, lr):
    m.compile(optimizer=sgd(lr), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))


def np_sce(logits, y):
    """Mean sparse softmax cross-entropy from logits (numpy, float64)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def np_penalty(model_, lam=LAM):
    """(λ/2) Σ ‖w - mean of its cluster‖² over every regularized kernel (scalar units)."""
    total = 0.0
    for var in model_.trainable_weights:
        reg = var.regularizer
        if not isinstance(reg, dkm_tf.SpectralKMeansRegularizer):
            continue
        w = np.asarray(var.numpy(), np.float64).reshape(-1)
        a = np.asarray(reg.assignment)
        for j in np.unique(a):
            total += float(np.sum((w[a == j] - w[a == j].mean()) ** 2))
    return 0.5 * lam * total


def kernels(m):
    return {v.path: np.asarray(v.numpy()) for v in m.weights if v.path.endswith("kernel")}


def palette_checks(plain, palettes):
    """Unique values per kernel, and whether each kernel is exactly codebook[indices]."""
    by_layer = {layer.name: layer for layer in plain.layers}
    out = {}
    for p in palettes:
        kernel = np.asarray(by_layer[p.layer_name].kernel.numpy())
        out[p.layer_name] = {
            "unique": int(np.unique(kernel).size),
            "n_clusters": int(p.n_clusters),
            "decoded_equal": bool(np.array_equal(p.decode().reshape(kernel.shape), kernel)),
            "in_codebook": bool(np.all(np.isin(kernel, np.asarray(p.codebook)))),
        }
    return out


# ------------------------------------------------------------------ scenarios
def s_wrapper():
    x, y = data()
    wrapped = dkm_tf.cluster_weights(model(), n_clusters=K, seed=0)
    compile_(wrapped, 0.05)
    hist = wrapped.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    pw = wrapped.predict(x, verbose=0)
    pp = plain.predict(x, verbose=0)
    return {"loss": hist.history["loss"], "palettes": palette_checks(plain, palettes),
            "strip_max_diff": float(np.max(np.abs(pw - pp))),
            "kernels": {k: v.reshape(-1).tolist() for k, v in kernels(plain).items()},
            "logits": pp[:8].tolist()}


def s_regularizer():
    x, y = data()
    m = model()
    dkm_tf.attach_regularizer(m, n_clusters=K, lam=LAM, unit="scalar", include_dense=True,
                              seed=0)
    compile_(m, 0.0)
    out = {}
    # evaluate's loss = data loss + penalty: the penalty the compiled step really uses
    for step in ("attached", "after_set_weights_and_refresh"):
        if step != "attached":
            m.set_weights(model(seed=7).get_weights())
            dkm_tf.refresh_regularizers(m)
        loss = float(m.evaluate(x, y, batch_size=len(x), verbose=0))
        data_loss = np_sce(m.predict(x, verbose=0), y)
        out[step] = {"penalty_in_loss": loss - data_loss, "reference": np_penalty(m),
                     "eager": float(sum(keras.ops.convert_to_numpy(v) for v in m.losses))}
    compile_(m, 0.05)
    cb = dkm_tf.RefreshKMeans(every_n_epochs=1, log_penalty="epoch")
    hist = m.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[cb])
    out["loss"] = hist.history["loss"]
    out["logged_penalty"] = hist.history.get("kmeans_penalty")
    out["refresh_count"] = cb.refresh_count
    out["kernels"] = {k: v.reshape(-1).tolist() for k, v in kernels(m).items()}
    # a regularizer put on a kernel by hand, never refreshed before training
    for with_callback in (False, True):
        lazy = model()
        var = lazy.get_layer("c1").kernel
        var.regularizer = dkm_tf.SpectralKMeansRegularizer(K, LAM, unit="scalar")
        compile_(lazy, 0.0)
        try:
            lazy.fit(x, y, batch_size=16, epochs=1, verbose=0,
                     callbacks=[dkm_tf.RefreshKMeans()] if with_callback else [])
            result = {"ok": True, "penalty_in_loss": float(lazy.evaluate(
                x, y, batch_size=len(x), verbose=0)) - np_sce(lazy.predict(x, verbose=0), y),
                "reference": np_penalty(lazy)}
        except Exception as e:  # reported, asserted on by the test
            result = {"ok": False, "type": type(e).__name__, "message": str(e)[:1000]}
        out["unbuilt_" + ("refreshkmeans" if with_callback else "plain_fit")] = result
    return out


def s_callbacks():
    x, y = data()
    m = model()
    dkm_tf.attach_regularizer(m, n_clusters=K, lam=LAM, unit="scalar", include_dense=True,
                              seed=0)
    compile_(m, 0.0)  # weights fixed: every step's penalty is the reference value
    cb = dkm_tf.RefreshKMeans(every_n_epochs=1, log_penalty="epoch")
    hist = m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[cb],
                 validation_data=(x, y))
    out = {"refresh_count": cb.refresh_count, "logged": hist.history.get("kmeans_penalty"),
           "val_logged": hist.history.get("val_kmeans_penalty"), "reference": np_penalty(m)}
    steps = dkm_tf.RefreshKMeans(every_n_epochs=None, every_n_steps=2, log_penalty="batch")
    m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=[steps])
    out["step_refresh_count"] = steps.refresh_count  # 1 at train begin + 6 steps / 2
    # ReassignClusters: latent weights re-clustered at every epoch end
    wrapped = dkm_tf.cluster_weights(model(), n_clusters=K, seed=0, latent=True)
    compile_(wrapped, 0.1)
    hist = wrapped.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                       callbacks=[dkm_tf.ReassignClusters(1)])
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    out["reassign_loss"] = hist.history["loss"]
    out["reassign_palettes"] = palette_checks(plain, palettes)
    return out


def s_distill():
    x, y = data()
    teacher = model(seed=3)
    targets = dkm_tf.distillation_targets(teacher, x, y)
    t_logits = np.asarray(teacher.predict(x, verbose=0), np.float64)
    loss = dkm_tf.DistillationLoss(num_classes=N_CLASSES, temperature=2.0, alpha=0.3)
    student = model()
    s_logits = np.asarray(student.predict(x, verbose=0), np.float64)
    value = float(np.asarray(loss(targets, s_logits.astype(np.float32))))

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    hard = -log_softmax(s_logits)[np.arange(len(y)), y]
    soft = -(np.exp(log_softmax(t_logits / 2.0)) * log_softmax(s_logits / 2.0)).sum(1)
    reference = float(np.mean(0.3 * hard + 0.7 * 4.0 * soft))
    wrapped = dkm_tf.cluster_weights(student, n_clusters=K, seed=0)
    wrapped.compile(optimizer=sgd(0.05), loss=loss)
    hist = wrapped.fit(x, targets, batch_size=16, epochs=3, shuffle=False, verbose=0)
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    return {"loss_value": value, "reference": reference, "targets_teacher_diff": float(
        np.max(np.abs(targets[:, N_CLASSES:] - t_logits))), "fit_loss": hist.history["loss"],
        "palettes": palette_checks(plain, palettes)}


def s_share():
    x, _ = data()
    m = model()
    clustered, palettes, skipped = dkm_tf.share_weights(m, n_clusters=K, seed=0)
    out = {"palettes": palette_checks(clustered, palettes),
           "skipped": [str(s) for s in skipped],
           "kernels": {k: v.reshape(-1).tolist() for k, v in kernels(clustered).items()},
           "logits": np.asarray(clustered.predict(x[:8], verbose=0)).tolist(),
           "original_unchanged": bool(all(np.array_equal(a, b) for a, b in zip(
               m.get_weights(), model().get_weights())))}
    row, row_palettes, _ = dkm_tf.share_weights(m, n_clusters=K, unit="row", seed=0)
    out["row_palettes"] = palette_checks(row, row_palettes)
    return out


def s_serialize():
    x, y = data()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        wrapped = dkm_tf.cluster_weights(model(), n_clusters=K, seed=0)
        compile_(wrapped, 0.05)
        wrapped.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        path = os.path.join(tmp, "wrapped.keras")
        wrapped.save(path)
        loaded = dkm_tf.load_model(path)
        out["wrapped_types"] = sorted({type(layer).__name__ for layer in loaded.layers})
        out["wrapped_max_diff"] = float(np.max(np.abs(
            loaded.predict(x, verbose=0) - wrapped.predict(x, verbose=0))))
        hist = loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        out["loaded_trains"] = bool(np.isfinite(hist.history["loss"][0]))
        plain, palettes = dkm_tf.strip_clustering(loaded)
        out["loaded_palettes"] = palette_checks(plain, palettes)
        reg = model()
        dkm_tf.attach_regularizer(reg, n_clusters=K, lam=LAM, unit="scalar", include_dense=True)
        path = os.path.join(tmp, "reg.keras")
        reg.save(path)
        back = dkm_tf.load_model(path)
        out["regularizers_loaded"] = sum(isinstance(v.regularizer,
                                                    dkm_tf.SpectralKMeansRegularizer)
                                         for v in back.trainable_weights)
        out["reg_max_diff"] = float(np.max(np.abs(
            back.predict(x, verbose=0) - reg.predict(x, verbose=0))))
    return out


def s_soft():
    """Soft (DKM) assignment while training, then hard at strip; skipped where not built."""
    x, y = data()
    try:
        wrapped = dkm_tf.cluster_weights(model(), n_clusters=K, seed=0, assignment="soft",
                                         temperature=0.05)
        schedule = dkm_tf.TemperatureSchedule(0.05, 0.01, epochs=3)
    except (TypeError, AttributeError) as e:  # the feature is not in this tree
        return {"unavailable": f"{type(e).__name__}: {e}"}
    compile_(wrapped, 0.05)
    hist = wrapped.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
                       callbacks=[schedule])
    plain, palettes = dkm_tf.strip_clustering(wrapped)
    return {"loss": hist.history["loss"], "palettes": palette_checks(plain, palettes)}


def s_fisher():
    """Fisher-weighted post-training k-means, also with the GPTQ + least-squares codebook
    update (``refine="gptq"``); skipped where not built."""
    x, y = data()
    try:
        clustered, palettes, skipped = dkm_tf.share_weights(
            model(), n_clusters=K, seed=0, weighting="fisher", data=(x, y),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    except TypeError as e:  # the feature is not in this tree
        return {"unavailable": f"{type(e).__name__}: {e}"}
    plain, plain_palettes, _ = dkm_tf.share_weights(model(), n_clusters=K, seed=0)
    logits = model().predict(x, verbose=0)
    try:
        refined = dkm_tf.share_weights(
            model(), n_clusters=K, seed=0, weighting="fisher", data=(x, y), refine="gptq",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        extra = {"palettes_refined": palette_checks(refined.model, refined.palettes),
                 "ce_refined": np_sce(refined.model.predict(x, verbose=0), y),
                 "refined_notes": [p.note for p in refined.palettes]}
    except TypeError as e:  # the feature is not in this tree
        extra = {"refined_unavailable": f"{type(e).__name__}: {e}"}
    return {**extra, "palettes": palette_checks(clustered, palettes),
            "skipped": [str(s) for s in skipped],
            "ce_fisher": np_sce(clustered.predict(x, verbose=0), y),
            "ce_plain": np_sce(plain.predict(x, verbose=0), y), "ce_float": np_sce(logits, y)}


class Sub(keras.Model):
    """A subclassed model: energy reads its shapes by tracing it."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3)

    def call(self, x):
        return self.conv(x)


def s_export():
    """Export and energy from this backend's process: they work, or fail with a clear error."""
    x, _ = data()
    plain, palettes, _ = dkm_tf.share_weights(model(), n_clusters=K, seed=0)
    sub = Sub()
    sub(x[:1])
    out = {}
    for name, fn in (
            ("energy_traced", lambda: float(dkm_tf.energy.estimate(
                sub, input_shape=(6, 6, 1)).paper_total)),
            ("energy", lambda: float(dkm_tf.energy.estimate(plain, palettes=palettes).paper_total)),
            ("export", lambda: dkm_tf.export.to_tflite(
                plain, os.path.join(tmp, "m.tflite"), format="palettized", palettes=palettes,
                sample_inputs=x[:4]).summary())):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                value = fn()
                out[name] = {"ok": True, "value": value if isinstance(value, float) else None}
            except Exception as e:  # reported, asserted on by the test
                out[name] = {"ok": False, "type": type(e).__name__, "message": str(e)[:2000]}
    return out


SCENARIOS = {name[2:]: fn for name, fn in globals().items() if name.startswith("s_")}


def main(names):
    import dkm_tf.energy  # noqa: F401,PLC0415
    import dkm_tf.export  # noqa: F401,PLC0415  (the lazy subpackages, attribute access)

    results = {"backend": keras.backend.backend()}
    for name in names:
        t0 = time.perf_counter()
        try:
            results[name] = SCENARIOS[name]()
        except Exception:
            results[name] = {"error": traceback.format_exc()[-4000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:] or sorted(SCENARIOS))
