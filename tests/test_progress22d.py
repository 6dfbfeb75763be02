"""``strip_clustering`` / ``palettes_of`` take ``verbose``: a heartbeat while palettes run.

A soft wrapper's snap to hard assignments (110 s for a 2048 x 2048 Dense at K = 256) printed
nothing. Here the snap is slowed down (it sleeps first) so that the heartbeat, set to
0.05 s, must print while it runs; without ``verbose`` nothing is printed and no heartbeat
thread is started, and the palettes are the same either way.
"""

import threading
import time

import keras
import numpy as np
import pytest

import dkm_tf
from dkm_tf.graph import heartbeat
from dkm_tf.training import soft


def _soft_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="fc1"),
                              keras.layers.Dense(3, name="fc2")])
    return dkm_tf.cluster_weights(model, 4, assignment="soft", temperature=0.05)


def _beats():
    return [t for t in threading.enumerate() if t.name == "dkm_tf-heartbeat"]


@pytest.fixture
def slow_snap(monkeypatch):
    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    snap = soft.snap

    def slow(wrapper):
        time.sleep(0.6 if wrapper.layer.name == "fc1" else 0.0)
        return snap(wrapper)
    monkeypatch.setattr(soft, "snap", slow)


def _lines(out, head="palettes running"):  # review: a snap is no k-means
    return [line for line in out.splitlines() if head in line]


@pytest.mark.parametrize("entry", ["strip_clustering", "palettes_of"])
def test_verbose_prints_a_heartbeat_naming_the_soft_wrapper(slow_snap, capsys, entry):
    model = _soft_model()
    quiet = getattr(dkm_tf, entry)(model)
    assert capsys.readouterr().out == ""  # without verbose: nothing
    assert not _beats()
    loud = getattr(dkm_tf, entry)(model, verbose=True)  # was: TypeError (no `verbose`)
    beats = _lines(capsys.readouterr().out)
    assert len([b for b in beats if "fc1 (48 weights, " in b]) >= 3, beats  # 0.6 s / 0.05 s
    assert all("of 2 wrapper(s) done" in b for b in beats), beats
    assert not _beats()  # the thread is joined when the call returns
    pals_q = quiet[1] if entry == "strip_clustering" else quiet
    pals_l = loud[1] if entry == "strip_clustering" else loud
    assert [p.layer_name for p in pals_l] == ["fc1", "fc2"]
    for p, q in zip(pals_l, pals_q, strict=True):
        assert np.array_equal(p.decode(), q.decode())


def test_no_thread_and_no_output_when_an_error_ends_the_call(slow_snap, capsys):
    with pytest.raises(TypeError, match="`verbose`"):
        dkm_tf.strip_clustering(_soft_model(), verbose="yes")
    with pytest.raises(TypeError, match="Expected a Keras model or layer"):
        dkm_tf.palettes_of("model", verbose=True)
    assert capsys.readouterr().out == ""
    assert not _beats()


def test_verbose_is_a_documented_keyword():
    import inspect

    for fn in (dkm_tf.strip_clustering, dkm_tf.palettes_of):
        param = inspect.signature(fn).parameters["verbose"]
        assert (param.kind, param.default) == (inspect.Parameter.KEYWORD_ONLY, False)
        assert "heartbeat line every 15 s" in fn.__doc__


def test_kernel_unit_sharing_has_a_heartbeat_too(monkeypatch, capsys):
    """``share_weights(unit="kernel")`` with per-layer codebooks (the default ``codebook``)
    goes through the per-tensor jobs: the heartbeat names the conv's kernel."""
    from dkm_tf.graph import share

    monkeypatch.setattr(heartbeat, "HEARTBEAT_S", 0.05)
    run = share._ShareJob.run

    def slow(self):
        time.sleep(0.6)
        return run(self)
    monkeypatch.setattr(share._ShareJob, "run", slow)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="c1")])
    dkm_tf.share_weights(model, 4, unit="kernel", verbose=True)
    beats = _lines(capsys.readouterr().out, "k-means running")
    assert len([b for b in beats if "c1/kernel (72 weights, " in b]) >= 3, beats
    assert not _beats()
