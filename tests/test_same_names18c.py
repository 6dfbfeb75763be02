"""Same-named layers of nested models, paired by value (session 18c).

Two separately built copies of one block shared by ``share_weights`` hold palettes of one
``layer_name`` with the same K but another index entropy: ``estimate(..., index_cost=
"entropy")`` refused them (33afab8), and a ``.keras`` file of them raised about a
``weight_sharing`` argument nobody passed. Each palette is now paired with the layer whose
weight its ``decode()`` equals; a palettes file beside a ``.keras`` charges a float twin float.
"""

import io

import numpy as np
import pytest

import dkm_tf
from dkm_tf import energy, pipeline
from tests.testing import two_conv_bn_blocks

keras = pytest.importorskip("keras")


def _block(name, probs, levels=(-0.5, 0.5)):
    """A Functional block with a Dense ``fc`` (6 -> 6) whose kernel holds ``levels`` drawn
    with ``probs`` (None: float)."""
    inp = keras.Input((6,))
    fc = keras.layers.Dense(6, name="fc")
    model = keras.Model(inp, fc(inp), name=name)
    if probs is not None:
        rng = np.random.default_rng(len(name) + int(100 * probs[0]))
        fc.kernel.assign(rng.choice(levels, size=(6, 6), p=probs).astype("float32"))
    return model


def _two(probs_a, probs_b):
    inp = keras.Input((6,))
    return keras.Model(inp, _block("b", probs_b)(_block("a", probs_a)(inp)))


def _kernel_bits(model, block):
    """Stored bits of ``block``/fc's K-level kernel: K d B_w codebook + N H index bits."""
    w = keras.ops.convert_to_numpy(model.get_layer(block).get_layer("fc").kernel).ravel()
    _, counts = np.unique(w, return_counts=True)
    p = counts / counts.sum()
    return len(counts) * 16 + w.size * float(-(p * np.log2(p)).sum())


def _rows(report):
    return {row.shape.name: row for row in report.layers}


def test_copies_with_other_index_entropy_charged_each_on_its_layer():
    model = _two([0.5, 0.5], [0.85, 0.15])
    pals = dkm_tf.palettes_of(model)
    assert [p.n_clusters for p in pals] == [2, 2]
    assert abs(pals[0].entropy_bits() - pals[1].entropy_bits()) > 0.1
    for order in (pals, pals[::-1]):  # old: "2 palette(s) of fc/kernel ... Expected one
        rows = _rows(energy.estimate(model, palettes=order, index_cost="entropy"))  # identical"
        assert rows["fc"].stored_weight_bits == pytest.approx(_kernel_bits(model, "a"), 1e-9)
        assert rows["fc#2"].stored_weight_bits == pytest.approx(_kernel_bits(model, "b"), 1e-9)
    # an iterator of palettes: the same-name check read it up, nothing was charged (old)
    rows = _rows(energy.estimate(model, palettes=iter(pals), index_cost="none"))
    assert [rows[n].n_clusters for n in ("fc", "fc#2")] == [2, 2]


def test_wrapped_copies_charged_with_their_own_entropy():
    keras.utils.set_random_seed(0)
    clustered = dkm_tf.cluster_weights(_two(None, None), 3)
    pals = dkm_tf.palettes_of(clustered)
    rows = _rows(energy.estimate(clustered, palettes=pals, index_cost="entropy"))
    for name, pal in zip(("cluster_fc", "cluster_fc#2"), pals):
        assert rows[name].stored_weight_bits == pytest.approx(
            3 * 16 + 36 * float(pal.entropy_bits()), 1e-9)


def test_palettes_equal_to_no_layer_still_refused_saying_what_differs():
    model = _two([0.5, 0.5], [0.85, 0.15])
    pals = dkm_tf.palettes_of(model)
    for block in ("a", "b"):  # weights changed after clustering: no palette decodes to them
        fc = model.get_layer(block).get_layer("fc")
        fc.kernel.assign(fc.kernel + 0.01)
    with pytest.raises(ValueError, match=r"differ in only the index entropy .*pairing them by "
                                         r"value failed"):
        energy.estimate(model, palettes=pals, index_cost="entropy")


def test_keras_file_of_copies_charged_per_layer_with_entropy(tmp_path):
    model = _two([0.5, 0.5], [0.85, 0.15])
    path = str(tmp_path / "ent.keras")
    model.save(path)
    # old: "Invalid value for argument `weight_sharing['fc']`" (an argument never passed)
    rows = _rows(energy.estimate(path, index_cost="entropy"))
    assert rows["fc"].stored_weight_bits == pytest.approx(_kernel_bits(model, "a"), 1e-9)
    assert rows["fc#2"].stored_weight_bits == pytest.approx(_kernel_bits(model, "b"), 1e-9)
    text = energy.energy_cli_text(path)
    assert "weight_sharing" not in text and "fc#2" in text


@pytest.mark.parametrize("clustered", ["a", "b"])
def test_palettes_file_charges_the_float_twin_float(tmp_path, clustered):
    model = _two(*([0.5, 0.5] if b == clustered else None for b in "ab"))
    pals = dkm_tf.palettes_of(model)
    assert [p.n_clusters for p in pals] == [2]
    path = str(tmp_path / "m.keras")
    model.save(path)
    pipeline.save_palettes(pals, path)
    # old: "The palettes file ... does not describe it" (the file is right)
    report = energy.estimate(path)
    expected = {"fc": 68.0, "fc#2": 576.0} if clustered == "a" else {"fc": 576.0,
                                                                      "fc#2": 68.0}
    assert {n: r.stored_weight_bits for n, r in _rows(report).items()} == expected
    assert {n: r.n_clusters for n, r in _rows(report).items()} == {
        n: (2 if bits == 68.0 else None) for n, bits in expected.items()}


def test_cli_energy_of_a_compressed_same_named_model(tmp_path, capsys):
    from dkm_tf import cli

    model = _two([0.5, 0.5], [0.85, 0.15])
    path = str(tmp_path / "dup.keras")
    model.save(path)
    err = io.StringIO()
    rc = cli.run(["dkm-tf", "energy", "--model", path], stderr=err)
    assert rc == 0, err.getvalue()  # old: exit 2, "weight_sharing['fc']"
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[:4] for r in rows if r and r[0] in ("fc", "fc#2")] == [
        ["fc", "Dense", "36", "2"], ["fc#2", "Dense", "36", "2"]]


def test_energy_of_stripped_same_named_conv_bn_blocks_file(tmp_path):
    # what `dkm-tf compress --method finetune --notflite` writes: BN folded into each `conv`
    model = two_conv_bn_blocks()
    with pytest.warns(UserWarning, match="folds into the layer before them"):
        clustered = dkm_tf.cluster_weights(model, 4, unit="scalar")
    plain, pals = dkm_tf.strip_clustering(clustered)
    path = str(tmp_path / "clustered.keras")
    plain.save(path)
    pipeline.save_palettes(pals, path)
    # old: "The palettes file ... does not describe it: ... 2 palette(s) of conv/kernel"
    rows = _rows(energy.estimate(path, index_cost="entropy"))
    assert [np.asarray(p.codebook).size for p in pals] == [16, 16]  # K=4 per channel (folded)
    for name, pal in zip(("conv", "conv#2"), pals):
        assert rows[name].stored_weight_bits == pytest.approx(
            16 * 16 + 144 * float(pal.entropy_bits()), 1e-9)


class _CalledBackwards(keras.Model):
    """Two same-named blocks called in the other order than they are defined (the traced
    reader names records in call order: `fc` is block b's)."""

    def __init__(self):
        super().__init__(name="backwards")
        self.a = _block("a", [0.5, 0.5])
        self.b = _block("b", [0.25, 0.25, 0.25, 0.25], levels=(-0.6, -0.2, 0.2, 0.6))

    def call(self, x):
        return self.a(self.b(x))


def test_subclassed_model_palettes_not_paired_by_walk_order():
    # by value, then by walk order: a's K=2 palette was charged on b's record and b's K=4 on
    # a's (the same wrong numbers as before the pairing, now vouched for); now refused
    model = _CalledBackwards()
    model(np.zeros((1, 6), "float32"))
    pals = dkm_tf.palettes_of(model)
    assert sorted(p.n_clusters for p in pals) == [2, 4]
    with pytest.raises(ValueError, match=r"fc"):
        energy.estimate(model, palettes=pals, input_shape=(6,))
