"""Energy of TFLite Micro files: `estimate` reads the `TFLM_DECODE` lookup tables.

A `format="tflm"` file stores each clustered weight as packed b-bit indices plus a value
table (read from the file's own bytes: K = table length, d = 1, G tables); it must cost what
the `per_invoke` palettized file of the same palettes costs, with K equal to the palettes'
K and the stored-weight bits equal to the independent formula G·K·16 + N·log2 K.
"""

import math

import keras
import numpy as np
import pytest
from testing import conv_conv_dense

from dkm_tf import energy
from dkm_tf import export as ex
from dkm_tf.energy.tflite_reader import read_tflite_palettes
from dkm_tf.graph.share import share_weights

pytestmark = pytest.mark.skipif(not ex.tflm_available(), reason="needs tflite-micro")

X = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)


def _tiny_cnn():
    return conv_conv_dense((4, 8), ("c1", "c2"), seed=4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy_tflm")
    shared = share_weights(_tiny_cnn(), 4)
    return {"shared": shared,
            "float": ex.to_tflite(shared.model, d / "float.tflite", "float", sample_inputs=X),
            "per_invoke": ex.to_tflite(shared.model, d / "pi.tflite", "palettized",
                                       shared.palettes, X, decode="per_invoke"),
            "tflm": ex.to_tflite(shared.model, d / "m.tflm.tflite", "tflm", shared.palettes,
                                 X)}


def _shared(report):
    return [x for x in report.layers if x.n_clusters is not None]


def test_tflm_file_costs_what_the_per_invoke_file_costs(files):
    flt, pi, tflm = (energy.estimate(files[k].path) for k in ("float", "per_invoke", "tflm"))
    assert tflm.macs == pi.macs == flt.macs
    assert tflm.paper_total == pytest.approx(pi.paper_total, rel=1e-12)
    assert tflm.hierarchy_total == pytest.approx(pi.hierarchy_total, rel=1e-12)
    assert tflm.paper_total < flt.paper_total and tflm.hierarchy_total < flt.hierarchy_total
    assert tflm.notes[0].startswith("palettes stored in the file (tflm decode): ")
    assert len(_shared(tflm)) == 3


def test_k_read_from_the_tflm_file_is_the_palettes_k(files):
    palettes = files["shared"].palettes
    _, _, stored = read_tflite_palettes(files["tflm"].path)
    assert {p.mode for p in stored.values()} == {"tflm"}
    assert sorted((p.n_clusters, p.unit_dim, p.n_codebooks) for p in stored.values()) == \
        sorted((p.n_clusters, 1, 1) for p in palettes) == [(4, 1, 1)] * 3
    model = files["shared"].model  # K = the distinct values each kernel really holds
    for p in palettes:
        kernel = np.asarray(getattr(model.get_layer(p.layer_name), p.weight_name))
        assert np.unique(kernel).size == p.n_clusters
    # and the per_invoke file's own reading agrees tensor by tensor (same op order)
    _, _, per_invoke = read_tflite_palettes(files["per_invoke"].path)
    assert [(p.n_clusters, p.n_codebooks) for p in stored.values()] == \
        [(p.n_clusters, p.n_codebooks) for p in per_invoke.values()]


def test_stored_weight_bits_formula(files):
    """hierarchy weight storage of each tflm tensor = K·16 + N·log2 K bits (d = G = 1)."""
    by_size = {p.n_values: p for p in files["shared"].palettes}
    rows = _shared(energy.estimate(files["tflm"].path))
    assert sorted(x.shape.n_weights for x in rows) == sorted(by_size)
    for x in rows:
        p = by_size[x.shape.n_weights]
        ref = p.n_clusters * 16 + p.n_values * math.log2(p.n_clusters)
        assert x.stored_weight_bits == pytest.approx(ref, rel=1e-12)


def test_per_channel_palette_is_one_table_of_every_channels_values(tmp_path):
    """dkm_tf's tflm export writes one table per tensor (all channels' values): K there is
    the kernel's distinct-value count, more than the palette's per-channel K."""
    keras.utils.set_random_seed(5)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(8, use_bias=False, name="d")(inp))
    shared = share_weights(model, 3, granularity="per_channel")
    r = ex.to_tflite(shared.model, tmp_path / "d.tflm", "tflm", shared.palettes,
                     np.eye(16, dtype=np.float32))
    (p,) = read_tflite_palettes(r.path)[2].values()
    kernel = shared.model.get_layer("d").get_weights()[0]
    assert (p.mode, p.n_clusters, p.unit_dim, p.n_codebooks) == (
        "tflm", np.unique(kernel).size, 1, 1)
    assert 3 < p.n_clusters <= 24


def test_per_channel_lookup_tables_give_g_codebooks(tmp_path):
    """A LUT written with TFLite Micro's own per-channel mode (axis 0 of the weight): G = 8
    tables of K = 3 values, as the palettes say."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tflite_micro import compression
    from tflite_micro.tensorflow.lite.micro.compression import spec

    keras.utils.set_random_seed(5)
    inp = keras.Input((16,))
    model = keras.Model(inp, keras.layers.Dense(8, use_bias=False, name="d")(inp))
    shared = share_weights(model, 3, granularity="per_channel")
    content = ex.to_tflite(shared.model, tmp_path / "f.tflite", "float",
                           sample_inputs=np.eye(16, dtype=np.float32)).path
    with open(content, "rb") as f:
        content = f.read()
    graph = schema.Model.GetRootAs(content, 0).Subgraphs(0)
    (weight,) = [t for t in range(graph.TensorsLength())
                 if tuple(graph.Tensors(t).ShapeAsNumpy()) == (8, 16)]
    builder = compression.SpecBuilder()
    builder.add_tensor(0, weight).with_lut(index_bitwidth=2, mode=spec.PerChannel(axis=0))
    path = tmp_path / "pc.tflite"
    path.write_bytes(bytes(compression.compress(content, builder.build())))
    (p,) = read_tflite_palettes(path)[2].values()
    (palette,) = shared.palettes
    assert palette.codebook.shape[0] == 8
    assert (p.mode, p.n_clusters, p.unit_dim, p.n_codebooks) == ("tflm", 3, 1, 8)
    (row,) = _shared(energy.estimate(path))
    assert row.stored_weight_bits == pytest.approx(8 * 3 * 16 + 128 * math.log2(3), rel=1e-12)


def test_inspect_tflite_reads_k_and_table_bytes_of_a_tflm_file(files):
    """`inspect_tflite` reads the same header (core.tflm_lut): K and the table bytes, which
    with the packed indices add up to the export report's own storage count."""
    info = ex.inspect_tflite(files["tflm"].path)
    tflm = [p for p in info.palettized if p["mode"] == "tflm"]
    assert len(tflm) == 3
    ks = {p.name: int(np.unique(p.decode()).size) for p in files["shared"].palettes}
    assert sorted(p["K"] for p in tflm) == sorted(ks.values())
    for p in tflm:
        assert p["codebook_bytes"] == p["K"] * 4  # one float32 table of K entries
    stored = {r["palette"]: r["index_bytes"] for r in files["tflm"].tensors if "palette" in r}
    assert sorted(p["index_bytes"] for p in tflm) == sorted(stored.values())
