"""tf.distribute.MirroredStrategy over 2 logical CPU devices (a subprocess, so the device split
does not leak into other tests): the k-means regularizer with RefreshKMeans, ReassignClusters,
soft assignment with TemperatureSchedule, a shared kernel codebook and mixed precision train
as on one device, and the logged ``kmeans_penalty`` is the single-device mean.

Found by a probe: the regularizer's penalty meters were mirrored "sum" variables; updated in
both replicas they doubled at every step (counts 2, 6, 14, 30 after 4 steps), so the logged
``kmeans_penalty`` weighted the first step by 2^n (1.245 against 1.152 on one device, first
epoch) and turned inf / NaN after ~128 steps. They are now per-replica (on-read) sums, as
Keras' metrics.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, warnings
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import dkm_tf
    from testing import two_conv_model

    warnings.simplefilter("ignore")  # Keras / TF retracing notes in a subprocess
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    base_weights = two_conv_model().get_weights()

    def fresh():
        m = two_conv_model()
        m.set_weights(base_weights)
        return m

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def clustered(callbacks, **kw):
        m = dkm_tf.cluster_weights(fresh(), 4, **kw)
        m.compile(keras.optimizers.SGD(0.1), loss())
        h = m.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False, callbacks=callbacks())
        return m, h, dkm_tf.strip_clustering(m)[0]

    def regularized(callback, epochs=3, **kw):
        m = fresh()
        dkm_tf.attach_regularizer(m, 4, lam=0.5, include_dense=True, **kw)
        m.compile(keras.optimizers.SGD(0.1), loss())
        h = m.fit(x, y, epochs=epochs, batch_size=16, verbose=0, shuffle=False,
                  callbacks=[callback()])
        counts = [float(tf.convert_to_tensor(r.penalty_meter()[1]))
                  for _, r in dkm_tf.kmeans_regularizers(m)]
        return m, h, counts

    def mixed():
        keras.mixed_precision.set_global_policy("mixed_float16")
        try:
            m = fresh()
        finally:
            keras.mixed_precision.set_global_policy("float32")
        m = dkm_tf.cluster_weights(m, 4)
        m.compile(keras.optimizers.SGD(0.1), loss())
        assert type(m.optimizer).__name__ == "LossScaleOptimizer", type(m.optimizer)
        h = m.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        return m, h, dkm_tf.strip_clustering(m)[0]

    CASES = {  # name: (run, weight tolerance)
        "reg_hard_refresh_epochs": (lambda: regularized(lambda: dkm_tf.RefreshKMeans(1)), 1e-6),
        "reg_spectral_refresh_steps": (lambda: regularized(
            lambda: dkm_tf.RefreshKMeans(None, every_n_steps=3), relaxation="spectral"), 1e-6),
        "latent_reassign": (lambda: clustered(
            lambda: [dkm_tf.ReassignClusters(every_n_epochs=1)], latent=True), 1e-6),
        # tau = 1e-3 amplifies float rounding through the attention: weights ~1e-4 apart
        "soft_temperature": (lambda: clustered(
            lambda: [dkm_tf.TemperatureSchedule(1e-2, 1e-3)], assignment="soft",
            temperature=1e-2), 1e-3),
        "kernel_shared_codebook": (lambda: clustered(
            lambda: [], unit="kernel", codebook="shared"), 1e-6),
        "mixed_float16": (mixed, 1e-3),
    }
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    for name, (run, tol) in CASES.items():
        one = run()
        with mirrored.scope():
            two = run()
        for a, b in zip(one[0].get_weights(), two[0].get_weights()):
            np.testing.assert_allclose(a, b, atol=tol, rtol=0, err_msg=name)
        for a, b in zip(one[2].get_weights() if name[:3] != "reg" else [],
                        two[2].get_weights() if name[:3] != "reg" else []):
            np.testing.assert_allclose(a, b, atol=max(tol, 1e-6), rtol=0, err_msg=name)
        for key, values in one[1].history.items():  # loss and kmeans_penalty per epoch
            np.testing.assert_allclose(two[1].history[key], values, rtol=1e-4, atol=1e-7,
                                       err_msg=f"{name}: {key}")
        if name[:3] == "reg":
            assert "kmeans_penalty" in two[1].history, name
            # per-replica sums: 2 calls per step of the last epoch (4 steps)
            assert one[2] == [4.0] * len(one[2]) and two[2] == [8.0] * len(two[2]), two[2]
        print("CASE_OK", name, flush=True)

    # 130 steps in one epoch: the doubling meters reached inf and logged NaN
    one = regularized(lambda: dkm_tf.RefreshKMeans(1), epochs=1)
    with mirrored.scope():
        m = fresh()
        dkm_tf.attach_regularizer(m, 4, lam=0.5, include_dense=True)
        m.compile(keras.optimizers.SGD(0.0), loss())
        h = m.fit(np.repeat(x, 5, axis=0)[:260], np.repeat(y, 5)[:260], epochs=1, batch_size=2,
                  verbose=0, shuffle=False, callbacks=[dkm_tf.RefreshKMeans(1)])
    penalty = h.history["kmeans_penalty"][0]
    direct = sum(float(r(v)) for v, r in dkm_tf.kmeans_regularizers(m))  # SGD(0): unchanged
    assert np.isfinite(penalty) and abs(penalty - direct) <= 1e-5 * direct, (penalty, direct)
    print("MIRRORED_PROBE_OK")
""")


def test_mirrored_strategy_trains_like_one_device_and_logs_the_same_penalty():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([root, here, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env, cwd=root)
    assert proc.returncode == 0 and "MIRRORED_PROBE_OK" in proc.stdout, (
        proc.stdout[-2000:] + proc.stderr[-4000:])
