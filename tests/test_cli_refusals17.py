"""``dkm-tf-export`` (``export.cli.run_to_tflite``) makes to_tflite's model refusals right
after loading, before it clusters (``--n_clusters``): before, full int8 of an LSTM model and
an export of a float16 model were refused only after ``share_weights`` had run."""

import keras
import numpy as np
import pytest

import dkm_tf.graph.share as share_lib
from dkm_tf.export import cli


def _save(model, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    return path


def _no_clustering(monkeypatch):
    calls = []
    monkeypatch.setattr(share_lib, "share_weights",
                        lambda *a, **k: calls.append(1) or pytest.fail("clustered first"))
    return calls


def test_full_int8_of_lstm_refused_before_clustering(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 3))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(4, name="rnn")(inp)))
    path = _save(model, tmp_path)
    calls = _no_clustering(monkeypatch)
    out = tmp_path / "m.int8.tflite"
    with pytest.raises(ValueError, match=r"int8_mode.*recurrent.*'rnn'"):
        cli.run_to_tflite(path, out, format="int8", int8_mode="full", n_clusters=4)
    assert not calls and not out.exists()


def test_float16_model_refused_before_clustering(tmp_path, monkeypatch):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3, dtype="float16", name="half")(inp))
    path = _save(model, tmp_path)
    calls = _no_clustering(monkeypatch)
    out = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"float32.*'half'"):
        cli.run_to_tflite(path, out, n_clusters=4)
    assert not calls and not out.exists()


def test_dynamic_int8_of_lstm_still_clusters_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 3))
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.LSTM(4, name="rnn")(inp)))
    path = _save(model, tmp_path)
    x = np.random.default_rng(0).normal(size=(4, 5, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    r = cli.run_to_tflite(path, tmp_path / "m.int8.tflite", format="int8", n_clusters=4,
                          samples_path=tmp_path / "x.npy")
    assert (tmp_path / "m.int8.tflite").stat().st_size == r.bytes
