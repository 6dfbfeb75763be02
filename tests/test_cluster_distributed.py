"""ClusterWeights and the k-means regularizer under tf.distribute.MirroredStrategy (2 logical CPU
devices, subprocess: the device split does not leak into other tests).

One subprocess runs both scenarios (each would otherwise pay a fresh Python importing
TensorFlow); each prints its own marker, and a failing one its traceback, so each test below
checks its own scenario only. The regularizer's scenario was tests/test_regularizers.py's
test_mirrored_strategy_two_cpu_replicas.
"""

import os
import subprocess
import sys
import textwrap

import pytest

CLUSTER = textwrap.dedent("""
    import keras
    import numpy as np
    from dkm_tf.training.clustering import cluster_weights, strip_clustering
    from dkm_tf.models import digits_cnn

    rng = np.random.default_rng(0)
    x = rng.random((32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 10
    base = digits_cnn()
    base(x[:1])

    def step(strategy):
        with strategy.scope():
            model = cluster_weights(base, 4, overrides={"fc1": {"granularity": "per_channel"}})
            model.compile(keras.optimizers.SGD(0.5),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, y)
        return model

    assert mirrored.num_replicas_in_sync == 2
    a = step(mirrored)
    b = step(tf.distribute.get_strategy())
    moved = 0.0
    for va, vb, v0 in zip(a.weights, b.weights, cluster_weights(base, 4, overrides={
            "fc1": {"granularity": "per_channel"}}).weights):
        np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-5, atol=1e-6)
        moved = max(moved, float(np.abs(va.numpy().astype(float) - v0.numpy()).max()))
    assert moved > 1e-4, moved
    a.fit(x, y, epochs=1, batch_size=16, verbose=0)
    plain, palettes = strip_clustering(a)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(a(x)), atol=1e-6, rtol=1e-6)
    from dkm_tf.core.units import to_units
    for p in palettes:
        u = to_units(plain.get_layer(p.layer_name).kernel.numpy(), p.layout)
        assert all(len(np.unique(u[g])) <= 4 for g in range(u.shape[0])), p
    assert palettes[2].layout.n_groups == 64
    print("MIRRORED_OK", flush=True)
""")

REGULARIZER = textwrap.dedent("""
    import numpy as np
    import keras, dkm_tf.training.callbacks as C, dkm_tf.training.attach as R
    T = R
    strategy = mirrored
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 64)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3),
                                  keras.layers.Flatten(), keras.layers.Dense(10)])
        T.attach_regularizer(model, 3, lam=0.1, include_dense=True)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for relaxation in ("hard", "spectral"):
        h = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                      callbacks=[C.RefreshKMeans(every_n_epochs=1)])
        logged = h.history["kmeans_penalty"]
        ref = sum(float(r(v)) for v, r in R.kmeans_regularizers(model))
        assert all(p > 0 for p in logged) and 0.7 < logged[-1] / ref < 1.4, (logged, ref)
        T.attach_regularizer(model, 2, lam=0.1, relaxation="spectral")  # outside the scope
        with strategy.scope():
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    print("REGULARIZER_MIRRORED_OK", logged, ref, flush=True)
""")

# each scenario in its own namespace, after the one device split of the process; one
# MirroredStrategy for both (a second one in the process reuses the first's collective
# instance keys: "Shape mismatch in the collective instance 100")
RUNNER = textwrap.dedent("""
    import os, sys, traceback
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name, code in ((%r, %r), (%r, %r)):
        try:
            exec(compile(code, name, "exec"), {"__name__": "__main__", "tf": tf,
                                               "mirrored": mirrored})
        except BaseException:
            print("SCENARIO_FAILED", name, flush=True)
            traceback.print_exc()
            sys.stderr.flush()
""") % ("cluster", CLUSTER, "regularizer", REGULARIZER)


@pytest.fixture(scope="module")
def mirrored_run():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", RUNNER], capture_output=True, text=True,
                          timeout=360, env=env, cwd=root)


def test_mirrored_strategy_two_logical_cpus_matches_single_device(mirrored_run):
    proc = mirrored_run
    assert proc.returncode == 0 and "MIRRORED_OK" in proc.stdout.splitlines(), (
        proc.stdout[-2000:] + proc.stderr[-3000:])


def test_mirrored_strategy_two_cpu_replicas(mirrored_run):
    """The k-means regularizer with RefreshKMeans trains under the strategy (hard, then
    spectral re-attached outside its scope); the logged penalty is near the direct one."""
    proc = mirrored_run
    assert proc.returncode == 0 and any(line.startswith("REGULARIZER_MIRRORED_OK")
                                        for line in proc.stdout.splitlines()), (
        proc.stdout[-2000:] + proc.stderr[-4000:])
