"""Energy of palettized files: `estimate` / `dkm-tf energy` read the codebook + indices.

A palettized `.tflite` (both decode modes) and a `.keras` with its palettes file beside it
must cost less than the float file, with K, d, G per tensor equal to the exported palettes
(and to `inspect_tflite`'s reading), and the stored-weight bits equal to the independent
formula G·K·d·B_w + N·log2 K.
"""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dkm_tf import energy
from dkm_tf.energy.shapes import SharingInfo
from dkm_tf.energy.tflite_reader import read_tflite_palettes
from dkm_tf.export import inspect_tflite, to_tflite
from dkm_tf.graph.share import share_weights
from dkm_tf.models import digits_cnn
from dkm_tf.pipeline import save_palettes

X = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Float and palettized exports of the digits CNN (row units per channel; scalar K=4)."""
    d = tmp_path_factory.mktemp("energy_pal")
    model = digits_cnn()
    row = share_weights(model, 8, unit="row", granularity="per_channel")
    scalar = share_weights(model, 4)  # per tensor, K=4: per_invoke stores int2 fields
    out = {"row": row, "scalar": scalar, "dir": d}
    out["float"] = to_tflite(row.model, d / "float.tflite", "float", sample_inputs=X)
    out["once"] = to_tflite(row.model, d / "once.tflite", "palettized", row.palettes, X,
                            decode="once", keep_float=None)
    out["once_auto"] = to_tflite(row.model, d / "once_auto.tflite", "palettized",
                                 row.palettes, X, decode="once")
    out["per_invoke"] = to_tflite(row.model, d / "pi.tflite", "palettized", row.palettes, X,
                                  decode="per_invoke")
    out["int2"] = to_tflite(scalar.model, d / "int2.tflite", "palettized", scalar.palettes, X,
                            decode="per_invoke")
    return out


def _shared(report):
    return [x for x in report.layers if x.n_clusters is not None]


@pytest.mark.parametrize("label", ["once", "once_auto", "per_invoke", "int2"])
def test_palettized_file_costs_less_than_float(files, label):
    flt = energy.estimate(files["float"].path)
    pal = energy.estimate(files[label].path)
    assert flt.baseline is None and flt.notes == ()
    assert pal.macs == flt.macs                      # same work, lowered convs included
    assert pal.hierarchy_total < flt.hierarchy_total
    assert pal.paper_total < flt.paper_total
    assert pal.baseline is not None and pal.reduction.hierarchy > 1.0
    assert any("palettes stored in the file" in n for n in pal.notes)
    assert any(name == "weight decode" for name, _ in pal.skipped)
    assert not any(why.startswith("unsupported") for _, why in pal.skipped)


@pytest.mark.parametrize("label,source", [("once", "row"), ("once_auto", "row"),
                                          ("per_invoke", "row"), ("int2", "scalar")])
def test_stored_palettes_match_the_exported_ones(files, label, source):
    rep = energy.estimate(files[label].path)
    export_report = files[label]
    palettes = {p.layer_name: p for p in files[source].palettes}
    palettized = [t for t in export_report.tensors if not t["storage"].startswith("float32")]
    shared = _shared(rep)
    assert len(shared) == len(palettized)           # kept-float tensors charged as float
    if label == "once_auto":
        assert len(palettized) < len(palettes)      # the policy kept some convs float
    expected = sorted((palettes[t["palette"].split("/")[0]].n_clusters,
                       palettes[t["palette"].split("/")[0]].unit_dim,
                       palettes[t["palette"].split("/")[0]].codebook.shape[0])
                      for t in palettized)
    _, _, stored = read_tflite_palettes(files[label].path)
    assert sorted((p.n_clusters, p.unit_dim, p.n_codebooks) for p in stored.values()) == expected
    assert {p.mode for p in stored.values()} == {label.split("_auto")[0].replace("int2",
                                                                                 "per_invoke")}
    assert sorted((x.n_clusters, x.unit_dim) for x in shared) == [e[:2] for e in expected]
    info = inspect_tflite(files[label].path)         # the export stage's own reading
    assert sorted(p["K"] for p in info.palettized) == sorted(x.n_clusters for x in shared)


@pytest.mark.parametrize("label", ["once", "per_invoke", "int2"])
def test_stored_weight_bits_formula(files, label):
    """hierarchy weight storage = G·K·d·16 + N·log2 K bits (N = |W| / d), per layer."""
    source = files["scalar" if label == "int2" else "row"].palettes
    by_weights = {p.n_values: p for p in source}
    for x in _shared(energy.estimate(files[label].path)):
        p = by_weights[x.shape.n_weights]
        ref = p.codebook.size * 16 + p.n_units * math.log2(p.n_clusters)
        assert x.stored_weight_bits == pytest.approx(ref, rel=1e-12)
        assert (x.n_clusters, x.unit_dim) == (p.n_clusters, p.unit_dim)


def test_per_invoke_equals_float_file_with_explicit_palettes(files):
    """Reading the palettes from the file = giving them for the float file's shapes."""
    pal = energy.estimate(files["per_invoke"].path)
    flt_shapes = [s for s in energy.estimate(files["float"].path).layers]
    sharing = {}
    by_layer = {p.layer_name: p for p in files["row"].palettes}
    for s in flt_shapes:
        p = by_layer.get(s.shape.layer.rsplit("_", 1)[0])
        if p is not None:
            sharing[s.name] = SharingInfo(n_clusters=p.n_clusters, unit_dim=p.unit_dim,
                                          n_units=p.n_units, n_codebooks=p.codebook.shape[0])
    assert len(sharing) == 4
    ref = energy.estimate(files["float"].path, weight_sharing=sharing)
    assert pal.paper_total == pytest.approx(ref.paper_total, rel=1e-9)
    assert pal.hierarchy_total == pytest.approx(ref.hierarchy_total, rel=1e-9)
    assert [x.name for x in pal.layers][:4] == [x.name for x in ref.layers][:4]


def test_explicit_palettes_override_the_stored_ones(files):
    rep = energy.estimate(files["per_invoke"].path, weight_sharing={
        "fc1_1": SharingInfo(n_clusters=2, unit_dim=1, n_units=512 * 64)})
    assert [x.n_clusters for x in _shared(rep)] == [2]
    assert any("were not used" in n for n in rep.notes)


def test_dkm_tf_energy_command_on_both_files(files, capsys):
    from dkm_tf import cli

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    texts = {}
    # the float file in this process (a fresh Python only re-imports TensorFlow), the
    # palettized one through the module's entry point in a fresh process
    assert cli.run(["dkm-tf", "energy", f"--model={files['float'].path}"]) == 0
    texts["float"] = capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "dkm_tf.cli", "energy",
                           f"--model={files['per_invoke'].path}"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts["per_invoke"] = proc.stdout
    flt = energy.estimate(files["float"].path)
    pal = energy.estimate(files["per_invoke"].path, index_cost="auto")
    assert "Reduction vs uncompressed" not in texts["float"]
    assert "Note: palettes stored in the file (per_invoke decode)" in texts["per_invoke"]
    assert f"hierarchy {pal.reduction.hierarchy:.3f}x" in texts["per_invoke"]
    assert pal.reduction.hierarchy == pytest.approx(flt.hierarchy_total / pal.hierarchy_total)


def test_keras_file_with_palettes_beside_it(files, tmp_path):
    row = files["row"]
    digits_cnn().save(tmp_path / "float.keras")
    row.model.save(tmp_path / "clustered.keras")
    written = save_palettes(row.palettes, tmp_path / "clustered.keras")
    assert written == str(tmp_path / "clustered.palettes.json")
    flt = energy.estimate(tmp_path / "float.keras")
    pal = energy.estimate(tmp_path / "clustered.keras")
    assert flt.baseline is None
    assert pal.hierarchy_total < flt.hierarchy_total and pal.paper_total < flt.paper_total
    assert pal.hierarchy_total == pytest.approx(
        energy.estimate(row.model, palettes=row.palettes).hierarchy_total, rel=1e-12)
    assert any(written in n for n in pal.notes)
    # the same as the per_invoke file (same shapes, same palettes)
    assert pal.paper_total == pytest.approx(
        energy.estimate(files["per_invoke"].path).paper_total, rel=1e-9)
    # a plain palettes.json in the folder is read too
    os.replace(written, tmp_path / "palettes.json")
    assert energy.estimate(tmp_path / "clustered.keras").paper_total == pal.paper_total


def test_keras_file_with_a_wrong_palettes_file(files, tmp_path):
    files["row"].model.save(tmp_path / "m.keras")
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 5, name="conv1"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="fc1")])
    save_palettes(share_weights(other, 4).palettes, tmp_path / "m.keras")
    rep = energy.estimate(tmp_path / "m.keras")   # rejected: the kernels are read instead
    assert any(n.startswith("REJECTED PALETTES: the palettes file") and "m.palettes.json"
               in n and "does not belong to this model" in n for n in rep.notes)
    ref = energy.estimate(files["row"].model, palettes=[p for p in files["row"].palettes
                                                        if p.layer_name != "conv1"])
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)
    (tmp_path / "m.palettes.json").write_text("{}")
    with pytest.raises(ValueError, match="Could not read the palettes file"):
        energy.estimate(tmp_path / "m.keras")


def test_recurrent_weights_decoded_before_the_loop(tmp_path):
    """An LSTM's kernels are decoded in front of the WHILE loop: the body ops still see K."""
    inp = keras.Input((5, 4))
    out = keras.layers.Dense(3, name="head")(keras.layers.LSTM(16, name="lstm")(inp))
    res = share_weights(keras.Model(inp, out), 16)
    xs = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    flt = to_tflite(res.model, tmp_path / "f.tflite", "float", sample_inputs=xs)
    pal = to_tflite(res.model, tmp_path / "p.tflite", "palettized", res.palettes, xs,
                    decode="per_invoke")
    rep, ref = energy.estimate(pal.path), energy.estimate(flt.path)
    shared = _shared(rep)
    assert sorted(x.shape.n_weights for x in shared) == sorted(p.n_values for p in res.palettes)
    assert all(x.n_clusters == 16 for x in shared)
    assert sum(x.macs == 5 * x.shape.n_weights for x in shared) == 2   # 5 time steps
    assert rep.macs == ref.macs and rep.hierarchy_total < ref.hierarchy_total


def test_keras_file_without_palettes_file_reads_its_kernels(files, tmp_path):
    """A clustered kernel holds K distinct units: the description is read from the values."""
    row = files["row"]
    row.model.save(tmp_path / "clustered.keras")
    digits_cnn().save(tmp_path / "float.keras")
    flt = energy.estimate(tmp_path / "float.keras")
    rep = energy.estimate(tmp_path / "clustered.keras")
    assert flt.baseline is None and flt.notes == ()   # trained-float kernels never qualify
    assert any("inferred from the stored kernels" in n for n in rep.notes)
    assert rep.hierarchy_total < flt.hierarchy_total and rep.paper_total < flt.paper_total
    got = {x.shape.layer: (x.n_clusters, x.unit_dim) for x in _shared(rep)}
    by_layer = {p.layer_name: p for p in row.palettes}
    # conv1: 16 channels x 3 rows, K=3 per channel stores more than the float kernel: float
    assert set(got) == {"conv2", "fc1", "fc2"}
    for name, kd in got.items():
        assert kd == (by_layer[name].n_clusters, by_layer[name].unit_dim)
    # the same figures as the palettes file, except conv1 (which the file charges at K=3)
    ref = energy.estimate(row.model, palettes=[p for p in row.palettes if p.layer_name != "conv1"])
    assert rep.hierarchy_total == pytest.approx(ref.hierarchy_total, rel=1e-12)
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)
