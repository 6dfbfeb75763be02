"""Index cost of the energy figures: the `.tflite` indices' entropy, and `dkm-tf energy`'s
`index_cost="auto"`.

* `estimate(path.tflite, index_cost="entropy")` reads the indices stored in a palettized file
  (every decode chain: per-invoke INT2 / INT4 / uint8 / tuples, decode-once tuples and dense
  words, per-channel codebooks, TFLite Micro lookup tables) and charges their entropy, which
  must equal an independent numpy recount of each palette's index histogram and the figure of
  the `.keras` file with its palettes beside it.
* `dkm-tf energy` charges the indices at their entropy when the file gives it (the convention
  of `dkm-tf compress`, so it prints the reduction of report.json's `energy` section), else
  `index_cost="none"`, and says which and why; the Python default stays "none".
"""

import json
import os

import keras
import numpy as np
import pytest
from testing import conv_conv_dense

from dkm_tf import cli, energy
from dkm_tf import export as ex
from dkm_tf.energy.tflite_reader import read_tflite_palettes
from dkm_tf.graph.share import share_weights
from dkm_tf.pipeline import save_palettes

X = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)


def _small_model():
    return conv_conv_dense((8, 6), ("conv", "conv2"), seed=3, name="small")


def _recount(palette):
    """Bits per index of a palette, recounted from its indices with numpy alone: the mean
    over its codebooks of -Σ p log2 p of the index histogram."""
    rows = np.asarray(palette.indices).reshape(palette.codebook.shape[0], -1)
    out = []
    for row in rows:
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out.append(-np.sum(p * np.log2(p)))
    return float(np.mean(out))


def _wide_model():
    """A Dense layer of 65,536 weights: decode-once stores it in dense int16 words."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Dense(1024, name="wide")(keras.layers.Flatten()(inp))
    return keras.Model(inp, keras.layers.Dense(10, name="fc")(h), name="wide")


# label: (model, share_weights kwargs, to_tflite kwargs, storage of the first clustered tensor)
CASES = {
    "int2_per_invoke": (_small_model, {"n_clusters": 4}, {"decode": "per_invoke"}, "int2"),
    "int4_per_invoke": (_small_model, {"n_clusters": 16}, {"decode": "per_invoke"}, "int4"),
    "uint8_per_invoke": (_small_model, {"n_clusters": 64}, {"decode": "per_invoke"}, "uint8"),
    "tuples_per_invoke": (_small_model, {"n_clusters": 3}, {"decode": "per_invoke"},
                          "split per invoke"),
    "tuples_once": (_small_model, {"n_clusters": 5},
                    {"decode": "once", "keep_float": None, "index_packing": "tuples"},
                    "indices/int16)"),
    "dense_once": (_wide_model, {"n_clusters": 16}, {"decode": "once", "keep_float": None},
                   "int16 (15 indices/4 int16)"),
    "row_per_channel_once": (_small_model, {"n_clusters": 4, "unit": "row",
                                            "granularity": "per_channel"},
                             {"decode": "once", "keep_float": None}, "indices/int16)"),
    "row_per_channel_per_invoke": (_small_model, {"n_clusters": 4, "unit": "row",
                                                  "granularity": "per_channel"},
                                   {"decode": "per_invoke"}, "split per invoke"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("index_cost")
    model = _small_model()
    out = {"dir": d, "model": model}
    for label, (make, share, export, storage) in CASES.items():
        shared = share_weights(model if make is _small_model else make(), **share)
        path = d / f"{label}.tflite"
        rep = ex.to_tflite(shared.model, path, "palettized", shared.palettes, X, **export)
        assert storage in rep.tensors[0]["storage"], rep.tensors  # the chain under test
        out[label] = (shared, str(path))
    shared = out["int2_per_invoke"][0]
    shared.model.save(d / "c.keras")
    save_palettes(shared.palettes, str(d / "c.keras"))
    (d / "bare").mkdir()
    shared.model.save(d / "bare" / "c.keras")  # no palettes file beside it
    model.save(d / "float.keras")
    ex.to_tflite(model, d / "float.tflite", "float", sample_inputs=X)
    return out


def _by_size(palettes):
    return {p.n_values: p for p in palettes}


def _shared(report):
    return [x for x in report.layers if x.n_clusters is not None]


@pytest.mark.parametrize("label", list(CASES))
def test_tflite_index_entropy_is_the_numpy_recount(files, label):
    shared, path = files[label]
    rep = energy.estimate(path, index_cost="entropy")  # raised before: entropy unknown
    layers = _shared(rep)
    assert len(layers) == len(shared.palettes)
    by_size = _by_size(shared.palettes)
    for x in layers:
        p = by_size[x.shape.n_weights]
        assert x.index_bits == pytest.approx(_recount(p), abs=1e-9)
        assert x.index_bits == pytest.approx(p.entropy_bits(), abs=1e-9)
        assert 0 < x.index_bits <= np.log2(p.n_clusters) + 1e-9
    _, _, stored = read_tflite_palettes(path)
    assert all(s.index_bits is not None for s in stored.values())


def test_tflite_entropy_figure_equals_the_keras_file_with_its_palettes(files):
    _, path = files["int2_per_invoke"]
    keras_path = str(files["dir"] / "c.keras")
    for cost in ("entropy", "none", "log2"):
        t, k = (energy.estimate(p, index_cost=cost) for p in (path, keras_path))
        assert t.reduction.paper == pytest.approx(k.reduction.paper, rel=1e-12)
        assert t.reduction.hierarchy == pytest.approx(k.reduction.hierarchy, rel=1e-12)
    t, k = (energy.estimate(p, index_cost="entropy") for p in (path, keras_path))
    assert sorted(x.index_bits for x in _shared(t)) == pytest.approx(
        sorted(x.index_bits for x in _shared(k)), abs=1e-12)
    # entropy < log2 K bits: the entropy figure lies between "none" and "log2"
    none, log2 = (energy.estimate(path, index_cost=c).paper_total for c in ("none", "log2"))
    assert none < t.paper_total < log2


def test_energy_cli_reports_the_entropy_convention_and_says_so(files):
    keras_path = str(files["dir"] / "c.keras")
    for path in (keras_path, files["int2_per_invoke"][1]):
        text = cli.run_energy(path)
        ref = energy.estimate(path, index_cost="entropy").reduction
        assert "index_cost='entropy'" in text.splitlines()[0]
        assert "index_cost='entropy' (auto)" in text
        assert f"paper {ref.paper:.3f}x, hierarchy {ref.hierarchy:.3f}x" in text
        assert energy.estimate(path).index_cost == "none"  # the Python default is unchanged
        auto = energy.estimate(path, index_cost="auto")
        assert auto.index_cost == "entropy" and auto.paper_total == pytest.approx(
            energy.estimate(path, index_cost="entropy").paper_total, rel=1e-12)


def test_keras_file_without_palettes_uses_its_kernels_distinct_values(files):
    shared = files["int2_per_invoke"][0]
    rep = energy.estimate(str(files["dir"] / "bare" / "c.keras"), index_cost="auto")
    assert rep.index_cost == "entropy"
    by_size = _by_size(shared.palettes)
    for x in _shared(rep):
        assert x.index_bits == pytest.approx(_recount(by_size[x.shape.n_weights]), abs=1e-9)


@pytest.mark.parametrize("name", ["float.keras", "float.tflite"])
def test_float_model_gets_none_never_an_error(files, name):
    """Nothing clustered: no index to charge, the output of `estimate(path)` unchanged."""
    path = str(files["dir"] / name)
    text = cli.run_energy(path)
    assert "index_cost='none'" in text.splitlines()[0]
    assert text == energy.estimate(path).summary()
    assert "(auto)" not in text and "Reduction vs uncompressed" not in text


def test_unread_indices_fall_back_to_none_and_name_the_layers(files, monkeypatch):
    monkeypatch.setattr("dkm_tf.energy.tflite_indices.index_entropy", lambda *a: None)
    path = files["int2_per_invoke"][1]
    text = cli.run_energy(path)
    assert "index_cost='none'" in text.splitlines()[0]
    assert "were not read" in text and "is unknown" in text
    with pytest.raises(ValueError, match="needs the entropy of the indices"):
        energy.estimate(path, index_cost="entropy")


def test_index_cost_auto_is_checked(files):
    with pytest.raises(ValueError, match="index_cost"):
        energy.estimate(str(files["dir"] / "c.keras"), index_cost="automatic")
    with pytest.raises(ValueError, match="index_cost"):  # "auto" only where a file is read
        energy.estimate_shapes([], index_cost="auto")


@pytest.mark.skipif(not ex.tflm_available(), reason="needs tflite-micro")
def test_tflm_lookup_table_indices(files):
    shared = files["int2_per_invoke"][0]
    path = files["dir"] / "m.tflm.tflite"
    ex.to_tflite(shared.model, path, "tflm", shared.palettes, X)
    rep = energy.estimate(str(path), index_cost="entropy")
    by_size = _by_size(shared.palettes)
    assert len(_shared(rep)) == 3
    for x in _shared(rep):
        assert x.index_bits == pytest.approx(_recount(by_size[x.shape.n_weights]), abs=1e-9)


def test_energy_of_compress_output_prints_compress_reduction(tmp_path):
    """`dkm-tf energy` on `dkm-tf compress`'s files prints report.json's reduction."""
    path = str(tmp_path / "small.keras")
    _small_model().save(path)
    out = str(tmp_path / "out")
    cli.run_compress(path, dataset="digits", method="wr", n_clusters=4, quiet=True,
                     output_dir=out, plots=False)
    with open(os.path.join(out, "report.json")) as f:
        e = json.load(f)["energy"]
    assert e["index_cost"] == "entropy"
    line = (f"Reduction vs uncompressed: paper {e['reduction']['paper']:.3f}x, "
            f"hierarchy {e['reduction']['hierarchy']:.3f}x")
    for name in ("clustered.keras", "clustered.palettized_per_invoke.tflite"):
        text = cli.run_energy(os.path.join(out, name))
        assert line in text, (name, text)
        assert "index_cost='entropy' (auto)" in text
