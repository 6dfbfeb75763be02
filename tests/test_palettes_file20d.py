"""`energy.estimate("m.keras")` with a palettes file that does not describe every layer.

* A palette naming a layer the model does not have (the layer was renamed after the file was
  written) was rejected, but its layer was then charged as float (only the unknown name was
  read from the kernels): a K=4 conv + dense model read 1.058x instead of 1.729x. The layers
  no accepted palette describes are now read from their kernels, and the note names the
  unknown layer and the model's conv / dense layers. A note, not a ValueError (as
  `estimate(model, palettes=...)` raises): a palettes file is a claim checked against the
  model (another model's `palettes.json` in the same folder is rejected with a note too).
* An empty palettes file (`[]`) made every layer float with no note; it is now ignored with a
  note saying it holds no palettes, and the kernels are read, as without a file.

References: the in-memory model with its own palettes (no file), and the kernels' distinct
values counted with numpy.
"""

import json
import re

import keras
import numpy as np
import pytest

from dkm_tf import cli, energy
from dkm_tf.graph.share import share_weights
from dkm_tf.pipeline import save_palettes


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="fc")])
    shared = share_weights(model, 4)
    folder = tmp_path_factory.mktemp("pal20d")
    path = folder / "m.keras"
    shared.model.save(path)
    ref = energy.estimate(shared.model, palettes=shared.palettes)
    return shared, path, ref


def _k(report):
    return {x.shape.layer: x.n_clusters for x in report.layers if x.n_clusters is not None}


def _distinct(model):
    return {la.name: np.unique(np.asarray(la.kernel)).size for la in model.layers
            if hasattr(la, "kernel")}


def _write(path, dicts):
    pal = path.with_name("m.palettes.json")
    pal.write_text(json.dumps(dicts))
    return pal


def test_a_renamed_layer_is_read_from_its_kernel_and_named(saved):
    shared, path, ref = saved
    assert _distinct(shared.model) == {"conv": 4, "fc": 4}
    save_palettes(shared.palettes, path)
    dicts = json.loads(path.with_name("m.palettes.json").read_text())
    dicts[0]["layer_name"] = "conv_renamed"
    _write(path, dicts)
    rep = energy.estimate(path)
    assert _k(rep) == {"conv": 4, "fc": 4}          # was {"fc": 4}: conv charged as float
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)
    assert rep.hierarchy_total == pytest.approx(ref.hierarchy_total, rel=1e-12)
    [note] = [n for n in rep.notes if n.startswith("REJECTED PALETTES")]
    assert "conv_renamed/kernel: the model has no layer 'conv_renamed'" in note
    assert "conv / dense layers are ['conv', 'fc']" in note and "conv K=4 d=1" in note
    # `dkm-tf energy` prints it
    text = cli.run_energy(str(path))
    assert "conv_renamed" in text and "['conv', 'fc']" in text
    assert re.search(r"^conv\s+Conv2D\s+\S+\s+4\s", text, re.M)  # K=4, not "-"


def test_an_empty_palettes_file_is_noted_and_the_kernels_read(saved):
    shared, path, ref = saved
    _write(path, [])
    rep = energy.estimate(path)
    assert _k(rep) == _distinct(shared.model)       # was {}: every layer float, no note
    assert rep.paper_total == pytest.approx(ref.paper_total, rel=1e-12)
    assert rep.hierarchy_total == pytest.approx(ref.hierarchy_total, rel=1e-12)
    [note] = [n for n in rep.notes if "holds no palettes" in n]
    assert "m.palettes.json" in note and "conv K=4 d=1, fc K=4 d=1" in note
    assert not any(n.startswith("no palettes file beside") for n in rep.notes)


def test_an_empty_file_beside_a_float_model_says_float(saved, tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(8, 3, name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(4, name="fc")])
    model.save(tmp_path / "m.keras")
    (tmp_path / "m.palettes.json").write_text("[]")
    rep = energy.estimate(tmp_path / "m.keras")
    assert _k(rep) == {} and rep.baseline is None
    assert rep.paper_total == energy.estimate(model).paper_total
    [note] = [n for n in rep.notes if "holds no palettes" in n]
    assert note.endswith("float (no palette found in their values)")


def test_python_palettes_naming_no_layer_still_raise(saved):
    """The in-memory path is unchanged: a palette passed for a layer the model lacks."""
    shared, _, _ = saved
    p = shared.palettes[0]
    wrong = [type(p)("conv_renamed", p.weight_name, p.codebook, p.indices, p.layout)]
    with pytest.raises(ValueError, match=r"names layer 'conv_renamed'.*\['conv', 'fc'\]"):
        energy.estimate(shared.model, palettes=wrong)
