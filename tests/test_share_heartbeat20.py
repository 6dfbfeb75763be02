"""``share_weights(verbose=True)`` is never silent while a long k-means runs.

A job is slowed down (its ``run`` sleeps first) so that the heartbeat, set to 0.05 s, must
print while it runs; without ``verbose`` nothing is printed, and the palettes are the same.
"""

import time

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.graph import heartbeat, share


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="fc1"),
                             keras.layers.Dense(3, name="fc2")])


@pytest.fixture
def slow_jobs(monkeypatch):
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    run = share._ShareJob.run

    def slow(self):
        time.sleep(0.6 if self.layer_name == "fc1" else 0.0)
        return run(self)
    monkeypatch.setattr(share._ShareJob, "run", slow)


@pytest.mark.parametrize("inplace", [False, True])
def test_verbose_prints_a_heartbeat_naming_the_running_tensor(slow_jobs, capsys, inplace):
    model = _model()
    expected = dkm_tf.share_weights(_model(), 4).palettes
    capsys.readouterr()
    result = dkm_tf.share_weights(model, 4, verbose=True, inplace=inplace)
    out = capsys.readouterr().out
    beats = [line for line in out.splitlines() if "k-means running" in line]
    assert all("of 2 tensor(s) done" in line for line in beats), beats
    # 0.6 s of fc1's k-means at one line per 0.05 s (fc2's, fast, may get a line on a busy
    # machine: a CI run had one)
    assert len([line for line in beats if "fc1/kernel (48 weights, " in line]) >= 3, out
    assert "clustered fc1/kernel: 48 weights -> K=4" in out  # the end-of-run lines stay
    for p, q in zip(result.palettes, expected):
        assert np.array_equal(p.decode(), q.decode())


def test_no_heartbeat_without_verbose(slow_jobs, capsys):
    dkm_tf.share_weights(_model(), 4)
    assert capsys.readouterr().out == ""


def test_kernel_clustering_gets_the_heartbeat_too(monkeypatch, capsys):
    from dkm_tf.core import kernel_codebook

    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    cluster = kernel_codebook.cluster_kernels

    def slow(*args, **kwargs):
        time.sleep(0.6)
        return cluster(*args, **kwargs)
    monkeypatch.setattr(kernel_codebook, "cluster_kernels", slow)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="c1"),
                              keras.layers.Conv2D(4, 3, name="c2")])
    dkm_tf.share_weights(model, 4, unit="kernel", codebook="shared", verbose=True)
    beats = [line for line in capsys.readouterr().out.splitlines() if "k-means running" in line]
    assert len(beats) >= 3
    # 3 x 3 x 2 x 4 + 3 x 3 x 4 x 4 = 216 weights in the one shared 3x3 codebook
    assert all("k-means running: codebook kernel:3x3 (c1, c2) (216 weights, " in line
               and "0 of 1 codebook(s) done" in line for line in beats), beats
