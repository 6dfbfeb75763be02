"""ClusterWeights under tf.distribute.MirroredStrategy (2 logical CPU devices, subprocess)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
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

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
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
    print("MIRRORED_OK")
""")


def test_mirrored_strategy_two_logical_cpus_matches_single_device():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=180, env=env, cwd=root)
    assert proc.returncode == 0 and "MIRRORED_OK" in proc.stdout, proc.stderr[-3000:]
