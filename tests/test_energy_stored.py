"""Compression info that comes with a model file is checked against the model.

* A palettes file beside a `.keras` file is applied only where `decode()` equals the stored
  kernel: the float original, or the same model clustered with another K, next to a
  palettes file must not be charged as compressed (it used to be, silently).
* An int8 `.tflite` is charged at the metric's B_w (16), with a note that the file stores
  int8 weights.
* A `.keras` file that exists but is not a Keras zip is reported as such, not "not found".

References are independent of the file reading: the in-memory model with its own palettes,
and the kernels' distinct values counted with numpy.
"""

import zipfile

import keras
import numpy as np
import pytest

from dkm_tf import energy
from dkm_tf.energy import stored
from dkm_tf.export import to_tflite
from dkm_tf.graph.share import share_weights
from dkm_tf.models import digits_cnn
from dkm_tf.pipeline import save_palettes

X = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    model = digits_cnn()
    return {"float": model, 2: share_weights(model, 2), 4: share_weights(model, 4)}


def _k(report):
    return {x.shape.layer: x.n_clusters for x in report.layers if x.n_clusters is not None}


def _rejected(report):
    return [n for n in report.notes if n.startswith("REJECTED PALETTES")]


def test_float_model_beside_a_palettes_file_is_not_charged_as_compressed(clustered, tmp_path):
    """The tester's repro: the float original copied next to its clustered palettes."""
    clustered["float"].save(tmp_path / "model.keras")
    save_palettes(clustered[4].palettes, tmp_path / "x.keras")
    (tmp_path / "x.palettes.json").rename(tmp_path / "palettes.json")
    rep = energy.estimate(tmp_path / "model.keras")
    ref = energy.estimate(clustered["float"])          # in memory: no file, no palettes
    assert rep.baseline is None and rep.reduction is None and _k(rep) == {}
    assert rep.paper_total == ref.paper_total and rep.hierarchy_total == ref.hierarchy_total
    [note] = _rejected(rep)
    assert "does not belong to this model" in note and "palettes.json" in note
    for p in clustered[4].palettes:
        assert f"{p.name}: its decode() differs from the stored weight" in note
    text = energy.energy_cli_text(tmp_path / "model.keras")
    assert "Reduction vs uncompressed" not in text and "REJECTED PALETTES" in text


def test_palettes_of_another_k_are_rejected_and_the_kernels_read(clustered, tmp_path):
    """A K=2 model next to the K=4 palettes of the same network is charged as K=2."""
    k2 = clustered[2]
    k2.model.save(tmp_path / "c.keras")
    save_palettes(clustered[4].palettes, tmp_path / "c.keras")
    rep = energy.estimate(tmp_path / "c.keras")
    distinct = {la.name: np.unique(np.asarray(la.kernel)).size for la in k2.model.layers
                if hasattr(la, "kernel")}
    assert set(distinct.values()) == {2}
    assert _k(rep) == distinct                          # K=2 everywhere, never the file's 4
    ref = energy.estimate(k2.model, palettes=k2.palettes)
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)
    assert rep.hierarchy_total == pytest.approx(ref.hierarchy_total, rel=1e-12)
    [note] = _rejected(rep)
    assert "K=4" in note and "holds 2 distinct values" in note
    # the matching file is applied, with no rejection
    save_palettes(k2.palettes, tmp_path / "c.keras")
    good = energy.estimate(tmp_path / "c.keras")
    assert _rejected(good) == [] and any("palettes read from" in n for n in good.notes)
    assert good.paper_total == pytest.approx(ref.paper_total, rel=1e-12)


def test_a_partly_matching_file_applies_only_the_matching_palettes(clustered, tmp_path):
    k2, k4 = clustered[2], clustered[4]
    k4.model.save(tmp_path / "m.keras")
    mixed = [p for p in k4.palettes if p.layer_name.startswith("conv")] + \
            [p for p in k2.palettes if p.layer_name.startswith("fc")]
    save_palettes(mixed, tmp_path / "m.keras")
    rep = energy.estimate(tmp_path / "m.keras")
    [note] = _rejected(rep)
    assert "2 of the 4 palettes" in note
    assert "fc1/kernel" in note and "fc2/kernel" in note and "conv1/kernel" not in note
    assert _k(rep) == {p.layer_name: p.n_clusters for p in k4.palettes}
    ref = energy.estimate(k4.model, palettes=k4.palettes)
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)


def test_check_palettes_names_what_is_wrong(clustered):
    k4 = clustered[4]
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 5, name="conv1"),
                              keras.layers.Flatten(), keras.layers.Dense(3, name="head")])
    ok, bad = stored.check_palettes(other, k4.palettes)
    assert ok == []
    why = dict(bad)
    assert "decodes to shape (3, 3, 1, 16), the weight has shape (5, 5, 1, 4)" in \
        why["conv1/kernel"]
    assert why["fc1/kernel"] == "the model has no layer 'fc1'"
    renamed = [type(p)(p.layer_name, "bias", p.codebook, p.indices, p.layout)
               for p in k4.palettes if p.layer_name == "conv1"]
    assert stored.check_palettes(k4.model, renamed)[1] == [
        ("conv1/bias", "it decodes to shape (3, 3, 1, 16), the weight has shape (16,)")]
    gone = [type(p)(p.layer_name, "nope", p.codebook, p.indices, p.layout)
            for p in k4.palettes if p.layer_name == "conv1"]
    assert stored.check_palettes(k4.model, gone)[1] == [
        ("conv1/nope", "layer 'conv1' has no weight 'nope'")]
    assert stored.check_palettes(k4.model, k4.palettes) == (list(k4.palettes), [])


def test_int8_tflite_is_noted(clustered, tmp_path):
    model = clustered[4].model
    flt = to_tflite(model, tmp_path / "f.tflite", "float", sample_inputs=X)
    q = to_tflite(model, tmp_path / "q.tflite", "int8", sample_inputs=X)
    rf, rq = energy.estimate(flt.path), energy.estimate(q.path)
    assert not any("int8" in n for n in rf.notes)
    [note] = [n for n in rq.notes if "as int8" in n]
    assert "charged at B_w=16" in note and "bits_w=8" in note
    assert rq.paper_total == rf.paper_total               # B_w is the metric's, not storage
    assert "charged at B_w=8" in next(n for n in energy.estimate(q.path, bits_w=8).notes
                                      if "as int8" in n)


def test_a_keras_file_that_is_not_a_keras_zip_says_so(tmp_path):
    (tmp_path / "garbage.keras").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"`model_or_path`.*garbage\.keras.*not a zip archive"):
        energy.estimate(tmp_path / "garbage.keras")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("x.txt", "x")
    with pytest.raises(ValueError, match="without config.json"):
        energy.estimate(tmp_path / "empty.keras")
    (tmp_path / "bad.h5").write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match=r"bad\.h5.*not an HDF5 file"):
        energy.estimate(tmp_path / "bad.h5")
    with pytest.raises(FileNotFoundError, match="No such model file"):
        energy.estimate(tmp_path / "missing.keras")
